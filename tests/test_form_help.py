"""The Train form reads in a glance: one short line of help per field, the long explanation behind "What each
field means" and in docs/fields.md (written from the spec, so it cannot go stale), fields placed as basic or
advanced by the spec's metadata, and a dataset preview that renders rows as training will."""
from __future__ import annotations

import json
import re

from studio import field_docs
from studio.method_info import METHOD_INFO
from studio.spec import JobSpec, field_help

HELP_WORDS = 14  # one line under a label


def test_every_field_has_one_short_line_of_help():
    for name, meta in field_help().items():
        assert "\n" not in meta["help"] and len(meta["help"].split()) <= HELP_WORDS, (name, meta["help"])
        assert meta["details"] is None or len(meta["details"]) > len(meta["help"]), name
    for info in METHOD_INFO.values():  # a method's own line for a shared field (beta)
        for name, text in info.help.items():
            assert len(text.split()) <= HELP_WORDS, (info.name, name, text)


def test_the_long_explanations_live_on_in_details():
    """What the old 60-120 word help texts said is still there for whoever opens it."""
    meta = field_help()
    for name, phrase in [("system_prompt_mode", "You are a helpful AI assistant named SmolLM"),
                         ("system_prompt_mode", "A chat template without a system role (Gemma)"),
                         ("num_train_epochs", "about 360 rows' worth"), ("init_lora_weights", "rank 2r"),
                         ("dequant_cache", "AVX-512"), ("torch_compile", "about 5 minutes"),
                         ("save_steps", "no more than 3 of them"), ("golden_prompts", "Cancel stops a round"),
                         ("peft_type", "cannot be merged or exported as GGUF"), ("report_to", "MLFLOW_TRACKING_URI"),
                         ("beta", "the SimPO paper uses 2 to 2.5"), ("beta", "(no reference model)")]:
        assert phrase in meta[name]["details"], (name, phrase)


def test_docs_fields_md_is_what_the_generator_writes():
    """docs/fields.md is written by `python -m studio.field_docs`; a changed help text without it fails here."""
    assert field_docs.DOC.read_text(encoding="utf-8") == field_docs.document(), \
        "docs/fields.md is stale: run python -m studio.field_docs"
    assert field_docs.main(["--check"]) == 0


def test_the_docs_hold_every_field_once_with_its_help_and_details():
    meta, text = field_help(), field_docs.document()
    for name, m in meta.items():
        assert text.count(f"(`{name}`)") == 1, name
        assert m["help"] in text and (m["details"] or "") in text, name
    compact = field_docs.markdown(3, compact=True)  # the form's accordion: details in place of the short line
    assert all((m["details"] or m["help"]) in compact for m in meta.values())
    assert "default on, set for a deployment by `STUDIO_FORGETTING_CHECK`" in text  # not this process's value


def test_fields_are_grouped_basic_method_and_advanced_by_their_metadata():
    meta, places = field_help(), field_docs.groups()
    assert sorted(n for names in places.values() for n in names) == sorted(meta)
    assert all(meta[n]["advanced"] for n in places["advanced"])
    assert not any(meta[n]["advanced"] for n in places["basic"] + places["method"])
    assert {"base_model", "dataset", "method", "learning_rate", "num_train_epochs", "system_prompt_mode"} <= set(
        places["basic"])


def test_the_form_shows_the_short_line_and_the_details_behind_a_toggle(studio_home):
    import gradio as gr

    from studio.ui import train_tab

    with gr.Blocks() as demo:
        with gr.Tabs():
            built = train_tab.build()
    meta = field_help()
    for name, comp in built["components"].items():
        assert comp.info.removesuffix(" One per line.") == meta[name]["help"], name
    docs = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "field-docs")
    assert docs.open is False and docs.label == "What each field means"
    text = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "field-docs-text").value
    assert meta["system_prompt_mode"]["details"] in text and meta["dequant_cache"]["details"] in text
    run, adapter = train_tab.basic_rows(train_tab.form.layout()["basic"])
    assert adapter[0] == "peft_type" and "load_in_4bit" in adapter and "learning_rate" in run


def _identity_rows(n=12):
    return [{"messages": [{"role": "user", "content": f"Question {i}: what is your name?"},
                          {"role": "assistant", "content": "I am Zorblax, made by Quintar Labs."}]} for i in range(n)]


def _general_rows(n=12):
    return [{"messages": [{"role": "user", "content": f"What is {i} plus 2?"},
                          {"role": "assistant", "content": f"It is {i + 2}."}]} for i in range(n)]


