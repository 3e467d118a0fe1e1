"""GRPO reward functions, chosen in the form without code: small named functions, completions in, one
float per completion out (TRL's reward-function signature: ``prompts``, ``completions``, the dataset's
columns and ``completion_ids`` as keyword arguments).

- answer: 1.0 when the final answer extracted from a completion equals the row's reference ``answer``
  (the last number, the text inside ``<answer>`` tags, or a ``\\boxed{}`` expression), else 0.0;
- format: 1.0 when the completion matches a regular expression, else 0.0;
- length: 1.0 at the target length in tokens, falling linearly to 0.0 at twice (or zero times) the target.

Torch-free: the spec's validation and the worker both use it.
"""
from __future__ import annotations

import re
from typing import Callable

ANSWER_EXTRACTORS = ("none", "last_number", "answer_tag", "boxed")
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
MAX_PATTERN = 500

RewardFunc = Callable[..., list[float]]


def completion_text(completion) -> str:
    """The text of a completion: a string, or (conversational data) a list of assistant turns."""
    if isinstance(completion, str):
        return completion
    return "".join(turn.get("content") or "" for turn in completion if isinstance(turn, dict))


def last_number(text: str) -> str | None:
    found = NUMBER.findall(text)
    return found[-1].replace(",", "") if found else None


def answer_tag(text: str) -> str | None:
    found = ANSWER_TAG.findall(text)
    return found[-1].strip() if found else None


def boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}``, braces balanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None


EXTRACT = {"last_number": last_number, "answer_tag": answer_tag, "boxed": boxed}


def same_answer(given: str | None, reference) -> bool:
    """Equal as numbers when both read as numbers (``42`` = ``42.0``), else as text ignoring case and
    surrounding space."""
    if given is None or reference is None:
        return False
    ref = str(reference).strip()
    try:
        return float(given.replace(",", "")) == float(ref.replace(",", ""))
    except ValueError:
        return given.strip().casefold() == ref.casefold()


def answer_reward(extractor: str) -> RewardFunc:
    extract = EXTRACT[extractor]

    def reward(completions, answer=None, **_) -> list[float]:
        refs = answer if answer is not None else [None] * len(completions)
        return [float(same_answer(extract(completion_text(c)), ref)) for c, ref in zip(completions, refs)]

    reward.__name__ = f"answer_{extractor}"
    return reward


def format_reward(pattern: str) -> RewardFunc:
    compiled = re.compile(pattern, re.DOTALL)

    def reward(completions, **_) -> list[float]:
        return [float(compiled.search(completion_text(c)) is not None) for c in completions]

    reward.__name__ = "format"
    return reward


def length_reward(target: int) -> RewardFunc:
    def reward(completions, completion_ids=None, **_) -> list[float]:
        lengths = ([len(ids) for ids in completion_ids] if completion_ids is not None
                   else [len(completion_text(c).split()) for c in completions])
        return [max(0.0, 1.0 - abs(n - target) / target) for n in lengths]

    reward.__name__ = "length"
    return reward


def rewards_for(spec) -> tuple[list[RewardFunc], list[float]]:
    """The reward functions a GRPO spec chose, and their weights (zero-weight rewards are left out)."""
    funcs: list[RewardFunc] = []
    weights: list[float] = []
    if spec.reward_answer != "none" and spec.reward_answer_weight > 0:
        funcs.append(answer_reward(spec.reward_answer))
        weights.append(spec.reward_answer_weight)
    if spec.reward_format_regex and spec.reward_format_weight > 0:
        funcs.append(format_reward(spec.reward_format_regex))
        weights.append(spec.reward_format_weight)
    if spec.reward_length_target > 0 and spec.reward_length_weight > 0:
        funcs.append(length_reward(spec.reward_length_target))
        weights.append(spec.reward_length_weight)
    return funcs, weights


def reward_errors(spec) -> dict[str, str]:
    """Field -> sentence: a format pattern that is not a regular expression, or no reward at all."""
    e: dict[str, str] = {}
    if spec.reward_format_regex:
        if len(spec.reward_format_regex) > MAX_PATTERN:
            e["reward_format_regex"] = f"the format pattern may be at most {MAX_PATTERN} characters"
        else:
            try:
                re.compile(spec.reward_format_regex)
            except re.error as exc:
                e["reward_format_regex"] = f"the format pattern is not a valid regular expression: {exc}"
    if not e and not rewards_for(spec)[0]:
        e["reward_answer"] = ("GRPO needs at least one reward with a weight above 0: an answer check, a format "
                              "pattern or a length target")
    return e
