"""An adapter's model card (README.md) and the zip the Adapters tab offers for download.

    model_card(job, ref)     README.md for a finished run: weights used, metrics, evaluation, dataset, config
    zip_adapter(ref)         adapter files + tokenizer (if present) + the model card, under <home>/exports/
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

from . import db
from .adapter_library import (ADAPTER_FILES, BUNDLED_HUB_ID, TOKENIZER_FILES, AdapterError, AdapterRef,
                              imported_meta, resolve)
from .atomic import atomic_path
from .settings import check_name, get_settings


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
    from .adapter_exports import read_drift
    from .serving import drift_sentence

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


def imported_card(ref: AdapterRef) -> str:
    """README.md for an imported adapter: its type, its base and where it came from."""
    from .adapter_types import of_folder
    from .models import shown_model

    meta = imported_meta(ref.folder)
    kind = of_folder(ref.folder)
    label = kind.label if kind is not None else "peft"
    article = "An" if label[0] in "AEIOU" else "A"
    return "\n".join(["---", "library_name: peft", "---", "", f"# {ref.name}", "",
                      f"{article} {label} adapter imported into Fine-Tune Studio for **{shown_model(ref.base_model)}** "
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
    card = model_card(job, ref) if job is not None else imported_card(ref)
    out = settings.exports_dir / f"{check_name(ref.name, 'adapter name')}-adapter.zip"
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in ADAPTER_FILES + TOKENIZER_FILES:
            if (ref.folder / name).is_file():
                zf.write(ref.folder / name, name)
        zf.writestr("README.md", card)
    return out
