"""The Train form is a view of JobSpec: components are generated from the spec's fields, and the
handler turns their values back into a JobSpec (typed, validated) in one place."""
from __future__ import annotations

from typing import Any

import gradio as gr

from ..adapter_types import ADAPTER_TYPES
from ..method_info import METHOD_FIELDS, METHOD_INFO, shown_fields
from ..spec import JobSpec, SpecError, field_help

# built by the Train tab itself: the model's own layer names, the uploaded datasets
SPECIAL = ("base_model", "dataset", "target_modules")


def layout() -> dict[str, list[str]]:
    """Where each JobSpec field sits, from the spec's own metadata, in declaration order:
    ``basic`` (advanced=False), ``method`` (fields only some methods read and not advanced: under the method
    choice) and ``advanced`` (advanced=True, in the Advanced accordion). SPECIAL fields and ``method`` itself
    are placed by the tab."""
    from ..field_docs import groups

    return {where: [n for n in names if n not in SPECIAL and n != "method"] for where, names in groups().items()}


def adapter_fields() -> tuple[str, ...]:
    """Fields some adapter types read and others do not (shown only for the chosen ``peft_type``)."""
    every = [set(t.fields) for t in ADAPTER_TYPES.values()]
    some = set().union(*every) - set.intersection(*every)
    return tuple(name for name in field_help() if name in some)


def adapter_updates(peft_type: str) -> list[dict]:
    """gr.update per adapter_fields(): visible when the chosen adapter type reads the field."""
    used = set(ADAPTER_TYPES[peft_type].fields) if peft_type in ADAPTER_TYPES else set()
    return [gr.update(visible=name in used) for name in adapter_fields()]


# field -> (the field it follows, the value that shows it)
SHOWN_WHEN = {"system_prompt": ("system_prompt_mode", "replace")}


def visible_for(spec_defaults: JobSpec, name: str) -> bool:
    """Whether a field starts visible: read by the default method and the default adapter type, and shown by
    the default of the field it follows (SHOWN_WHEN)."""
    if name in METHOD_FIELDS and not shown_fields(spec_defaults.method)[name]:
        return False
    if name in SHOWN_WHEN:
        leader, value = SHOWN_WHEN[name]
        return getattr(spec_defaults, leader) == value
    return name not in adapter_fields() or name in ADAPTER_TYPES[spec_defaults.peft_type].fields


def make_component(name: str, meta: dict, visible: bool = True, **layout) -> gr.components.Component:
    """The field's component: its label, its one line of help (``info``; the long explanation is ``details``,
    behind the form's "What each field means"), its default and choices. ``layout``: scale, min_width."""
    label, info, default, choices = meta["label"] or name, meta["help"], meta["default"], meta["choices"]
    common = {"label": label, "info": info, "elem_id": f"spec-{name}", "visible": visible, **layout}
    if isinstance(default, bool):
        return gr.Checkbox(value=default, **common)
    if choices:
        return gr.Dropdown(choices=list(choices), value=default, **common)
    if isinstance(default, (int, float)):  # no precision=0 for whole numbers: gradio's rounding takes true as 1
        return gr.Number(value=default, **common)  # and fails on NaN or text with a bare "Error"; JobSpec names them
    if isinstance(default, list):
        return gr.Textbox(value="\n".join(default), lines=3, **{**common, "info": info + " One per line."})
    return gr.Textbox(value=default, **common)


def method_updates(method: str) -> dict[str, dict]:
    """Field -> gr.update for the fields some methods read: shown only for ``method``, with the help text
    that method gives a shared field (beta means something different to DPO, ORPO and GRPO)."""
    info = METHOD_INFO.get(method)
    meta = field_help()
    return {name: gr.update(visible=shown, info=(info.help.get(name) if info else None) or meta[name]["help"])
            for name, shown in shown_fields(method).items()}


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
