"""Adapter types, the worker half: one module per type (its peft config and how it saves), registered below.

The torch-free half (form fields, what it supports: merge, GGUF, chat, 4-bit; its memory terms) is
``studio.adapter_types.ADAPTER_TYPES``. A new adapter type is one module here and one line below. LoRA saves its
own way (``prepare_saving`` before training, ``save`` after it): PiSSA and OLoRA change the base weights, so
their adapters are written converted to fit the original base; the other types save as peft does.
"""
from __future__ import annotations

from pathlib import Path

from studio.spec import JobSpec

from . import ia3, lora, prefix_tuning, prompt_tuning
from .base import WorkerAdapter

ADAPTERS: dict[str, WorkerAdapter] = {a.name: a for a in (
    lora.ADAPTER,
    ia3.ADAPTER,
    prompt_tuning.ADAPTER,
    prefix_tuning.ADAPTER,
)}


def peft_config(spec: JobSpec, linear_names: list[str], model_dir: Path):
    """The peft config of the spec's adapter type."""
    return ADAPTERS[spec.peft_type].peft_config(spec, linear_names, model_dir)


def prepare_saving(trainer, spec: JobSpec, run_dir: Path) -> None:
    """What the type's saves need before training (LoRA's PiSSA / OLoRA: the initial adapter, plain-LoRA
    checkpoint copies)."""
    ADAPTERS[spec.peft_type].prepare_saving(trainer, spec, run_dir)


def save(model, spec: JobSpec, folder: Path, run_dir: Path) -> None:
    """The trained adapter in PEFT format (safetensors), loadable on the original base."""
    ADAPTERS[spec.peft_type].save(model, spec, folder, run_dir)
