"""Datasets tab: upload, check, preview what the model will learn, store, list, delete."""
from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from .. import db, library
from ..datasets import FORMATS, DatasetError, sft_rows, token_stats
from ..datasets.stats import (carries_identity, parse_fill, placeholders, shown_value, tokenizer_for, tool_stats,
                              tools_sentence)
from ..limits import FILL_VALUE_CHARS
from ..settings import UnsafePath
from ..spec import BUNDLED_MODEL, JobSpec

PREVIEW_ROWS = 5
STATS_ROWS = 2000  # rows the preview tokenises for its statistics
LOSS_WARNING = 0.05  # share of trained tokens cut by max length above which the preview and Start warn


def dataset_table() -> list[list]:
    return [[d.name, d.format, d.kind, d.rows, d.filename, filled_text(d.fill), d.sha256[:10]]
            for d in db.list_datasets()]


def filled_text(fill: dict, sep: str = "; ") -> str:
    """The blanks a dataset fills, as its table cell and the Add message show them: each cut to SHOWN_VALUE_CHARS
    characters (the table goes whole to every browser that opens the tab)."""
    return sep.join(f"{shown_value(k)} = {shown_value(v)}" for k, v in fill.items())


def dataset_names() -> list[str]:
    return [d.name for d in db.list_datasets()]


def _row_summary(row: dict) -> list[str]:
    if "messages" in row:
        turns = [f"{m['role']}: {m['content']}" for m in row["messages"]]
        return ["\n".join(turns)[:600], str(sum(m["role"] == "assistant" for m in row["messages"]))]
    if "text" in row:
        return [row["text"][:600], "-"]
    return [json.dumps(row, ensure_ascii=False)[:600], "-"]


def _preview_conversation(loaded) -> tuple[list[dict], list | None, bool]:
    """(turns, tools, prompt only) of the first row the chosen method would train, as the preview shows it."""
    rows, _ = sft_rows(loaded.kind, loaded.rows)
    first = (rows or loaded.rows)[0]
    if "messages" in first:
        return first["messages"], first.get("tools"), False
    if loaded.kind == "preference":
        return first["prompt"] + first["chosen"], first.get("tools"), False
    return first["prompt"] + first.get("completion", []), first.get("tools"), "completion" not in first


def template_preview(loaded, base_model: str, max_length: int, system_prompt_mode: str = "auto",
                     system_prompt: str = ""):
    """(highlighted segments of the first row, token-length histogram, notes on how the chosen model's template
    renders the data, token statistics) for this base model and max length; Nones when it is not on disk yet.
    Conversations are rendered under the run's system-prompt choice as training renders them (workers/arguments
    ``encode_rows``): ``auto`` resolved on every row SFT trains, as the worker's ``resolve_system_prompt`` does."""
    tok = tokenizer_for(base_model)
    if tok is None:
        return None, None, [f"the model '{base_model}' is not on disk yet, so the preview cannot use its template"], {}
    from .. import render
    from ..charts import length_histogram

    sample = as_trained = loaded.rows[:STATS_ROWS]  # as_trained: under the run's system-prompt choice
    if loaded.kind == "text" and loaded.rows[0].get("segments"):
        segments = [(seg["text"], "trained" if seg["train"] else None) for seg in loaded.rows[0]["segments"]]
        notes = ["template-free segments: each is trained as written (no chat template, no special tokens added); "
                 "segments labelled false are read but carry no loss"]
    elif loaded.kind == "text":
        blocks = render.pack_text(tok, [loaded.rows[0]["text"]], max_length)
        segments = [(tok.decode(blocks[0], skip_special_tokens=False)[:2000], "trained")]
        notes = [f"plain text is packed into {max_length}-token blocks: the first document alone makes "
                 f"{len(blocks)} block{'s' if len(blocks) != 1 else ''}, every token trained"]
    else:
        messages, tools, prompt_only = _preview_conversation(loaded)
        chosen, teaches = None, carries_identity(sample)  # preference and prompt rows: TRL renders them as they are
        if not prompt_only and loaded.kind in ("chat", "unpaired_preference"):  # what SFT trains as conversations
            chosen, teaches = system_prompt_mode or "auto", carries_identity(sft_rows(loaded.kind, loaded.rows)[0])
            mode = JobSpec(system_prompt_mode=chosen).resolved_system_prompt_mode(teaches)
            default = render.default_system_prompt(tok)
            messages = render.with_system_prompt(messages, mode, system_prompt or "", default)
            turns = "messages" if loaded.kind == "chat" else "prompt"  # unpaired: the prompt before the reply
            as_trained = [{**r, turns: render.with_system_prompt(r[turns], mode, system_prompt or "", default)}
                          for r in sample]
        if prompt_only:
            text, _ = render.render_chat(tok, messages, tools, generation_prompt=True)
            segments = [(text, None)]
        else:
            segments = [(text, "trained" if trained else None)
                        for text, trained in render.preview_segments(tok, messages, max_length, tools)]
        notes = render.template_notes(tok, sample)
        if system := render.system_prompt_note(tok, sample, teaches, chosen):
            notes.append(system)
    lengths = render.token_lengths(tok, as_trained, loaded.kind)
    return (segments, length_histogram(lengths, max_length), notes,
            token_stats(tok, as_trained, loaded.kind, max_length))


