"""Train tab: the JobSpec form, target modules from the model's real layers, a memory estimate, Start."""
from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr

from .. import jobs
from ..models import ModelError, linear_layer_names
from ..spec import ATTENTION_NAMES, BUNDLED_MODEL, MLP_NAMES, JobSpec, SpecError, field_help
from . import form
from .datasets_tab import dataset_names

ADVANCED_ORDER = ["method", "name", "eval_dataset", "load_in_8bit", "bnb_4bit_quant_type",
                  "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype", "lora_bias", "use_dora", "use_rslora",
                  "lr_scheduler_type", "warmup_ratio", "max_steps", "gradient_accumulation_steps",
                  "assistant_only_loss", "gradient_checkpointing", "precision", "padding_free",
                  "attn_implementation", "chunked_loss", "dequant_cache", "torch_compile", "weight_decay",
                  "max_grad_norm", "eval_split", "eval_steps", "save_steps", "early_stopping_patience", "seed",
                  "logging_steps", "beta", "golden_prompts", "num_gpus"]


def module_choices(base_model: str) -> list[str]:
    try:
        names = linear_layer_names(base_model) or []
    except ModelError:
        names = []
    return [n for n in names if n != "lm_head"]


def refresh_modules(base_model: str):
    names = module_choices(base_model)
    return gr.update(choices=names, value=names)


def preset(base_model: str, which: str):
    names = module_choices(base_model)
    pick = {"attention": [n for n in names if n in ATTENTION_NAMES], "mlp": [n for n in names if n in MLP_NAMES]}
    return gr.update(value=pick.get(which, names))


def estimate_markdown(spec: JobSpec) -> str:
    try:
        from .. import catalog
        from ..models import cached_dir

        d = cached_dir(spec.base_model)
        config = catalog.config_for(spec.base_model, str(d) if d else None)
        if config is None:
            return "Memory estimate: the model's configuration is not known here."
        from ..jobs import estimate_for_workers

        est, where, warnings = estimate_for_workers(spec, config)
    except Exception as exc:  # an estimate must never block the form
        return f"Memory estimate unavailable: {exc}"
    rows = "\n".join(f"| {k} | {v:.2f} |" for k, v in est.breakdown.items())
    fits = " · ".join(f"{gb} GB {'✓' if ok else '✗'}" for gb, ok in est.fits().items())
    warn = "".join(f"\n\n**Warning: too big for a worker.** {w}" for w in warnings)
    return (f"**Estimated peak memory: {est.total_gb:.2f} GB** · trainable {est.trainable_text()} · {where}{warn}\n\n"
            f"| term | GB |\n|---|---|\n{rows}\n\nFits on: {fits}")


