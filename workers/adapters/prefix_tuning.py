"""Prefix tuning: trained key/value prefixes in every attention layer (peft's prefix encoder, no projection)."""
from __future__ import annotations

from pathlib import Path

from studio.spec import JobSpec

from .base import WorkerAdapter


def peft_config(spec: JobSpec, linear_names: list[str], model_dir: Path | None = None):
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(num_virtual_tokens=spec.num_virtual_tokens, task_type="CAUSAL_LM")


ADAPTER = WorkerAdapter("prefix_tuning", peft_config)
