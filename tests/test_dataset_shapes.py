"""The last public dataset shapes, each in a file written here in that shape: OpenAI's developer role,
LLaMA-Factory's v1 tool-call content parts, tool schemas reported by `studio dataset check --json` and the
preview, axolotl's template-free segments (trained and masked as labelled), and preference sets with a few
empty rows (refused with the way on, dropped and counted when asked)."""
from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from conftest import ROOT
from studio.datasets import DatasetError, load_file

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def jsonl(tmp_path, name: str, rows: list[dict]) -> str:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def part(kind: str, value: str) -> dict:
    return {"type": kind, "value": value}


# ---- 1. OpenAI's developer role ---------------------------------------------------------------------

def test_the_developer_role_is_the_system_turn(tmp_path):
    rows = [{"messages": [{"role": "developer", "content": "Answer in French."},
                          {"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Bonjour"}]},
            {"messages": [{"role": "developer", "content": [{"type": "text", "text": "Be terse."}]},
                          {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}]
    ds = load_file(jsonl(tmp_path, "rft.jsonl", rows))
    assert ds.kind == "chat" and len(ds.rows) == 2
    assert ds.rows[0]["messages"][0] == {"role": "system", "content": "Answer in French."}
    assert ds.rows[1]["messages"][0] == {"role": "system", "content": "Be terse."}


def test_an_unknown_role_still_names_the_known_ones(tmp_path):
    rows = [{"messages": [{"role": "narrator", "content": "x"}, {"role": "assistant", "content": "y"}]}]
    with pytest.raises(DatasetError, match="unknown role 'narrator'; expected system \\(or developer\\)"):
        load_file(jsonl(tmp_path, "bad.jsonl", rows))


# ---- 2. LLaMA-Factory v1 reasoning / tool-use rows ------------------------------------------------

def v1_row() -> dict:
    return {"messages": [
        {"role": "system", "content": [part("text", "You solve requests with tools.")]},
        {"role": "user", "content": [part("text", "Weather in Oslo and Rome?")]},
        {"role": "assistant", "content": [
            part("reasoning", "Two cities: two calls."),
            part("tool_call", json.dumps({"name": "get_weather", "arguments": {"city": "Oslo"}})),
            part("tool_call", json.dumps({"name": "get_weather", "arguments": {"city": "Rome"}}))]},
        {"role": "tool", "content": [part("text", '[{"city": "Oslo", "temp": 3}, {"city": "Rome", "temp": 18}]')]},
        {"role": "assistant", "content": [part("reasoning", "Report both."), part("text", "Oslo 3°C, Rome 18°C.")]}],
        "tools": json.dumps([WEATHER])}


def test_v1_tool_call_parts_become_structured_tool_calls(tmp_path):
    ds = load_file(jsonl(tmp_path, "reason_tool_use.jsonl", [v1_row()]))
    assert (ds.format, ds.kind) == ("messages", "chat")
    turns = ds.rows[0]["messages"]
    assert turns[2]["role"] == "assistant" and turns[2]["reasoning"] == "Two cities: two calls."
    assert turns[2]["tool_calls"] == [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]
    assert turns[2]["content"] == ""
    assert turns[3]["role"] == "tool" and "Oslo" in turns[3]["content"]
    assert turns[4] == {"role": "assistant", "content": "Oslo 3°C, Rome 18°C.", "reasoning": "Report both."}
    assert ds.rows[0]["tools"] == [WEATHER]


def test_a_tool_call_part_outside_an_assistant_turn_is_one_sentence(tmp_path):
    row = v1_row()
    row["messages"][1]["content"].append(part("tool_call", json.dumps({"name": "get_weather", "arguments": {}})))
    with pytest.raises(DatasetError, match="turn 2 of 'messages' is a user turn holding a tool call"):
        load_file(jsonl(tmp_path, "user_calls.jsonl", [row]))
    bad = v1_row()
    bad["messages"][2]["content"][1] = part("tool_call", "{not json")
    with pytest.raises(DatasetError, match="part 2 of the content of turn 3 of 'messages' is a tool call that is not a JSON object"):
        load_file(jsonl(tmp_path, "broken.jsonl", [bad]))


def test_v1_tool_rows_train_their_calls(tmp_path, tiny_model_dir):
    """The calls are trained tokens of the assistant turn, as the chat template writes them."""
    from transformers import AutoTokenizer

    from studio.render import encode_chat

    ds = load_file(jsonl(tmp_path, "reason_tool_use.jsonl", [v1_row()]))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids, mask = encode_chat(tok, ds.rows[0]["messages"], None, ds.rows[0]["tools"])
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert "get_weather" in trained and "Rome" in trained and "Oslo 3°C" in trained
    assert "Weather in Oslo and Rome?" not in trained


# ---- 3. tool schemas reported -----------------------------------------------------------------------

def glaive_like(n: int) -> list[dict]:
    """ShareGPT rows with a tools column, as LLaMA-Factory's glaive tool-call demo has them."""
    rows = []
    for i in range(n):
        convo = [{"from": "human", "value": f"What is the weather in city {i}?"},
                 {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": f"c{i}"}})},
                 {"from": "observation", "value": json.dumps({"temp": i})},
                 {"from": "gpt", "value": f"It is {i} degrees."}]
        if i % 3 == 2:
            convo = [{"from": "human", "value": f"Say hello {i}"}, {"from": "gpt", "value": f"Hello {i}"}]
        rows.append({"conversations": convo, "tools": json.dumps([WEATHER, CLOCK] if i % 2 else [WEATHER])})
    return rows + [{"conversations": [{"from": "human", "value": "no tools here"}, {"from": "gpt", "value": "ok"}]}]


def test_dataset_check_json_reports_the_tool_schemas(tmp_path, tiny_model_dir):
    path = jsonl(tmp_path, "glaive_toolcall.jsonl", glaive_like(9))
    run = subprocess.run([sys.executable, "-m", "studio.cli", "dataset", "check", path, "--json",
                          "--base-model", str(tiny_model_dir)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    tools = report["tools"]
    assert (tools["rows"], tools["names"], tools["distinct_names"]) == (9, ["get_time", "get_weather"], 2)
    assert tools["rows_calling_tools"] == 6
    assert tools["schema_tokens"] > 9 * 10 and tools["schema_tokens_per_row"] > 10
    # the schemas' own tokens: a row with two schemas costs more than a row with one
    plain = subprocess.run([sys.executable, "-m", "studio.cli", "dataset", "check", path, "--base-model",
                            str(tiny_model_dir)], cwd=ROOT, capture_output=True, text=True)
    assert "tool schemas in the rows: 9 rows carry them (2 distinct tools: get_time, get_weather); 6 rows call a tool" in plain.stdout


def test_rows_without_tools_report_none(tmp_path):
    from studio.datasets.stats import tool_stats

    ds = load_file(jsonl(tmp_path, "plain.jsonl", [{"messages": [{"role": "user", "content": "a"},
                                                                 {"role": "assistant", "content": "b"}]}]))
    assert tool_stats(ds.rows, ds.kind) is None


def test_the_preview_shows_the_tool_schemas(tmp_path, tiny_model_dir, studio_home):
    from studio.ui.datasets_tab import check_upload

    path = jsonl(tmp_path, "glaive_toolcall.jsonl", glaive_like(6))
    out = check_upload(path, "auto", False, str(tiny_model_dir), 512)
    assert "tool schemas in the rows: 6 rows carry them (2 distinct tools: get_time, get_weather); 4 rows call a tool" in out[2]
    assert "the schemas add about" in out[2]


# ---- 4. axolotl's template-free segments ----------------------------------------------------------

SEGMENTS = [{"segments": [{"label": False, "text": "<|im_start|>Question: capital of France?\n"},
                          {"label": True, "text": "Answer: Paris<|im_end|>"},
                          {"label": False, "text": " (source: atlas)"}]},
            {"segments": [{"label": True, "text": "def add(a, b):\n    return a + b\n"}]}]


def test_segments_are_text_rows_with_their_train_flags(tmp_path):
    ds = load_file(jsonl(tmp_path, "template_free.jsonl", SEGMENTS))
    assert (ds.format, ds.kind, len(ds.rows)) == ("segments", "text", 2)
    first = ds.rows[0]
    assert first["text"] == "<|im_start|>Question: capital of France?\nAnswer: Paris<|im_end|> (source: atlas)"
    assert [s["train"] for s in first["segments"]] == [False, True, False]


def test_segments_train_only_the_labelled_text(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from studio.datasets.stats import token_stats
    from studio.spec import JobSpec
    from workers.arguments import encode_rows

    ds = load_file(jsonl(tmp_path, "template_free.jsonl", SEGMENTS))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    spec = JobSpec(base_model=str(tiny_model_dir), dataset="x", max_length=256, load_in_4bit=False)
    encoded = encode_rows(tok, ds.rows, ds.kind, spec)
    assert len(encoded) == 2
    first = encoded[0]
    trained = tok.decode([i for i, m in zip(first["input_ids"], first["assistant_masks"]) if m])
    read_only = tok.decode([i for i, m in zip(first["input_ids"], first["assistant_masks"]) if not m])
    assert trained == "Answer: Paris<|im_end|>"
    assert read_only == "<|im_start|>Question: capital of France?\n (source: atlas)"
    assert tok.decode(first["input_ids"]) == ds.rows[0]["text"]      # as written: nothing added
    stats = token_stats(tok, ds.rows, ds.kind, 256)
    assert stats["masked_tokens"] == first["assistant_masks"].count(0) and stats["trained_tokens"] > 0


def test_segments_without_a_trained_segment_or_text_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="no segment of 'segments' is labelled true"):
        load_file(jsonl(tmp_path, "none.jsonl", [{"segments": [{"label": False, "text": "only context"}]}]))
    with pytest.raises(DatasetError, match="segment 2 of 'segments' is a number"):
        load_file(jsonl(tmp_path, "odd.jsonl", [{"segments": [{"label": True, "text": "a"}, 5]}]))


# ---- 5. preference sets with a few empty rows -----------------------------------------------------

def hh_rows(n: int, empty_every: int) -> list[dict]:
    rows = []
    for i in range(n):
        prompt = f"\n\nHuman: Question number {i}?"
        chosen = "" if i % empty_every == empty_every - 1 else f"{prompt}\n\nAssistant: A careful answer {i}."
        rows.append({"chosen": chosen, "rejected": f"{prompt}\n\nAssistant: A rude answer {i}."})
    return rows


def test_a_preference_set_with_empty_rows_says_how_to_go_on(tmp_path):
    path = jsonl(tmp_path, "hh_test.jsonl", hh_rows(100, 50))
    with pytest.raises(DatasetError) as err:
        load_file(path)
    message = str(err.value)
    assert message.startswith("row 50: 'chosen' is empty")
    assert "2 of 100 rows have problems" in message and "--drop-bad-rows" in message and "'Drop bad rows'" in message
    ds = load_file(path, drop_bad=True)
    assert (ds.format, len(ds.rows), ds.bad_dropped) == ("hh", 98, 2)
    assert ds.dropped_sentence() == "98 of 100 rows used; left out: 2 bad (first: row 50: 'chosen' is empty; expected text)"


def test_drop_bad_rows_on_the_command_line_and_in_the_preview(tmp_path, studio_home):
    from studio.ui.datasets_tab import check_upload

    path = jsonl(tmp_path, "hh_test.jsonl", hh_rows(40, 20))
    refused = subprocess.run([sys.executable, "-m", "studio.cli", "dataset", "check", path], cwd=ROOT,
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "--drop-bad-rows" in refused.stderr and "Traceback" not in refused.stderr
    kept = subprocess.run([sys.executable, "-m", "studio.cli", "dataset", "check", path, "--drop-bad-rows", "--json"],
                          cwd=ROOT, capture_output=True, text=True)
    report = json.loads(kept.stdout)
    assert report["rows"] == 38 and report["stats"]["bad_dropped"] == 2 and len(report["dropped"]) == 2
    preview = check_upload(path, "auto", True, "", 512)
    assert "**38 rows** ready to train (2 dropped: row 20: 'chosen' is empty" in preview[0]
    assert "bad dropped: 2" in preview[2]


def test_the_runs_log_says_how_many_rows_were_dropped(tmp_path, studio_home, caplog):
    from studio import library
    from studio.spec import JobSpec
    from workers.train import load_training_rows

    library.add(jsonl(tmp_path, "hh_test.jsonl", hh_rows(40, 20)), name="hh-few-empty", drop_bad=True)
    spec = JobSpec(base_model="x", dataset="hh-few-empty", method="dpo", load_in_4bit=False, eval_split=0.0)
    with caplog.at_level(logging.INFO, logger="studio.train"):
        kind, train, _ = load_training_rows(spec)
    assert kind == "preference" and len(train) == 38
    assert "dataset 'hh-few-empty': 38 of 40 rows used; left out: 2 bad (first: row 20: 'chosen' is empty" in caplog.text
