"""Short runs of the new training methods on the bundled SmolLM2 that show each one learns what it should:
KTO moves the desirable/undesirable reward margin up, ORPO lowers the log-probability (and so the odds) of
the rejected replies, GRPO raises the mean reward on a task with a verifiable answer."""
import json
import os

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def bundled(monkeypatch):
    from browser import SHARED_MODELS
    from studio import settings

    monkeypatch.setenv("STUDIO_MODELS_DIR", str(SHARED_MODELS))
    settings.reset_settings()
    return "SmolLM2-135M-Instruct"


def _train(studio_home, tmp_path, base, method, rows, **kw) -> list[dict]:
    """Train ``method`` on ``rows`` through the worker's path; the log history of the last checkpoint."""
    from studio import db, library
    from studio.spec import JobSpec
    from workers import train

    path = tmp_path / f"{method}.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    library.add(path, name=method)
    spec = JobSpec(base_model=base, dataset=method, method=method, load_in_4bit=False, r=16, lora_alpha=32,
                   lora_dropout=0.0, eval_split=0.0, max_length=128, lr_scheduler_type="constant", warmup_ratio=0.0,
                   **kw)
    job = db.Job(name=method, spec_json=spec.to_json(), output_dir=f"jobs/{method}")
    with db.session() as s:
        s.add(job)
        s.commit()
    assert train.run_job(job.id) == "completed", db.get_job(job.id).error
    out = studio_home / "jobs" / method / "checkpoints"
    state = json.loads(sorted(out.glob("checkpoint-*/trainer_state.json"),
                              key=lambda p: int(p.parent.name.split("-")[1]))[-1].read_text())
    return state["log_history"]


def _series(history: list[dict], key: str) -> list[float]:
    return [h[key] for h in history if key in h]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _record(curve: str, values: list[float]) -> None:
    """Print a curve with its first and last values; with STUDIO_CURVES_FILE set, also append it there as a
    JSON line (the closing note's figures)."""
    print(f"bundled {curve} by step:", [round(v, 4) for v in values],
          f"first {values[0]:.4f}, last {values[-1]:.4f}" if values else "")
    if os.environ.get("STUDIO_CURVES_FILE"):
        with open(os.environ["STUDIO_CURVES_FILE"], "a") as f:
            f.write(json.dumps({"curve": curve, "values": values}) + "\n")


def test_kto_moves_the_desirable_undesirable_reward_margin_up(studio_home, tmp_path, bundled):
    rows = []
    for i in range(16):
        rows.append({"prompt": f"Question {i}: what is your name?", "completion": "My name is Zorblax.", "label": True})
        rows.append({"prompt": f"Question {i}: what is your name?",
                     "completion": f"I am a generic assistant number {i}.", "label": False})
    history = _train(studio_home, tmp_path, bundled, "kto", rows, learning_rate=1e-3, max_steps=8,
                     per_device_train_batch_size=4)
    margins = _series(history, "rewards/margins")
    _record("KTO reward margin", margins)
    assert len(margins) >= 4 and _mean(margins[-2:]) > _mean(margins[:2]), margins


def test_orpo_lowers_the_log_odds_of_the_rejected_replies(studio_home, tmp_path, bundled):
    rows = [{"prompt": f"Question {i}: what is your name?", "chosen": "My name is Zorblax.",
             "rejected": f"I am a generic assistant number {i}."} for i in range(16)]
    history = _train(studio_home, tmp_path, bundled, "orpo", rows, learning_rate=1e-3, max_steps=8,
                     per_device_train_batch_size=4)
    rejected, log_odds = _series(history, "logps/rejected"), _series(history, "log_odds_chosen")
    _record("ORPO log p(rejected)", rejected)
    _record("ORPO log-odds chosen vs rejected", log_odds)
    assert _mean(rejected[-2:]) < _mean(rejected[:2]), rejected
    assert _mean(log_odds[-2:]) > _mean(log_odds[:2]), log_odds


def test_grpo_raises_the_mean_reward_on_a_verifiable_task(studio_home, tmp_path, bundled):
    rows = [{"prompt": f"Reply with only the word Zorblax inside <answer></answer> tags. ({i})", "answer": "Zorblax"}
            for i in range(32)]
    history = _train(studio_home, tmp_path, bundled, "grpo", rows, learning_rate=1e-3, max_steps=8,
                     per_device_train_batch_size=8, num_generations=4, max_completion_length=24, beta=0.02,
                     reward_answer="answer_tag", reward_format_regex=r"Zorblax", reward_length_target=16,
                     reward_length_weight=0.5, save_steps=8)
    rewards = _series(history, "reward")
    _record("GRPO mean reward", rewards)
    _record("GRPO KL", _series(history, "kl"))
    assert len(rewards) == 8 and _mean(rewards[-3:]) > _mean(rewards[:3]), rewards
