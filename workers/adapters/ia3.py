"""IA3: one learned scaling vector per targeted layer. Attention projections scale their output; MLP
projections (the feed-forward modules) scale their input."""
from __future__ import annotations

from pathlib import Path

from studio.spec import MLP_NAMES, JobSpec

from .base import WorkerAdapter


def peft_config(spec: JobSpec, linear_names: list[str], model_dir: Path | None = None):
    from peft import IA3Config

    targets = spec.resolved_target_modules(linear_names)
    return IA3Config(target_modules=targets, feedforward_modules=[t for t in targets if t in MLP_NAMES],
                     task_type="CAUSAL_LM")


ADAPTER = WorkerAdapter("ia3", peft_config)