def tokens_markdown(tokens: dict, max_length: int, sampled: bool) -> str:
    if not tokens:
        return ""
    of = f" (first {STATS_ROWS} rows)" if sampled else ""
    text = (f"\n\n**Tokens at max length {max_length}{of}:** {tokens['trained_tokens']:,} trained · "
            f"{tokens['masked_tokens']:,} masked · {tokens['truncated_tokens']:,} cut "
            f"({tokens['overlong_rows']} rows over max length)")
    if tokens["truncated_share"] > LOSS_WARNING:
        text += (f"\n\n**Warning:** {tokens['truncated_share']:.0%} of the trained tokens would be cut at max "
                 f"length {max_length}: raise max length, or choose 'drop' for over-long rows in the Train tab")
    return text


def parse_mapping(text: str | None) -> dict[str, str] | None:
    """'file column = expected column' per line -> mapping; None when empty. Raises DatasetError."""
    mapping = {}
    for n, line in enumerate((text or "").splitlines(), 1):
        if not line.strip():
            continue
        left, sep, right = line.replace("->", "=").partition("=")
        if not sep or not left.strip() or not right.strip():
            raise DatasetError(f"column mapping line {n} should look like 'question = instruction', got '{line.strip()}'")
        mapping[left.strip()] = right.strip()
    return mapping or None


def mapping_text(mapping: dict | None) -> str:
    return "\n".join(f"{k} = {v}" for k, v in (mapping or {}).items())


def fill_text(values: dict[str, str], blanks_left) -> str:
    """The Fill template blanks box: a line per blank, those filled with their value, the others to complete."""
    return "\n".join([f"{k} = {v}" for k, v in values.items()] + [f"{k} = " for k in blanks_left if k not in values])


def fill_box(loaded) -> dict:
    """Shown only for a file with template blanks (filled or not), listing them."""
    left = placeholders(loaded.rows)
    if not loaded.fill and not left:
        return gr.update(value="", visible=False)
    return gr.update(value=fill_text(loaded.fill, left), visible=True)


