"""KTO: TRL's KTOTrainer on unpaired replies labelled desirable or undesirable; the reference is the base
with the adapter disabled, the KL term comes from mismatched prompt / reply pairs of the same batch."""
from __future__ import annotations

from pathlib import Path

from .base import WorkerMethod, as_is, preference_config, preference_trainer


def kto_config(spec, output_dir: Path, n_train: int, has_eval: bool, device: str | None = None):
    from trl import KTOConfig

    return preference_config(KTOConfig, spec, output_dir, n_train, has_eval, device,
                             desirable_weight=spec.desirable_weight, undesirable_weight=spec.undesirable_weight)


def build(spec, kind, model, tokenizer, train_rows, eval_rows, output_dir: Path, callbacks, device):
    from trl import KTOTrainer

    args = kto_config(spec, output_dir, len(train_rows), bool(eval_rows), device)
    return preference_trainer(KTOTrainer, args, model, tokenizer, train_rows, eval_rows, callbacks)


METHOD = WorkerMethod("kto", as_is, build)
