"""Evaluation at the end of a run, on the tiny model through the worker's own ``run_job``: the forgetting check
runs after the run is marked completed (the base's answers cached once per base and reused by the next run),
the best checkpoint is recorded and used by chat, the adapter zip and the model card, which say which one."""
from __future__ import annotations

import json
import zipfile

import pytest

from adapter_fixtures import identity_job

STEPS = 4


def _job(tiny_model_dir, tmp_path, name: str, **kw):
    return identity_job(tiny_model_dir, tmp_path, name, **{
        "learning_rate": 1e-3, "max_steps": STEPS, "eval_steps": 2, "save_steps": 2,
        "forgetting_check": True,  # on by default; the suite's environment turns the default off
        **kw})


def _train(job_id):
    from studio import db
    from workers import train

    assert train.run_job(job_id) == "completed", db.get_job(job_id).error
    return db.get_job(job_id)


def test_the_probe_runs_at_the_end_of_an_sft_run_and_the_next_run_reuses_the_base_answers(
        studio_home, tiny_model_dir, tmp_path, monkeypatch):
    from studio.probe.runner import flag_line
    from studio.ui import runs_tab
    from workers import forgetting

    seen_status = []
    real = forgetting.check_training_model

    def watching(spec, model, *args, **kw):  # what the Runs tab shows while the check runs
        from studio import db

        job = db.get_job(first_id if not seen_status else second_id)
        seen_status.append((job.status, job.summary.get("forgetting"), runs_tab.status_markdown(job)))
        return real(spec, model, *args, **kw)

    monkeypatch.setattr(forgetting, "check_training_model", watching)
    first_id = _job(tiny_model_dir, tmp_path, "probe-first")
    second_id = _job(tiny_model_dir, tmp_path, "probe-second", seed=7)
    first = _train(first_id)
    second = _train(second_id)
    assert [(s, f) for s, f, _ in seen_status] == [("completed", {"state": "checking"})] * 2
    assert "checking general skills…" in seen_status[0][2]
    a, b = first.summary["forgetting"], second.summary["forgetting"]
    assert a["state"] == b["state"] == "done"
    assert not a["base_cached"] and b["base_cached"]
    assert a["base_correct"] == b["base_correct"] and a["total"] == b["total"] == 200
    assert a["summary"].startswith("general skills kept:") and f"base {a['base_correct']}/200" in a["summary"]
    cached = list((studio_home / "probe-cache").glob("*.json"))
    assert len(cached) == 1
    for job in (first, second):
        report = json.loads((studio_home / job.output_dir / "probe" / "general.json").read_text())
        assert report["summary"] == job.summary["forgetting"]["summary"] and len(report["questions"]) == 200
        assert report["flagged"] == job.summary["forgetting"]["flagged"]
        assert job.summary["forgetting"]["flag"] == flag_line(report)
    card = runs_tab.status_markdown(second)
    assert b["summary"] in card and "checking general skills" not in card


def test_the_forgetting_check_can_be_turned_off_and_is_skipped_for_other_methods(studio_home, tiny_model_dir, tmp_path):
    job = _train(_job(tiny_model_dir, tmp_path, "no-probe", forgetting_check=False))
    assert "forgetting" not in job.summary
    assert not (studio_home / job.output_dir / "probe").exists()


def test_the_best_checkpoint_is_the_lowest_eval_loss_and_chat_and_zip_use_it(studio_home, tiny_model_dir, tmp_path):
    from studio import adapter_library, db, model_card

    job = _train(_job(tiny_model_dir, tmp_path, "best", forgetting_check=False, learning_rate=0.5, max_steps=6))
    rows = job.summary["checkpoints"]
    best = job.summary["best_checkpoint"]
    scored = [r for r in rows if r["eval_loss"] is not None]
    assert [r["step"] for r in rows] == [2, 4, 6] and len(scored) == 3
    lowest = min(scored, key=lambda r: r["eval_loss"])
    assert best["step"] == lowest["step"] and best["rule"] == "eval_loss"
    assert f"lowest eval loss {lowest['eval_loss']:.4g}" in best["label"]
    ref = adapter_library.resolve(job.id)
    final = adapter_library.resolve(f"{job.id}/final")
    assert final.folder == studio_home / job.output_dir / "adapter" and final.using.startswith("the final adapter")
    if best["final"]:
        assert ref.folder == final.folder
    else:
        assert ref.folder == studio_home / job.output_dir / "checkpoints" / f"checkpoint-{best['step']}"
        assert ref.using == f"checkpoint {best['step']} (lowest eval loss {lowest['eval_loss']:.4g})"
    with zipfile.ZipFile(model_card.zip_adapter(job.id)) as zf:
        card = zf.read("README.md").decode()
        assert zf.read("adapter_model.safetensors") == (ref.folder / "adapter_model.safetensors").read_bytes()
    assert f"Weights: {ref.using}" in card
    # the choice follows the spec: `last` is always the final adapter
    db.update_job(job.id, summary_json=json.dumps({**job.summary, "best_checkpoint": {
        "step": 6, "final": True, "rule": "last", "value": None, "label": "the final adapter (step 6; the last step)"}}))
    assert adapter_library.resolve(job.id).folder == final.folder


