"""The adapter library: finished runs, their checkpoints and imported adapters, in one place.

    list_adapters()                      finished runs and imports, with base, key config, metrics, size
    resolve(ref)                         the value a dropdown or the CLI passes -> an AdapterRef (folder, base)
    zip_adapter(ref)                     adapter files + tokenizer (if present) + a generated model card
    import_adapter(src, name, base)      safetensors only, zip-slip safe, checked against the base's shapes
    read_drift(ref) / snippets(ref)      what the export tasks (workers/inference/export.py) left under
                                         <home>/exports/<name>-merged|-gguf, and how to serve it

A ref is a finished run's id (or name), ``<job id>/checkpoint-<N>`` for a checkpoint of any run, or
``imported/<name>``. No torch at import time: the UI lists adapters without the training stack.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import time
import uuid
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from . import db
from .adapter_types import loadable_folder
from .settings import UnsafePath, check_name, get_settings, shown_mib

IMPORTS = "adapters"                       # <home>/adapters/<name>/
IMPORT_PREFIX = "imported/"
META_FILE = "studio_adapter.json"          # what the studio records about an imported adapter
CHECKPOINTS = "checkpoints"                # = workers.train.CHECKPOINTS
CHECKPOINT_MARKER = "studio-checkpoint-complete"  # = workers.callbacks.COMPLETE_MARKER (a test keeps them equal)
CHECKPOINT_STATUSES = ("running", "cancelled", "interrupted", "failed")  # a completed run offers its adapter
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json")
PICKLE_WEIGHTS = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth", "pytorch_model.bin")
MAX_ZIP_MEMBERS = 256
# what zipfile raises for a damaged archive: bad headers, bad CRC, bad deflate data, offsets past the end,
# encryption or compression methods it cannot read
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError, ValueError)
DRIFT_PROMPTS = ["Hello! Who are you?", "What is the capital of France?", "Write one sentence about the sea."]
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


def _size(path: Path) -> int:
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


def _imported_meta(folder: Path) -> dict:
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
                    "steps": summary.get("steps", job.current_step), "bytes": _size(folder), "path": str(folder),
                    "created_at": job.created_at, **forgetting_cell(summary)})
    root = imports_dir()
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not folder.is_dir() or folder.name.startswith(".") or not (folder / META_FILE).exists():
            continue
        meta, cfg = _imported_meta(folder), _adapter_config(folder)
        targets = cfg.get("target_modules")
        targets = ",".join(targets) if isinstance(targets, list) else str(targets or "")
        bits = (f"r={cfg.get('r')}", f"alpha={cfg.get('lora_alpha')}", targets)
        out.append({"ref": IMPORT_PREFIX + folder.name, "name": folder.name, "kind": "imported",
                    "base_model": meta.get("base_model", ""), "config": " · ".join(b for b in bits if b),
                    "dataset": "", "final_loss": None, "best_eval_loss": None, "steps": None,
                    "bytes": _size(folder), "path": str(folder), "created_at": meta.get("imported_at"),
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
        return _resolve_import(ref[len(IMPORT_PREFIX):])
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
        return _resolve_import(ref)
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


def _resolve_import(name: str) -> AdapterRef:
    try:
        name = check_name(name, "adapter name")
    except UnsafePath as exc:
        raise AdapterError(str(exc)) from None
    folder = get_settings().resolve(f"{IMPORTS}/{name}")
    if not (folder / META_FILE).exists():
        raise AdapterError(f"there is no imported adapter named '{name}'")
    return AdapterRef(IMPORT_PREFIX + name, name, "imported", folder, _imported_meta(folder).get("base_model", ""))


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


# ---- the model card and the zip -----------------------------------------------------------------

def model_card(job: db.Job, ref: AdapterRef | None = None) -> str:
    """README.md for a finished run: which weights (``ref``: the best checkpoint by default), final metrics, the
    forgetting check and judge results, dataset statistics, training config (JobSpec YAML)."""
    from .spec import JobSpec

    spec = JobSpec.from_dict(job.spec)
    from .models import is_bundled, local_folder, shown_model

    hub_base = BUNDLED_HUB_ID if is_bundled(spec.base_model) else (
        spec.base_model if spec.base_model.count("/") == 1 and local_folder(spec.base_model) is None else None)
    base_shown = shown_model(spec.base_model)
    front = ["---", "library_name: peft", "pipeline_tag: text-generation",
             f"tags: [lora, {spec.method}, fine-tune-studio]"]
    if hub_base:
        front.append(f"base_model: {hub_base}")
    front.append("---")
    quant = "QLoRA 4-bit" if spec.load_in_4bit else "8-bit" if spec.load_in_8bit else "16/32-bit"
    lines = front + ["", f"# {job.name}", "",
                     f"A LoRA adapter for **{base_shown}**, trained with Fine-Tune Studio "
                     f"({spec.method.upper()}, {quant} base).", ""]
    summary = job.summary
    lines += ["## Final metrics", "", "| metric | value |", "|---|---|"]
    labels = (("steps", "optimizer steps"), ("final_loss", "final training loss"),
              ("best_eval_loss", "best eval loss"), ("best_eval_step", "best eval step"),
              ("runtime_seconds", "runtime (s)"), ("tokens", "tokens seen"),
              ("trainable_params", "trainable parameters"), ("total_params", "total parameters"),
              ("adapter_bytes", "adapter size (bytes)"))
    for key, label in labels:
        value = summary.get(key)
        if value is not None:
            lines.append(f"| {label} | {value:.4g} |" if isinstance(value, float) else f"| {label} | {value} |")
    lines.append("")
    if ref is None and job.adapter_path:
        try:
            ref = resolve(job.id)
        except AdapterError:
            ref = None
    if ref is not None and ref.using:
        lines += [f"Weights: {ref.using}.", ""]
    lines += evaluation_card_lines(job)
    lines += gguf_card_lines(ref)
    lines += ["## Dataset", ""]
    for role, name in (("training", spec.dataset), ("evaluation", spec.eval_dataset)):
        if not name:
            continue
        rec = db.get_dataset(name)
        if rec is None:
            lines += [f"- {role}: `{name}` (no longer in the studio's library)"]
            continue
        lines += [f"- {role}: `{rec.name}` ({rec.filename}, format {rec.format}, kind {rec.kind}, {rec.rows} rows, "
                  f"sha256 {rec.sha256[:16]}…)"]
        for key, value in rec.stats.items():
            lines.append(f"  - {key}: {value}")
    if not spec.eval_dataset:
        lines.append(f"- evaluation: {spec.eval_split:.0%} of the training rows held out (seed {spec.seed})")
    replayed = job.summary.get("general_replay_rows")
    if replayed:
        lines.append(f"- general replay: {replayed} rows of the base model's own answers to general instructions "
                     f"(studio/replay) trained beside the dataset's rows, to keep its general skills")
    lines += ["", "## Training configuration", "", "```yaml", spec.to_yaml().rstrip(), "```", "",
              "## Use it", "", "```python", "from peft import PeftModel",
              "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              f"base = AutoModelForCausalLM.from_pretrained({(hub_base or base_shown)!r})",
              f"tokenizer = AutoTokenizer.from_pretrained({(hub_base or base_shown)!r})",
              "model = PeftModel.from_pretrained(base, \"path/to/this/folder\")", "```", ""]
    return "\n".join(lines)


def evaluation_card_lines(job: db.Job) -> list[str]:
    """The model card's evaluation sections: the forgetting check (per probe category) and every judge result
    stored for the run (``studio evaluate``)."""
    from .judge import JUDGE_FOLDER, summary_line
    from .probe import PROBE_FOLDER

    out: list[str] = []
    folder = get_settings().resolve(job.output_dir)
    check = job.summary.get("forgetting") or {}
    try:
        report = json.loads((folder / PROBE_FOLDER / "general.json").read_text())
    except (OSError, ValueError):
        report = check if check.get("state") == "done" else {}
    if report.get("summary"):
        verdict = (f"**flagged**: {report['drop_points']:g} points below the base (threshold {report['threshold']:g})"
                   if report.get("flagged") else "not flagged"
                   + (f" (threshold {report['threshold']:g} points)" if report.get("threshold") is not None else ""))
        out += ["## Forgetting check", "",
                f"The studio's general-skills probe answered by the base and by this adapter (greedy): "
                f"{report['summary']}; {verdict}.", ""]
        if isinstance(report.get("by_category"), dict):
            out += ["| category | questions | base right | adapter right |", "|---|---|---|---|"]
            out += [f"| {name} | {t.get('total')} | {t.get('base')} | {t.get('adapter')} |"
                    for name, t in report["by_category"].items() if isinstance(t, dict)]
            out.append("")
    judged = []
    for path in sorted((folder / JUDGE_FOLDER).glob("*.json")) if (folder / JUDGE_FOLDER).is_dir() else []:
        try:
            judged.append(summary_line(json.loads(path.read_text())))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if judged:
        out += ["## Pairwise judging", "", *[f"- {line}" for line in judged], ""]
    return out


def gguf_card_lines(ref: AdapterRef | None) -> list[str]:
    """The model card's GGUF section: each stored export's drift check in llama.cpp (drift-<quant>.json)."""
    from .export import drift_sentence

    try:
        reports = read_drift(ref.ref) if ref is not None else []
    except (ValueError, OSError):  # AdapterError, UnsafePath: no export folder to read
        reports = []
    if not reports:
        return []
    return ["## GGUF exports", "",
            "Each GGUF (written by llama.cpp's convert_hf_to_gguf.py) answered the golden prompts greedily in "
            "llama.cpp with its own chat template, beside the merged model in transformers:", "",
            *[f"- `{r.get('gguf', '?')}`: {drift_sentence(r)}" for r in reports], ""]


def _imported_card(ref: AdapterRef) -> str:
    from .models import shown_model

    meta = _imported_meta(ref.folder)
    return "\n".join(["---", "library_name: peft", "---", "", f"# {ref.name}", "",
                      f"A LoRA adapter imported into Fine-Tune Studio for **{shown_model(ref.base_model)}** "
                      f"from `{meta.get('source', '?')}`.", ""])


def zip_adapter(job_id: str) -> Path:
    """<home>/exports/<name>-adapter.zip: adapter config + safetensors, tokenizer files when the adapter
    folder has them, and a README.md model card. Accepts any ref (run, checkpoint or import)."""
    ref = resolve(job_id)
    settings = get_settings()
    missing = [f for f in ADAPTER_FILES if not (ref.folder / f).is_file()]
    if missing:
        raise AdapterError(f"the adapter of {ref.name} is incomplete: {', '.join(missing)} missing")
    job = db.get_job(ref.job_id) if ref.job_id else None
    card = model_card(job, ref) if job is not None else _imported_card(ref)
    out = settings.exports_dir / f"{check_name(ref.name, 'adapter name')}-adapter.zip"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name in ADAPTER_FILES + TOKENIZER_FILES:
                if (ref.folder / name).is_file():
                    zf.write(ref.folder / name, name)
            zf.writestr("README.md", card)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


# ---- import -----------------------------------------------------------------------------------

PICKLE_SENTENCE = ("this adapter is stored as {file}, a pickle file that can run code when it is loaded; "
                   "only adapter_model.safetensors is imported (convert it with peft: load it where you trust it "
                   "and save_pretrained(..., safe_serialization=True))")


def import_adapter(path_or_zip, name: str, base_model: str) -> Path:
    """Check and store an adapter under <home>/adapters/<name>/; returns that folder.

    ``path_or_zip``: a .zip, a folder, or a list of files (adapter_config.json + adapter_model.safetensors).
    The adapter's own ``base_model_name_or_path`` is ignored: the shapes are checked against ``base_model``,
    which is recorded instead.
    """
    try:
        name = check_name(name, "adapter name")
        target = get_settings().resolve(f"{IMPORTS}/{name}")
    except UnsafePath as exc:
        raise AdapterError(str(exc)) from None
    if not (base_model or "").strip():
        raise AdapterError("choose the base model the adapter was trained on")
    if target.exists():
        raise AdapterError(f"an adapter named '{name}' already exists; choose another name")
    settings = get_settings()
    staging = settings.tmp_dir / f"import-{uuid.uuid4().hex[:12]}"
    staging.mkdir(parents=True)
    try:
        source = _gather(path_or_zip, staging / "src", settings.upload_limit_bytes)
        folder = _adapter_root(source)
        report = check_adapter(folder, base_model)
        out = staging / "out"
        out.mkdir()
        for fname in ADAPTER_FILES + TOKENIZER_FILES + ("README.md",):
            src = folder / fname
            if src.is_file() and not src.is_symlink():
                shutil.copyfile(src, out / fname)
        config = json.loads((out / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = base_model  # the user's choice, not the file's claim
        (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
        label = path_or_zip if not isinstance(path_or_zip, (list, tuple)) else path_or_zip[0]
        meta = {"name": name, "base_model": base_model, "imported_at": time.time(),
                "source": Path(str(label)).name, **report}
        (out / META_FILE).write_text(json.dumps(meta, indent=2))
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(out, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _gather(path_or_zip, dest: Path, max_bytes: int) -> Path:
    """Put the uploaded material in one folder: extract a zip, copy listed files; a folder is used in place."""
    if isinstance(path_or_zip, (list, tuple)):
        paths = [Path(str(p)) for p in path_or_zip]
        if len(paths) == 1:
            return _gather(paths[0], dest, max_bytes)
        if any(zipfile.is_zipfile(p) for p in paths if p.is_file()):
            raise AdapterError("upload either one .zip or the adapter's files, not both")
        dest.mkdir(parents=True)
        for p in paths:
            if not p.is_file():
                raise AdapterError(f"the file '{p.name}' does not exist")
            shutil.copyfile(p, dest / re.sub(r"[^A-Za-z0-9._-]", "_", p.name).lstrip("."))
        return dest
    path = Path(str(path_or_zip))
    if path.is_dir():
        return path
    if not path.is_file():
        raise AdapterError(f"'{path}' does not exist")
    if zipfile.is_zipfile(path):
        safe_extract(path, dest, max_bytes)
        return dest
    if path.name.endswith(PICKLE_WEIGHTS):
        raise AdapterError(PICKLE_SENTENCE.format(file=path.name))
    raise AdapterError("upload the adapter as a .zip, or both adapter_config.json and adapter_model.safetensors")


def safe_extract(zip_path: Path, dest: Path, max_bytes: int) -> None:
    """Extract a zip without ever writing outside ``dest``: no absolute paths, no '..', no links, bounded size."""
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        zf = zipfile.ZipFile(zip_path)
    except ZIP_ERRORS:
        raise AdapterError("the zip is damaged and cannot be read; nothing was imported") from None
    with zf:
        members = [m for m in zf.infolist() if not m.filename.startswith("__MACOSX/")]
        if len(members) > MAX_ZIP_MEMBERS:
            raise AdapterError(f"the zip holds {len(members)} entries; an adapter needs a handful")
        total = 0
        for m in members:
            name = m.filename.replace("\\", "/")
            parts = [p for p in name.split("/") if p not in ("", ".")]
            mode = (m.external_attr >> 16) & 0o170000
            target = (root / "/".join(parts)).resolve() if parts else root
            if (name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts or mode == 0o120000
                    or not target.is_relative_to(root)):
                raise AdapterError(f"the zip holds an unsafe path '{m.filename}' (a link, or a path that leaves "
                                   "its folder); nothing was imported")
            total += m.file_size
            if total > max_bytes:
                raise AdapterError(f"the zip unpacks to more than {shown_mib(max_bytes)} (the upload limit, "
                                   "STUDIO_UPLOAD_LIMIT_MB)")
        for m in members:
            parts = [p for p in m.filename.replace("\\", "/").split("/") if p not in ("", ".")]
            if not parts:
                continue
            try:
                _unpack(zf, m, root.joinpath(*parts))
            except OSError as exc:  # names that clash (a file where a folder must go) or that the disk refuses
                raise AdapterError(f"cannot unpack '{m.filename[:80]}' from the zip ({exc.strerror or exc}); "
                                   "nothing was imported") from None


def _unpack(zf: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path) -> None:
    if member.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as dst:
        copied = 0
        for chunk in _member_chunks(zf, member):
            copied += len(chunk)
            if copied > member.file_size:
                raise AdapterError(f"'{member.filename}' in the zip is larger than its header says")
            dst.write(chunk)


def _member_chunks(zf: zipfile.ZipFile, member: zipfile.ZipInfo):
    """The bytes of one zip member in 1 MB chunks; a damaged member is an AdapterError."""
    try:
        with zf.open(member) as src:
            while chunk := src.read(1 << 20):
                yield chunk
    except ZIP_ERRORS:
        raise AdapterError(f"'{member.filename[:80]}' in the zip is damaged and cannot be read; "
                           "nothing was imported") from None


def _adapter_root(folder: Path) -> Path:
    """The folder holding adapter_config.json: the upload itself, or its single sub-folder."""
    candidates = [folder] + sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    for c in candidates:
        if (c / "adapter_config.json").is_file() or any((c / f).is_file() for f in PICKLE_WEIGHTS):
            root = c
            break
    else:
        raise AdapterError("the upload holds no adapter_config.json; is it a peft LoRA adapter?")
    if not (root / "adapter_model.safetensors").is_file():
        pickled = next((f for f in PICKLE_WEIGHTS if (root / f).is_file()), None)
        if pickled:
            raise AdapterError(PICKLE_SENTENCE.format(file=pickled))
        raise AdapterError("the upload has no adapter_model.safetensors")
    if not (root / "adapter_config.json").is_file():
        raise AdapterError("the upload has no adapter_config.json next to adapter_model.safetensors")
    return root


_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<part>lora_A|lora_B)(?:\.[^.]+)?\.weight$")


# bytes per element of each safetensors dtype (the format's own list)
SAFETENSORS_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                      "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_HEADER_BYTES = 100 * 1024 * 1024       # the safetensors format caps its header at 100 MB


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_json(raw: bytes | str):
    """json.loads that answers ValueError for any malformed input, nesting too deep for the parser included."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None


