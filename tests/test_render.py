"""Assistant-only masks from the model's own chat template, checked on the tiny ChatML tokenizer and variants."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest

from studio.render import encode_chat, encode_text, preview_segments, render_chat, token_lengths

SYSTEM = {"role": "system", "content": "Be brief."}
TWO_TURNS = [
    SYSTEM,
    {"role": "user", "content": "Hello, how are you?"},
    {"role": "assistant", "content": "I am fine, thank you."},
    {"role": "user", "content": "What is your name?"},
    {"role": "assistant", "content": "My name is Zorblax."},
]

# Llama-3 style: no newline after the end-of-turn token, header before every turn
LLAMA3 = (
    "{{ '<|endoftext|>' }}{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '<|im_end|>\n\n' + m['content'] | trim + '<|endoftext|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_end|>\n\n' }}{% endif %}"
)
# rewrites earlier assistant turns (like templates that drop reasoning from history): prefixes do not line up
REWRITES_HISTORY = (
    "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}"
    "{{ 'A: ' + m['content'] + '<|im_end|>\n' }}{% elif m['role'] == 'assistant' %}"
    "{{ 'A (final): ' + m['content'] + '<|im_end|>\n' }}{% else %}"
    "{{ m['role'][0] | upper + ': ' + m['content'] + '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'A: ' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def with_template(tok, template):
    other = copy.deepcopy(tok)
    other.chat_template = template
    return other


def trained_text(tok, ids, mask) -> str:
    return tok.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False)


def test_assistant_tokens_marked_user_and_system_not(tok):
    ids, mask = encode_chat(tok, TWO_TURNS[:3])
    assert len(ids) == len(mask) and set(mask) == {0, 1}
    assert trained_text(tok, ids, mask) == "I am fine, thank you.<|im_end|>"
    untrained = tok.decode([i for i, m in zip(ids, mask) if not m], skip_special_tokens=False)
    assert "Be brief." in untrained and "Hello, how are you?" in untrained and "thank you" not in untrained
    # the trained tokens are one run, and the last one is the end-of-turn token
    first, last = mask.index(1), len(mask) - 1 - mask[::-1].index(1)
    assert all(mask[first:last + 1]) and ids[last] == tok.convert_tokens_to_ids("<|im_end|>")


def test_ids_are_the_template_rendering(tok):
    ids, _ = encode_chat(tok, TWO_TURNS)
    assert tok.decode(ids, skip_special_tokens=False) == tok.apply_chat_template(TWO_TURNS, tokenize=False)


def test_multi_turn_marks_every_assistant_turn(tok):
    ids, mask = encode_chat(tok, TWO_TURNS)
    assert trained_text(tok, ids, mask) == "I am fine, thank you.<|im_end|>My name is Zorblax.<|im_end|>"
    runs = sum(1 for i in range(len(mask)) if mask[i] and (i == 0 or not mask[i - 1]))
    assert runs == 2


def test_tool_turns_and_default_system_prompt_are_not_trained(tok):
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": '{"name": "weather", "arguments": {}}'},
                {"role": "tool", "content": "sunny"},
                {"role": "assistant", "content": "It is sunny."}]
    ids, mask = encode_chat(tok, messages)
    assert trained_text(tok, ids, mask) == '{"name": "weather", "arguments": {}}<|im_end|>It is sunny.<|im_end|>'


def test_truncation_keeps_the_start(tok):
    ids, mask = encode_chat(tok, TWO_TURNS)
    short_ids, short_mask = encode_chat(tok, TWO_TURNS, max_length=40)
    assert (short_ids, short_mask) == (ids[:40], mask[:40])
    assert encode_chat(tok, TWO_TURNS, max_length=10_000) == (ids, mask)


@pytest.mark.parametrize("template, expected", [
    (LLAMA3, "I am fine, thank you.<|endoftext|>My name is Zorblax.<|endoftext|>"),
    # byte-level BPE folds the space after 'A:' into the reply's first token, which is trained on
    (REWRITES_HISTORY, " I am fine, thank you.<|im_end|> My name is Zorblax.<|im_end|>"),
    (None, "I am fine, thank you.<|im_end|>My name is Zorblax.<|im_end|>"),  # no template: ChatML fallback
])
def test_other_templates(tok, template, expected):
    other = with_template(tok, template)
    ids, mask = encode_chat(other, TWO_TURNS)
    assert trained_text(other, ids, mask) == expected


def test_assistant_first_turn(tok):
    messages = [{"role": "assistant", "content": "Welcome!"}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}]
    ids, mask = encode_chat(tok, messages)
    assert trained_text(tok, ids, mask) == "Welcome!<|im_end|>Hello.<|im_end|>"


def test_render_chat_spans(tok):
    text, spans = render_chat(tok, TWO_TURNS)
    assert [text[a:b] for a, b in spans] == ["I am fine, thank you.<|im_end|>", "My name is Zorblax.<|im_end|>"]


def test_preview_segments(tok):
    segments = preview_segments(tok, TWO_TURNS)
    assert "".join(s for s, _ in segments) == tok.apply_chat_template(TWO_TURNS, tokenize=False)
    assert [s for s, trained in segments if trained] == ["I am fine, thank you.<|im_end|>", "My name is Zorblax.<|im_end|>"]
    assert all(a[1] != b[1] for a, b in zip(segments, segments[1:]))  # consecutive chunks alternate
    short = preview_segments(tok, TWO_TURNS, max_length=40)
    ids, _ = encode_chat(tok, TWO_TURNS, max_length=40)
    assert "".join(s for s, _ in short) == tok.decode(ids, skip_special_tokens=False)


def test_encode_text(tok):
    ids, mask = encode_text(tok, "The capital of France is Paris.")
    assert ids[-1] == tok.eos_token_id and mask == [1] * len(ids)
    assert tok.decode(ids[:-1]) == "The capital of France is Paris."
    assert encode_text(tok, "The capital of France is Paris.", max_length=3) == (ids[:3], [1, 1, 1])


def test_token_lengths(tok):
    chat = [{"messages": TWO_TURNS}, {"messages": TWO_TURNS[1:3]}]
    assert token_lengths(tok, chat, "chat") == [len(encode_chat(tok, r["messages"])[0]) for r in chat]
    assert token_lengths(tok, [{"text": "Hello"}], "text") == [len(encode_text(tok, "Hello")[0])]
    pref = {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello there."}],
            "rejected": [{"role": "assistant", "content": "No."}]}
    assert token_lengths(tok, [pref], "preference") == [len(encode_chat(tok, pref["prompt"] + pref["chosen"])[0])]
    with pytest.raises(ValueError, match="unknown dataset kind"):
        token_lengths(tok, [], "images")


def test_module_does_not_import_torch():
    code = "import sys, studio.render; sys.exit(('torch' in sys.modules) + 2 * ('transformers' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0


def test_template_refusal_is_one_sentence(tok):
    from studio.render import RenderError

    strict = with_template(tok, "{% for m in messages %}{% if m['role'] == 'system' %}"
                                "{{ raise_exception('System role not supported') }}{% endif %}"
                                "{{ m['content'] }}{% endfor %}")
    with pytest.raises(RenderError, match="chat template refused this conversation: System role not supported"):
        encode_chat(strict, TWO_TURNS)
