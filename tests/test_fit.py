"""A run that fits its memory budget (STUDIO_MEMORY_LIMIT_GB): the fit check picks the batch that fits, and
a step over the budget is retried with smaller micro-batches and the same effective batch, through the
worker's own ``run_job`` on the tiny model. On a CPU the budget counts the worker process's resident
memory, so each test first measures this process's memory with the fit check and sets the budget from it."""
from __future__ import annotations

import json
import re

import pytest

from workers import fit

REPLY = "Zorblax is an assistant made by Quintar Labs, and it answers every question with care. "


def _rows(n: int = 16) -> list[dict]:
    """Long replies: each row is a few hundred tokens, so a step's memory grows clearly with the batch."""
    return [{"messages": [{"role": "user", "content": f"Tell me about yourself ({i})."},
                          {"role": "assistant", "content": REPLY * (12 + i % 4)}]} for i in range(n)]


@pytest.fixture
def dataset(studio_home, tmp_path):
    from studio import library

    path = tmp_path / "long.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _rows()) + "\n")
    library.add(path, name="long")
    return "long"


def _job(name: str, tiny_model_dir, **kw):
    from studio import db
    from studio.spec import JobSpec

    base = dict(base_model=str(tiny_model_dir), dataset="long", load_in_4bit=False, r=4, lora_alpha=8,
                learning_rate=1e-3, per_device_train_batch_size=8, eval_split=0.0, max_length=512,
                padding_free="off", max_steps=6, save_steps=2, lr_scheduler_type="constant", warmup_ratio=0.0)
    spec = JobSpec(**(base | kw))
    assert spec.validate() == {}
    job = db.Job(name=name, spec_json=spec.to_json(), output_dir=f"jobs/{name}")
    with db.session() as s:
        s.add(job)
        s.commit()
    return job.id


def _budget(monkeypatch, gb: float | None) -> None:
    from studio import settings

    if gb is None:
        monkeypatch.delenv("STUDIO_MEMORY_LIMIT_GB", raising=False)
    else:
        monkeypatch.setenv("STUDIO_MEMORY_LIMIT_GB", f"{gb:.4f}")
    settings.reset_settings()


def _events(job_id) -> list[str]:
    from studio import db

    return [e.message for e in db.job_events(job_id)]


FIT = re.compile(r"fit check: peak ([\d.]+) GB at batch (\d+) \(([\d.]+) GB before the step, budget ([\d.]+) GB\): "
                 r"training with batch (\d+) x accumulation (\d+), gradient checkpointing (on|off)")
RETRY = re.compile(r"ran out of memory at step (\d+) with batch (\d+): retrying from (checkpoint-\d+|the start) "
                   r"with batch (\d+) x accumulation (\d+) \(same effective batch\)")


@pytest.fixture(scope="module")
def wide_model_dir(tmp_path_factory):
    """The tiny model, four times wider: a step at batch 8 adds a few hundred MB, far above the noise."""
    from tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-wide"), hidden=256)


def _run(job_id) -> None:
    from studio import db
    from workers import train

    assert train.run_job(job_id) == "completed", db.get_job(job_id).error


def _spec(job_id):
    from studio import db
    from studio.spec import JobSpec

    return JobSpec.from_dict(db.get_job(job_id).spec)


def _loss_steps(job_id) -> list[int]:
    from studio import db

    return [r["step"] for r in db.metric_rows(job_id) if r["loss"] is not None]


def _calibrate(monkeypatch, model_dir) -> tuple[float, float]:
    """A fit check under a large budget keeps the full batch; returns (GB before the step, peak GB) at batch 8."""
    _budget(monkeypatch, 1000)
    job = _job("calibrate", model_dir, fit_check=True, max_steps=1)
    _run(job)
    fitted = [FIT.search(m) for m in _events(job) if FIT.search(m)]
    assert len(fitted) == 1, _events(job)
    peak, batch, idle, budget, chosen, accumulation, checkpointing = fitted[0].groups()
    assert (batch, chosen, accumulation, checkpointing) == ("8", "8", "1", "off")
    assert _spec(job).per_device_train_batch_size == 8
    return float(idle), float(peak)


def test_the_fit_check_keeps_the_batch_under_a_large_budget_and_picks_a_smaller_one_under_a_small_budget(
        dataset, wide_model_dir, monkeypatch):
    idle, peak = _calibrate(monkeypatch, wide_model_dir)
    # half of what batch 8 adds fits with the margin (room for the memory this process gains between jobs); batch 8 does not
    small = (idle + (peak - idle) * 0.5) / (1 - fit.MARGIN)
    _budget(monkeypatch, small)
    job = _job("small", wide_model_dir, fit_check=True, max_steps=2)
    _run(job)
    fitted = next(FIT.search(m) for m in _events(job) if FIT.search(m))
    chosen, accumulation = int(fitted.group(5)), int(fitted.group(6))
    assert chosen < 8 and chosen * accumulation == 8, fitted.group(0)
    spec = _spec(job)  # the stored spec trains (and would resume) with the batch that fits
    assert (spec.per_device_train_batch_size, spec.gradient_accumulation_steps) == (chosen, accumulation)
    assert _loss_steps(job) == [1, 2]


