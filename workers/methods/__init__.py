"""Training methods, the worker half: each module turns a JobSpec into its TRL config and trainer.

The torch-free half (dataset kinds, form fields, metrics, memory terms) is ``studio.method_info.METHOD_INFO``. A
new method is one module here and one line below.
"""
from __future__ import annotations

from . import dpo, grpo, kto, orpo, sft, simpo
from .base import WorkerMethod

TRAINERS: dict[str, WorkerMethod] = {m.name: m for m in (
    sft.METHOD,
    dpo.METHOD,
    kto.METHOD,
    orpo.METHOD,
    grpo.METHOD,
    simpo.METHOD,
)}


def golden_answer(spec, rows: list[dict], trainer):
    """How the spec's method answers golden prompts (see WorkerMethod.golden); None: greedy replies."""
    method = TRAINERS[spec.method]
    return method.golden(spec, rows, trainer) if method.golden else None
