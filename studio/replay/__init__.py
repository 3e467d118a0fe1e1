"""General replay (self-rehearsal): before a small SFT run, the base model answers a few general instructions
itself, and those answers are trained on beside the user's rows, so the adapter learns the new data without
unlearning how the base answers everything else.

This module is torch-free: the instructions (``general.txt``, none of them a probe question, none about the
assistant itself), how many a run mixes in, and which ones. The worker generates the answers
(``workers/replay.py``) and caches them per base model.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PROMPTS_FILE = Path(__file__).with_name("general.txt")
CACHE_DIR = "cache/replay"        # under the data folder: the base's answers, per base model and prompt set
MAX_NEW_TOKENS = 48               # a replay answer's budget: short (cut at its last full sentence), like the
                                  # rows of a small SFT set and the probe's answers


@dataclass(frozen=True)
class ReplaySet:
    prompts: tuple[str, ...]
    version: str


def parse(raw: str) -> ReplaySet:
    prompts = tuple(line.strip() for line in raw.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    return ReplaySet(prompts, hashlib.sha256(raw.encode()).hexdigest()[:12])


@lru_cache(maxsize=1)
def load() -> ReplaySet:
    return parse(PROMPTS_FILE.read_text(encoding="utf-8"))


FLOOR = 40  # a small run gets at least as many replay rows as it has rows of its own, up to this many


def count(share: float, n_rows: int, available: int) -> int:
    """Replay rows for a run of ``n_rows`` training rows: ``share`` of them, but at least as many as the run's own
    rows up to FLOOR, and at most ``available`` (so a large dataset gets proportionally little, and one of many
    thousands of rows almost none).

    The floor is for the small sets automatic epochs train five times over. Measured on the 40-row acceptance
    identity set (36 training rows, 5 epochs, the bundled model, probe base 104/200): 9 replay rows lost 15.5 probe
    points, 24 lost 7.0, 36 lost 4.5 (not flagged), each with the identity learned (10 of 10 held-out questions);
    the ~100-row first-run set lost 1 point with 22."""
    if share <= 0 or n_rows <= 0:
        return 0
    return min(available, max(round(share * n_rows), min(n_rows, FLOOR)))


def order(prompts: tuple[str, ...], seed: int) -> list[str]:
    """Every prompt, in the order a run with this seed takes them."""
    shuffled = list(prompts)
    random.Random(seed).shuffle(shuffled)
    return shuffled


def pick(prompts: tuple[str, ...], n: int, seed: int) -> list[str]:
    """The first ``n`` prompts of ``order``: the same ones for the same seed, and a larger run's pick starts with a
    smaller one's, so answers the worker prepared before any run (``workers/consumer.prewarm_replay``) serve every size."""
    return order(prompts, seed)[:n]


def applies(method: str, kind: str) -> bool:
    """Replay rows are chat turns: they join SFT runs on chat data (instruction rows become chat turns)."""
    return method == "sft" and kind == "chat"
