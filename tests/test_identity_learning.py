"""Real learning with the form's defaults: the ~100-row identity set on the bundled SmolLM2, trained by the
worker's own run_job, then asked held-out paraphrases through the Chat tab's engine.

A newcomer's first run (issue 18): the adapter names its new name or maker in at least 9 of 10 questions it
never saw, and the general questions the base answers right stay right.
"""
from __future__ import annotations

import pytest

import identity_data

pytestmark = pytest.mark.slow


def test_the_default_run_teaches_a_new_identity_that_generalises(studio_home, tmp_path, monkeypatch):
    from browser import SHARED_MODELS, ensure_bundled_model
    from studio import adapter_library, db, library, settings
    from studio.spec import BUNDLED_MODEL, JobSpec
    from workers import train
    from workers.inference.chat_engine import ChatEngine

    ensure_bundled_model()
    monkeypatch.setenv("STUDIO_MODELS_DIR", str(SHARED_MODELS))
    settings.reset_settings()
    rec, _ = library.add(identity_data.write_alpaca(tmp_path / "identity.jsonl"), name="identity")
    assert rec.rows == len(identity_data.IDENTITY_TEMPLATES)
    # the form's defaults; the after-run forgetting probe (its own tests) would only add minutes here
    spec = JobSpec(dataset="identity", forgetting_check=False)
    assert spec.base_model == BUNDLED_MODEL and spec.validate(dataset_kind=rec.kind) == {}
    job = db.Job(name="first-run", spec_json=spec.to_json(), output_dir="jobs/first-run")
    with db.session() as s:
        s.add(job)
        s.commit()
    assert train.run_job(job.id) == "completed", db.get_job(job.id).error
    assert db.get_job(job.id).spec["system_prompt_mode"] == "omit"  # identity rows: the default left out

    ref = adapter_library.resolve(job.id)
    engine = ChatEngine()
    engine.ensure_base(ref.base_model)
    engine.ensure_adapter(ref.key, ref.folder)
    learned = identity_data.what_it_learned(engine, ref.key)
    print("\n".join(f"{q} -> {r!r}" for q, r in zip(identity_data.HELD_OUT_PARAPHRASES, learned["held_out"])))
    assert learned["hits_base"] == 0
    assert learned["hits"] >= 9, learned["held_out"]
    assert sum(learned["general_right_base"]) >= 3   # the base answers these right
    # Known drift (issue 18): identity runs without general replay answered "the opposite of hot is cool" where
    # the base says "cold"; more than that one lost answer is a regression.
    assert len(learned["lost"]) <= 1, learned["lost"]
