"""Sweeps: one base job and a grid, or a random sample, over chosen fields, queued as one group.

A sweep file::

    name: lr-rank                # the group; its runs are lr-rank-1, lr-rank-2, ...
    base: {base_model: ..., dataset: ..., max_steps: 200}
    grid: {learning_rate: [1e-4, 3e-4], r: [8, 16]}

or ``random: {learning_rate: {min: 1e-5, max: 1e-3, log: true}, r: [8, 16, 32]}`` with ``samples: N`` and
``seed``. Every member is an ordinary run (``jobs.submit``) carrying the group id; every member is validated
before any is queued. The leaderboard and the parallel-coordinates plot read the members' summaries and
their probe and judge results. No torch here.
"""
from __future__ import annotations

import itertools
import json
import math
import random
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from . import db
from .settings import check_name, get_settings
from .spec import MAX_SPEC_BYTES, JobSpec, SpecError, _SpecLoader, quote

MAX_MEMBERS = 256
SWEEP_KEYS = ("name", "base", "grid", "random", "samples", "seed")
PROBE_FILE = Path("probe") / "general.json"    # workers.forgetting: <run>/probe/<probe>.json
JUDGE_FILE = Path("judge") / "vs-base.json"    # studio.judge: <run>/judge/vs-<opponent>.json
SPEC_FIELDS = {f.name: f for f in fields(JobSpec)}


class SweepError(ValueError):
    """One sentence saying why the sweep was refused; nothing was queued."""


@dataclass(frozen=True)
class Sweep:
    name: str
    fields: tuple[str, ...]          # the swept fields, in the file's order
    members: tuple[JobSpec, ...]


class _SweepLoader(_SpecLoader):
    max_depth = 5  # the file, base/grid/random, a field's values, one value (a list of target modules), its items


# ---- reading ------------------------------------------------------------------------------------------

def parse(text: str, default_name: str = "sweep") -> Sweep:
    """The sweep a YAML file describes, every member a valid JobSpec; SweepError otherwise."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SPEC_BYTES:
        raise SweepError(f"a sweep file may be at most {MAX_SPEC_BYTES // 1024} KB")
    try:
        data = yaml.load(text, Loader=_SweepLoader)  # noqa: S506 - a SafeLoader that also refuses aliases
    except SpecError as exc:
        raise SweepError(str(exc).replace("job file", "sweep file")) from None
    except (yaml.YAMLError, ValueError) as exc:
        raise SweepError(f"the sweep file is not valid YAML: {str(exc).splitlines()[0][:160]}") from None
    return build(data, default_name)


def build(data: Any, default_name: str = "sweep") -> Sweep:
    if not isinstance(data, dict):
        raise SweepError("a sweep file is a mapping with base and grid (or random, samples and seed)")
    unknown = [k for k in data if k not in SWEEP_KEYS]
    if unknown:
        raise SweepError(f"unknown sweep key {quote(str(unknown[0]))}; a sweep has {', '.join(SWEEP_KEYS)}")
    name = str(data.get("name") or default_name)
    try:
        check_name(name, "sweep name")
    except ValueError as exc:
        raise SweepError(str(exc)) from None
    base = data.get("base") or {}
    if not isinstance(base, dict):
        raise SweepError("base must be a mapping of job fields to values")
    if "name" in base:
        raise SweepError(f"the sweep names its runs {name}-1, {name}-2, ...: remove name from base")
    if ("grid" in data) == ("random" in data):
        raise SweepError("give either grid (every combination) or random (with samples), not both or neither")
    space = data.get("grid") if "grid" in data else data.get("random")
    if not isinstance(space, dict) or not space:
        raise SweepError("grid or random must map at least one field to its values")
    for key in space:
        if key not in SPEC_FIELDS or key == "name":
            raise SweepError(f"{quote(str(key))} is not a job field that can be swept")
    points = _grid(space) if "grid" in data else _random(space, data.get("samples"), data.get("seed", 0))
    members = []
    for i, point in enumerate(points, 1):
        try:
            spec = JobSpec.from_dict({**base, **point, "name": f"{name}-{i}"})
            spec.check()
        except SpecError as exc:
            field, message = next(iter(exc.errors.items()))
            raise SweepError(f"run {name}-{i} ({_describe(point)}) is invalid: {message}") from None
        members.append(spec)
    return Sweep(name, tuple(space), tuple(members))


def _grid(space: dict) -> list[dict]:
    for key, values in space.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"grid {key} must be a non-empty list of values")
    count = math.prod(len(v) for v in space.values())
    if count > MAX_MEMBERS:
        raise SweepError(f"the grid has {count:,} combinations; a sweep may queue at most {MAX_MEMBERS}")
    return [dict(zip(space, combo)) for combo in itertools.product(*space.values())]


def _random(space: dict, samples: Any, seed: Any) -> list[dict]:
    if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= MAX_MEMBERS:
        raise SweepError(f"random needs samples: a whole number of runs from 1 to {MAX_MEMBERS}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SweepError("seed must be a whole number")
    for key, choice in space.items():
        _check_choice(key, choice)
    rng = random.Random(seed)
    return [{key: _draw(rng, key, choice) for key, choice in space.items()} for _ in range(samples)]


def _check_choice(key: str, choice: Any) -> None:
    if isinstance(choice, list) and choice:
        return
    if isinstance(choice, dict) and set(choice) <= {"min", "max", "log"} and {"min", "max"} <= set(choice):
        lo, hi = _number(choice["min"]), _number(choice["max"])
        if lo is None or hi is None or lo > hi:
            raise SweepError(f"random {key} needs numbers with min <= max")
        if choice.get("log") and lo <= 0:
            raise SweepError(f"random {key} with log: true needs min above 0")
        if SPEC_FIELDS[key].type not in ("int", "float"):
            raise SweepError(f"random {key} is not a number field: give a list of values to choose from")
        return
    raise SweepError(f"random {key} must be a non-empty list of values or {{min, max, log}}")


def _number(value: Any) -> float | None:
    """A finite number, also from text (YAML reads 1e-4, without a dot, as text)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _draw(rng: random.Random, key: str, choice: Any) -> Any:
    if isinstance(choice, list):
        return rng.choice(choice)
    lo, hi = _number(choice["min"]), _number(choice["max"])
    value = math.exp(rng.uniform(math.log(lo), math.log(hi))) if choice.get("log") else rng.uniform(lo, hi)
    return round(value) if SPEC_FIELDS[key].type == "int" else float(f"{value:.4g}")


