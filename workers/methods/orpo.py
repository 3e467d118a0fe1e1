"""ORPO: TRL's ORPOTrainer (trl.experimental) on preference pairs: the SFT loss on the chosen reply plus
an odds-ratio term against the rejected one, with no reference model."""
from __future__ import annotations

from pathlib import Path

from .base import WorkerMethod, as_is, datasets


def orpo_config(spec, output_dir: Path, n_train: int, has_eval: bool, device: str | None = None):
    from trl.experimental.orpo import ORPOConfig

    from workers.train import common_args

    return ORPOConfig(beta=spec.beta, max_length=spec.max_length,
                      **common_args(spec, output_dir, n_train, has_eval, device))


def build(spec, kind, model, tokenizer, train_rows, eval_rows, output_dir: Path, callbacks, device):
    from trl.experimental.orpo import ORPOTrainer

    train_ds, eval_ds = datasets(train_rows, eval_rows)
    args = orpo_config(spec, output_dir, len(train_rows), bool(eval_rows), device)
    return ORPOTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                       processing_class=tokenizer, callbacks=callbacks)


METHOD = WorkerMethod("orpo", as_is, build)
