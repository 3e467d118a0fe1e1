"""The ecosystem's dataset shapes, written here as the tools and hubs publish them: each is read with the right
kind and nothing in it (tools, tool calls, reasoning, per-turn flags, pictures, long documents) is silently lost."""
from __future__ import annotations

import copy
import json
import math

import pytest

from studio.datasets import DatasetError, load_file, sft_rows, token_stats
from studio.render import encode_chat, encode_text, pack_text, preview_segments, render_chat, template_notes

from test_datasets import msg, write

WEATHER = {"name": "get_weather", "description": "Current weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}

# Qwen2.5 / Hermes style: tools in the system turn, calls as <tool_call> JSON, tool results as <tool_response>
HERMES = (
    "{% if tools %}{{ '<|im_start|>system\nYou may call tools:\n<tools>' }}"
    "{% for t in tools %}{{ '\n' + (t | tojson) }}{% endfor %}{{ '\n</tools><|im_end|>\n' }}{% endif %}"
    "{% for m in messages %}"
    "{% if m.role == 'assistant' %}{{ '<|im_start|>assistant\n' + m.content }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}"
    "{{ '<tool_call>\n{\"name\": \"' + c.function.name + '\", \"arguments\": ' + (c.function.arguments | tojson) + '}\n</tool_call>' }}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\n' }}"
    "{% elif m.role == 'tool' %}{{ '<|im_start|>user\n<tool_response>\n' + m.content + '\n</tool_response><|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TOOL_ROW = {"messages": [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
    {"role": "assistant", "content": "It is 18C and sunny in Paris."},
], "tools": [{"type": "function", "function": WEATHER}]}


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


# ---- LLaMA-Factory ----------------------------------------------------------------------------

def test_llamafactory_parts_with_loss_weight_and_reasoning(tmp_path):
    rows = [{"messages": [
        {"role": "user", "content": [{"type": "text", "value": "Hi"}]},
        {"role": "assistant", "content": [{"type": "text", "value": "Old reply."}], "loss_weight": 0.0},
        {"role": "user", "content": [{"type": "text", "value": "Again?"}]},
        {"role": "assistant", "loss_weight": 1.0, "content": [
            {"type": "reasoning", "value": "They ask twice."}, {"type": "text", "value": "Yes, again."}]},
    ]}]
    ds = load_file(write(tmp_path, "lf.jsonl", rows))
    assert (ds.format, ds.kind) == ("messages", "chat")
    turns = ds.rows[0]["messages"]
    assert turns[1] == {"role": "assistant", "content": "Old reply.", "train": False}
    assert turns[3] == {"role": "assistant", "content": "Yes, again.", "reasoning": "They ask twice.", "train": True}


def test_llamafactory_chosen_and_rejected_messages(tmp_path):
    rows = [{"messages": [msg("user", "Tell a joke.")],
             "chosen_messages": [msg("assistant", "Why did the chicken cross the road?")],
             "rejected_messages": [msg("assistant", "No.")]}]
    ds = load_file(write(tmp_path, "lfpref.jsonl", rows))
    assert (ds.format, ds.kind) == ("messages_preference", "preference")
    assert ds.rows[0] == {"prompt": [msg("user", "Tell a joke.")],
                          "chosen": [msg("assistant", "Why did the chicken cross the road?")],
                          "rejected": [msg("assistant", "No.")]}


def test_llamafactory_kto_tag_is_unpaired_and_sft_trains_only_desirable(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}], "kto_tag": True},
            {"conversations": [{"from": "human", "value": "2+3?"}, {"from": "gpt", "value": "7"}], "kto_tag": False}]
    ds = load_file(write(tmp_path, "kto.json", rows))
    assert (ds.format, ds.kind) == ("unpaired_preference", "unpaired_preference")
    assert ds.rows[1] == {"prompt": [msg("user", "2+3?")], "completion": [msg("assistant", "7")], "label": False}
    kept, note = sft_rows(ds.kind, ds.rows)
    assert kept == [{"messages": [msg("user", "2+2?"), msg("assistant", "4")]}]
    assert "only the 1 desirable rows" in note and note in ds.notes


