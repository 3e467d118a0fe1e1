"""What every method module declares, and the pieces the preference and RL methods share."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class WorkerMethod:
    name: str
    # (spec, dataset kind, rows) -> (kind, rows the trainer takes); raises ValueError with a sentence
    prepare: Callable
    # (spec, kind, model, tokenizer, train rows, eval rows, checkpoint dir, callbacks, device) -> Trainer
    build: Callable
    # (spec, all rows, trainer) -> how golden prompts are answered (studio.evaluation.answer_golden's
    # signature, replies and extra JSON fields out); None: greedy replies
    golden: Callable | None = None


def as_is(spec, kind: str, rows: list[dict]) -> tuple[str, list[dict]]:
    """Rows TRL's preference and RL trainers read directly (conversational prompt / reply columns)."""
    return kind, rows


def datasets(train_rows: list[dict], eval_rows: list[dict]):
    from datasets import Dataset

    return Dataset.from_list(train_rows), (Dataset.from_list(eval_rows) if eval_rows else None)


def preference_config(config_cls, spec, output_dir: Path, n_train: int, has_eval: bool, device: str | None = None,
                      **method_args):
    """A TRL preference config (DPO, KTO, ORPO): the spec's beta and max length, the method's own arguments
    and the arguments every method shares."""
    from workers.arguments import common_args

    return config_cls(beta=spec.beta, max_length=spec.max_length, **method_args,
                      **common_args(spec, output_dir, n_train, has_eval, device))


def for_template(tokenizer, rows: list[dict]) -> list[dict]:
    """Rows TRL renders with the chat template itself, as the studio renders them: for a template without a system
    role (Gemma 2) a system turn opens the first user turn of the prompt (studio.render.fold_system)."""
    from studio.render import fold_system, system_role

    if system_role(tokenizer):
        return rows
    return [{**row, "prompt": fold_system(row["prompt"])} if isinstance(row.get("prompt"), list) else row
            for row in rows]


def preference_trainer(trainer_cls, args, model, tokenizer, train_rows: list[dict], eval_rows: list[dict], callbacks):
    """A TRL preference trainer on the rows as they are (TRL tokenises prompt and replies itself)."""
    train_ds, eval_ds = datasets(for_template(tokenizer, train_rows), for_template(tokenizer, eval_rows))
    return trainer_cls(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                       processing_class=tokenizer, callbacks=callbacks)