def _tensor_problem(info) -> str | None:
    """Why one tensor entry of a safetensors header is malformed, or None."""
    if not isinstance(info, dict):
        return "an entry that is not an object"
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        return f"an unknown dtype {str(dtype)[:20]!r}"
    if not isinstance(shape, list) or not all(_is_int(n) and n >= 0 for n in shape):
        return "a shape that is not a list of sizes"
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(n) for n in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        return "data_offsets that are not [begin, end]"
    count = 1
    for n in shape:
        count *= n
    if offsets[1] - offsets[0] != count * SAFETENSORS_DTYPES[dtype]:
        return "data_offsets that do not match the shape and dtype"
    return None


def read_safetensors_header(path: Path) -> dict[str, dict]:
    """The tensors of a safetensors file, checked against the format: a bounded JSON header of well-formed
    entries (known dtype, list shape, [begin, end] offsets of the right size) whose data lies in the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            length = int.from_bytes(prefix, "little")
            if len(prefix) != 8 or not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
                raise ValueError("bad header length")
            header = _parse_json(fh.read(length))
    except (OSError, ValueError):
        raise AdapterError(f"{path.name} is not a valid safetensors file") from None
    if not isinstance(header, dict):
        raise AdapterError(f"{path.name} is not a valid safetensors file (its header is not a JSON object)")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    for key, info in tensors.items():
        problem = _tensor_problem(info)
        if problem:
            raise AdapterError(f"{path.name} is not a valid safetensors file: {key[:80]!r} has {problem}")
    end = max((v["data_offsets"][1] for v in tensors.values()), default=0)
    if 8 + length + end > size:
        raise AdapterError(f"{path.name} is cut short: its header promises more data than the file holds")
    return tensors


def _headers(folder: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for path in sorted(folder.glob("*.safetensors")):
        out.update(read_safetensors_header(path))
    return out


def _string_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# what each adapter_config.json field the studio reads may hold (None is allowed where peft allows it)
CONFIG_FIELDS = {
    "peft_type": (lambda v: isinstance(v, str), "a string"),
    "r": (lambda v: _is_int(v) and v > 0, "a whole number above 0"),
    "lora_alpha": (_number, "a number"),
    "lora_dropout": (lambda v: _number(v) and 0 <= v <= 1, "a number between 0 and 1"),
    "target_modules": (lambda v: v is None or isinstance(v, str) or _string_list(v), "a string or a list of strings"),
    "modules_to_save": (lambda v: v is None or _string_list(v), "a list of strings"),
    "rank_pattern": (lambda v: isinstance(v, dict) and all(_is_int(r) and r > 0 for r in v.values()),
                     "an object of whole numbers above 0"),
    "alpha_pattern": (lambda v: isinstance(v, dict) and all(_number(a) for a in v.values()), "an object of numbers"),
    "use_dora": (lambda v: isinstance(v, bool), "true or false"),
    "use_rslora": (lambda v: isinstance(v, bool), "true or false"),
    "bias": (lambda v: isinstance(v, str), "a string"),
}


def read_adapter_config(path: Path) -> dict:
    """adapter_config.json as a dict whose fields the studio reads have the types peft gives them."""
    try:
        config = _parse_json(path.read_bytes())
    except (OSError, ValueError):
        raise AdapterError("adapter_config.json is missing or not valid JSON") from None
    if not isinstance(config, dict):
        raise AdapterError("adapter_config.json must hold a JSON object")
    for field, (valid, kind) in CONFIG_FIELDS.items():
        if field in config and not valid(config[field]):
            raise AdapterError(f"adapter_config.json has '{field}': {json.dumps(config[field])[:40]}, "
                               f"but it must be {kind}")
    return config


_DECODER_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.\d+\.")  # a module inside a numbered decoder layer


def base_weight_shapes(base_model: str) -> dict[str, tuple]:
    """The base model's 2-D weights, module name -> (out_features, in_features), read without torch: the
    safetensors headers of its folder, or, for the bundled model before a worker has converted it, its GGUF's
    tensor table. Raises ModelError."""
    from .models import bundled_weight_shapes, cached_dir, is_bundled, resolve_model

    if is_bundled(base_model) and cached_dir(base_model) is None:
        return bundled_weight_shapes()
    return {k[: -len(".weight")]: tuple(v["shape"]) for k, v in _headers(resolve_model(base_model)).items()
            if k.endswith(".weight") and len(v["shape"]) == 2}


def check_adapter(folder: str | Path, base_model: str) -> dict:
    """Check a LoRA adapter against a base model by shapes alone (safetensors headers, no torch).

    Every lora_A must be (r, in_features) and every lora_B (out_features, r) of a linear layer the base
    really has; the config's target modules must be layers of the base. Returns what was found.
    """
    from .models import ModelError

    folder = Path(folder)
    config = read_adapter_config(folder / "adapter_config.json")
    if config.get("peft_type", "LORA").upper() != "LORA":
        raise AdapterError(f"only LoRA adapters are supported; this one is {config['peft_type'][:40]}")
    tensors = read_safetensors_header(folder / "adapter_model.safetensors")
    try:
        base_shapes = base_weight_shapes(base_model)
    except ModelError as exc:
        raise AdapterError(f"cannot read the base model: {exc}") from None
    leaves = {m.rsplit(".", 1)[-1] for m in base_shapes if _DECODER_LAYER.search(m)}
    if not leaves:
        raise AdapterError(f"cannot read the linear layers of {base_model} (no safetensors weights)")
    ranks: dict[str, dict[str, tuple]] = {}
    for key, info in tensors.items():
        match = _LORA_KEY.match(key)
        if match:
            ranks.setdefault(match["module"], {})[match["part"]] = tuple(info["shape"])
    if not ranks:
        raise AdapterError("the adapter holds no LoRA weights (no lora_A / lora_B tensors)")
    names = ", ".join(sorted(leaves))
    found_r = set()
    for module, parts in sorted(ranks.items()):
        leaf = module.rsplit(".", 1)[-1]
        if leaf not in leaves:
            raise AdapterError(f"the adapter changes '{leaf}' layers, which {base_model} does not have "
                               f"(its linear layers are {names}); was it trained on another model?")
        if module not in base_shapes:
            raise AdapterError(f"the adapter has weights for '{module}', which {base_model} does not have "
                               "(a model with more layers?); was it trained on another model?")
        out_f, in_f = base_shapes[module]
        a, b = parts.get("lora_A"), parts.get("lora_B")
        if a is None or b is None:
            raise AdapterError(f"the adapter's '{module}' has only one of lora_A and lora_B")
        if len(a) != 2 or len(b) != 2 or a[1] != in_f or b[0] != out_f or a[0] != b[1]:
            raise AdapterError(f"the adapter's shapes for '{module}' (lora_A {list(a)}, lora_B {list(b)}) do not fit "
                               f"{base_model}, whose layer is {in_f} -> {out_f}; it was trained on another model")
        found_r.add(a[0])
    rank = config.get("r")
    if not config.get("rank_pattern") and rank is not None and found_r != {rank}:
        raise AdapterError(f"adapter_config.json says r={rank} but the weights have rank {sorted(found_r)}")
    targets = config.get("target_modules")
    if isinstance(targets, list):
        unknown = [t for t in targets
                   if t not in leaves and not any(m == t or m.endswith("." + t) for m in base_shapes)]
        if unknown:
            raise AdapterError(f"adapter_config.json targets {', '.join(map(repr, unknown))}, which {base_model} "
                               f"does not have (its linear layers are {names})")
    return {"r": sorted(found_r), "modules": sorted({m.rsplit('.', 1)[-1] for m in ranks}), "lora_layers": len(ranks)}


def delete_import(name: str) -> None:
    ref = _resolve_import(name)
    shutil.rmtree(ref.folder)


# ---- export -----------------------------------------------------------------------------------

def _export_paths(ref: AdapterRef) -> tuple[Path, Path]:
    name = check_name(ref.name, "export name")
    exports = get_settings().exports_dir
    return exports / f"{name}-merged", exports / f"{name}-gguf"


def _mergeable(ref: AdapterRef) -> AdapterRef:
    """``ref``, or AdapterError with the sentence saying why its adapter type cannot be merged."""
    from .adapter_types import merge_problem

    if problem := merge_problem(ref.folder):
        raise AdapterError(problem)
    return ref


def _chat_template(model_dir: Path) -> str | None:
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    try:
        template = json.loads((model_dir / "tokenizer_config.json").read_text()).get("chat_template")
    except (OSError, ValueError):
        return None
    return template if isinstance(template, str) else None


def _merge_is_current(merged_dir: Path, adapter_dir: Path) -> bool:
    weights = list(merged_dir.glob("*.safetensors")) if merged_dir.is_dir() else []
    adapter = adapter_dir / "adapter_model.safetensors"
    return bool(weights) and min(w.stat().st_mtime for w in weights) >= adapter.stat().st_mtime


def _drift_prompts(ref: AdapterRef) -> list[str]:
    job = db.get_job(ref.job_id) if ref.job_id else None
    golden = (job.spec.get("golden_prompts") if job else None) or []
    return list(golden[:3]) or DRIFT_PROMPTS


def read_drift(ref_value: str) -> list[dict]:
    """Stored drift reports of an adapter's GGUF exports (one per quant)."""
    _, gguf_dir = _export_paths(resolve(ref_value))
    out = []
    for path in sorted(gguf_dir.glob("drift-*.json")) if gguf_dir.is_dir() else []:
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out