def test_sharegpt_tools_column_and_function_call_turns(tmp_path):
    rows = [{"conversations": [
        {"from": "human", "value": "Weather in Paris?"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
        {"from": "observation", "value": "18C"},
        {"from": "gpt", "value": "18C."}], "tools": json.dumps([WEATHER])}]
    ds = load_file(write(tmp_path, "glaive.json", rows))
    assert ds.rows[0]["tools"] == [{"type": "function", "function": WEATHER}]
    assert ds.rows[0]["messages"][1]["tool_calls"][0]["function"] == {"name": "get_weather",
                                                                      "arguments": {"city": "Paris"}}


# ---- OpenAI ------------------------------------------------------------------------------------

def test_openai_chat_with_tools_and_weight(tmp_path):
    row = copy.deepcopy(TOOL_ROW)
    row["messages"].insert(1, {"role": "assistant", "content": "Let me check.", "weight": 0})
    row["messages"].insert(2, msg("user", "Please do."))
    ds = load_file(write(tmp_path, "openai.jsonl", [row]))
    out = ds.rows[0]
    assert out["tools"] == TOOL_ROW["tools"]
    assert out["messages"][1] == {"role": "assistant", "content": "Let me check.", "train": False}
    assert out["messages"][3]["tool_calls"] == [{"type": "function", "id": "call_1", "function": {
        "name": "get_weather", "arguments": {"city": "Paris"}}}]


def test_openai_legacy_functions_column(tmp_path):
    rows = [{"messages": [msg("user", "Weather?"),
                          {"role": "assistant", "function_call": {"name": "get_weather", "arguments": "{}"}}],
             "functions": [WEATHER]}]
    ds = load_file(write(tmp_path, "functions.jsonl", rows))
    assert ds.rows[0]["tools"] == [{"type": "function", "function": WEATHER}]
    assert ds.rows[0]["messages"][1]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_openai_preference(tmp_path):
    rows = [{"input": {"messages": [msg("user", "Hello")], "tools": [], "parallel_tool_calls": True},
             "preferred_output": [msg("assistant", "Hi, how can I help?")],
             "non_preferred_output": [msg("assistant", "What?")]}]
    ds = load_file(write(tmp_path, "oaipref.jsonl", rows))
    assert (ds.format, ds.kind) == ("openai_preference", "preference")
    assert ds.rows[0] == {"prompt": [msg("user", "Hello")], "chosen": [msg("assistant", "Hi, how can I help?")],
                          "rejected": [msg("assistant", "What?")]}


# ---- TRL ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("row, kind", [
    ({"prompt": "The sky is"}, "prompt_only"),
    ({"prompt": [msg("user", "What color is the sky?")]}, "prompt_only"),
    ({"prompt": "The sky is", "completion": " blue.", "label": True}, "unpaired_preference"),
    ({"prompt": [msg("user", "Sky?")], "completion": [msg("assistant", "Green.")], "label": False},
     "unpaired_preference"),
    ({"text": "The sky is blue."}, "text"),
    ({"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}, "preference"),
    ({"chosen": [msg("user", "Sky?"), msg("assistant", "Blue.")],
      "rejected": [msg("user", "Sky?"), msg("assistant", "Green.")]}, "preference"),
])
def test_trl_dataset_types(tmp_path, row, kind):
    assert load_file(write(tmp_path, "trl.jsonl", [row])).kind == kind


def test_unpaired_rows_are_never_plain_chat(tmp_path):
    rows = [{"prompt": "Q", "completion": "bad answer", "label": False},
            {"prompt": "Q2", "completion": "good answer", "label": True}]
    ds = load_file(write(tmp_path, "kto.jsonl", rows))
    assert ds.kind == "unpaired_preference"
    assert [r["messages"][-1]["content"] for r in sft_rows(ds.kind, ds.rows)[0]] == ["good answer"]


# ---- Anthropic HH ------------------------------------------------------------------------------

def test_anthropic_hh_transcripts_share_a_prompt(tmp_path):
    rows = [{"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Joke?\n\nAssistant: Knock knock.",
             "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Joke?\n\nAssistant: No."}]
    ds = load_file(write(tmp_path, "hh.jsonl", rows))
    assert (ds.format, ds.kind) == ("hh", "preference")
    assert ds.rows[0] == {"prompt": [msg("user", "Hi"), msg("assistant", "Hello!"), msg("user", "Joke?")],
                          "chosen": [msg("assistant", "Knock knock.")], "rejected": [msg("assistant", "No.")]}


# ---- no silent loss ----------------------------------------------------------------------------

def test_multimodal_rows_are_refused_or_dropped_with_a_count(tmp_path):
    rows = [{"messages": [msg("user", "<image>What is this?"), msg("assistant", "A cat.")], "images": ["cat.png"]},
            {"messages": [msg("user", "Hi"), msg("assistant", "Hello")], "images": []},
            {"messages": [msg("user", "<image>And this?"), msg("assistant", "A dog.")], "images": ["dog.png"]}]
    path = write(tmp_path, "mllm.jsonl", rows)
    with pytest.raises(DatasetError) as err:
        load_file(path)
    assert str(err.value).startswith("2 of 3 rows hold pictures, video or audio (in 'images'), and the studio "
                                     "trains text-only models")
    ds = load_file(path, drop_bad=True)
    assert len(ds.rows) == 1 and ds.stats()["media_dropped"] == 2
    assert any("2 rows with pictures" in n for n in ds.notes)


def test_image_placeholders_without_a_media_column_are_never_trained_as_text(tmp_path):
    """LLaMA-Factory rows whose pictures were left behind: the '<image>' placeholder is the only trace."""
    rows = [{"conversations": [{"from": "human", "value": "<image>\nWhat colour is the car?"},
                               {"from": "gpt", "value": "Red."}]},
            {"conversations": [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hi there."}]}]
    path = write(tmp_path, "sharegpt-mllm.jsonl", rows)
    with pytest.raises(DatasetError) as err:
        load_file(path)
    assert str(err.value).startswith("1 of 2 rows hold pictures, video or audio (in 'conversations, as <image> "
                                     "placeholders'), and the studio trains text-only models")
    ds = load_file(path, drop_bad=True)
    assert [r["messages"][0]["content"] for r in ds.rows] == ["Hello"] and ds.stats()["media_dropped"] == 1


def test_txt_of_long_lines_is_one_document_per_line(tmp_path):
    lines = [f"Article {i}. " + "word " * 2000 for i in range(30)]
    ds = load_file(write(tmp_path, "articles.txt", "\n".join(lines) + "\n"))
    assert len(ds.rows) == 30 and ds.rows[3]["text"] == lines[3]
    assert ds.notes[0].startswith("30 documents, one per line")


def test_long_document_trains_as_packed_blocks(tok):
    doc = " ".join(f"Paris{i % 97} is the capital of France." for i in range(3000))[:100_000]
    assert len(doc) == 100_000
    whole = encode_text(tok, doc)[0]
    blocks = pack_text(tok, [doc], 512)
    assert len(blocks) == math.ceil(len(whole) / 512) > 1
    assert [i for b in blocks for i in b] == whole
    stats = token_stats(tok, [{"text": doc}], "text", 512)
    assert (stats["trained_tokens"], stats["truncated_tokens"]) == (len(whole), 0)


# ---- rendering: flags, tools, reasoning --------------------------------------------------------

def test_loss_mask_equals_per_turn_flags(tok, tmp_path):
    rows = [{"messages": [
        msg("user", "Hello, how are you?"),
        {"role": "assistant", "content": "I am fine.", "weight": 0},
        msg("user", "What is your name?"),
        {"role": "assistant", "content": "My name is Zorblax.", "weight": 1},
    ]}]
    messages = load_file(write(tmp_path, "w.jsonl", rows)).rows[0]["messages"]
    ids, mask = encode_chat(tok, messages)
    assert trained_text(tok, ids, mask) == "My name is Zorblax.<|im_end|>"
    unflagged = [{k: v for k, v in m.items() if k != "train"} for m in messages]
    ids2, mask2 = encode_chat(tok, unflagged)
    assert ids2 == ids and trained_text(tok, ids2, mask2) == "I am fine.<|im_end|>My name is Zorblax.<|im_end|>"
    segments = preview_segments(tok, messages)
    assert [text for text, trained in segments if trained] == ["My name is Zorblax.<|im_end|>"]


def test_tool_row_renders_schema_and_call_through_a_tool_template(tok, tmp_path):
    row = load_file(write(tmp_path, "tools.jsonl", [TOOL_ROW])).rows[0]
    hermes = with_template(tok, HERMES)
    text, spans = render_chat(hermes, row["messages"], row["tools"])
    assert '"name": "get_weather", "description": "Current weather of a city"' in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    ids, mask = encode_chat(hermes, row["messages"], tools=row["tools"])
    trained = trained_text(hermes, ids, mask)
    assert '<tool_call>' in trained and "It is 18C and sunny in Paris." in trained
    assert "<tools>" not in trained and "18C, sunny" not in trained
    assert template_notes(hermes, [row])[:2] == ["tool schemas: passed to the chat template's tools",
                                                 "tool calls: rendered by the chat template's tool_calls"]


def test_tool_row_without_a_tool_template_shows_the_schema_in_the_system_turn(tok, tmp_path):
    row = load_file(write(tmp_path, "tools.jsonl", [TOOL_ROW])).rows[0]
    text, _ = render_chat(tok, row["messages"], row["tools"])
    assert text.startswith("<|im_start|>system\nYou can call these tools")
    assert '"name": "get_weather"' in text
    assert "system turn" in template_notes(tok, [row])[0]


def test_reasoning_is_rendered_in_think_tags_and_trained(tok):
    messages = [msg("user", "2+2?"), {"role": "assistant", "content": "4", "reasoning": "Two and two."}]
    ids, mask = encode_chat(tok, messages)
    assert trained_text(tok, ids, mask) == "<think>\nTwo and two.\n</think>\n\n4<|im_end|>"
    slot = with_template(tok, "{% for m in messages %}{{ m.role + ':' }}{% if m.reasoning_content %}"
                              "{{ '[r]' + m.reasoning_content + '[/r]' }}{% endif %}{{ m.content + '<|im_end|>' }}"
                              "{% endfor %}{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}")
    text, _ = render_chat(slot, messages)
    assert "[r]Two and two.[/r]4" in text
    assert "reasoning_content" in template_notes(slot, [{"messages": messages}])[0]


def test_token_stats_count_trained_masked_and_truncated(tok):
    long_reply = "My name is Zorblax, made by Quintar Labs. " * 40
    rows = [{"messages": [msg("user", "Name?"), msg("assistant", long_reply)]},
            {"messages": [msg("user", "Hi"), msg("assistant", "Hello")]}]
    full = [encode_chat(tok, r["messages"]) for r in rows]
    stats = token_stats(tok, rows, "chat", 64)
    assert stats["trained_tokens"] + stats["truncated_tokens"] == sum(sum(m) for _, m in full)
    assert stats["truncated_tokens"] == sum(m[64:].count(1) for _, m in full) > 0
    assert stats["overlong_rows"] == 1
    assert stats["masked_tokens"] == sum(m[:64].count(0) for _, m in full)
