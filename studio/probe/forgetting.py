"""The forgetting check of one adapter (a run, a checkpoint or an import): the probe answered by its base
(cached) and by the adapter, compared, and written to ``probe/<probe>.json`` next to the adapter's run.

``check`` takes any ``Generate`` pair (the base's and the adapter's replies), so the model behind them can be
anything: workers/forgetting.py's ``probe_adapter`` (`studio evaluate --probe`) answers through the inference
engine. No torch here.
"""
from __future__ import annotations

import time
from pathlib import Path

from . import PROBE_FOLDER
from .runner import DROP_THRESHOLD, Generate, base_answers, compare, run_probe


def result_folder(ref, what: str = PROBE_FOLDER) -> Path:
    """Where an adapter's evaluation results (``what``: probe, judge) go: ``<run>/<what>``,
    ``<run>/<what>/checkpoint-N`` for a checkpoint, ``<imported adapter>/<what>``."""
    from .. import db
    from ..settings import get_settings

    if ref.kind == "imported":
        return Path(ref.folder) / what
    job = db.get_job(ref.job_id)
    folder = get_settings().resolve(job.output_dir) / what
    return folder / f"checkpoint-{ref.step}" if ref.kind == "checkpoint" else folder


def check(probe, base_key: str, base: Generate, adapter: Generate, cache_dir: Path,
          generation: dict | None = None, threshold: float = DROP_THRESHOLD) -> dict:
    """The report of ``runner.compare`` plus where the base answers came from and how long it took."""
    started = time.perf_counter()
    base_result, cached = base_answers(base, probe, base_key, cache_dir, generation)
    adapter_result = run_probe(adapter, probe)
    report = compare(probe, base_result, adapter_result, threshold)
    return {**report, "base_model": base_key, "base_cached": cached,
            "seconds": round(time.perf_counter() - started, 1), "time": time.time()}
