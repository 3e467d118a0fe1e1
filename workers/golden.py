"""Golden prompts during training: the training model itself answers them greedily at every checkpoint and at
the end, and once as the base at the start; the replies go to JSON files in the job's folder
(``golden/base.json``, ``golden/step-N.json``, written and read back by studio/golden_prompts.py).

``answer_golden`` generates the replies through the one batched generator (workers/inference/replies.py);
``GoldenPromptsCallback`` is the TrainerCallback workers/train.py adds to a run with golden prompts.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from transformers import TrainerCallback

from studio import db
from studio.atomic import write_json
from studio.cancel import Stopped, Watch
from studio.golden_prompts import (GOLDEN_BUDGET, GOLDEN_MAX_NEW_TOKENS, base_cache_path, fit_prompts, golden_dir,
                                   golden_save_steps, write_golden)

from .device import rank, world_size
from .inference.replies import batch_replies, single_turn

log = logging.getLogger("studio.golden")

GOLDEN_BATCH = 8  # prompts per generate call: a cancel is seen between batches (and between the tokens of one)


def answer_golden(model, tokenizer, prompts: list[str], max_new_tokens: int = GOLDEN_MAX_NEW_TOKENS,
                  disable_adapter: bool = False, system: tuple[str, str] = ("keep", ""), stop=None) -> list[str]:
    """Greedy replies of ``model`` (the training model is fine) to single-turn prompts, in left-padded batches of
    GOLDEN_BATCH prompts of similar lengths (``fit_prompts`` cuts them to a run's max length).

    Runs in eval mode under ``torch.inference_mode`` and restores every module's train/eval flag after,
    so training resumes exactly as it was. ``disable_adapter``: answer as the base (peft models only).
    ``system``: the run's (system_prompt_mode, system_prompt), so the prompts are asked as the Chat tab asks them.
    ``stop``: a ``studio.cancel.Watch``, read between batches and between generated tokens; when it says stop,
    ``Stopped`` is raised and no reply is returned.
    """
    if not prompts:
        return []
    what = "the golden prompts" + (" (as the base)" if disable_adapter else "")
    stopping = {} if stop is None else {"stop": stop, "halt": lambda: stop.check(what)}  # check raises Stopped
    return batch_replies(model, tokenizer, single_turn(tokenizer, prompts, system),
                         {"do_sample": False, "max_new_tokens": max_new_tokens, "use_cache": True}, GOLDEN_BATCH,
                         base=disable_adapter, one_thread=True, **stopping)


class GoldenPromptsCallback(TrainerCallback):
    """Answers golden prompts at train begin (base, once), at checkpoints and at the end (rank 0 only).

    ``automatic``: only at the checkpoints ``golden_save_steps`` picks, and only while the rounds answered between
    the start and the end stay within GOLDEN_BUDGET of the run's projected training time (a round's cost is
    measured: the last one's seconds); otherwise at every checkpoint. A failure is
    logged and never stops training. ``skip`` (e.g. the worker's shutdown flag) makes a stopping worker save
    without spending time on answers. A cancel (or ``skip``) during a round stops it between tokens and raises
    ``studio.cancel.Stopped`` out of training, so the run ends cancelled without the rest of the round (in a
    multi-device run the round just stops: the ranks stop together at the next step's end). Each prompt is cut to
    ``max_length`` tokens with its reply (default: the trainer's max length, else the run's stored one).
    """

    def __init__(self, job_id: str, prompts: list[str], tokenizer, max_new_tokens: int = GOLDEN_MAX_NEW_TOKENS,
                 output_dir: str | Path | None = None, skip=None, automatic: bool = False,
                 system: tuple[str, str] = ("keep", ""), base: str | None = None, answer=None,
                 max_length: int | None = None):
        self.job_id = job_id
        # the training method's own way to answer, (model, tokenizer, prompts, disable_adapter, stop) -> (replies,
        # extra JSON fields); GRPO samples a few completions per prompt and scores them. None: greedy replies
        self.answer = answer
        self.system = system  # the run's system prompt choice: the adapter is asked as it was trained
        self.base = base      # the base model's folder or id: its answers are cached under that name
        self.prompts = list(prompts)
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.max_length = max_length
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.skip = skip or (lambda: False)
        self.watch = Watch(job_id, self.skip)
        self.is_main = rank() == 0
        self.world_size = world_size()
        self.answered_step: int | None = None
        self.automatic = automatic
        self.began: float | None = None   # when training began (after the base's answers)
        self.spent = 0.0                  # seconds of the rounds answered since
        self.last_round: float | None = None
        self._fitted: dict[tuple, list[str]] = {}

    def _folder(self) -> Path:
        return self.output_dir if self.output_dir is not None else golden_dir(self.job_id)

    def _prompts_for(self, args, system: tuple[str, str]) -> list[str]:
        """The prompts as generation reads them: cut to the run's max length (``fit_prompts``), once per system."""
        if system not in self._fitted:
            length = self.max_length or getattr(args, "max_length", None) or self._stored_max_length()
            self._fitted[system] = fit_prompts(self.tokenizer, self.prompts, length, self.max_new_tokens, system)
        return self._fitted[system]

    def _stored_max_length(self) -> int | None:
        job = db.get_job(self.job_id)
        value = (job.spec or {}).get("max_length") if job is not None else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def _answer(self, model, step: int | str, args=None, **extra) -> None:
        if not self.is_main or not self.prompts or model is None or self.skip():
            return
        started = time.perf_counter()
        what = "the golden prompts" + (" (as the base)" if step == "base" else f" at step {step}")
        try:
            self.watch.check(what)  # cancelled since the last step: no round
            log.info("job %s: answering %d golden prompts at step %s", self.job_id, len(self.prompts), step)
            more = {}
            if self.answer is not None:
                replies, more = self.answer(model, self.tokenizer, self._prompts_for(args, ("keep", "")),
                                            disable_adapter=step == "base", stop=self.watch)
            elif step == "base":  # the base as the Chat tab shows it: its template's own system prompt
                replies = self._base_replies(model, self._prompts_for(args, ("keep", "")))
            else:
                replies = answer_golden(model, self.tokenizer, self._prompts_for(args, self.system),
                                        self.max_new_tokens, system=self.system, stop=self.watch)
            seconds = time.perf_counter() - started
            self.last_round = seconds
            if step != "base":
                self.spent += seconds
            write_golden(self._folder(), step, self.prompts, replies, seconds=round(seconds, 3), **more, **extra)
            log.info("timing golden-prompts %.3f s at step %s", seconds, step)
        except Stopped as exc:  # out of training (workers/fit.py ends the run); the round's answers are not kept
            if self.world_size == 1:
                raise
            log.warning("job %s: %s; the round's answers are not kept", self.job_id, exc)
        except Exception:  # noqa: BLE001 - golden answers are a view on training, never a reason to stop it
            log.warning("job %s: answering the golden prompts at step %s failed", self.job_id, step, exc_info=True)

    def _base_replies(self, model, prompts: list[str]) -> list[str]:
        """The base's answers, from the cache when this base already answered these prompts."""
        cache = base_cache_path(self.base, prompts, self.max_new_tokens) if self.base else None
        if cache is not None and cache.exists():
            try:
                return json.loads(cache.read_text())["replies"]
            except (OSError, ValueError, KeyError):
                pass
        replies = answer_golden(model, self.tokenizer, prompts, self.max_new_tokens, disable_adapter=True,
                                stop=self.watch)
        if cache is not None:
            write_json(cache, {"base": self.base, "prompts": prompts, "replies": replies}, indent=None)
        return replies

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.is_main and self.prompts and not (self._folder() / "base.json").exists():
            self._answer(model, "base", args)
        self.began = time.perf_counter()

    def affordable(self, step: int, max_steps: int, now: float | None = None) -> bool:
        """Whether one more round at ``step`` keeps the rounds within GOLDEN_BUDGET of the projected training time
        (the final round is always answered; so is the first one when nothing has been measured yet)."""
        if self.began is None or self.last_round is None or step <= 0:
            return True
        training = max(0.0, (time.perf_counter() if now is None else now) - self.began - self.spent)
        projected = training / step * max_steps
        return self.spent + self.last_round <= GOLDEN_BUDGET * projected

    def on_save(self, args, state, control, model=None, **kwargs):
        if self.automatic and (state.global_step not in golden_save_steps(state.max_steps, args.save_steps)
                               or not self.affordable(state.global_step, state.max_steps)):
            return
        self._answer(model, state.global_step, args)
        self.answered_step = state.global_step

    def on_train_end(self, args, state, control, model=None, **kwargs):
        best_loaded = bool(getattr(args, "load_best_model_at_end", False))
        path = self._folder() / f"step-{state.global_step}.json"
        if self.answered_step == state.global_step and not best_loaded and path.exists():
            try:  # the last save already answered with these very weights: mark it final
                data = json.loads(path.read_text())
                write_golden(self._folder(), state.global_step, self.prompts, [r["reply"] for r in data["replies"]],
                             **{k: v for k, v in data.items() if k not in ("step", "replies", "time")}, final=True)
                return
            except (OSError, ValueError, KeyError):
                pass
        self._answer(model, state.global_step, args, final=True, best_model_loaded=best_loaded)