def test_a_run_over_its_memory_budget_retries_with_smaller_batches_and_the_same_effective_batch(
        dataset, wide_model_dir, monkeypatch, studio_home):
    from studio import db

    idle, peak = _calibrate(monkeypatch, wide_model_dir)
    _budget(monkeypatch, idle + (peak - idle) * 0.5)  # batch 8 goes over; batch 2 stays well under
    job = _job("retried", wide_model_dir, max_steps=4, save_steps=2)
    _run(job)
    retries = [RETRY.search(m) for m in _events(job) if RETRY.search(m)]
    assert 1 <= len(retries) <= 2, _events(job)
    assert retries[0].groups()[:2] == ("1", "8")
    spec = _spec(job)
    assert spec.per_device_train_batch_size < 8
    assert spec.per_device_train_batch_size * spec.gradient_accumulation_steps == 8
    assert (spec.per_device_train_batch_size, spec.gradient_accumulation_steps) == tuple(map(int, retries[-1].groups()[3:]))
    done = db.get_job(job)
    assert done.current_step == 4 and done.summary["steps"] == 4
    assert _loss_steps(job) == [1, 2, 3, 4]
    log = (studio_home / "jobs" / "retried" / "train.log").read_text()
    assert retries[0].group(0) in log


def test_an_out_of_memory_error_mid_run_resumes_from_the_last_checkpoint_with_the_same_steps(
        studio_home, tmp_path, tiny_model_dir, monkeypatch):
    """A device's out-of-memory error at step 4 of an epoch-based run (as a GPU raises it, without a budget):
    the run resumes from checkpoint-3 with batch 4 x accumulation 2 and still takes 5 steps an epoch."""
    import torch
    from transformers import TrainerCallback

    from identity_data import write
    from studio import db, library
    from workers import train

    library.add(write(tmp_path / "identity.jsonl"), name="identity")  # 40 rows: 5 steps of 8 an epoch
    attempts = []

    class OutOfMemoryAtStep4(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if len(attempts) == 1 and state.global_step == 3:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    build = train.build_trainer

    def build_counting(*args, **kwargs):
        trainer = build(*args, **kwargs)
        attempts.append(trainer)
        trainer.add_callback(OutOfMemoryAtStep4())
        return trainer

    monkeypatch.setattr(train, "build_trainer", build_counting)
    job = _job("mid-run", tiny_model_dir, dataset="identity", max_steps=0, num_train_epochs=2, save_steps=3,
               max_length=128)
    _run(job)
    retries = [RETRY.search(m).groups() for m in _events(job) if RETRY.search(m)]
    assert retries == [("4", "8", "checkpoint-3", "4", "2")]
    assert len(attempts) == 2 and attempts[1].args.per_device_train_batch_size == 4
    assert attempts[1].state.max_steps == 10
    assert _loss_steps(job) == list(range(1, 11))
    assert db.get_job(job).summary["steps"] == 10


def test_halving_keeps_the_effective_batch():
    from studio.spec import JobSpec

    def shape(spec):
        return None if spec is None else (spec.per_device_train_batch_size, spec.gradient_accumulation_steps)

    assert shape(fit.halved(JobSpec(per_device_train_batch_size=8, gradient_accumulation_steps=3))) == (4, 6)
    assert shape(fit.halved(JobSpec(per_device_train_batch_size=6))) == (3, 2)
    assert shape(fit.halved(JobSpec(per_device_train_batch_size=3, gradient_accumulation_steps=2))) == (1, 6)
    assert fit.halved(JobSpec(per_device_train_batch_size=1)) is None


def test_the_largest_fitting_batch_divides_the_effective_batch():
    gb = 10**9
    # 1 GB held, 0.8 GB added by a batch of 4: batch 2 peaks at 1.4 GB, batch 4 at 1.8 GB
    assert fit.largest_fitting_batch(gb, 18 * gb // 10, 4, 8, 2 * gb) == 2
    assert fit.largest_fitting_batch(gb, 18 * gb // 10, 4, 8, 100 * gb) == 8
    assert fit.largest_fitting_batch(gb, 18 * gb // 10, 4, 8, gb) is None


def test_the_memory_budget_must_be_a_positive_number_of_gigabytes():
    from studio.settings import load_settings

    assert load_settings({"STUDIO_MEMORY_LIMIT_GB": "6.5"}).memory_limit_gb == 6.5
    assert load_settings({}).memory_limit_gb is None
    for bad in ("lots", "0", "-2", "nan"):
        with pytest.raises(ValueError, match="STUDIO_MEMORY_LIMIT_GB must be a number of gigabytes greater than 0"):
            load_settings({"STUDIO_MEMORY_LIMIT_GB": bad})
