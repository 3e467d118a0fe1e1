"""General replay rows on the training worker: the base model's own greedy answers to a sample of
``studio/replay/general.txt``, made before the adapter learns anything, cached per base model (as loaded),
prompt set and reply budget under ``<data>/cache/replay/``. See ``studio/replay`` for why and how many."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections import Counter
from pathlib import Path

from studio import replay
from studio.atomic import write_json

log = logging.getLogger("studio.replay")
PREWARM_BATCH = 16  # prompts per generate call ahead of any run: a run that starts waits for one batch at most
LOCK = threading.Lock()  # the answers cache: one reader-writer at a time in a worker (its start's prewarm, a run)


def cache_file(cache_dir: Path, base_key: str, settings: dict, version: str) -> Path:
    digest = hashlib.sha256(json.dumps([base_key, settings, version], sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / f"{digest}.json"


def repetitive(reply: str, n: int = 4, times: int = 3) -> bool:
    """Whether a run of ``n`` words comes back ``times`` times or more: a small base's greedy loop ("1 can of
    tuna, 1 can of tuna, ..."), which rehearsing would only reinforce."""
    words = reply.lower().split()
    grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return bool(grams) and max(grams.values()) >= times


def usable(reply: str, identity) -> bool:
    """An answer worth rehearsing: not empty, not a greedy loop, and not about the base's own name or maker
    (that would teach the base's identity back against the user's)."""
    return (bool(reply.strip()) and not repetitive(reply)
            and not identity([{"messages": [{"role": "assistant", "content": reply}]}]))


def trim(reply: str) -> str:
    """A reply cut by the token budget ends at its last full sentence, so the adapter never learns to stop
    mid-sentence (kept whole when it has none)."""
    cut = max(reply.rfind(mark) for mark in (".", "!", "?", "\n", "。"))
    return reply[:cut + 1].strip() if cut > len(reply) // 3 else reply.strip()


def base_answers(model, tokenizer, prompts: list[str], base_key: str, cache_dir: Path, **generation) -> dict[str, str]:
    """The base's answers to ``prompts``; the ones answered before for this base come from the cache."""
    from workers.forgetting import generate_replies

    set_ = replay.load()
    settings = {"greedy": True, "max_new_tokens": replay.MAX_NEW_TOKENS, "dtype": str(next(model.parameters()).dtype)}
    path = cache_file(cache_dir, base_key, settings, set_.version)
    with LOCK:
        cached = {}
        if path.exists():
            try:
                cached = json.loads(path.read_text(encoding="utf-8")).get("answers", {})
            except (OSError, ValueError):
                cached = {}
        missing = [p for p in prompts if p not in cached]
        if missing:
            as_base = hasattr(model, "disable_adapter")
            replies = generate_replies(model, tokenizer, missing, replay.MAX_NEW_TOKENS, base=as_base, **generation)
            cached.update(zip(missing, replies))
            write_json(path, {"base": base_key, "settings": settings, "version": set_.version, "answers": cached})
    return {p: cached[p] for p in prompts}


def replay_rows(spec, kind: str, n_rows: int, model, tokenizer, base_key: str, cache_dir: Path,
                stop=None) -> list[dict]:
    """The replay rows a run trains on beside its ``n_rows`` rows (none when general_replay is 0 or the method
    and data are not SFT chat turns); a sentence in the run's log says how many and how long they took.
    ``stop`` (default: the running job's ``workers.stopping.current()``): a cancel or a shutdown stops the answers
    between batches and between tokens; then none are cached and no row is returned (the run does not train)."""
    from studio.datasets.stats import carries_identity
    from workers.forgetting import ProbeStopped
    from workers.stopping import current

    if not replay.applies(spec.method, kind) or spec.general_replay <= 0:
        return []
    set_ = replay.load()
    n = replay.count(spec.general_replay, n_rows, len(set_.prompts))
    started = time.perf_counter()
    stop = stop or current()
    try:
        # a few more prompts than rows: some answers are greedy loops or talk about the base itself, and are left out
        answers = base_answers(model, tokenizer, replay.pick(set_.prompts, math.ceil(n * 1.25), spec.seed),
                               base_key, cache_dir, stop=stop)
    except ProbeStopped:
        log.warning("general replay stopped: the run was %s while the base answered", stop.reason() or "stopped")
        return []
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": trim(a)}]}
            for p, a in answers.items() if usable(a, carries_identity)][:n]
    seconds = time.perf_counter() - started
    log.info("general replay: %d rows of the base model's own answers to general instructions mixed into %d "
             "training rows (general_replay %g), %.1f s", len(rows), n_rows, spec.general_replay, seconds)
    log.info("timing replay %.3f s at step 0", seconds)
    return rows
