"""What every adapter-type module declares: its peft config and how its adapter is saved."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable


def nothing_to_prepare(trainer, spec, run_dir: Path) -> None:
    """Most types save the adapter as trained: nothing to keep before training."""


def save_pretrained(model, spec, folder: Path, run_dir: Path) -> None:
    """The adapter as peft saves it (safetensors)."""
    model.save_pretrained(folder, safe_serialization=True)


@dataclass(frozen=True)
class WorkerAdapter:
    name: str                                   # the JobSpec value of ``peft_type``
    # (spec, the model's linear layer names (lm_head excluded), the model's folder) -> the peft config
    peft_config: Callable
    # (trainer, spec, run dir) -> None: what the saves need before training (callbacks, an initial copy)
    prepare_saving: Callable = nothing_to_prepare
    # (peft model, spec, adapter folder, run dir) -> None: the trained adapter in PEFT format, loadable on the base
    save: Callable = save_pretrained

    @property
    def info(self):
        """What the type supports (merge, GGUF, 4-bit, packed rows, several per base): studio.adapter_types."""
        from studio.adapter_types import ADAPTER_TYPES

        return ADAPTER_TYPES[self.name]
