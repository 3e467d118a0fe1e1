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

    # (a template refusing the system role no longer refuses: the system text is folded into the first user turn)
    strict = with_template(tok, "{% for m in messages %}{% if m['role'] == 'tool' %}"
                                "{{ raise_exception('Tool role not supported') }}{% endif %}"
                                "{{ m['content'] }}{% endfor %}")
    with pytest.raises(RenderError, match="chat template refused this conversation: Tool role not supported"):
        encode_chat(strict, TWO_TURNS[1:3] + [{"role": "tool", "content": "sunny"}])


# ---- templates without a system role (Gemma) -----------------------------------------------------------------

# Gemma 2's template: no system role (it raises), roles must alternate, the assistant is "model"
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
# early Phi-3-mini: a system turn renders without error, and without its text
DROPS_SYSTEM = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ '<|user|>\n' + m['content'] + '<|end|>\n' }}"
    "{% elif m['role'] == 'assistant' %}{{ '<|assistant|>\n' + m['content'] + '<|end|>\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def untrained_text(tok, ids, mask) -> str:
    return tok.decode([i for i, m in zip(ids, mask) if not m], skip_special_tokens=False)


def test_a_template_without_a_system_role_gets_the_system_text_in_the_first_user_turn(tok):
    from studio.render import system_role

    gemma = with_template(tok, GEMMA)
    assert system_role(tok) and not system_role(gemma)
    ids, mask = encode_chat(gemma, TWO_TURNS)
    text = gemma.decode(ids, skip_special_tokens=False)
    assert "<start_of_turn>user\nBe brief.\n\nHello, how are you?<end_of_turn>" in text
    assert text.count("Be brief.") == 1 and "<start_of_turn>system" not in text
    # the system text is part of the prompt: masked, like the user turn it opens
    assert trained_text(gemma, ids, mask) == "I am fine, thank you.<end_of_turn>My name is Zorblax.<end_of_turn>"
    assert "Be brief.\n\nHello, how are you?" in untrained_text(gemma, ids, mask)
    # the same conversation without the system turn renders as the template always did
    bare, _ = encode_chat(gemma, TWO_TURNS[1:])
    assert gemma.decode(bare, skip_special_tokens=False) == gemma.apply_chat_template(TWO_TURNS[1:], tokenize=False)


def test_folding_covers_every_system_prompt_choice_and_chat(tok):
    from studio.render import render_text, fold_system, with_system_prompt

    gemma = with_template(tok, GEMMA)
    user = [{"role": "user", "content": "Who are you?"}]
    # replace: the Train tab's system prompt opens the user turn; in chat (generation prompt) as in training
    replaced = render_text(gemma, with_system_prompt(user, "replace", "Talk like a pirate."), generation_prompt=True)
    assert replaced.endswith("<start_of_turn>user\nTalk like a pirate.\n\nWho are you?<end_of_turn>\n"
                             "<start_of_turn>model\n")
    # omit / an empty system turn: nothing is folded
    assert fold_system([{"role": "system", "content": ""}] + user) == user
    blank = [{"role": "system", "content": "  "}] + user
    assert render_text(gemma, blank) == gemma.apply_chat_template(user, tokenize=False)
    # a conversation that opens with the assistant: the system text becomes a user turn of its own
    assert fold_system([{"role": "system", "content": "S"}, {"role": "assistant", "content": "Hi"}]) == [
        {"role": "user", "content": "S"}, {"role": "assistant", "content": "Hi"}]
    # a template that silently drops the system text is detected the same way
    drops = with_template(tok, DROPS_SYSTEM)
    ids, mask = encode_chat(drops, TWO_TURNS[:3])
    assert "<|user|>\nBe brief.\n\nHello, how are you?<|end|>" in drops.decode(ids, skip_special_tokens=False)
    assert "Be brief." not in trained_text(drops, ids, mask)


def test_the_preview_says_the_system_prompt_is_folded(tok):
    from studio.render import template_notes

    rows = [{"messages": TWO_TURNS}]
    notes = template_notes(with_template(tok, GEMMA), rows)
    folded = [n for n in notes if n.startswith("system prompt:")]
    assert len(folded) == 1 and "no system role" in folded[0] and "first user turn" in folded[0]
    assert not any(n.startswith("system prompt:") for n in template_notes(tok, rows))