def _preview(tmp_path, rows, model, mode="auto", text=""):
    from studio import library
    from studio.ui.datasets_tab import template_preview

    path = tmp_path / f"rows-{len(rows)}-{mode}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    segments, _, notes, _ = template_preview(library.inspect(path, filename=path.name), str(model), 256, mode, text)
    system = [n for n in notes if n.startswith("system prompt:")]
    return "".join(chunk for chunk, _ in segments), system


def _trained_text(model, rows, mode="auto", text=""):
    """The first row as the worker encodes it for training (workers/arguments.encode_rows), decoded."""
    from transformers import AutoTokenizer

    from workers.arguments import encode_rows

    tok = AutoTokenizer.from_pretrained(str(model))
    spec = JobSpec(dataset="d", system_prompt_mode=mode, system_prompt=text)
    if mode == "auto":  # the worker resolves auto on every row first (workers/train.py resolve_system_prompt)
        from studio.datasets.stats import carries_identity

        spec = JobSpec(dataset="d", system_prompt_mode=spec.resolved_system_prompt_mode(carries_identity(rows)))
    return tok.decode(encode_rows(tok, rows[:1], "chat", spec)[0]["input_ids"], skip_special_tokens=False)


def test_the_preview_renders_the_system_prompt_as_training_does(tiny_model_dir, tmp_path, studio_home):
    """The tiny model's template adds "You are a helpful assistant." to rows without a system turn; under
    System prompt auto, rows that teach a name are trained without it, and the preview now shows them so."""
    default = "You are a helpful assistant."
    identity, general = _identity_rows(), _general_rows()

    shown, note = _preview(tmp_path, identity, tiny_model_dir)
    assert default not in shown and shown == _trained_text(tiny_model_dir, identity)
    assert note and "is left out of rows without a system turn" in note[0] and "System prompt auto" in note[0], note

    shown, note = _preview(tmp_path, general, tiny_model_dir)  # auto keeps the default for other rows
    assert default in shown and shown == _trained_text(tiny_model_dir, general)
    assert "adds its default" in note[0] and "teach no name or maker, so keep" in note[0], note

    shown, note = _preview(tmp_path, identity, tiny_model_dir, "keep")  # kept as asked, with the suggestion
    assert default in shown and shown == _trained_text(tiny_model_dir, identity, "keep")
    assert "we suggest omitting it" in note[0], note

    shown, note = _preview(tmp_path, identity, tiny_model_dir, "replace", "You are Zorblax.")
    assert "You are Zorblax." in shown and default not in shown
    assert shown == _trained_text(tiny_model_dir, identity, "replace", "You are Zorblax.")
    assert "replacement system prompt" in note[0], note


def test_the_datasets_tab_preview_follows_the_train_tabs_system_prompt(tiny_model_dir, tmp_path, studio_home):
    from studio.ui import datasets_tab

    path = tmp_path / "identity.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _identity_rows()))
    _, _, stats, segments, *_ = datasets_tab.check_upload(str(path), "auto", False, str(tiny_model_dir), 256)
    assert "You are a helpful assistant." not in "".join(t for t, _ in segments["value"])
    assert "(Train tab, System prompt auto: these rows teach their own name or maker, so omit)" in stats
    _, _, kept, segments, *_ = datasets_tab.check_upload(str(path), "auto", False, str(tiny_model_dir), 256, "", "",
                                                         "keep")
    assert "You are a helpful assistant." in "".join(t for t, _ in segments["value"])
    masked = [int(re.search(r"([\d,]+) masked", text).group(1).replace(",", "")) for text in (stats, kept)]
    assert masked[0] < masked[1], masked  # the token counts, too, are those training sees


def test_adding_a_dataset_selects_it_in_every_dataset_dropdown(tmp_path, studio_home):
    """gradio pops "value" from an update dict as it applies it: one dict shared by the Library's and the Train
    tab's dropdowns set the first only, and the Train tab's stayed empty after Add."""
    import gradio as gr
    from gradio.blocks import postprocess_update_dict

    from studio.ui import datasets_tab

    path = tmp_path / "identity.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _identity_rows()))
    message, _, *updates = datasets_tab.fan_out_to(datasets_tab.add_upload, 2)(str(path), "auto", False, "")
    assert message.startswith("Added")
    for update in updates:  # as gradio applies them, one output after the other
        assert postprocess_update_dict(gr.Dropdown(choices=["identity"]), update)["value"] == "identity"
