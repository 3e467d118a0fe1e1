"""Dataset intake: every format normalises to chat / text / preference rows; every bad file gets one sentence."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest

from studio.datasets import (FORMATS, KINDS, DatasetError, content_hash, detect_format, load_file,
                             propose_mapping, read_records)


def write(tmp_path, name: str, content) -> str:
    """A fixture file: bytes as they are, str as UTF-8, a list of dicts as JSON Lines (or JSON for .json)."""
    path = tmp_path / name
    if isinstance(content, (list, dict)) and name.endswith(".jsonl"):
        content = "\n".join(json.dumps(r) for r in content) + "\n"
    elif isinstance(content, (list, dict)):
        content = json.dumps(content)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return str(path)


def msg(role, content):
    return {"role": role, "content": content}


# ---- every format -----------------------------------------------------------------------------

def test_messages_jsonl_multi_turn_with_system(tmp_path):
    rows = [
        {"messages": [msg("system", "Be brief."), msg("user", "Hi"), msg("assistant", "Hello!"),
                      msg("user", "Name?"), msg("assistant", "Zorblax.")]},
        {"messages": [msg("user", "2+2?"), msg("assistant", "4")]},
    ]
    ds = load_file(write(tmp_path, "chat.jsonl", rows))
    assert (ds.format, ds.kind, ds.total_rows, ds.dropped, ds.mapping) == ("messages", "chat", 2, [], {})
    assert ds.rows == rows
    assert ds.columns == ["messages"]
    stats = ds.stats()
    assert (stats["rows"], stats["turns_min"], stats["turns_max"], stats["turns_mean"]) == (2, 2, 5, 3.5)
    assert set(FORMATS) >= {ds.format} and ds.kind in KINDS


def test_content_part_lists_are_joined(tmp_path):
    rows = [{"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Describe"}, {"type": "text", "text": "this."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
    ]}]
    ds = load_file(write(tmp_path, "parts.json", rows))
    assert ds.rows[0]["messages"] == [msg("user", "Describe\nthis."), msg("assistant", "A cat.")]


def test_openai_tool_call_conversation(tmp_path):
    call = {"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}
    rows = [{"messages": [
        msg("user", "Weather in Paris?"),
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "18C, sunny", "tool_call_id": "c1"},
        msg("assistant", "It is 18C and sunny."),
    ]}]
    ds = load_file(write(tmp_path, "tools.jsonl", rows))
    turns = ds.rows[0]["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "tool", "assistant"]
    assert turns[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "id": "c1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
    assert turns[2] == {"role": "tool", "content": "18C, sunny", "tool_call_id": "c1"}


def test_sharegpt_with_function_call_and_observation(tmp_path):
    rows = [{"conversations": [
        {"from": "system", "value": "You can call tools."},
        {"from": "human", "value": "What is 3*7?"},
        {"from": "function_call", "value": "{\"name\": \"calc\", \"arguments\": {\"expr\": \"3*7\"}}"},
        {"from": "observation", "value": "21"},
        {"from": "gpt", "value": "3*7 is 21."},
    ], "tools": "[]"}]
    ds = load_file(write(tmp_path, "sharegpt.json", rows))
    assert (ds.format, ds.kind) == ("sharegpt", "chat")
    assert ds.rows[0]["messages"] == [
        msg("system", "You can call tools."), msg("user", "What is 3*7?"),
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": "calc", "arguments": {"expr": "3*7"}}}]},
        msg("tool", "21"), msg("assistant", "3*7 is 21."),
    ]


def test_sharegpt_system_column_is_prepended(tmp_path):
    rows = [{"system": "Talk like a pirate.",
             "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Arr!"}]}]
    ds = load_file(write(tmp_path, "pirate.jsonl", rows))
    assert ds.rows[0]["messages"][0] == msg("system", "Talk like a pirate.")


def test_alpaca_input_system_and_history(tmp_path):
    rows = [
        {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
        {"instruction": "Say hi.", "input": "", "output": "Hi!"},
        {"instruction": "And now?", "output": "Still here.", "system": "Be kind.",
         "history": [["Are you there?", "Yes."]]},
    ]
    ds = load_file(write(tmp_path, "alpaca.json", rows))
    assert (ds.format, ds.kind) == ("alpaca", "chat")
    assert ds.rows[0]["messages"] == [msg("user", "Translate to French.\n\nGood morning"), msg("assistant", "Bonjour")]
    assert ds.rows[1]["messages"] == [msg("user", "Say hi."), msg("assistant", "Hi!")]
    assert ds.rows[2]["messages"] == [msg("system", "Be kind."), msg("user", "Are you there?"), msg("assistant", "Yes."),
                                      msg("user", "And now?"), msg("assistant", "Still here.")]


def test_prompt_completion_strings_and_message_lists(tmp_path):
    rows = [
        {"prompt": "The sky is", "completion": " blue."},
        {"prompt": [msg("user", "Capital of Italy?")], "completion": [msg("assistant", "Rome.")]},
    ]
    ds = load_file(write(tmp_path, "pc.jsonl", rows))
    assert (ds.format, ds.kind) == ("prompt_completion", "chat")
    assert ds.rows[0]["messages"] == [msg("user", "The sky is"), msg("assistant", " blue.")]
    assert ds.rows[1]["messages"] == [msg("user", "Capital of Italy?"), msg("assistant", "Rome.")]


def test_text_jsonl_and_txt_documents(tmp_path):
    ds = load_file(write(tmp_path, "t.jsonl", [{"text": "one"}, {"text": "two"}]))
    assert (ds.format, ds.kind, ds.rows) == ("text", "text", [{"text": "one"}, {"text": "two"}])
    txt = "First document,\nline two.\n\n  \nSecond document.\n\n\n\nThird.\n"
    ds = load_file(write(tmp_path, "corpus.txt", txt))
    assert ds.rows == [{"text": "First document,\nline two."}, {"text": "Second document."}, {"text": "Third."}]
    assert ds.stats()["turns_max"] == 1


def test_preference_strings(tmp_path):
    rows = [{"prompt": "Is the sky blue?", "chosen": "Yes, on a clear day.", "rejected": "No."}]
    ds = load_file(write(tmp_path, "pref.jsonl", rows))
    assert (ds.format, ds.kind) == ("preference", "preference")
    assert ds.rows[0] == {"prompt": [msg("user", "Is the sky blue?")],
                          "chosen": [msg("assistant", "Yes, on a clear day.")],
                          "rejected": [msg("assistant", "No.")]}
    assert ds.stats()["turns_min"] == 2


def test_preference_message_lists_repeating_the_prompt(tmp_path):
    """UltraFeedback-binarized shape: a string prompt, chosen/rejected as full conversations."""
    rows = [{"prompt": "Hi?", "chosen": [msg("user", "Hi?"), msg("assistant", "Hello!")],
             "rejected": [msg("user", "Hi?"), msg("assistant", "Go away.")], "score_chosen": 9.0}]
    ds = load_file(write(tmp_path, "uf.json", rows))
    assert ds.rows[0] == {"prompt": [msg("user", "Hi?")], "chosen": [msg("assistant", "Hello!")],
                          "rejected": [msg("assistant", "Go away.")]}


def test_preference_implicit_prompt(tmp_path):
    rows = [{"chosen": [msg("system", "S"), msg("user", "Q"), msg("assistant", "good")],
             "rejected": [msg("system", "S"), msg("user", "Q"), msg("assistant", "bad")]}]
    ds = load_file(write(tmp_path, "implicit.jsonl", rows))
    assert ds.rows[0]["prompt"] == [msg("system", "S"), msg("user", "Q")]
    assert ds.rows[0]["chosen"] == [msg("assistant", "good")]


def test_sharegpt_preference(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "Tell a joke."}],
             "chosen": {"from": "gpt", "value": "Why did the chicken..."},
             "rejected": {"from": "gpt", "value": "No."}}]
    ds = load_file(write(tmp_path, "sgpref.json", rows))
    assert (ds.format, ds.kind) == ("sharegpt_preference", "preference")
    assert ds.rows[0] == {"prompt": [msg("user", "Tell a joke.")],
                          "chosen": [msg("assistant", "Why did the chicken...")],
                          "rejected": [msg("assistant", "No.")]}


@pytest.mark.parametrize("columns, expected", [
    (["question", "answer"], {"question": "instruction", "answer": "output"}),
    (["query", "response"], {"query": "instruction", "response": "output"}),
    (["input", "target"], {"input": "instruction", "target": "output"}),
    (["prompt", "response"], {"prompt": "prompt", "response": "completion"}),
    (["instruction", "context", "response", "category"], {"context": "input", "response": "output"}),
    (["Question", "Answer"], {"Question": "instruction", "Answer": "output"}),
    (["question", "chosen_response", "rejected_response"],
     {"chosen_response": "chosen", "rejected_response": "rejected", "question": "prompt"}),
    (["content"], {"content": "text"}),
    (["id", "label"], {}),
])
def test_propose_mapping(columns, expected):
    expected = {k: v for k, v in expected.items() if k != v}
    assert propose_mapping(columns) == expected


def test_mapping_applied_automatically_and_recorded(tmp_path):
    ds = load_file(write(tmp_path, "qa.jsonl", [{"question": "2+2?", "answer": "4"}]))
    assert (ds.format, ds.mapping, ds.columns) == ("alpaca", {"question": "instruction", "answer": "output"},
                                                   ["question", "answer"])
    assert ds.rows[0]["messages"] == [msg("user", "2+2?"), msg("assistant", "4")]


def test_explicit_mapping(tmp_path):
    path = write(tmp_path, "odd.jsonl", [{"ask": "Hi?", "reply": "Hello."}])
    ds = load_file(path, mapping={"ask": "prompt", "reply": "completion"})
    assert (ds.format, ds.mapping) == ("prompt_completion", {"ask": "prompt", "reply": "completion"})
    with pytest.raises(DatasetError, match="names 'nope', which is not a column of the file"):
        load_file(path, mapping={"nope": "prompt"})
    with pytest.raises(DatasetError, match="sends 'ask' to 'question', which the studio does not read"):
        load_file(path, mapping={"ask": "question"})


def test_format_override(tmp_path):
    path = write(tmp_path, "both.jsonl", [{"text": "plain", "messages": [msg("user", "a"), msg("assistant", "b")]}])
    assert load_file(path).format == "messages"
    assert load_file(path, format="text").rows == [{"text": "plain"}]
    with pytest.raises(DatasetError, match="unknown dataset format 'chatml'; choose one of messages"):
        load_file(path, format="chatml")


def test_csv_tsv_and_json_in_cells(tmp_path):
    ds = load_file(write(tmp_path, "a.csv", 'instruction,input,output\n"Say ""hi""",,"Hi,\nthere"\n'))
    assert ds.rows[0]["messages"] == [msg("user", 'Say "hi"'), msg("assistant", "Hi,\nthere")]
    ds = load_file(write(tmp_path, "a.tsv", "prompt\tcompletion\nA\tB\n"))
    assert ds.format == "prompt_completion"
    cell = json.dumps([msg("user", "Hi"), msg("assistant", "Yo")]).replace('"', '""')
    ds = load_file(write(tmp_path, "m.csv", f'messages\n"{cell}"\n'))
    assert ds.rows[0]["messages"] == [msg("user", "Hi"), msg("assistant", "Yo")]


