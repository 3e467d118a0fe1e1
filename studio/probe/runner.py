"""Answer a probe with any generation backend, score it, cache the base's answers, compare base and adapter.

``Generate`` is ``(prompts, max_new_tokens) -> replies``, one single-turn user prompt each, greedy, built on a
worker: the training model right after a run (``workers.forgetting.model_generate``) or the inference engine
(``workers.forgetting.engine_generate``, for `studio evaluate --probe`). Everything here is pure apart from
the base's cache file (written atomically, studio.atomic). torch-free.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ..atomic import write_json
from . import Probe
from .checks import check

Generate = Callable[[list[str], int], list[str]]

DROP_THRESHOLD = 5.0         # percentage points of the probe: an adapter this much below its base is flagged
MAX_NEW_TOKENS = 24          # enough for a short answer; longer formats below
MAX_NEW_TOKENS_BY_CHECK = {"json_keys": 48, "list_items": 64}
CACHE_DIR = "probe-cache"


@dataclass(frozen=True)
class Answer:
    id: str
    reply: str
    correct: bool


@dataclass(frozen=True)
class ProbeResult:
    probe: str
    version: str
    answers: tuple[Answer, ...]

    @property
    def correct(self) -> int:
        return sum(a.correct for a in self.answers)

    @property
    def total(self) -> int:
        return len(self.answers)

    def to_dict(self) -> dict:
        return {"probe": self.probe, "version": self.version, "answers": [asdict(a) for a in self.answers]}

    @classmethod
    def from_dict(cls, data: dict) -> ProbeResult:
        return cls(data["probe"], data["version"], tuple(Answer(**a) for a in data["answers"]))


def max_new_tokens(expect: dict) -> int:
    kinds = [expect["check"]] + [part["check"] for part in expect.get("of", ())]
    return max(MAX_NEW_TOKENS_BY_CHECK.get(k, MAX_NEW_TOKENS) for k in kinds)


def run_probe(generate: Generate, probe: Probe) -> ProbeResult:
    """Every question answered (one ``generate`` call per reply length) and checked."""
    groups: dict[int, list[int]] = {}
    for i, q in enumerate(probe.questions):
        groups.setdefault(max_new_tokens(q.expect), []).append(i)
    replies: list[str] = [""] * len(probe.questions)
    for limit, rows in sorted(groups.items()):
        out = generate([probe.questions[i].prompt for i in rows], limit)
        if len(out) != len(rows):
            raise RuntimeError(f"the generator returned {len(out)} replies for {len(rows)} prompts")
        for i, reply in zip(rows, out):
            replies[i] = reply
    return ProbeResult(probe.name, probe.version, tuple(
        Answer(q.id, reply, check(reply, q.expect)) for q, reply in zip(probe.questions, replies)))


# ---- the base's answers, cached once per base model and probe version -------------------------------

def cache_file(cache_dir: Path, base_key: str, probe: Probe) -> Path:
    """``<cache_dir>/<model name>-<hash of its key>-<probe>-<version>.json``: readable and collision-free."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(base_key.rstrip("/")).name or "model")[:48]
    digest = hashlib.sha256(base_key.encode()).hexdigest()[:10]
    return cache_dir / f"{stem}-{digest}-{probe.name}-{probe.version}.json"


def base_answers(generate: Generate, probe: Probe, base_key: str, cache_dir: Path,
                 generation: dict | None = None) -> tuple[ProbeResult, bool]:
    """The base's result and whether it came from the cache. ``generation`` (the settings used) is part of the
    entry: answers made with other settings are not reused."""
    path = cache_file(cache_dir, base_key, probe)
    try:
        data = json.loads(path.read_text())
        if data.get("base_model") == base_key and data.get("generation") == (generation or {}):
            result = ProbeResult.from_dict(data["result"])
            if result.version == probe.version and [a.id for a in result.answers] == [q.id for q in probe.questions]:
                return result, True
    except (OSError, ValueError, KeyError, TypeError):
        pass
    result = run_probe(generate, probe)
    write_json(path, {"base_model": base_key, "generation": generation or {}, "time": time.time(),
                      "result": result.to_dict()})
    return result, False


