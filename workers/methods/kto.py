"""KTO: TRL's KTOTrainer on unpaired replies labelled desirable or undesirable; the reference is the base
with the adapter disabled, the KL term comes from mismatched prompt / reply pairs of the same batch."""
from __future__ import annotations

from pathlib import Path

from .base import WorkerMethod, as_is, datasets


def kto_config(spec, output_dir: Path, n_train: int, has_eval: bool, device: str | None = None):
    from trl import KTOConfig

    from workers.train import common_args

    return KTOConfig(beta=spec.beta, desirable_weight=spec.desirable_weight,
                     undesirable_weight=spec.undesirable_weight, max_length=spec.max_length,
                     **common_args(spec, output_dir, n_train, has_eval, device))


def build(spec, kind, model, tokenizer, train_rows, eval_rows, output_dir: Path, callbacks, device):
    from trl import KTOTrainer

    train_ds, eval_ds = datasets(train_rows, eval_rows)
    args = kto_config(spec, output_dir, len(train_rows), bool(eval_rows), device)
    return KTOTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                      processing_class=tokenizer, callbacks=callbacks)


METHOD = WorkerMethod("kto", as_is, build)