def test_parquet_with_nested_messages(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"messages": [msg("user", "Hi"), msg("assistant", "Hello")], "id": 1},
            {"messages": [msg("user", "Bye"), msg("assistant", "Ciao")], "id": 2}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "chat.parquet")
    ds = load_file(tmp_path / "chat.parquet")
    assert (ds.format, ds.columns, len(ds.rows)) == ("messages", ["messages", "id"], 2)
    assert ds.rows[1]["messages"][1] == msg("assistant", "Ciao")


def test_gzip_json_containers_and_misnamed_json_lines(tmp_path):
    body = "\n".join(json.dumps({"text": t}) for t in ("a", "b")).encode()
    assert len(load_file(write(tmp_path, "t.jsonl.gz", gzip.compress(body))).rows) == 2
    assert len(load_file(write(tmp_path, "lines.json", body)).rows) == 2  # JSON Lines named .json
    pretty = json.dumps([{"text": "a"}, {"text": "b"}], indent=2)
    assert len(load_file(write(tmp_path, "pretty.jsonl", pretty)).rows) == 2  # a JSON array named .jsonl
    assert len(load_file(write(tmp_path, "wrapped.json", {"data": [{"text": "a"}]})).rows) == 1
    single = {"messages": [msg("user", "Hi"), msg("assistant", "Yo")]}
    assert load_file(write(tmp_path, "one.json", single)).rows == [single]
    assert load_file(write(tmp_path, "bom.jsonl", b"\xef\xbb\xbf" + body)).rows[0] == {"text": "a"}


