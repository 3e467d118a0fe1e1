"""ORPO: TRL's ORPOTrainer (trl.experimental) on preference pairs: the SFT loss on the chosen reply plus
an odds-ratio term against the rejected one, with no reference model."""
from __future__ import annotations

from pathlib import Path

from .base import WorkerMethod, as_is, preference_config, preference_trainer


def orpo_config(spec, output_dir: Path, n_train: int, has_eval: bool, device: str | None = None):
    from trl.experimental.orpo import ORPOConfig

    return preference_config(ORPOConfig, spec, output_dir, n_train, has_eval, device)


def build(spec, kind, model, tokenizer, train_rows, eval_rows, output_dir: Path, callbacks, device):
    from trl.experimental.orpo import ORPOTrainer

    args = orpo_config(spec, output_dir, len(train_rows), bool(eval_rows), device)
    return preference_trainer(ORPOTrainer, args, model, tokenizer, train_rows, eval_rows, callbacks)


METHOD = WorkerMethod("orpo", as_is, build)