def check_upload(file, fmt: str, drop_bad: bool, base_model: str, max_length: float, mapping: str = "",
                 fill: str = "", system_prompt_mode: str = "auto", system_prompt: str = ""):
    """Preview without storing: message, rows table, stats, highlighted template, histogram, the column mapping
    used (proposed automatically when the file's names differ), and the template blanks to fill in. The row is
    rendered under the Train tab's base model, max length and system-prompt choice, as training renders it."""
    empty = ("", gr.update(value=[], visible=False), "", gr.update(value=None, visible=False),
             gr.update(value=None, visible=False), gr.update(),
             gr.update() if (fill or "").strip() else gr.update(value="", visible=False))
    if file is None:
        return ("Choose a file to see its preview.",) + empty[1:]
    path = Path(file if isinstance(file, str) else file.name)
    try:
        loaded = library.inspect(path, filename=path.name, format=None if fmt == "auto" else fmt,
                                 mapping=parse_mapping(mapping), drop_bad=drop_bad,
                                 fill=parse_fill((fill or "").splitlines(), skip_empty=True))
    except (DatasetError, UnsafePath) as exc:
        return (f"**This file cannot be used:** {exc}",) + empty[1:]
    stats = loaded.stats()
    msg = (f"**{path.name}**: {loaded.format} format ({loaded.kind.replace('_', ' ')}), "
           f"**{len(loaded.rows)} rows** ready to train")
    if loaded.dropped:
        msg += f" ({len(loaded.dropped)} dropped: " + "; ".join(loaded.dropped[:3]) + ("…" if len(loaded.dropped) > 3 else "") + ")"
    rows = [[i + 1, *_row_summary(r)] for i, r in enumerate(loaded.rows[:PREVIEW_ROWS])]
    stats_md = " · ".join(f"{k.replace('_', ' ')}: {v}" for k, v in stats.items())
    base_model, max_length = base_model or BUNDLED_MODEL, int(max_length or 512)
    stats_md += f"\n\nPreview for **{base_model}** at max length **{max_length}**."
    try:
        segments, hist, notes, tokens = template_preview(loaded, base_model, max_length, system_prompt_mode,
                                                         system_prompt)
    except Exception as exc:  # the preview is a help, never a blocker
        segments, hist, notes, tokens = None, None, [], {}
        stats_md += f"\n\n(template preview unavailable: {exc})"
    try:
        tools = tools_sentence(tool_stats(loaded.rows, loaded.kind, tokenizer_for(base_model), token_rows=STATS_ROWS))
    except Exception:  # the preview is a help: without a tokenizer the schemas are still counted
        tools = tools_sentence(tool_stats(loaded.rows, loaded.kind))
    stats_md += "".join(f"\n\n- {note}" for note in loaded.notes + notes + [tools] if note)
    stats_md += tokens_markdown(tokens, max_length, len(loaded.rows) > STATS_ROWS)
    if loaded.mapping:
        msg += " · columns mapped: " + ", ".join(f"{k} → {v}" for k, v in loaded.mapping.items())
    return (msg, gr.update(value=rows, visible=True), stats_md,
            gr.update(value=segments, visible=segments is not None),
            gr.update(value=hist, visible=hist is not None), mapping_text(loaded.mapping), fill_box(loaded))


def add_upload(file, fmt: str, drop_bad: bool, name: str, mapping: str = "", fill: str = ""):
    if file is None:
        return "Choose a file first.", dataset_table(), gr.update()
    path = Path(file if isinstance(file, str) else file.name)
    try:
        rec, created = library.add(path, name=name.strip() or None, filename=path.name,
                                   format=None if fmt == "auto" else fmt, drop_bad=drop_bad,
                                   mapping=parse_mapping(mapping),
                                   fill=parse_fill((fill or "").splitlines(), skip_empty=True))
    except (DatasetError, UnsafePath) as exc:
        return f"**Not added:** {exc}", dataset_table(), gr.update()
    what = "Added" if created else "Already in the library (same content)"
    filled = filled_text(rec.fill, ", ")
    return (f"{what}: **{rec.name}**, {rec.rows} rows ({rec.format})" + (f", blanks filled: {filled}." if filled
                                                                          else "."), dataset_table(),
            gr.update(choices=dataset_names(), value=rec.name))


def delete_selected(name: str):
    if not name:
        return "Choose a dataset to delete.", dataset_table(), gr.update(choices=dataset_names())
    try:
        library.delete(name)
    except DatasetError as exc:
        return f"**Not deleted:** {exc}", dataset_table(), gr.update()
    return f"Deleted {name}.", dataset_table(), gr.update(choices=dataset_names(), value=None)


