"""General-skills probes: short questions with checkable answers, to see what a fine-tune forgot.

A probe is a JSONL file in this folder, one question a line: ``id``, ``category``, ``prompt`` and ``expect``
(a checker spec, see ``checks``). Its version is a hash of the file, so a changed question never reuses
answers cached for the old one. torch-free.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .checks import spec_problem

PROBE_DIR = Path(__file__).resolve().parent
PROBES = ("general",)
PROBE_FOLDER = "probe"   # <run>/probe/<probe>.json, <run>/probe/checkpoint-N/<probe>.json


class ProbeError(ValueError):
    """A probe that cannot be used; the message is one sentence."""


@dataclass(frozen=True)
class Question:
    id: str
    category: str
    prompt: str
    expect: dict


@dataclass(frozen=True)
class Probe:
    name: str
    version: str
    questions: tuple[Question, ...]

    @property
    def categories(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for q in self.questions:
            out[q.category] = out.get(q.category, 0) + 1
        return out


def parse_probe(name: str, raw: bytes) -> Probe:
    """A probe from its JSONL bytes; any bad line is a ProbeError naming it."""
    questions: list[Question] = []
    seen: set[str] = set()
    for n, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise ProbeError(f"line {n} of the {name} probe is not JSON") from None
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) and row[k].strip()
                                                for k in ("id", "category", "prompt")):
            raise ProbeError(f"line {n} of the {name} probe needs a text id, category and prompt")
        problem = spec_problem(row.get("expect"))
        if problem:
            raise ProbeError(f"line {n} of the {name} probe: {problem}")
        if row["id"] in seen:
            raise ProbeError(f"line {n} of the {name} probe repeats the id {row['id']}")
        seen.add(row["id"])
        questions.append(Question(row["id"], row["category"], row["prompt"], row["expect"]))
    if not questions:
        raise ProbeError(f"the {name} probe holds no question")
    return Probe(name, hashlib.sha256(raw).hexdigest()[:12], tuple(questions))


def load_probe(name: str = "general") -> Probe:
    """A probe shipped with the studio, by name."""
    if name not in PROBES:
        raise ProbeError(f"there is no probe named '{name}': choose {' or '.join(PROBES)}")
    return parse_probe(name, (PROBE_DIR / f"{name}.jsonl").read_bytes())