# ---- base vs adapter ------------------------------------------------------------------------------

def kept_share(base: ProbeResult, adapter: ProbeResult) -> float | None:
    """Of the questions the base answers correctly, the share the adapter still answers correctly
    (None when the base answers none: there is nothing to forget)."""
    right = [a.id for a in base.answers if a.correct]
    if not right:
        return None
    still = {a.id for a in adapter.answers if a.correct}
    return sum(i in still for i in right) / len(right)


def summary_line(kept: float | None, base_correct: int, adapter_correct: int, total: int) -> str:
    share = "n/a" if kept is None else f"{kept:.0%}"
    return f"general skills kept: {share} (base {base_correct}/{total}, adapter {adapter_correct}/{total})"


def drop_points(base_correct: int, adapter_correct: int, total: int) -> float:
    """How many percentage points of the probe the adapter answers fewer correctly than its base (negative: more)."""
    return round(100.0 * (base_correct - adapter_correct) / total, 2) if total else 0.0


def flag_line(report: dict) -> str:
    """The sentence a flagged report shows on the run and in the Adapters list ("" when not flagged)."""
    if not report.get("flagged"):
        return ""
    return (f"forgetting: the adapter answers {report['drop_points']:g} points fewer probe questions correctly than "
            f"its base (threshold {report['threshold']:g})")


def forgetting_report(probe: Probe, base: ProbeResult, adapter: ProbeResult, threshold: float = DROP_THRESHOLD) -> dict:
    """The forgetting report: kept share, drop in points, flag (a drop beyond ``threshold`` points), scores per
    category, and every question side by side (``changed``: right for one and wrong for the other)."""
    if base.version != probe.version or adapter.version != probe.version:
        raise ValueError("the answers were made for another version of the probe")
    kept = kept_share(base, adapter)
    by_category: dict[str, dict[str, int]] = {}
    questions = []
    for q, b, a in zip(probe.questions, base.answers, adapter.answers):
        tally = by_category.setdefault(q.category, {"total": 0, "base": 0, "adapter": 0})
        tally["total"] += 1
        tally["base"] += b.correct
        tally["adapter"] += a.correct
        questions.append({"id": q.id, "category": q.category, "prompt": q.prompt, "base_reply": b.reply,
                          "base_correct": b.correct, "adapter_reply": a.reply, "adapter_correct": a.correct,
                          "changed": b.correct != a.correct})
    drop = drop_points(base.correct, adapter.correct, len(probe.questions))
    return {"probe": probe.name, "version": probe.version, "threshold": threshold, "kept": kept,
            "drop_points": drop, "flagged": drop > threshold, "base_correct": base.correct,
            "adapter_correct": adapter.correct, "total": len(probe.questions),
            "summary": summary_line(kept, base.correct, adapter.correct, len(probe.questions)),
            "by_category": by_category, "questions": questions}


def probe_base_and_adapter(probe: Probe, base_key: str, base: Generate, adapter: Generate, cache_dir: Path,
                           generation: dict | None = None, threshold: float = DROP_THRESHOLD) -> dict:
    """The probe answered by the base (cached) and by the adapter, any backend behind either ``Generate``:
    ``forgetting_report`` plus where the base answers came from and how long it took."""
    started = time.perf_counter()
    base_result, cached = base_answers(base, probe, base_key, cache_dir, generation)
    adapter_result = run_probe(adapter, probe)
    report = forgetting_report(probe, base_result, adapter_result, threshold)
    return {**report, "base_model": base_key, "base_cached": cached,
            "seconds": round(time.perf_counter() - started, 1), "time": time.time()}