def test_the_dataset_preview_of_a_gemma_style_model_folds_and_says_so(tiny_model_dir, tmp_path, studio_home):
    import json
    import shutil

    from studio import library
    from studio.ui.datasets_tab import template_preview

    folder = tmp_path / "gemma-style"
    shutil.copytree(tiny_model_dir, folder)
    for name in ("chat_template.jinja", "chat_template.json"):
        (folder / name).unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": GEMMA}))
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": TWO_TURNS[:3]}) + "\n")
    loaded = library.inspect(data, filename=data.name)
    segments, _, notes, _ = template_preview(loaded, str(folder), 256)
    assert any("no system role" in n for n in notes), notes
    untrained = "".join(text for text, label in segments if label is None)
    assert "Be brief.\n\nHello, how are you?" in untrained
    assert "".join(text for text, label in segments if label) == "I am fine, thank you.<end_of_turn>"


# ---- Qwen3's thinking switch --------------------------------------------------------------------------------

# Qwen3's template, tools left out: reasoning in reasoning_content (or <think> in the content), dropped from turns
# before the last user turn; the last reply always carries a think block; enable_thinking=false ends the
# generation prompt in an empty one
QWEN3 = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}"
    "{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}"
    "{%- if ns.multi_step_tool and message.role == 'user' %}{%- set ns.multi_step_tool = false %}"
    "{%- set ns.last_query_index = index %}{%- endif %}{%- endfor %}"
    "{%- for message in messages %}{%- set content = message.content %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}"
    "{%- elif message.role == 'assistant' %}{%- set reasoning_content = '' %}"
    "{%- if message.reasoning_content is string %}{%- set reasoning_content = message.reasoning_content %}"
    "{%- elif '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\n') %}{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index %}"
    "{%- if loop.last or (not loop.last and reasoning_content) %}"
    "{{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n'"
    " + content.lstrip('\n') }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\n' + content }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\n' + content }}{%- endif %}"
    "{{- '<|im_end|>\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\n\n</think>\n\n' }}{%- endif %}"
    "{%- endif %}"
)
EMPTY_THINK = "<think>\n\n</think>\n\n"


def test_qwen3_rows_without_reasoning_train_with_thinking_off(tok):
    from studio.render import render_text

    qwen3 = with_template(tok, QWEN3)
    ids, mask = encode_chat(qwen3, TWO_TURNS)
    text = qwen3.decode(ids, skip_special_tokens=False)
    assert text == qwen3.apply_chat_template(TWO_TURNS, tokenize=False, enable_thinking=False)
    assert text.endswith(f"<|im_start|>assistant\n{EMPTY_THINK}My name is Zorblax.<|im_end|>\n")
    # the empty think block is the template's prompt for a reply without thinking: masked, not learned
    assert trained_text(qwen3, ids, mask) == "I am fine, thank you.<|im_end|>My name is Zorblax.<|im_end|>"
    assert EMPTY_THINK in untrained_text(qwen3, ids, mask)
    # chat asks the same way: the generation prompt ends in the empty think block
    assert render_text(qwen3, TWO_TURNS[:4], generation_prompt=True).endswith(f"<|im_start|>assistant\n{EMPTY_THINK}")


def test_qwen3_rows_with_reasoning_train_it_with_thinking_on(tok):
    qwen3 = with_template(tok, QWEN3)
    row = [{"role": "user", "content": "What is 2+2?"},
           {"role": "assistant", "content": "4", "reasoning": "Two plus two is four."}]
    ids, mask = encode_chat(qwen3, row)
    assert trained_text(qwen3, ids, mask) == "<think>\nTwo plus two is four.\n</think>\n\n4<|im_end|>"
    # (the last newline is the template's, after the end-of-turn token)
    assert untrained_text(qwen3, ids, mask) == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n\n"


def test_the_preview_says_what_the_thinking_switch_does(tok):
    from studio.render import template_notes

    qwen3 = with_template(tok, QWEN3)
    notes = [n for n in template_notes(qwen3, [{"messages": TWO_TURNS}]) if n.startswith("thinking:")]
    assert len(notes) == 1 and "enable_thinking" in notes[0] and "off" in notes[0]
    assert '"<think>\\n\\n</think>\\n\\n"' in notes[0] and "not trained on" in notes[0]
    reasoning = [{"messages": [{"role": "user", "content": "Q"},
                               {"role": "assistant", "content": "A", "reasoning": "R"}]}]
    assert any("reasoning is trained" in n for n in template_notes(qwen3, reasoning))
    assert not any(n.startswith("thinking:") for n in template_notes(tok, [{"messages": TWO_TURNS}]))
