"""The adapter library: finished runs, their checkpoints and imported adapters, in one place.

    list_adapters()                      finished runs and imports, with base, key config, metrics, size
    resolve(ref)                         the value a dropdown or the CLI passes -> an AdapterRef (folder, base)
    chat_choices() / base_choices()      what the Chat and Adapters tabs offer
    same_base(a, b)                      whether two base-model references name the same model

A ref is a finished run's id (or name), ``<job id>/checkpoint-<N>`` for a checkpoint of any run, or
``imported/<name>``. The neighbours: studio.adapter_import (upload), studio.adapter_check (shapes against a
base), studio.model_card (README and zip), studio.adapter_exports (export folders, serving snippets).
No torch: the UI lists adapters without the training stack.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import db
from .adapter_types import loadable_folder, of_config
from .settings import UnsafePath, check_name, get_settings

IMPORTS = "adapters"                       # <home>/adapters/<name>/
IMPORT_PREFIX = "imported/"
META_FILE = "studio_adapter.json"          # what the studio records about an imported adapter
CHECKPOINTS = "checkpoints"                # = workers.checkpoints.CHECKPOINTS
CHECKPOINT_MARKER = "studio-checkpoint-complete"  # = workers.callbacks.COMPLETE_MARKER (a test keeps them equal)
CHECKPOINT_STATUSES = ("running", "cancelled", "interrupted", "failed")  # a completed run offers its adapter
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json")
BUNDLED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


class AdapterError(ValueError):
    """An adapter that cannot be listed, imported or exported; the message is one human sentence."""


@dataclass
class AdapterRef:
    ref: str                    # the value dropdowns and the CLI pass around
    name: str                   # human name, also the stem of export folders
    kind: str                   # run | checkpoint | imported
    folder: Path                # holds adapter_config.json + adapter_model.safetensors
    base_model: str
    job_id: str | None = None
    step: int | None = None
    using: str = ""             # which weights of a run, said to the user: "checkpoint 40 (lowest eval loss 1.23)"

    def __post_init__(self):  # a PiSSA / OLoRA checkpoint loads from its plain-LoRA copy (studio.adapter_types)
        self.folder = loadable_folder(self.folder)

    @property
    def key(self) -> str:
        """A name peft accepts for the adapter (no dots), unique per ref."""
        clean = re.sub(r"[^A-Za-z0-9_]", "_", self.ref)[:40]
        return f"{clean}_{hashlib.sha1(self.ref.encode()).hexdigest()[:8]}"


# ---- listing ----------------------------------------------------------------------------------

def imports_dir() -> Path:
    return get_settings().resolve(IMPORTS)


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def human_bytes(n: int | None) -> str:
    if not n:
        return "0 B"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def config_text(spec: dict) -> str:
    """The few choices that tell adapters apart: method, rank, alpha, quantisation, targets, lr, steps."""
    quant = "4-bit" if spec.get("load_in_4bit") else "8-bit" if spec.get("load_in_8bit") else "16-bit"
    targets = ",".join(spec.get("target_modules") or [])
    bits = [spec.get("method", "sft"), f"r={spec.get('r')}", f"alpha={spec.get('lora_alpha')}", quant, targets,
            f"lr {spec.get('learning_rate')}"]
    if spec.get("use_dora"):
        bits.append("DoRA")
    return " · ".join(str(b) for b in bits if b)


def imported_meta(folder: Path) -> dict:
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _adapter_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return {}


def list_adapters() -> list[dict]:
    """Finished runs with an adapter, newest first, then imported adapters by name."""
    settings = get_settings()
    out = []
    for job in db.list_jobs(("completed",)):
        if not job.adapter_path:
            continue
        folder = settings.resolve(job.adapter_path)
        summary, spec = job.summary, job.spec
        out.append({"ref": job.id, "name": job.name, "kind": "run", "base_model": spec.get("base_model", ""),
                    "config": config_text(spec), "dataset": spec.get("dataset", ""),
                    "final_loss": summary.get("final_loss"), "best_eval_loss": summary.get("best_eval_loss"),
                    "steps": summary.get("steps", job.current_step), "bytes": folder_bytes(folder), "path": str(folder),
                    "created_at": job.created_at, **forgetting_cell(summary)})
    root = imports_dir()
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not folder.is_dir() or folder.name.startswith(".") or not (folder / META_FILE).exists():
            continue
        meta, cfg = imported_meta(folder), _adapter_config(folder)
        targets = cfg.get("target_modules")
        targets = ",".join(targets) if isinstance(targets, list) else str(targets or "")
        kind = of_config(cfg)
        if kind is not None and kind.name != "lora":
            tokens = cfg.get("num_virtual_tokens")
            bits = (kind.label, targets, f"{tokens} virtual tokens" if tokens else "")
        else:
            bits = (f"r={cfg.get('r')}", f"alpha={cfg.get('lora_alpha')}", targets)
        out.append({"ref": IMPORT_PREFIX + folder.name, "name": folder.name, "kind": "imported",
                    "base_model": meta.get("base_model", ""), "config": " · ".join(b for b in bits if b),
                    "dataset": "", "final_loss": None, "best_eval_loss": None, "steps": None,
                    "bytes": folder_bytes(folder), "path": str(folder), "created_at": meta.get("imported_at"),
                    "forgetting": "", "flagged": False})
    return out


def forgetting_cell(summary: dict) -> dict:
    """What the Adapters list says of a run's forgetting check: "kept 96% (base 88/200, adapter 85/200)",
    with "flagged:" in front when it was flagged; "checking…" while it runs."""
    check = summary.get("forgetting") or {}
    if check.get("state") == "checking":
        return {"forgetting": "checking…", "flagged": False}
    if check.get("state") != "done" or not check.get("summary"):
        return {"forgetting": "", "flagged": False}
    text = check["summary"].replace("general skills kept:", "kept").strip()
    return {"forgetting": ("flagged: " if check.get("flagged") else "") + text, "flagged": bool(check.get("flagged"))}


def list_checkpoints(statuses: tuple[str, ...] = CHECKPOINT_STATUSES) -> list[AdapterRef]:
    """Complete checkpoints (the worker's marker written) that hold an adapter, newest run first."""
    settings = get_settings()
    out: list[AdapterRef] = []
    for job in db.list_jobs(statuses):
        if not job.output_dir:
            continue
        folder = settings.resolve(job.output_dir) / CHECKPOINTS
        steps = []
        for ckpt in folder.glob("checkpoint-*") if folder.is_dir() else []:
            match = re.fullmatch(r"checkpoint-(\d+)", ckpt.name)
            if (match and (ckpt / CHECKPOINT_MARKER).exists()
                    and (ckpt / "adapter_model.safetensors").exists()):
                steps.append((int(match.group(1)), ckpt))
        for step, ckpt in sorted(steps, reverse=True):
            out.append(AdapterRef(f"{job.id}/checkpoint-{step}", _checkpoint_name(job.name, step), "checkpoint", ckpt,
                                  job.spec.get("base_model", ""), job.id, step))
    return out


def _checkpoint_name(job_name: str, step: int) -> str:
    suffix = f"-step{step}"
    return job_name[: 64 - len(suffix)] + suffix


def chat_choices() -> list[tuple[str, str]]:
    """(label, ref) for every adapter chat can load: finished runs, checkpoints, imports."""
    from .models import shown_model

    choices = []
    for j in db.list_jobs(("completed",)):
        if not j.adapter_path:
            continue
        best = j.summary.get("best_checkpoint") or {}
        label = f"{j.name} ({shown_model(j.spec.get('base_model', ''))})"
        if best.get("label") and not best.get("final"):   # the run's best checkpoint, and its final adapter on request
            choices += [(f"{label} · {best['label']}", j.id), (f"{label} · the final adapter", j.id + FINAL_SUFFIX)]
        else:
            choices.append((label, j.id))
    jobs = {j.id: j for j in db.list_jobs()}
    for c in list_checkpoints():
        job = jobs.get(c.job_id)
        status = job.status if job else ""
        choices.append((f"{job.name if job else c.job_id} · checkpoint {c.step} ({status})", c.ref))
    for a in list_adapters():
        if a["kind"] == "imported":
            choices.append((f"{a['name']} (imported, {shown_model(a['base_model'])})", a["ref"]))
    return choices


def base_choices() -> list[str]:
    """Base models the studio knows of: the bundled one and every base a run or an import used, local folders
    as the UI shows them (models/NAME rather than the absolute path)."""
    from .models import shown_model
    from .spec import BUNDLED_MODEL

    seen = [BUNDLED_MODEL]
    for job in db.list_jobs():
        seen.append(job.spec.get("base_model", ""))
    for a in list_adapters():
        seen.append(a["base_model"])
    return [b for b in dict.fromkeys(shown_model(b) for b in seen) if b]


def resolve(ref: str) -> AdapterRef:
    """A run id or name, ``<job>/checkpoint-<N>`` or ``imported/<name>`` -> the adapter's folder and base."""
    settings = get_settings()
    ref = (ref or "").strip()
    if not ref:
        raise AdapterError("choose an adapter")
    if ref.startswith(IMPORT_PREFIX):
        return resolve_import(ref[len(IMPORT_PREFIX):])
    if ref.endswith(FINAL_SUFFIX) and (job := db.get_job(ref[:-len(FINAL_SUFFIX)])) is not None and job.adapter_path:
        step = job.summary.get("steps", job.current_step)
        return AdapterRef(f"{job.id}{FINAL_SUFFIX}", job.name, "run", settings.resolve(job.adapter_path),
                          job.spec.get("base_model", ""), job.id, using=f"the final adapter (step {step})")
    if "/" in ref:
        job_part, _, ckpt = ref.partition("/")
        match = re.fullmatch(r"checkpoint-(\d+)", ckpt)
        job = db.get_job(job_part)
        if match is None or job is None:
            raise AdapterError(f"there is no checkpoint '{ref}'")
        folder = settings.resolve(job.output_dir) / CHECKPOINTS / ckpt
        if not (folder / "adapter_model.safetensors").exists():
            raise AdapterError(f"the checkpoint {ckpt} of {job.name} is gone or holds no adapter "
                               "(old checkpoints are removed as training goes on)")
        step = int(match.group(1))
        return AdapterRef(f"{job.id}/{ckpt}", _checkpoint_name(job.name, step), "checkpoint", folder,
                          job.spec.get("base_model", ""), job.id, step, using=f"checkpoint {step}")
    job = db.get_job(ref)
    if job is not None:
        if not job.adapter_path:
            raise AdapterError(f"the run {job.name} is {job.status} and has no final adapter; "
                               "pick one of its checkpoints instead")
        return _run_ref(job, settings.resolve(job.adapter_path))
    try:
        return resolve_import(ref)
    except AdapterError:
        raise AdapterError(f"there is no finished run or imported adapter named '{ref}'") from None


FINAL_SUFFIX = "/final"       # <job>/final: a run's final adapter, whatever its best checkpoint is


def _run_ref(job: db.Job, final: Path) -> AdapterRef:
    """A finished run's weights: the checkpoint its summary names best (``spec.best_checkpoint``), while that
    checkpoint is still on disk, else the final adapter; ``using`` says which."""
    best = job.summary.get("best_checkpoint") or {}
    base = job.spec.get("base_model", "")
    folder = get_settings().resolve(job.output_dir) / CHECKPOINTS / f"checkpoint-{best.get('step')}"
    if best and not best.get("final") and (folder / "adapter_model.safetensors").is_file():
        return AdapterRef(job.id, job.name, "run", folder, base, job.id, using=best["label"])
    step = job.summary.get("steps", job.current_step)
    using = best.get("label") if best.get("final") else f"the final adapter (step {step})"
    return AdapterRef(job.id, job.name, "run", final, base, job.id, using=using)


def resolve_import(name: str) -> AdapterRef:
    try:
        name = check_name(name, "adapter name")
    except UnsafePath as exc:
        raise AdapterError(str(exc)) from None
    folder = get_settings().resolve(f"{IMPORTS}/{name}")
    if not (folder / META_FILE).exists():
        raise AdapterError(f"there is no imported adapter named '{name}'")
    return AdapterRef(IMPORT_PREFIX + name, name, "imported", folder, imported_meta(folder).get("base_model", ""))


def same_base(a: str, b: str) -> bool:
    """Whether two base-model references name the same model (bundled aliases, equal folders)."""
    from .models import is_bundled, local_folder

    a, b = (a or "").strip(), (b or "").strip()
    if a == b:
        return True
    if is_bundled(a) and is_bundled(b):
        return True
    pa, pb = local_folder(a), local_folder(b)
    return pa is not None and pb is not None and pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def result_folder(ref: AdapterRef, what: str) -> Path:
    """Where an adapter's evaluation results (``what``: studio.probe.PROBE_FOLDER, studio.judge.JUDGE_FOLDER) go:
    ``<run>/<what>``, ``<run>/<what>/checkpoint-N`` for a checkpoint, ``<imported adapter>/<what>``."""
    if ref.kind == "imported":
        return Path(ref.folder) / what
    job = db.get_job(ref.job_id)
    folder = get_settings().resolve(job.output_dir) / what
    return folder / f"checkpoint-{ref.step}" if ref.kind == "checkpoint" else folder


def delete_import(name: str) -> None:
    ref = resolve_import(name)
    shutil.rmtree(ref.folder)
