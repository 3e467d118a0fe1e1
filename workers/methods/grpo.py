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

    from workers.arguments import common_args

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


GOLDEN_SAMPLES = 4  # completions sampled per golden prompt (at most num_generations)


def golden(spec, rows: list[dict], trainer):
    """Golden prompts answered the way GRPO sees them: a few completions sampled per prompt at the run's
    temperature, each with the reward the run's reward functions give it (their weighted sum, as TRL logs it).

    Returns ``answer(model, tokenizer, prompts, disable_adapter)`` -> (one text per prompt listing its samples
    as ``[reward 1.50] completion``, {"samples": [[{"completion", "reward"}, ...] per prompt], "temperature"}).
    The reference answer of a prompt comes from the dataset row whose last user turn it is."""
    from studio.golden_prompts import prompt_of

    references = {prompt_of(row): row.get("answer") for row in rows}
    funcs, weights = rewards_for(spec)
    args = trainer.args
    n = min(spec.num_generations, GOLDEN_SAMPLES)

    def answer(model, tokenizer, prompts: list[str], disable_adapter: bool = False, stop=None):
        samples = []
        for prompt, (texts, ids) in zip(prompts, sample(model, tokenizer, prompts, n, spec.max_completion_length,
                                                         args, disable_adapter, stop)):
            scores = [0.0] * n
            for func, weight in zip(funcs, weights):
                values = func(prompts=[prompt] * n, completions=texts, completion_ids=ids,
                              answer=[references.get(prompt)] * n)
                scores = [total + weight * (v if v == v else 0.0) for total, v in zip(scores, values)]  # NaN: none
            samples.append([{"completion": t, "reward": round(r, 4)} for t, r in zip(texts, scores)])
        replies = ["\n".join(f"[reward {s['reward']:.2f}] {s['completion']}" for s in group) for group in samples]
        return replies, {"samples": samples, "temperature": args.temperature}

    return answer


def sample(model, tokenizer, prompts: list[str], n: int, max_new_tokens: int, args, disable_adapter: bool = False,
           stop=None):
    """(completion texts, completion token ids) of ``n`` samples per single-turn prompt, drawn with the
    config's temperature, top-p and top-k; every module's train/eval flag is restored after. ``stop``: a
    ``studio.cancel.Watch``, read before each prompt and between generated tokens (``Stopped`` when it says stop)."""
    import contextlib

    import torch

    from workers.inference.replies import stopping_criteria
    from studio.render import render_text

    what = "the golden prompts" + (" (as the base)" if disable_adapter else "")
    criteria = {"stopping_criteria": stopping_criteria(stop)} if stop is not None else {}

    modes = [(m, m.training) for m in model.modules()]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ctx = model.disable_adapter() if disable_adapter else contextlib.nullcontext()
    out = []
    model.eval()
    try:
        with ctx, torch.inference_mode():
            for prompt in prompts:
                if stop is not None:
                    stop.check(what)
                text = render_text(tokenizer, [{"role": "user", "content": prompt}], generation_prompt=True)
                ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
                generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                           temperature=args.temperature, top_p=args.top_p, top_k=args.top_k or None,
                                           num_return_sequences=n, max_new_tokens=max_new_tokens, pad_token_id=pad,
                                           **criteria)
                if criteria and criteria["stopping_criteria"][0].fired:  # cut short: not kept
                    stop.check(what)
                completions = [_until_eos(row.tolist(), tokenizer.eos_token_id, pad)
                               for row in generated[:, ids.shape[1]:]]
                out.append(([tokenizer.decode(c, skip_special_tokens=True).strip() for c in completions],
                            completions))
    finally:
        for module, training in modes:
            module.training = training
    return out


def _until_eos(ids: list[int], eos: int | None, pad: int) -> list[int]:
    """A completion's tokens up to its first end-of-sequence token (kept, as TRL counts it), else without padding."""
    return ids[:ids.index(eos) + 1] if eos in ids else [t for t in ids if t != pad]


METHOD = WorkerMethod("grpo", prepare, build, golden, config=grpo_config)