def test_empty_rows_and_exact_duplicates_always_dropped(tmp_path):
    rows = [{"instruction": "Q", "output": "A"}, {"instruction": "", "output": ""}, {"instruction": "Q", "output": "A"},
            {"instruction": "Q2", "output": "A2"}, {"instruction": None, "output": None}]
    ds = load_file(write(tmp_path, "dups.jsonl", rows))
    assert len(ds.rows) == 2
    assert ds.dropped == ["row 2: empty row", "row 3: exact duplicate of row 1", "row 5: empty row"]
    stats = ds.stats()
    assert (stats["total_rows"], stats["empty_dropped"], stats["duplicates_dropped"], stats["bad_dropped"]) == (5, 2, 1, 0)


def test_bad_rows_raise_or_are_dropped(tmp_path):
    rows = [{"messages": [msg("user", "a"), msg("assistant", "b")]},
            {"messages": [msg("user", "only a question")]},
            {"messages": [msg("user", "c"), msg("assistant", "d")]},
            {"messages": "not a list"}]
    path = write(tmp_path, "mixed.jsonl", rows)
    with pytest.raises(DatasetError) as err:
        load_file(path)
    assert str(err.value) == ("row 2: 'messages' has no assistant turn, so there is nothing to train on "
                              "(2 of 4 rows have problems: fix them, or drop the bad rows to train on the rest: tick "
                              "'Drop bad rows' in the Datasets tab, or add --drop-bad-rows to `studio dataset add`)")
    ds = load_file(path, drop_bad=True)
    assert len(ds.rows) == 2
    assert ds.dropped == ["row 2: 'messages' has no assistant turn, so there is nothing to train on",
                          "row 4: 'messages' is a string; expected a list of turns like "
                          "{\"role\": \"user\", \"content\": \"...\"}"]
    assert ds.stats()["bad_dropped"] == 2


