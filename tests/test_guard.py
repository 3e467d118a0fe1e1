"""A run whose numbers stop being finite fails with a sentence naming the step; the last finite checkpoint
is kept and resumable, and non-finite weights are never saved as a completed adapter. The tiny model
trains through the worker's own ``run_job``; the learning rate is made to blow up part-way through."""
from __future__ import annotations

import math

import pytest

from workers.callbacks import ADVICE, COMPLETE_MARKER


def _blow_up_after(monkeypatch, step: int) -> None:
    """The optimizer step after ``step`` runs with an infinite learning rate (the checkpoint at ``step`` is finite)."""
    from transformers import TrainerCallback

    from workers import train

    class BlowUp(TrainerCallback):
        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
            if state.global_step == step:
                for group in optimizer.param_groups:
                    group["lr"] = math.inf

    build = train.build_trainer

    def build_with_blow_up(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.add_callback(BlowUp())
        return trainer

    monkeypatch.setattr(train, "build_trainer", build_with_blow_up)


def _job(tmp_path, tiny_model_dir, **kw):
    from identity_data import write
    from studio import db, library
    from studio.spec import JobSpec

    library.add(write(tmp_path / "identity.jsonl"), name="identity")
    spec = JobSpec(base_model=str(tiny_model_dir), dataset="identity", load_in_4bit=False, r=4, lora_alpha=8,
                   learning_rate=1e-3, per_device_train_batch_size=2, eval_split=0.0, max_length=128,
                   lr_scheduler_type="constant", warmup_ratio=0.0, **kw)
    assert spec.validate() == {}
    job = db.Job(name="diverges", spec_json=spec.to_json(), output_dir="jobs/diverges")
    with db.session() as s:
        s.add(job)
        s.commit()
    return job


def _checkpoints(studio_home) -> dict[str, bool]:
    """checkpoint folder -> marked complete."""
    folder = studio_home / "jobs" / "diverges" / "checkpoints"
    return {p.name: (p / COMPLETE_MARKER).exists() for p in sorted(folder.glob("checkpoint-*"))}


def test_a_nan_loss_fails_the_run_naming_the_step_and_the_last_finite_checkpoint_resumes(
        studio_home, tmp_path, tiny_model_dir, monkeypatch):
    from studio import db
    from workers import train

    job = _job(tmp_path, tiny_model_dir, max_steps=8, save_steps=5)
    _blow_up_after(monkeypatch, 5)
    assert train.run_job(job.id) == "failed"
    failed = db.get_job(job.id)
    assert failed.status == "failed" and failed.adapter_path is None
    assert failed.error == f"The loss became NaN at step 7: {ADVICE}"
    assert _checkpoints(studio_home) == {"checkpoint-5": True}
    assert not (studio_home / "jobs" / "diverges" / "adapter").exists()

    monkeypatch.undo()  # the learning rate behaves again: resume from step 5 (as jobs.resume queues it) and finish
    db.set_status(job.id, "queued", "resume requested", cancel_requested=False, error=None, finished_at=None)
    assert train.run_job(job.id, resume=True) == "completed", db.get_job(job.id).error
    done = db.get_job(job.id)
    assert done.status == "completed" and done.current_step == 8
    steps = [r["step"] for r in db.metric_rows(job.id) if r["loss"] is not None]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8]  # steps 6 and 7 of the failed attempt were replaced
    assert all(math.isfinite(r["loss"]) for r in db.metric_rows(job.id) if r["loss"] is not None)


def test_non_finite_weights_at_a_save_or_the_end_are_never_kept_or_completed(
        studio_home, tmp_path, tiny_model_dir, monkeypatch):
    """Logging only every 10 steps: the loss never shows the NaN, the weights at the save and the end do."""
    from studio import db
    from workers import train
    from workers.checkpoints import last_complete_checkpoint

    job = _job(tmp_path, tiny_model_dir, max_steps=6, save_steps=3, logging_steps=10)
    _blow_up_after(monkeypatch, 3)
    assert train.run_job(job.id) == "failed"
    failed = db.get_job(job.id)
    assert failed.error == f"The adapter weights stopped being finite numbers by step 6: {ADVICE}"
    assert _checkpoints(studio_home) == {"checkpoint-3": True}
    assert last_complete_checkpoint(studio_home / "jobs" / "diverges").name == "checkpoint-3"
    assert failed.adapter_path is None and not (studio_home / "jobs" / "diverges" / "adapter").exists()


@pytest.mark.parametrize("logs,sentence", [
    ({"loss": math.nan}, f"the loss became NaN at step 12: {ADVICE}"),
    ({"loss": 2.0, "grad_norm": math.inf}, f"the gradient norm became infinite at step 12: {ADVICE}"),
])
def test_the_guard_stops_training_without_saving_or_evaluating(logs, sentence):
    from transformers import TrainerControl, TrainerState

    from workers.callbacks import FiniteGuard

    guard, control = FiniteGuard(), TrainerControl(should_save=True, should_evaluate=True)
    guard.on_log(None, TrainerState(global_step=12), control, logs=logs)
    assert guard.failure == sentence
    assert control.should_training_stop and not control.should_save and not control.should_evaluate
    finite = FiniteGuard()
    finite.on_log(None, TrainerState(global_step=3), TrainerControl(), logs={"loss": 2.0, "grad_norm": 0.5})
    assert finite.failure is None


def test_the_logged_loss_is_not_averaged_past_a_nan():
    from pathlib import Path

    from studio.spec import JobSpec
    from workers.arguments import common_args

    args = common_args(JobSpec(dataset="d"), Path("/tmp/x"), 40, False, "cpu")
    assert args["logging_nan_inf_filter"] is False
