"""DPO: TRL's DPOTrainer on preference pairs; the reference is the base with the adapter disabled."""
from __future__ import annotations

from pathlib import Path

from .base import WorkerMethod, as_is, preference_config, preference_trainer


def dpo_config(spec, output_dir: Path, n_train: int, has_eval: bool, device: str | None = None):
    from trl import DPOConfig

    return preference_config(DPOConfig, spec, output_dir, n_train, has_eval, device)


def build(spec, kind, model, tokenizer, train_rows, eval_rows, output_dir: Path, callbacks, device):
    from trl import DPOTrainer

    args = dpo_config(spec, output_dir, len(train_rows), bool(eval_rows), device)
    return preference_trainer(DPOTrainer, args, model, tokenizer, train_rows, eval_rows, callbacks)


METHOD = WorkerMethod("dpo", as_is, build)