def test_nothing_usable_left_raises_even_when_dropping(tmp_path):
    path = write(tmp_path, "allbad.jsonl", [{"messages": [msg("user", "a")]}, {"messages": [msg("user", "b")]}])
    with pytest.raises(DatasetError, match=r"^row 1: 'messages' has no assistant turn.*none of the 2 rows is usable$"):
        load_file(path, drop_bad=True)


def test_detect_format_direct():
    assert detect_format([{"conversations": [{"from": "human", "value": "x"}]}], ["conversations"]) == "sharegpt"
    assert detect_format([{"conversations": [msg("user", "x")]}], ["conversations"]) == "messages"
    assert detect_format([{}], ["prompt", "chosen", "rejected"]) == "preference"
    assert detect_format([{}], ["instruction", "input", "output"]) == "alpaca"


def test_content_hash(tmp_path):
    import hashlib

    path = write(tmp_path, "h.txt", "hello")
    assert content_hash(path) == hashlib.sha256(b"hello").hexdigest()


def test_read_records_returns_raw_rows_and_columns(tmp_path):
    records, columns = read_records(write(tmp_path, "r.csv", "a,b\n1,2\n"), max_bytes=1 << 20)
    assert (records, columns) == ([{"a": "1", "b": "2"}], ["a", "b"])


def test_module_is_torch_free():
    code = "import sys, studio.datasets; sys.exit(('torch' in sys.modules) + 2 * ('transformers' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], cwd=str(__import__("pathlib").Path(__file__).parents[1])).returncode == 0


# ---- every bad file: one specific sentence, nothing written --------------------------------------

def _png() -> bytes:
    return b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def _parquet_corrupt() -> bytes:
    return b"PAR1" + b"\x15\x04" * 40 + b"PAR1"


DEEP = "[" * 200 + "]" * 200
VERY_DEEP = "[" * 100_000 + "]" * 100_000
GOOD = {"messages": [msg("user", "Hi"), msg("assistant", "Hello")]}

