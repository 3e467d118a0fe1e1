"""Experiment trackers beside the studio's own database, through transformers' integration callbacks.

Every run writes TensorBoard event files to ``<job>/tensorboard`` (``tensorboard --logdir`` on the data
directory finds them all). A spec's ``report_to`` adds one tracker: mlflow (MLFLOW_TRACKING_URI), wandb
(online, or offline with WANDB_MODE=offline) or trackio (local). Each receives the same metrics, the JobSpec
as parameters (under ``spec/``) and, where the tracker stores artifacts, the adapter folder. A tracker that
cannot be reached, or that fails mid-run, costs one warning in the run's log and nothing else.
"""
from __future__ import annotations

import importlib.util
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback
from transformers.integrations import (MLflowCallback, TensorBoardCallback, TrackioCallback, WandbCallback,
                                       is_tensorboard_available)

from studio.settings import env_text, set_env
from studio.spec import JobSpec

log = logging.getLogger("studio.trackers")

TENSORBOARD_DIR = "tensorboard"
REACH_TIMEOUT_S = 3.0
WANDB_URL = "https://api.wandb.ai"
PARAM_CHARS = 250  # the longest parameter value every MLflow version accepts
PROJECT = "fine-tune-studio"  # W&B and trackio project unless WANDB_PROJECT / TRACKIO_PROJECT say otherwise
INTEGRATIONS = {"tensorboard": TensorBoardCallback, "mlflow": MLflowCallback, "wandb": WandbCallback,
                "trackio": TrackioCallback}
EVENTS = [name for name in vars(TrainerCallback) if name.startswith("on_")]


@dataclass(frozen=True)
class Plan:
    """What this worker can do with the spec's tracker: ``name`` ("none" once dropped) and, for W&B,
    whether it logs offline."""
    name: str = "none"
    offline: bool = False


def report_to(spec: JobSpec) -> list[str]:
    """TrainingArguments.report_to: TensorBoard (when installed) and the spec's tracker (when installed)."""
    names = ["tensorboard"] if is_tensorboard_available() else []
    if spec.report_to != "none" and importlib.util.find_spec(spec.report_to) is not None:
        names.append(spec.report_to)
    return names


def reachable(url: str, timeout: float = REACH_TIMEOUT_S) -> bool:
    """Whether anything answers HTTP at ``url`` (any status counts: the server is there)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout):  # noqa: S310 - the user's own tracker URL
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def check(spec: JobSpec) -> Plan:
    """Once per run, before training: can the spec's tracker be used from here? Warns (one line in the
    run's log) and drops it, or switches W&B to offline, when it cannot."""
    name = spec.report_to
    if name == "none":
        return Plan()
    if importlib.util.find_spec(name) is None:
        log.warning("report_to %s: the %s package is not installed on this worker; training goes on without it",
                    name, name)
        return Plan()
    if name == "mlflow":
        uri = env_text("MLFLOW_TRACKING_URI")
        if uri.startswith(("http://", "https://")):
            if not reachable(uri.rstrip("/") + "/health"):
                log.warning("report_to mlflow: the tracking server %s does not answer; training goes on without it",
                            uri)
                return Plan()
            # a server that goes away mid-run should cost seconds, not MLflow's default minutes of retries
            set_env("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1", only_unset=True)
            set_env("MLFLOW_HTTP_REQUEST_TIMEOUT", "10", only_unset=True)
    if name == "wandb" and env_text("WANDB_MODE", "online") not in ("offline", "dryrun", "disabled"):
        url = env_text("WANDB_BASE_URL", WANDB_URL)
        if not reachable(url):
            log.warning("report_to wandb: %s does not answer; logging offline instead (upload later with "
                        "`wandb sync`)", url)
            return Plan(name, offline=True)
    return Plan(name)


