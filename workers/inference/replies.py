"""Replies of a model to many prompts at once: the one batched generator.

``batch_replies`` answers rendered prompts in left-padded batches of similar lengths (sorted, so little padding is
wasted) and gives the replies back in the order of the prompts. The Chat engine's ``generate_batch`` (judging, the
forgetting check of an adapter), the golden prompts answered during training (workers/golden.py) and the
forgetting probe and general-replay answers after and before it (workers/forgetting.py) all generate through it.
``stopping_criteria`` ends a ``generate`` call between tokens once a job should stop. torch is imported on use.
"""
from __future__ import annotations

import contextlib
from typing import Callable, NoReturn


class Halted(Exception):
    """``stop()`` said stop: the replies of the batch being generated are not returned."""


def _halt() -> NoReturn:
    raise Halted


def stopping_criteria(stop: Callable[[], bool]):
    """A transformers ``StoppingCriteriaList`` that ends every row of a ``generate`` call once ``stop()`` says so,
    asked after each generated token (a ``studio.cancel.Watch`` reads the database at most twice a second). Its
    one criterion's ``fired`` says whether it ended the call, so the caller can drop the cut replies."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Stop(StoppingCriteria):
        fired = False

        def __call__(self, input_ids, scores, **kwargs):
            self.fired = self.fired or bool(stop())
            return torch.full((input_ids.shape[0],), self.fired, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([Stop()])


def single_turn(tokenizer, prompts: list[str], system: tuple[str, str] = ("keep", "")) -> list[str]:
    """Each prompt rendered as one user turn with the generation prompt, under the system-prompt choice ``system``
    (mode, text): an adapter asked as it was trained, and as the Chat tab asks it."""
    from studio.render import render_text, default_system_prompt, with_system_prompt

    default = default_system_prompt(tokenizer)
    return [render_text(tokenizer, with_system_prompt([{"role": "user", "content": p}], *system, default),
                        generation_prompt=True) for p in prompts]


def batch_replies(model, tokenizer, texts: list[str], generate_kwargs: dict, batch_size: int, *, base: bool = False,
                  seed: int | None = None, stop: Callable[[], bool] | None = None,
                  halt: Callable[[], NoReturn] = _halt, wait: Callable[[], object] | None = None,
                  one_thread: bool = False) -> list[str]:
    """The replies of ``model`` to the rendered prompts ``texts`` (no special tokens added), stripped, in their order.

    Left-padded batches of ``batch_size`` prompts sorted by length, each one ``model.generate(**generate_kwargs)``
    call under ``torch.inference_mode``, and every module's train/eval flag restored after, so a model that goes on
    training is left as it was. ``base``: answer as the base (peft's ``disable_adapter()``). ``seed``: the random
    generators are seeded with it before each batch (sampling settings); None leaves them alone (a training run's
    state). ``stop``: asked before every batch and after every generated token; once it says stop, ``halt()`` is
    called (it raises; by default ``Halted``) and no reply is returned. ``wait``: called before every generated
    token (it may block) and changes no reply. ``one_thread``: on a CPU, decode on one thread (a few rows are many
    tiny ops: with a busy core, OpenMP's barriers between threads cost more than the work).
    """
    import torch

    if not texts:
        return []
    kwargs = dict(generate_kwargs)
    if wait is not None:
        from transformers import LogitsProcessor, LogitsProcessorList

        class Wait(LogitsProcessor):
            def __call__(self, input_ids, scores):
                wait()
                return scores
        kwargs["logits_processor"] = LogitsProcessorList([Wait()])
    criteria = stopping_criteria(stop) if stop is not None else None
    if criteria is not None:
        kwargs["stopping_criteria"] = criteria
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    modes = [(m, m.training) for m in model.modules()]
    ctx = model.disable_adapter() if base and hasattr(model, "disable_adapter") else contextlib.nullcontext()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    replies = [""] * len(texts)
    threads = torch.get_num_threads() if one_thread and device.type == "cpu" else None
    model.eval()
    try:
        if threads is not None:
            torch.set_num_threads(1)
        with ctx, torch.inference_mode():
            for start in range(0, len(order), batch_size):
                if stop is not None and stop():
                    halt()
                rows = order[start:start + batch_size]
                enc = tokenizer([texts[i] for i in rows], return_tensors="pt", padding=True, padding_side="left",
                                add_special_tokens=False).to(device)
                if seed is not None:
                    torch.manual_seed(seed)
                out = model.generate(**enc, pad_token_id=pad, **kwargs)
                if criteria is not None and criteria[0].fired:  # stopped between tokens: the cut replies go
                    halt()
                for i, ids in zip(rows, out[:, enc["input_ids"].shape[1]:]):
                    replies[i] = tokenizer.decode(ids, skip_special_tokens=True).strip()
    finally:
        if threads is not None:
            torch.set_num_threads(threads)
        for module, training in modes:
            module.training = training
    return replies