def existing_gguf(ref_value: str) -> str | None:
    _, gguf_dir = _export_paths(resolve(ref_value))
    files = sorted(gguf_dir.glob("*.gguf"), key=lambda p: p.stat().st_mtime) if gguf_dir.is_dir() else []
    return str(files[-1]) if files else None


def snippets(ref_value: str, gguf_file: str | None = None) -> dict[str, str]:
    """Serving commands for an adapter, with local paths as the UI shows them (relative to the data
    directory, where the commands are meant to be run)."""
    from . import export
    from .models import is_bundled, local_folder, shown_path

    ref = resolve(ref_value)
    base = BUNDLED_HUB_ID if is_bundled(ref.base_model) else ref.base_model
    gguf_file = gguf_file or existing_gguf(ref.ref)
    out = export.serving_snippets(base, str(ref.folder), ref.name, gguf_file)
    local = [ref.folder] + ([Path(gguf_file), Path(gguf_file).parent] if gguf_file else [])
    base_dir = None if is_bundled(base) else local_folder(base)
    shown = [(base, shown_path(base_dir))] if base_dir is not None else []
    shown += [(str(p), shown_path(p)) for p in local]
    for full, short in shown:
        out = {k: v.replace(full, short) for k, v in out.items()}
    return {**endpoint_snippets(ref), **out}