class Guarded(TrainerCallback):
    """Forwards every event to a tracker's callback; the first exception it raises is one warning in the
    run's log, and the callback hears nothing more."""

    def __init__(self, inner: TrainerCallback, name: str):
        self.inner, self.name, self.failed = inner, name, False

    def _forward(self, event: str, args, state, control, **kwargs):
        if self.failed:
            return None
        try:
            return getattr(self.inner, event)(args, state, control, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a tracker never fails a run
            self.failed = True
            log.warning("%s stopped receiving this run after an error in %s: %s", self.name, event,
                        f"{type(exc).__name__}: {exc}"[:300])
            return None


for _event in EVENTS:
    setattr(Guarded, _event, lambda self, args, state, control, _e=_event, **kw: self._forward(_e, args, state,
                                                                                                  control, **kw))


def _flat(spec: JobSpec) -> dict[str, str]:
    """The spec as tracker parameters: ``spec/<field>`` -> text (lists comma-joined)."""
    text = {k: ", ".join(map(str, v)) if isinstance(v, list) else str(v) for k, v in spec.to_dict().items()}
    return {f"spec/{k}": v if len(v) <= PARAM_CHARS else v[:PARAM_CHARS - 1] + "…" for k, v in text.items()}


class TrackerRun(TrainerCallback):
    """Opens the tracker's run before transformers' callback logs to it (so the run carries the job's name,
    the JobSpec and, for W&B, the offline switch), and closes it once the adapter is saved (``finish``)."""

    def __init__(self, spec: JobSpec, plan: Plan, run_name: str):
        self.spec, self.plan, self.run_name = spec, plan, run_name
        self.run = None          # the mlflow run id or the wandb run
        self.spec_logged = False

    def _safely(self, what: str, action) -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - a tracker never fails a run
            log.warning("%s: could not %s: %s", self.plan.name, what, f"{type(exc).__name__}: {exc}"[:300])

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.run is None:
            self._safely("start the run", self._start)

    def on_log(self, args, state, control, **kwargs):
        # trackio's callback opens its run in on_train_begin, after this one: the spec goes in with the first log
        if self.plan.name == "trackio" and not self.spec_logged and state.is_world_process_zero:
            self.spec_logged = True
            self._safely("record the spec", lambda: __import__("trackio").config.update({"spec": self.spec.to_dict()}))

    def _start(self) -> None:
        if self.plan.name == "mlflow":
            import mlflow

            if uri := env_text("MLFLOW_TRACKING_URI"):
                mlflow.set_tracking_uri(uri)
            if mlflow.active_run() is not None:  # left open by a run of this worker that failed
                mlflow.end_run("FAILED")
            if name := env_text("MLFLOW_EXPERIMENT_NAME"):
                mlflow.set_experiment(name)
            self.run = mlflow.start_run(run_name=self.run_name).info.run_id
            mlflow.log_params(_flat(self.spec))
        elif self.plan.name == "wandb":
            import wandb

            if wandb.run is not None:
                wandb.finish(exit_code=1)
            self.run = wandb.init(project=env_text("WANDB_PROJECT", PROJECT), name=self.run_name,
                                  config={"spec": self.spec.to_dict()},
                                  mode="offline" if self.plan.offline else None)

    def finish(self, adapter_dir: Path | None) -> None:
        """Store the adapter (a completed run) and close the tracker's run."""
        if self.run is None:
            return
        run, self.run = self.run, None
        if self.plan.name == "mlflow":
            import mlflow

            if adapter_dir is not None:
                self._safely("store the adapter", lambda: mlflow.log_artifacts(str(adapter_dir), "adapter"))
            self._safely("close the run", lambda: mlflow.end_run("FINISHED" if adapter_dir else "KILLED"))
        elif self.plan.name == "wandb":
            import wandb

            def store():
                artifact = wandb.Artifact(f"adapter-{self.run_name}", type="model")
                artifact.add_dir(str(adapter_dir))
                run.log_artifact(artifact)

            if adapter_dir is not None:
                self._safely("store the adapter", store)
            self._safely("close the run", lambda: run.finish(exit_code=0 if adapter_dir else 1))


def point_tensorboard(trainer, job_dir: Path) -> None:
    """TensorBoard's events into ``<job>/tensorboard`` from the trainer's first log on (left unset, a log before
    training begins would open them in ``./runs`` of whatever folder the process started in)."""
    for cb in trainer.callback_handler.callbacks:
        if type(cb) is INTEGRATIONS["tensorboard"]:
            cb.logging_dir = str(job_dir / TENSORBOARD_DIR)


def attach(trainer, spec: JobSpec, plan: Plan, job_dir: Path, run_name: str) -> None:
    """Point TensorBoard at ``<job>/tensorboard``, drop a tracker ``check`` gave up on, guard the others,
    and put the TrackerRun callback first."""
    handler = trainer.callback_handler
    trainer.args.run_name = run_name
    trainer.args.project = env_text("TRACKIO_PROJECT", PROJECT)
    kept = []
    for cb in handler.callbacks:
        name = next((n for n, cls in INTEGRATIONS.items() if type(cb) is cls), None)
        if name is None:
            kept.append(cb)
            continue
        if name == "tensorboard":
            point_tensorboard(trainer, job_dir)
        elif name != plan.name:
            continue  # the spec names it but this worker cannot reach it (check warned)
        kept.append(Guarded(cb, name))
    handler.callbacks[:] = [TrackerRun(spec, plan, run_name), *kept]


def finish(trainer, adapter_dir: Path | None) -> None:
    """Close the tracker's run: with the adapter as an artifact (``adapter_dir``), or without (stopped)."""
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TrackerRun):
            cb.finish(adapter_dir)
