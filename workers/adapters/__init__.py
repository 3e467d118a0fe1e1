"""Adapter types on the worker: JobSpec -> peft config, one module per type, registered below.

What each type supports (merge, GGUF, chat, 4-bit) is described torch-free in ``studio.adapter_types``.
Each module exposes ``peft_config(spec, linear_names, model_dir)``: the spec, the model's linear layer
names (lm_head excluded) and its folder (prompt tuning reads the tokenizer from it) in, a peft config out.
LoRA also saves its own way (``prepare_saving`` before training, ``save`` after it): PiSSA and OLoRA change
the base weights, so their adapters are written converted to fit the original base.
"""
from __future__ import annotations

from pathlib import Path

from studio.spec import JobSpec

from . import ia3, lora, prefix_tuning, prompt_tuning

BUILDERS = {
    "lora": lora.peft_config,
    "ia3": ia3.peft_config,
    "prompt_tuning": prompt_tuning.peft_config,
    "prefix_tuning": prefix_tuning.peft_config,
}


def peft_config(spec: JobSpec, linear_names: list[str], model_dir: Path):
    """The peft config of the spec's adapter type."""
    return BUILDERS[spec.peft_type](spec, linear_names, model_dir)


def prepare_saving(trainer, spec: JobSpec, run_dir: Path) -> None:
    """What the saves need before training (PiSSA / OLoRA: the initial adapter, plain-LoRA checkpoint copies)."""
    lora.prepare_saving(trainer, spec, run_dir)


def save(model, spec: JobSpec, folder: Path, run_dir: Path) -> None:
    """The trained adapter in PEFT format (safetensors), loadable on the original base."""
    lora.save(model, spec, folder, run_dir)
