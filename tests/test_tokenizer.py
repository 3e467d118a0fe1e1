"""studio.tokenizer, the UI's torch-free tokenizer, renders and encodes exactly as transformers' AutoTokenizer does,
for the bundled SmolLM2 and every tiny family model: the same chat text (with and without a system prompt, tools,
reasoning, the generation prompt), the same token ids and offsets, and the same preview figures."""
from __future__ import annotations

import copy

import pytest

from browser import ensure_bundled_model
from families_fixtures import FAMILIES, build_family_model
from test_formats import TOOL_ROW

WEATHER = TOOL_ROW["tools"]
CONVERSATIONS = [
    [{"role": "user", "content": "Hi there! café 日本 <|im_end|>"}, {"role": "assistant", "content": "Hello, friend."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4", "reasoning_content": "two and two"}],
    [{"role": "user", "content": "  spaced  \n\n lines "}, {"role": "assistant", "content": "ok", "name": None},
     {"role": "user", "content": "again"}, {"role": "assistant", "content": "  done\n"}],
    copy.deepcopy(TOOL_ROW["messages"]),
]
# every feature transformers gives a template: tojson's options, namespace, loop controls, dict, raise_exception,
# strftime_now, a {% generation %} block, the special tokens, tools and extra variables
KITCHEN_SINK = (
    "{{ bos_token }}{% set ns = namespace(n=0) %}{% if tools %}{{ tools | tojson(indent=2, sort_keys=True) }}\n"
    "{% endif %}{% for m in messages %}{% if m.role == 'system' and not loop.first %}"
    "{{ raise_exception('system turns go first') }}{% endif %}{% if m.content == 'skip me' %}{% continue %}{% endif %}"
    "{% set ns.n = ns.n + 1 %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' %}{% generation %}{% if m.thinking %}<think>{{ m.thinking }}</think>{% endif %}"
    "{{ m.content }}{% endgeneration %}{% else %}{{ m.content | tojson }}{% endif %}"
    "{% if m.tool_calls %}{{ m.tool_calls | tojson(separators=(',', ':')) }}{% endif %}<|im_end|>\n"
    "{% if ns.n > 5 %}{% break %}{% endif %}{% endfor %}"
    "{{ dict(a=1) | tojson }}{{ strftime_now('%Y') }}"
    "{% if enable_thinking is defined %}{{ enable_thinking }}{% endif %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}{{ eos_token }}")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict:
    bundled = ensure_bundled_model()
    root = tmp_path_factory.mktemp("tokenizer-families")
    return {"bundled": bundled, **{key: build_family_model(key, root / key, bundled) for key in FAMILIES}}


def _pair(folder):
    from transformers import AutoTokenizer

    from studio import tokenizer

    return tokenizer.load(folder), AutoTokenizer.from_pretrained(folder)


def _outcome(tok, messages, **kwargs) -> tuple[bool, str]:
    """(rendered, the text or the refusal): jinja's refusals (Gemma's system turn) must be the same refusal."""
    try:
        return True, tok.apply_chat_template(messages, tokenize=False, **kwargs)
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"


def _encodings(tok, text):
    out = []
    for special in (False, True):
        enc = tok(text, add_special_tokens=special, return_offsets_mapping=True)
        out.append((list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]))
    out.append([list(ids) for ids in tok([text, "plain text", ""], add_special_tokens=True)["input_ids"]])
    return out


@pytest.mark.parametrize("key", ["bundled", *FAMILIES])
def test_the_light_tokenizer_renders_and_encodes_as_transformers(model_dirs, key):
    light, auto = _pair(model_dirs[key])
    assert light.chat_template == auto.chat_template
    assert light.special_tokens_map == auto.special_tokens_map
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(light, name) == getattr(auto, name), name
    assert len(light) == len(auto)
    for messages in CONVERSATIONS:
        for generation in (False, True):
            for extra in ({}, {"tools": WEATHER}, {"enable_thinking": False}):
                rendered, text = _outcome(auto, messages, add_generation_prompt=generation, **extra)
                assert _outcome(light, messages, add_generation_prompt=generation, **extra) == (rendered, text)
                if rendered:
                    assert _encodings(light, text) == _encodings(auto, text)
                    ids = light(text)["input_ids"]
                    for skip in (False, True):
                        assert light.decode(ids, skip_special_tokens=skip) == auto.decode(ids, skip_special_tokens=skip)


@pytest.mark.parametrize("key", ["bundled", "gemma2", "qwen3", "llama3"])
def test_every_template_feature_transformers_offers_renders_the_same(model_dirs, key):
    light, auto = _pair(model_dirs[key])
    auto.chat_template = KITCHEN_SINK
    light = copy.copy(light)
    light.chat_template = KITCHEN_SINK
    long = [{"role": "user", "content": f"turn {i}"} for i in range(8)] + [{"role": "user", "content": "skip me"}]
    for messages in CONVERSATIONS + [long, [{"role": "user", "content": "x"}, {"role": "system", "content": "late"}]]:
        for extra in ({}, {"tools": WEATHER, "enable_thinking": True}):
            assert (_outcome(light, messages, add_generation_prompt=True, **extra)
                    == _outcome(auto, messages, add_generation_prompt=True, **extra))
    assert _outcome(light, [{"role": "user", "content": "x"}, {"role": "system", "content": "late"}]) == (
        False, "TemplateError: system turns go first")


@pytest.mark.parametrize("key", ["bundled", *FAMILIES])
def test_the_preview_figures_are_those_transformers_gives(model_dirs, key, tmp_path):
    """What the Datasets tab shows (highlighted row, notes, token counts, lengths, tool tokens) through studio.render
    and studio.datasets.stats, with either tokenizer."""
    import json

    from identity_data import rows as identity_rows
    from studio import render
    from studio.datasets import load_file, token_stats
    from studio.datasets.stats import tool_stats

    light, auto = _pair(model_dirs[key])
    rows = identity_rows()[:6] + [copy.deepcopy(TOOL_ROW)] + [{"messages": m} for m in CONVERSATIONS]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    chat = load_file(tmp_path / "chat.jsonl").rows  # normalised as the preview reads them
    text = [{"text": "A document about café prices. " * 20}, {"text": "short"}]
    preference = [{"prompt": [{"role": "user", "content": "Pick one"}],
                   "chosen": [{"role": "assistant", "content": "A"}],
                   "rejected": [{"role": "assistant", "content": "B, because it is longer"}]}]

    def figures(tok):
        out = {"stats": [token_stats(tok, chat, "chat", n) for n in (16, 64, 512)],
               "text": token_stats(tok, text, "text", 32), "preference": token_stats(tok, preference, "preference", 64),
               "lengths": [render.token_lengths(tok, chat, "chat"), render.token_lengths(tok, text, "text"),
                           render.token_lengths(tok, preference, "preference")],
               "tools": tool_stats(chat, "chat", tok), "notes": render.template_notes(tok, chat),
               "default": render.default_system_prompt(tok),
               "pack": render.pack_text(tok, [r["text"] for r in text], 16),
               "decoded": tok.decode(render.pack_text(tok, [text[0]["text"]], 64)[0], skip_special_tokens=False)}
        out["segments"] = []
        for row in chat:
            try:
                out["segments"].append(render.preview_segments(tok, row["messages"], 48, row.get("tools")))
            except render.RenderError as exc:
                out["segments"].append(str(exc))
        return out

    assert figures(light) == figures(auto)


def test_a_folder_without_tokenizer_json_is_refused_in_one_sentence(tmp_path):
    from studio import tokenizer

    with pytest.raises(tokenizer.TokenizerError, match="has no tokenizer.json"):
        tokenizer.load(tmp_path)