def _describe(point: dict) -> str:
    return ", ".join(f"{k}={value_text(v)}" for k, v in point.items())


def value_text(value: Any) -> str:
    return "+".join(map(str, value)) if isinstance(value, list) else str(value)


# ---- queueing -----------------------------------------------------------------------------------------

def queue(sweep: Sweep) -> list[db.Job]:
    """Submit every member as an ordinary run of the group ``sweep.name``. Every member is checked against the
    datasets, the model and the existing runs first; a member the queue refuses takes the others back out."""
    from . import jobs

    if db.group_jobs(sweep.name):
        raise SweepError(f"a sweep named '{sweep.name}' already exists; choose another name")
    taken = {j.name for j in db.list_jobs()}
    for spec in sweep.members:
        if spec.name in taken:
            raise SweepError(f"a run named '{spec.name}' already exists; choose another sweep name")
        errors = jobs.validate_spec(spec)
        if errors:
            field, message = next(iter(errors.items()))
            raise SweepError(f"run {spec.name} is invalid: {message}")
    queued: list[db.Job] = []
    try:
        for spec in sweep.members:
            queued.append(jobs.submit(spec, group_id=sweep.name))
    except BaseException:
        for job in queued:
            jobs.cancel(job.id)
            jobs.delete(job.id)
        raise
    return queued


# ---- the leaderboard ----------------------------------------------------------------------------------

def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def member_row(job: db.Job, swept: tuple[str, ...], probe: dict | None, judge: dict | None) -> dict:
    """One leaderboard row: the swept values, the summary's numbers, the probe's kept share, the judge's win
    rate against the base."""
    summary, spec = job.summary, job.spec
    return {"run": job.name, "status": job.status, **{k: spec.get(k) for k in swept},
            "final_loss": summary.get("final_loss"), "best_eval_loss": summary.get("best_eval_loss"),
            "probe_kept": (probe or {}).get("kept"), "judge_win_rate": ((judge or {}).get("win") or {}).get("rate"),
            "seconds": summary.get("runtime_seconds"), "tokens_per_second": summary.get("tokens_per_second")}


def ranked(rows: list[dict]) -> list[dict]:
    """Best eval loss first, then final loss; runs without either last, in their queue order."""
    def key(item):
        i, row = item
        return tuple(v is None for v in (row["best_eval_loss"], row["final_loss"])) + (
            row["best_eval_loss"] or 0.0, row["final_loss"] or 0.0, i)

    return [{"rank": n, **row} for n, (_, row) in enumerate(sorted(enumerate(rows), key=key), 1)]


def swept_fields(members: list[db.Job]) -> tuple[str, ...]:
    """The fields whose values differ between the members (what the sweep varied)."""
    specs = [m.spec for m in members]
    return tuple(k for k in SPEC_FIELDS if k != "name" and len({json.dumps(s.get(k)) for s in specs}) > 1)


def leaderboard(group_id: str) -> tuple[tuple[str, ...], list[dict]]:
    """(swept fields, ranked rows) of a group; KeyError when it has no member."""
    members = db.group_jobs(group_id)
    if not members:
        raise KeyError(group_id)
    settings, swept = get_settings(), swept_fields(members)
    rows = []
    for job in members:
        folder = settings.resolve(job.output_dir)
        rows.append(member_row(job, swept, _read_json(folder / PROBE_FILE), _read_json(folder / JUDGE_FILE)))
    return swept, ranked(rows)


def groups() -> list[str]:
    """Every sweep's group id, newest first."""
    return list(dict.fromkeys(j.group_id for j in db.list_jobs() if j.group_id))
