"""What every Train form field means, written from JobSpec's own metadata: the form's "What each field means"
accordion and docs/fields.md are both this text, so neither can drift from the spec.

    python -m studio.field_docs            # rewrite docs/fields.md
    python -m studio.field_docs --check    # exit 1 when docs/fields.md is stale

Each field has a one-line ``help`` (shown under its label) and, where there is more to say, ``details``
(trade-offs, numbers, when to change it). Pure Python: no gradio, no torch.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .adapter_types import ADAPTER_TYPES
from .method_info import METHOD_FIELDS, METHOD_INFO
from .spec import field_help

DOC = Path(__file__).resolve().parent.parent / "docs" / "fields.md"
GROUPS = (("basic", "Basic"), ("method", "Method-specific"), ("advanced", "Advanced"))


def groups() -> dict[str, list[str]]:
    """Field names by where the form shows them, in declaration order: ``basic`` (advanced=False),
    ``method`` (read by some methods only, not advanced: under the method choice) and ``advanced``."""
    out: dict[str, list[str]] = {key: [] for key, _ in GROUPS}
    for name, meta in field_help().items():
        out["advanced" if meta["advanced"] else "method" if name in METHOD_FIELDS else "basic"].append(name)
    return out


def _value(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ", ".join(f"`{v}`" for v in value) or "none"
    if value == "":
        return "empty"
    return f"`{value}`"


def _facts(name: str, meta: dict) -> str:
    """Default, choices, range, and which methods or adapter types read the field, in one line."""
    facts = []
    if meta.get("env"):
        from .settings import SWITCHES

        facts.append(f"default {_value(SWITCHES[meta['env']])}, set for a deployment by `{meta['env']}`")
    else:
        facts.append(f"default {_value(meta['default'])}")
    if meta["choices"]:
        facts.append("one of " + ", ".join(f"`{c}`" for c in meta["choices"]))
    if meta["bounds"]:
        lo, hi = meta["bounds"]
        facts.append(f"{lo:g} to {hi:g}" + (" (both excluded)" if meta["exclusive"] else ""))
    if name in METHOD_FIELDS:
        facts.append("shown for " + ", ".join(m.label for m in METHOD_INFO.values() if name in m.fields))
    readers = [t for t in ADAPTER_TYPES.values() if name in t.fields]
    if readers and len(readers) < len(ADAPTER_TYPES):
        facts.append("adapter types " + ", ".join(t.label for t in readers))
    return " · ".join(facts)


def field_markdown(name: str, meta: dict, heading: str | None = "###") -> str:
    """One field: its label, its one line of help, its details, each method's own line where methods read it
    differently, and its facts. With ``heading`` None, a compact paragraph (the form's accordion)."""
    per_method = [f"{m.label}: {m.help[name]}" for m in METHOD_INFO.values() if name in m.help]
    if heading is None:
        text = f"**{meta['label'] or name}** (`{name}`): {meta.get('details') or meta['help']}"  # details say it all
        return " ".join([text, *per_method, f"*{_facts(name, meta)}*"])
    lines = [f"{heading} {meta['label'] or name} (`{name}`)", "", f"**{meta['help']}**"]
    if meta.get("details"):
        lines += ["", meta["details"]]
    if per_method:
        lines += [""] + [f"- {line}" for line in per_method]
    lines += ["", f"*{_facts(name, meta)}*"]
    return "\n".join(lines)


def markdown(level: int = 2, compact: bool = False) -> str:
    """Every field, grouped as the form shows them; ``level``: the heading level of the groups; ``compact``:
    a paragraph per field instead of a heading."""
    meta, places = field_help(), groups()
    parts = []
    for key, title in GROUPS:
        parts.append(f"{'#' * level} {title}")
        parts += [field_markdown(name, meta[name], None if compact else "#" * (level + 1)) for name in places[key]]
    return "\n\n".join(parts) + "\n"


def document() -> str:
    """docs/fields.md."""
    return ("# Train form fields\n\n"
            "Every choice of a training job (the Train form, a job YAML, `studio train`), with the one line the "
            "form shows under its label and the longer explanation behind the form's *What each field means*. "
            "Generated from `studio/spec.py` by `python -m studio.field_docs`; do not edit by hand.\n\n"
            + markdown(2))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = document()
    if "--check" in argv:
        current = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
        if current != text:
            print(f"{DOC} is stale: run python -m studio.field_docs", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