def build() -> dict:
    meta = field_help()
    comps: dict[str, gr.components.Component] = {}
    with gr.Tab("Train", id="train"):
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row():
                    comps["base_model"] = gr.Dropdown([BUNDLED_MODEL], value=BUNDLED_MODEL, allow_custom_value=True,
                                                      label="Base model", info=meta["base_model"]["help"],
                                                      elem_id="spec-base_model")
                    comps["dataset"] = gr.Dropdown(dataset_names(), label="Dataset", info=meta["dataset"]["help"],
                                                   elem_id="spec-dataset")
                modules = module_choices(BUNDLED_MODEL)
                comps["target_modules"] = gr.CheckboxGroup(modules, value=modules, label="Target modules",
                                                           info="Linear layers of the chosen model that get LoRA adapters.",
                                                           elem_id="spec-target_modules")
                with gr.Row():
                    attn_btn = gr.Button("Attention only", size="sm")
                    mlp_btn = gr.Button("MLP only", size="sm")
                    all_btn = gr.Button("All linear", size="sm")
                with gr.Row():
                    for name in ("r", "lora_alpha", "lora_dropout", "load_in_4bit"):
                        comps[name] = form.make_component(name, meta[name])
                with gr.Row():
                    for name in ("learning_rate", "num_train_epochs", "per_device_train_batch_size", "max_length"):
                        comps[name] = form.make_component(name, meta[name])
                with gr.Accordion("Advanced", open=False):
                    for i in range(0, len(ADVANCED_ORDER), 3):
                        with gr.Row():
                            for name in ADVANCED_ORDER[i:i + 3]:
                                comps[name] = form.make_component(name, meta[name])
            with gr.Column(scale=2):
                start = gr.Button("Start training", variant="primary", elem_id="start-training")
                status = gr.Markdown(elem_id="train-status")
                estimate = gr.Markdown(elem_id="memory-estimate")
                with gr.Accordion("YAML", open=False):
                    yaml_file = gr.File(label="Import a job YAML", file_types=[".yaml", ".yml"])
                    yaml_btn = gr.Button("Download this form as YAML", size="sm")
                    yaml_out = gr.File(label="YAML", interactive=False)
        last_job = gr.State(None)  # inside the Tab: a component created directly under gr.Tabs breaks the tab bar
    names = list(comps)
    inputs = [comps[n] for n in names]

    def to_spec(*values) -> JobSpec:
        return form.spec_from_values(names, list(values))

    def on_start(*values):
        """(message, id of the job this browser session just queued, or None)."""
        try:
            spec = to_spec(*values)
            job = jobs.submit(spec)
        except SpecError as exc:
            return form.errors_markdown(exc.errors), None
        except Exception as exc:  # the queue or database refused: say so, no traceback
            return f"**The run was not queued:** {exc}", None
        from .. import db

        pos = db.queue_position(job)
        return (f"Run **{job.name}** queued (position {pos}). Follow it in the Runs tab." if pos else
                f"Run **{job.name}** submitted ({job.status})."), job.id

    def on_estimate(*values):
        try:
            return estimate_markdown(to_spec(*values))
        except SpecError as exc:
            return form.errors_markdown(exc.errors).replace("The run was not queued. ", "")

    def on_yaml_download(*values):
        try:
            spec = to_spec(*values)
        except SpecError as exc:
            return gr.update(), form.errors_markdown(exc.errors)
        out = Path(tempfile.mkdtemp(prefix="studio-yaml-")) / f"{spec.name or 'job'}.yaml"
        out.write_text(spec.to_yaml())
        return str(out), "YAML ready."

    def on_yaml_import(file):
        if file is None:
            return [gr.update()] * len(names) + [""]
        try:
            spec = JobSpec.from_yaml(Path(file).read_text(encoding="utf-8"))
        except (SpecError, UnicodeDecodeError) as exc:
            errors = exc.errors if isinstance(exc, SpecError) else {"config": "the file is not UTF-8 text"}
            return [gr.update()] * len(names) + [form.errors_markdown(errors).replace("The run was not queued. ", "")]
        values = form.values_from_spec(names, spec)
        updates = []
        for n, v in zip(names, values):
            if n == "target_modules":
                names_now = module_choices(spec.base_model)
                v = spec.resolved_target_modules(names_now) if names_now else v
                updates.append(gr.update(choices=names_now or v, value=v))
            elif n == "dataset":
                updates.append(gr.update(choices=dataset_names(), value=v))
            else:
                updates.append(gr.update(value=v))
        return updates + ["Form filled from the YAML file."]

    start_event = start.click(on_start, inputs, [status, last_job], concurrency_limit=4)
    comps["base_model"].change(refresh_modules, [comps["base_model"]], [comps["target_modules"]])
    attn_btn.click(lambda b: preset(b, "attention"), [comps["base_model"]], [comps["target_modules"]])
    mlp_btn.click(lambda b: preset(b, "mlp"), [comps["base_model"]], [comps["target_modules"]])
    all_btn.click(lambda b: preset(b, "all"), [comps["base_model"]], [comps["target_modules"]])
    for name in ("base_model", "target_modules", "r", "load_in_4bit", "per_device_train_batch_size", "max_length",
                 "gradient_checkpointing", "load_in_8bit"):
        comps[name].change(on_estimate, inputs, [estimate], show_progress="hidden")
    yaml_btn.click(on_yaml_download, inputs, [yaml_out, status])
    yaml_file.upload(on_yaml_import, [yaml_file], [*inputs, status])
    return {"components": comps, "start": start, "start_event": start_event, "last_job": last_job,
            "status": status, "estimate": estimate,
            "estimate_fn": on_estimate, "inputs": inputs}