def build() -> dict:
    with gr.Tab("Datasets", id="datasets"):
        gr.Markdown("Upload chat (`messages` with tools, tool calls and reasoning; ShareGPT; LLaMA-Factory v1), "
                    "instruction (alpaca), prompt/completion, plain text, template-free `segments` (axolotl), "
                    "preference (TRL, OpenAI, Anthropic HH) or unpaired preference "
                    "(KTO) data as JSON, JSONL, CSV, TSV, Parquet or TXT (optionally gzip-compressed). The preview "
                    "uses the base model and max length chosen in the Train tab.")
        with gr.Row():
            with gr.Column(scale=2):
                upload = gr.File(label="Dataset file", file_count="single", elem_id="dataset-upload")
            with gr.Column(scale=1):
                fmt = gr.Dropdown(["auto", *FORMATS], value="auto", label="Format", elem_id="dataset-format")
                drop_bad = gr.Checkbox(False, label="Drop bad rows instead of refusing the file")
                mapping = gr.Textbox(label="Column mapping", lines=2, elem_id="dataset-mapping",
                                     info="file column = expected column, one per line; proposed when names "
                                          "differ (question = instruction, answer = output, ...)")
                fill = gr.Textbox(label="Fill template blanks", lines=2, elem_id="dataset-fill", visible=False,
                                  info="the file's blanks ({{name}}, <NAME>), one per line: write your value after "
                                       f"'=' (your assistant's name, its maker; at most {FILL_VALUE_CHARS} "
                                       "characters); the file is kept as uploaded")
                name = gr.Textbox(label="Name (optional)", placeholder="derived from the file name",
                                  elem_id="dataset-name")
                add_btn = gr.Button("Add to library", variant="primary", elem_id="dataset-add")
        message = gr.Markdown(elem_id="dataset-message")
        preview = gr.Dataframe(headers=["#", "row", "assistant turns"], visible=False, wrap=True,
                               elem_id="dataset-preview", label="First rows")
        stats = gr.Markdown(elem_id="dataset-stats")
        with gr.Row():
            segments = gr.HighlightedText(label="What the model learns (highlighted = trained on)",
                                          color_map={"trained": "green"}, visible=False, elem_id="dataset-mask",
                                          combine_adjacent=True)
            hist = gr.Plot(label="Token lengths", visible=False, elem_id="dataset-hist")
        gr.Markdown("### Library")
        table = gr.Dataframe(value=dataset_table, headers=["name", "format", "kind", "rows", "file", "blanks filled", "sha256"],
                             interactive=False, elem_id="dataset-table")
        with gr.Row():
            chosen = gr.Dropdown(choices=dataset_names(), label="Dataset", allow_custom_value=False,
                                 elem_id="dataset-chosen")
            delete_btn = gr.Button("Delete dataset", variant="stop")
    return {"upload": upload, "fmt": fmt, "drop_bad": drop_bad, "name": name, "mapping": mapping, "fill": fill,
            "add": add_btn,
            "message": message, "preview": preview, "stats": stats, "segments": segments, "hist": hist,
            "table": table, "chosen": chosen, "delete": delete_btn}


def follow(parts: dict, base_model, max_length, system_prompt_mode=None, system_prompt=None) -> None:
    """Check and preview on every change of the file or its options, and of the Train tab's base model, max
    length and system-prompt choice (that tab's components), so the preview shows what training will do."""
    train = [c for c in (system_prompt_mode, system_prompt) if c is not None]
    inputs = [parts["upload"], parts["fmt"], parts["drop_bad"], base_model, max_length, parts["mapping"],
              parts["fill"], *train]
    outputs = [parts[k] for k in ("message", "preview", "stats", "segments", "hist", "mapping", "fill")]
    parts["upload"].change(lambda *a: check_upload(*a[:5], "", "", *a[7:]), inputs, outputs)  # a new file: afresh
    triggers = [parts["fmt"].change, parts["drop_bad"].change, parts["mapping"].submit, parts["mapping"].blur,
                parts["fill"].submit, parts["fill"].blur, base_model.change, max_length.change]
    if system_prompt_mode is not None:
        triggers.append(system_prompt_mode.change)
    if system_prompt is not None:
        triggers += [system_prompt.submit, system_prompt.blur]
    for trigger in triggers:
        trigger(check_upload, inputs, outputs)


def fan_out_to(handler, n: int):
    """``handler`` -> (message, table, update) returned as (message, table, and the update for each of ``n``
    dropdowns): a copy each, since gradio pops "value" from an update dict as it applies it, so one dict shared
    by several outputs set the value of the first only (the Train tab's dropdown stayed empty after Add)."""
    def run(*args):
        message, table, update = handler(*args)
        return (message, table, *[dict(update) for _ in range(n)])
    return run


def wire(parts: dict, dataset_dropdowns: list) -> None:
    """Connect buttons whose outputs live in other tabs (the Train tab's dataset dropdown)."""
    dropdowns = [parts["chosen"], *dataset_dropdowns]

    def fan_out(handler):
        return fan_out_to(handler, len(dropdowns))

    parts["add"].click(fan_out(add_upload), [parts["upload"], parts["fmt"], parts["drop_bad"], parts["name"],
                                              parts["mapping"], parts["fill"]],
                       [parts["message"], parts["table"], *dropdowns])
    parts["delete"].click(fan_out(delete_selected), [parts["chosen"]], [parts["message"], parts["table"], *dropdowns])
