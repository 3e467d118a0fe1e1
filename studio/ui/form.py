"""The Train form is a view of JobSpec: components are generated from the spec's fields, and the
handler turns their values back into a JobSpec (typed, validated) in one place."""
from __future__ import annotations

from typing import Any

import gradio as gr

from ..spec import JobSpec, SpecError, field_help

BASIC = ["base_model", "dataset", "r", "lora_alpha", "lora_dropout", "target_modules", "load_in_4bit",
         "learning_rate", "num_train_epochs", "per_device_train_batch_size", "max_length"]
SPECIAL = {"base_model", "dataset", "target_modules", "golden_prompts"}


def make_component(name: str, meta: dict) -> gr.components.Component:
    label, info, default, choices = meta["label"] or name, meta["help"], meta["default"], meta["choices"]
    elem_id = f"spec-{name}"
    if isinstance(default, bool):
        return gr.Checkbox(value=default, label=label, info=info, elem_id=elem_id)
    if choices:
        return gr.Dropdown(choices=list(choices), value=default, label=label, info=info, elem_id=elem_id)
    if isinstance(default, int):
        return gr.Number(value=default, label=label, info=info, precision=0, elem_id=elem_id)
    if isinstance(default, float):
        return gr.Number(value=default, label=label, info=info, elem_id=elem_id)
    if isinstance(default, list):
        return gr.Textbox(value="\n".join(default), label=label, info=info + " One per line.", lines=3,
                          elem_id=elem_id)
    return gr.Textbox(value=default, label=label, info=info, elem_id=elem_id)


def spec_from_values(names: list[str], values: list[Any]) -> JobSpec:
    data: dict[str, Any] = {}
    for name, value in zip(names, values):
        if name == "golden_prompts":
            value = [line.strip() for line in (value or "").splitlines() if line.strip()]
        elif name == "target_modules":
            value = list(value or [])
        elif isinstance(value, float) and field_help()[name]["default"].__class__ is int and value.is_integer():
            value = int(value)
        if value is None and isinstance(field_help()[name]["default"], str):
            value = ""
        if value is None:
            raise SpecError({name: f"{field_help()[name]['label'] or name} is empty"})
        data[name] = value
    return JobSpec.from_dict(data)


def values_from_spec(names: list[str], spec: JobSpec) -> list[Any]:
    out = []
    for name in names:
        value = getattr(spec, name)
        if name == "golden_prompts":
            value = "\n".join(value)
        out.append(value)
    return out


def errors_markdown(errors: dict[str, str]) -> str:
    meta = field_help()
    lines = []
    for key, message in errors.items():
        label = (meta.get(key) or {}).get("label") or key
        lines.append(f"- **{label}**: {message}")
    return "**The run was not queued. Please fix:**\n" + "\n".join(lines)
