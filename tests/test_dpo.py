"""DPO through the worker's path: TRL's DPOTrainer, the reference being the base with the adapter
disabled; training on preference pairs moves the reward margin up."""
import json

import pytest


def _pairs(path, n=12):
    rows = []
    for i in range(n):
        rows.append({"prompt": f"Question {i}: what is your name?",
                     "chosen": "My name is Zorblax.",
                     "rejected": f"I am a generic assistant number {i}."})
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def _run_dpo(studio_home, tmp_path, base_model, **kw):
    from studio import db, library
    from studio.spec import JobSpec
    from workers import train

    rec, _ = library.add(_pairs(tmp_path / "prefs.jsonl"), name="prefs")
    assert rec.kind == "preference"
    spec = JobSpec(base_model=str(base_model), dataset="prefs", method="dpo", r=8, lora_alpha=16,
                   per_device_train_batch_size=4, eval_split=0.0, max_length=128, beta=0.1, lora_dropout=0.0, **kw)
    assert spec.validate(dataset_kind="preference") == {}
    job = db.Job(name="dpo", spec_json=spec.to_json(), output_dir="jobs/dpo")
    with db.session() as s:
        s.add(job)
        s.commit()
    assert train.run_job(job.id) == "completed", db.get_job(job.id).error
    out = studio_home / "jobs" / "dpo" / "checkpoints"
    state = json.loads(sorted(out.glob("checkpoint-*/trainer_state.json"))[-1].read_text())
    margins = [h["rewards/margins"] for h in state["log_history"] if "rewards/margins" in h]
    assert len(margins) >= 4
    assert sum(margins[-2:]) / 2 > sum(margins[:2]) / 2, margins
    assert (studio_home / "jobs" / "dpo" / "adapter" / "adapter_model.safetensors").exists()
    return margins


def test_dpo_on_the_tiny_model_moves_the_reward_margin_up(studio_home, tmp_path, tiny_model_dir):
    _run_dpo(studio_home, tmp_path, tiny_model_dir, load_in_4bit=False, learning_rate=5e-3, max_steps=8)


@pytest.mark.slow
def test_short_dpo_run_on_the_bundled_model_moves_the_reward_margin_up(studio_home, tmp_path, monkeypatch):
    from browser import SHARED_MODELS
    from studio import settings

    monkeypatch.setenv("STUDIO_MODELS_DIR", str(SHARED_MODELS))
    settings.reset_settings()
    margins = _run_dpo(studio_home, tmp_path, "SmolLM2-135M-Instruct", load_in_4bit=True, learning_rate=1e-3,
                       max_steps=6)
    print("bundled DPO reward margins by step:", [round(m, 4) for m in margins])
