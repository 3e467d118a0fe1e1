"""What every method module declares, and the pieces the preference and RL methods share."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class WorkerMethod:
    name: str
    # (spec, dataset kind, rows) -> (kind, rows the trainer takes); raises ValueError with a sentence
    prepare: Callable
    # (spec, kind, model, tokenizer, train rows, eval rows, checkpoint dir, callbacks, device) -> Trainer
    build: Callable


def as_is(spec, kind: str, rows: list[dict]) -> tuple[str, list[dict]]:
    """Rows TRL's preference and RL trainers read directly (conversational prompt / reply columns)."""
    return kind, rows


def datasets(train_rows: list[dict], eval_rows: list[dict]):
    from datasets import Dataset

    return Dataset.from_list(train_rows), (Dataset.from_list(eval_rows) if eval_rows else None)
