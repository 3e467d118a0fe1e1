"""DPO: TRL's DPOTrainer on preference pairs; the reference is the base with the adapter disabled."""
from __future__ import annotations

from pathlib import Path

from .base import WorkerMethod, as_is, datasets


def dpo_config(spec, output_dir: Path, n_train: int, has_eval: bool, device: str | None = None):
    from trl import DPOConfig

    from workers.train import common_args

    return DPOConfig(beta=spec.beta, max_length=spec.max_length,
                     **common_args(spec, output_dir, n_train, has_eval, device))


def build(spec, kind, model, tokenizer, train_rows, eval_rows, output_dir: Path, callbacks, device):
    from trl import DPOTrainer

    train_ds, eval_ds = datasets(train_rows, eval_rows)
    args = dpo_config(spec, output_dir, len(train_rows), bool(eval_rows), device)
    return DPOTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                      processing_class=tokenizer, callbacks=callbacks)


METHOD = WorkerMethod("dpo", as_is, build)
