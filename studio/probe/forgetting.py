"""The forgetting check of one adapter (a run, a checkpoint or an import): the probe answered by its base
(cached) and by the adapter, compared, and written to ``probe/<probe>.json`` next to the adapter's run.

Generation goes through ``ChatEngine.generate_batch`` here; ``check`` takes any ``Generate`` pair, so an
inference server can stand in for the engine. torch is imported only by the engine, on first use.
"""
from __future__ import annotations

import time
from pathlib import Path

from . import PROBE_FOLDER, load_probe
from .runner import (CACHE_DIR, DROP_THRESHOLD, MAX_NEW_TOKENS, MAX_NEW_TOKENS_BY_CHECK, Generate, base_answers,
                     compare, run_probe, write_json)



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


def engine_generate(engine, adapter: str | None) -> Generate:
    """Greedy single-turn replies of the engine's base (adapter=None) or of base + ``adapter``."""
    from ..chat import GenerationSettings

    def generate(prompts: list[str], max_new_tokens: int) -> list[str]:
        settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0, repetition_penalty=1.0)
        return engine.generate_batch([[{"role": "user", "content": p}] for p in prompts], adapter, settings)

    return generate


def engine_settings() -> dict:
    """What the cached base answers depend on besides the model and the probe."""
    from ..chat import GENERATE_BATCH

    return {"backend": "chat-engine", "greedy": True, "repetition_penalty": 1.0, "batch": GENERATE_BATCH,
            "max_new_tokens": MAX_NEW_TOKENS, "max_new_tokens_by_check": MAX_NEW_TOKENS_BY_CHECK}


def check(probe, base_key: str, base: Generate, adapter: Generate, cache_dir: Path,
          generation: dict | None = None, threshold: float = DROP_THRESHOLD) -> dict:
    """The report of ``runner.compare`` plus where the base answers came from and how long it took."""
    started = time.perf_counter()
    base_result, cached = base_answers(base, probe, base_key, cache_dir, generation)
    adapter_result = run_probe(adapter, probe)
    report = compare(probe, base_result, adapter_result, threshold)
    return {**report, "base_model": base_key, "base_cached": cached,
            "seconds": round(time.perf_counter() - started, 1), "time": time.time()}


def check_adapter(ref, probe_name: str = "general", engine=None, threshold: float | None = None) -> tuple[dict, Path]:
    """Run the probe on an adapter (``studio.adapters.AdapterRef``) and its base; the report and its file.
    ``threshold``: the run's forgetting_threshold by default (DROP_THRESHOLD for an imported adapter)."""
    from .. import db
    from ..chat import ChatEngine, base_key
    from ..settings import get_settings

    if threshold is None:
        job = db.get_job(ref.job_id) if ref.job_id else None
        threshold = float((job.spec if job else {}).get("forgetting_threshold", DROP_THRESHOLD))

    probe = load_probe(probe_name)
    engine = engine or ChatEngine()
    engine.ensure_base(ref.base_model)
    engine.ensure_adapter(ref.key, ref.folder)
    key = base_key(ref.base_model)
    report = check(probe, key, engine_generate(engine, None), engine_generate(engine, ref.key),
                   get_settings().home / CACHE_DIR, engine_settings(), threshold)
    report.update(adapter=ref.ref, adapter_name=ref.name)
    return report, write_json(result_folder(ref) / f"{probe.name}.json", report)