BAD_FILES = [
    ("empty file", "e.jsonl", b"", {}, "the file is empty"),
    ("whitespace only", "w.json", "  \n\t\n  ", {}, "the file contains only whitespace: there are no rows"),
    ("not JSON", "n.json", "hello, world", {}, "the file is not JSON: it starts with 'h' where '[' (a list of rows)"),
    ("JSON scalar", "s.json", "42", {}, "the file holds a single JSON number, not rows"),
    ("JSON string", "s.json", '"just text"', {}, "the file holds a single JSON string, not rows"),
    ("empty array", "a.json", "[]", {}, "the JSON array is empty: there are no rows"),
    ("array of non-objects", "a.json", '[{"text": "ok"}, "loose"]', {},
     "row 2 is a string, not an object; each row must be an object"),
    ("truncated JSON", "t.json", '[{"text": "a"}, {"text": "b', {},
     "the file is not valid JSON: it stops in the middle of a value at line 1 (the file looks truncated)"),
    ("broken JSON mid-file", "b.json", '[{"text": "a"} {"text": "b"}]', {},
     "the file is not valid JSON: expecting ',' delimiter at line 1, column 16"),
    ("broken JSONL line", "b.jsonl", '{"text": "a"}\n{"text": "b"\n{"text": "c"}\n', {},
     "line 2 is not valid JSON: expecting ',' delimiter at column 13"),
    ("truncated JSONL", "t.jsonl", '{"text": "a"}\n{"text": "b', {},
     "line 2 is not valid JSON: it stops in the middle of a value (the file looks truncated)"),
    ("JSONL line not an object", "l.jsonl", '{"text": "a"}\n[1, 2]\n', {}, "line 2 is a list, not an object"),
    ("missing required field", "m.jsonl", [{"instruction": "Q", "output": "A"}, {"instruction": "Q2"}], {},
     "row 2: missing the 'output' field (1 of 2 rows has problems"),
    ("null field", "n.jsonl", [{"instruction": "Q", "output": "A"}, {"instruction": None, "output": "A2"}], {},
     "row 2: 'instruction' is null; expected text"),
    ("wrongly typed field", "w.jsonl", [{"text": "ok"}, {"text": {"body": "x"}}], {},
     "row 2: 'text' is an object; expected text"),
    ("number where text expected", "w.jsonl", [{"prompt": "1+1", "completion": 2}], {},
     "row 1: 'completion' is a number; expected text"),
    ("all-empty strings", "e.jsonl", [{"text": ""}, {"text": "  "}, {"text": "\n"}], {},
     "all 3 rows are empty: every field they hold is blank or null"),
    ("unknown columns", "u.jsonl", [{"foo": 1, "bar": "x"}], {},
     "no known dataset format in the columns 'foo', 'bar'; expected one of: messages (a 'messages' list"),
    ("unknown role", "r.jsonl", [{"messages": [msg("user", "a"), msg("narrator", "b"), msg("assistant", "c")]}], {},
     "row 1: turn 2 of 'messages' has the unknown role 'narrator'; expected system (or developer), user, assistant or tool"),
    ("no assistant turn", "r.jsonl", [{"messages": [msg("system", "s"), msg("user", "a")]}], {},
     "row 1: 'messages' has no assistant turn, so there is nothing to train on"),
    ("messages not a list", "r.jsonl", [{"messages": {"role": "user", "content": "a"}}], {},
     "row 1: 'messages' is an object; expected a list of turns"),
    ("turn not an object", "r.jsonl", [{"messages": ["hi", msg("assistant", "b")]}], {},
     "row 1: turn 1 of 'messages' is a string; expected an object with 'role' and 'content'"),
    ("turn without content", "r.jsonl", [{"messages": [{"role": "user"}, msg("assistant", "b")]}], {},
     "row 1: turn 1 of 'messages' has no 'content' (or 'value') field"),
    ("image content part", "r.jsonl", [{"messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, msg("assistant", "b")]}], {},
     "1 of 1 rows hold pictures, video or audio (in 'messages'), and the studio trains text-only models"),
    ("non-UTF-8 bytes", "u.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', {},
     "the file is not valid UTF-8: byte 0xE9 at byte offset 28 (line 2) cannot be decoded"),
    ("UTF-16 text", "u.csv", "text\nhello\n".encode("utf-16"), {}, "the file is UTF-16 encoded; save it as UTF-8"),
    ("NUL byte", "z.jsonl", b'{"text": "a long enough first line of ordinary text"}\n{"text": "b\x00"}\n', {},
     "the file contains a NUL byte at byte offset 65 (line 2); text files cannot contain NUL bytes"),
    ("binary file with a text extension", "img.jsonl", _png(), {}, "the file is a PNG image, not JSON Lines text"),
    ("unknown binary with a text extension", "blob.csv", bytes(range(256)) * 8, {},
     "the file looks like binary data (control bytes from byte offset 0), not CSV text"),
    ("absurd nesting in JSON", "d.json", f'[{{"text": "a", "x": {DEEP}}}]', {},
     "the JSON nests lists or objects more than 64 levels deep"),
    ("recursion-limit nesting in JSON", "d.json", VERY_DEEP, {},
     "the JSON nests lists or objects more than 64 levels deep"),
    ("absurd nesting in JSONL", "d.jsonl", f'{{"text": "a"}}\n{{"text": "b", "x": {VERY_DEEP}}}\n', {},
     "line 2 nests lists or objects more than 64 levels deep"),
    ("ragged CSV", "r.csv", "instruction,output\nQ1,A1\nQ2,A2,extra\n", {},
     "line 3 has 3 fields but the header has 2 columns"),
    ("header-only CSV", "h.csv", "instruction,output\n", {},
     "the CSV file has a header ('instruction', 'output') but no rows"),
    ("duplicate CSV header", "h.csv", "text,text\na,b\n", {}, "the CSV header names the column 'text' twice"),
    ("fake parquet", "f.parquet", '{"text": "I am JSON"}', {},
     "the file is not a Parquet file: it does not start and end with the 'PAR1' signature"),
    ("damaged parquet", "f.parquet", _parquet_corrupt(), {}, "the Parquet file cannot be read ("),
    ("fake gzip", "f.jsonl.gz", '{"text": "plain"}\n', {},
     "the file is named .gz but is not gzip-compressed: it does not start with the gzip signature"),
    ("truncated gzip", "t.jsonl.gz", gzip.compress(b'{"text": "a"}\n' * 1000)[:60], {},
     "the gzip data is damaged or truncated ("),
    ("gzip bomb", "bomb.jsonl.gz", gzip.compress(b" " * (4 << 20)), {"max_bytes": 1 << 20},
     "the decompressed size exceeds the limit of 1.0 MB"),
    ("file over max_bytes", "big.jsonl", [GOOD] * 100, {"max_bytes": 1000}, "the file is 9.1 KB, over the 1000 bytes limit"),
    ("unsupported extension", "book.xlsx", b"PK\x03\x04", {},
     "'.xlsx' files are not supported; upload one of .json, .jsonl, .csv, .tsv, .parquet, .txt"),
    ("PDF named .txt", "notes.txt", b"%PDF-1.7\n" + bytes(200), {}, "the file is a PDF document, not plain text"),
    ("gz without inner extension", "data.gz", gzip.compress(b"x"), {}, "'.gz' files that do not name what they hold"),
    ("preference row without rejected", "p.jsonl",
     [{"prompt": "Q", "chosen": "good", "rejected": "bad"}, {"prompt": "Q2", "chosen": "good2"}], {},
     "row 2: missing the 'rejected' field; a preference row needs a prompt, chosen and rejected"),
    ("preference pair identical", "p.jsonl", [{"prompt": "Q", "chosen": "same", "rejected": "same"}], {},
     "row 1: 'chosen' and 'rejected' are identical"),
    ("JSON object with several lists", "o.json", {"train": [GOOD], "test": [GOOD]}, {},
     "the JSON object holds several lists ('train', 'test'); keep exactly one list of rows"),
]


@pytest.mark.parametrize("name, content, kwargs, expected", [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_file_gets_one_specific_sentence(tmp_path, name, content, kwargs, expected):
    path = write(tmp_path, name, content)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(DatasetError) as err:
        load_file(path, **kwargs)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message and "Traceback" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
