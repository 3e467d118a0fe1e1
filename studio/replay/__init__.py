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


def count(share: float, n_rows: int, available: int) -> int:
    """Replay rows for a run of ``n_rows`` training rows: ``share`` of them, at most ``available`` (so a large
    dataset gets proportionally little, and one of many thousands of rows almost none)."""
    if share <= 0 or n_rows <= 0:
        return 0
    return min(available, max(1, round(share * n_rows)))


def pick(prompts: tuple[str, ...], n: int, seed: int) -> list[str]:
    """``n`` prompts, the same ones for the same seed."""
    return random.Random(seed).sample(list(prompts), min(n, len(prompts)))


def applies(method: str, kind: str) -> bool:
    """Replay rows are chat turns: they join SFT runs on chat data (instruction rows become chat turns)."""
    return method == "sft" and kind == "chat"
