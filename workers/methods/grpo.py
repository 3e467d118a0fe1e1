"""GRPO: TRL's GRPOTrainer on prompts. Each prompt's ``num_generations`` sampled completions are scored by
the rewards the spec chose (studio/rewards.py) and trained towards the better ones; with beta > 0 a KL
term holds the policy near the reference (the base, adapter disabled)."""
from __future__ import annotations

from pathlib import Path

from studio.rewards import rewards_for

from .base import WorkerMethod, datasets


def prepare(spec, kind: str, rows: list[dict]) -> tuple[str, list[dict]]:
    """Prompt rows as they are; the answer reward needs every prompt's reference answer."""
    if spec.reward_answer != "none" and spec.reward_answer_weight > 0:
        missing = sum(1 for r in rows if not str(r.get("answer") or "").strip())
        if missing:
            raise ValueError(f"the answer reward compares with the dataset's 'answer' column, and {missing} of "
                             f"{len(rows)} prompts of '{spec.dataset}' have no answer")
    return kind, rows


def grpo_config(spec, output_dir: Path, n_train: int, has_eval: bool, device: str | None = None):
    """``n_train``: prompts; each is trained as ``num_generations`` completions."""
    from trl import GRPOConfig

    from workers.train import common_args

    args = common_args(spec, output_dir, n_train * spec.num_generations, has_eval, device)
    args["per_device_eval_batch_size"] = spec.num_generations  # one prompt's completions per eval batch
    return GRPOConfig(beta=spec.beta, num_generations=spec.num_generations,
                      max_completion_length=spec.max_completion_length, reward_weights=rewards_for(spec)[1],
                      **args)


def build(spec, kind, model, tokenizer, train_rows, eval_rows, output_dir: Path, callbacks, device):
    from trl import GRPOTrainer

    train_ds, eval_ds = datasets(train_rows, eval_rows)
    args = grpo_config(spec, output_dir, len(train_rows), bool(eval_rows), device)
    return GRPOTrainer(model=model, reward_funcs=rewards_for(spec)[0], args=args, train_dataset=train_ds,
                       eval_dataset=eval_ds, processing_class=tokenizer, callbacks=callbacks)


METHOD = WorkerMethod("grpo", prepare, build)