def test_pick_best_follows_each_rule_and_falls_back_to_the_final_adapter():
    from workers.checkpoints import pick_best

    rows = [{"step": 2, "final": False, "eval_loss": 1.5, "golden_rouge": 0.2, "probe": 90},
            {"step": 4, "final": False, "eval_loss": 1.2, "golden_rouge": 0.1, "probe": None},
            {"step": 6, "final": True, "eval_loss": 1.3, "golden_rouge": 0.2, "probe": 80}]
    assert pick_best(rows, "eval_loss")["label"] == "checkpoint 4 (lowest eval loss 1.2)"
    assert pick_best(rows, "golden_rouge")["step"] == 6, "a tie goes to the later step"
    assert pick_best(rows, "probe")["label"] == "checkpoint 2 (most probe answers right 90)"
    assert pick_best(rows, "last") == {"step": 6, "final": True, "rule": "last", "value": None,
                                       "label": "the final adapter (step 6; the last step)"}
    bare = [{**r, "eval_loss": None} for r in rows]
    assert pick_best(bare, "eval_loss")["label"] == "the final adapter (step 6; no checkpoint was scored by eval_loss)"


@pytest.fixture
def flagged_job(studio_home, tiny_model_dir):
    from adapter_fixtures import make_job

    forgetting = {"state": "done", "summary": "general skills kept: 60% (base 50/200, adapter 30/200)", "kept": 0.6,
                  "drop_points": 10.0, "flagged": True, "threshold": 5.0, "base_correct": 50,
                  "adapter_correct": 30, "total": 200, "base_cached": True, "seconds": 3.0,
                  "flag": "forgetting: the adapter answers 10 points fewer probe questions correctly than its base "
                          "(threshold 5)"}
    job = make_job(tiny_model_dir, "forgetful", summary={"final_loss": 1.0, "steps": 8, "forgetting": forgetting})
    report = {**forgetting, "questions": [
        {"id": "facts-001", "category": "facts", "prompt": "What is the capital of France?", "base_reply": "Paris.",
         "base_correct": True, "adapter_reply": "banana banana", "adapter_correct": False, "changed": True},
        {"id": "facts-002", "category": "facts", "prompt": "What is the capital of Japan?", "base_reply": "Tokyo.",
         "base_correct": True, "adapter_reply": "Tokyo.", "adapter_correct": True, "changed": False}]}
    folder = studio_home / job.output_dir / "probe"
    folder.mkdir(parents=True)
    (folder / "general.json").write_text(json.dumps(report))
    return job


def test_a_flagged_run_says_so_on_its_card_in_the_adapters_list_and_in_its_model_card(flagged_job):
    from studio import adapter_library, model_card
    from studio.ui import adapters_tab, runs_tab

    card = runs_tab.status_markdown(flagged_job)
    assert "general skills kept: 60% (base 50/200, adapter 30/200)" in card
    assert "**Flagged**: forgetting: the adapter answers 10 points fewer" in card
    changed = runs_tab.changed_questions(flagged_job)
    assert changed == [["What is the capital of France?", "Paris.", "right", "banana banana", "wrong"]]
    listed = next(a for a in adapter_library.list_adapters() if a["ref"] == flagged_job.id)
    assert listed["forgetting"] == "flagged: kept 60% (base 50/200, adapter 30/200)" and listed["flagged"]
    row = next(r for r in adapters_tab.table() if r[0] == "forgetful")
    assert "flagged: kept 60%" in " ".join(map(str, row))
    model_card = model_card.model_card(flagged_job)
    assert "## Forgetting check" in model_card
    assert "general skills kept: 60% (base 50/200, adapter 30/200)" in model_card
    assert "flagged" in model_card


def test_a_shutdown_stops_the_probe_between_batches_and_caches_nothing(tiny_model_dir, tmp_path):
    """serve's SIGTERM must not wait for 200 questions: the check stops before its next batch."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers.forgetting import ProbeStopped, generate_replies

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 1  # the shutdown arrives while the first batch is being answered

    with pytest.raises(ProbeStopped):
        generate_replies(model, tokenizer, [f"question {i}?" for i in range(5)], 2, batch_size=2, stop=stop)
    assert len(calls) == 2  # one batch answered, stopped before the second
    assert len(generate_replies(model, tokenizer, ["one?", "two?"], 2, batch_size=1, stop=lambda: False)) == 2
