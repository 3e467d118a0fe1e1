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
    # (spec, all rows, trainer) -> how golden prompts are answered (workers.golden.answer_golden's
    # signature, replies and extra JSON fields out); None: greedy replies
    golden: Callable | None = None
    # (spec, checkpoint dir, train rows, has eval rows, device) -> the method's TRL config
    config: Callable | None = None


def as_is(spec, kind: str, rows: list[dict]) -> tuple[str, list[dict]]:
    """Rows TRL's preference and RL trainers read directly (conversational prompt / reply columns)."""
    return kind, rows


def datasets(train_rows: list[dict], eval_rows: list[dict]):
    from datasets import Dataset

    return Dataset.from_list(train_rows), (Dataset.from_list(eval_rows) if eval_rows else None)


def _import(path: str):
    """``"module:Name"`` -> the object, imported on first use (so that importing the registry imports no TRL)."""
    import importlib

    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Preference:
    """A TRL preference method (DPO, KTO, ORPO, SimPO): its config and trainer classes as ``"module:Name"``, and
    the config arguments it sets beyond the spec's beta and max length: ``args(spec) -> dict``."""
    config_class: str
    trainer_class: str
    args: Callable | None = None

    def config(self, spec, output_dir: Path, n_train: int, has_eval: bool, device: str | None = None):
        """The method's TRL config: the spec's beta and max length, the method's own arguments and the arguments
        every method shares (workers.arguments.common_args)."""
        from workers.arguments import common_args

        own = self.args(spec) if self.args else {}
        return _import(self.config_class)(beta=spec.beta, max_length=spec.max_length, **own,
                                          **common_args(spec, output_dir, n_train, has_eval, device))

    def build(self, spec, kind, model, tokenizer, train_rows, eval_rows, output_dir: Path, callbacks, device):
        """The method's TRL trainer on the rows as they are (TRL tokenises prompt and replies itself)."""
        args = self.config(spec, output_dir, len(train_rows), bool(eval_rows), device)
        train_ds, eval_ds = datasets(for_template(tokenizer, train_rows), for_template(tokenizer, eval_rows))
        return _import(self.trainer_class)(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                                           processing_class=tokenizer, callbacks=callbacks)


def preference_method(name: str, config_class: str, trainer_class: str, args: Callable | None = None) -> WorkerMethod:
    """The worker half of a preference method: TRL's rows as they are, its config and its trainer."""
    method = Preference(config_class, trainer_class, args)
    return WorkerMethod(name, as_is, method.build, config=method.config)


def for_template(tokenizer, rows: list[dict]) -> list[dict]:
    """Rows TRL renders with the chat template itself, as the studio renders them: for a template without a system
    role (Gemma 2) a system turn opens the first user turn of the prompt (studio.render.fold_system)."""
    from studio.render import fold_system, system_role

    if system_role(tokenizer):
        return rows
    return [{**row, "prompt": fold_system(row["prompt"])} if isinstance(row.get("prompt"), list) else row
            for row in rows]