def served_name(ref) -> str:
    """The inference server's name of an adapter (workers/inference/names.py): the run's name,
    ``RUN/checkpoint-N`` or ``imported/NAME``; a run whose name resolves to another run goes by its id."""
    if ref.kind == "imported":
        return ref.ref
    job = db.get_job(ref.job_id)
    run = job.name if db.get_job(job.name).id == job.id else job.id
    if ref.kind == "run":
        return run + FINAL_SUFFIX if ref.ref.endswith(FINAL_SUFFIX) else run
    return f"{run}/checkpoint-{ref.step}"


DEFAULT_ENDPOINT = "http://127.0.0.1:8000/v1"   # where `studio infer` listens unless told otherwise
KEY_LINE = 'export STUDIO_API_KEY="${STUDIO_API_KEY:-$(cat api_key)}"   # the set key, else the data directory\'s file'


def endpoint_snippets(ref: AdapterRef) -> dict[str, str]:
    """curl and `openai` client requests for ``ref`` on the studio's own inference server: a live one's URL,
    else `studio infer`'s default address with a note. The key is read from $STUDIO_API_KEY, never shown."""
    from . import inference_client
    from .models import shown_model

    try:
        url, note = inference_client.pick_server(shown_model(ref.base_model)).url, []
    except inference_client.InferenceError:
        url, note = DEFAULT_ENDPOINT, ["# no inference server is running now: `studio infer` serves this address"]
    return request_snippets(served_name(ref), url, note)


def request_snippets(model: str, url: str, note: list[str] | None = None) -> dict[str, str]:
    """The same chat request to ``model`` at the OpenAI base URL ``url``, as curl and as Python."""
    body = {"model": model, "messages": [{"role": "user", "content": "Hello!"}], "temperature": 0, "max_tokens": 128}
    curl = [*(note or []), KEY_LINE,
            f"curl {url}/chat/completions -H \"Authorization: Bearer $STUDIO_API_KEY\" \\",
            f"  -H 'Content-Type: application/json' -d {shlex.quote(json.dumps(body))}"]
    python = [*(note or []), "# STUDIO_API_KEY: the studio's key (STUDIO_API_KEY, else api_key in its data directory)",
              "import os", "", "from openai import OpenAI", "",
              f"client = OpenAI(base_url={url!r}, api_key=os.environ[\"STUDIO_API_KEY\"])",
              f"reply = client.chat.completions.create(model={model!r}, temperature=0, max_tokens=128,",
              "                                       messages=[{\"role\": \"user\", \"content\": \"Hello!\"}])",
              "print(reply.choices[0].message.content)"]
    return {"endpoint_curl": "\n".join(curl), "endpoint_openai": "\n".join(python)}
