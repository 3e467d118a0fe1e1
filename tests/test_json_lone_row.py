"""A JSON file holding one object: a row of a known format is one row, an object holding one list is that list.
The format registry decides which (read.read_file takes its ``one_row``), so the reader never imports it."""
from __future__ import annotations

import json

import pytest

from studio.datasets import DatasetError, load_file, read_file

ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def test_a_lone_row_object_is_one_row(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps(ROW))
    data = load_file(path)
    assert (data.format, len(data.rows)) == ("messages", 1)


def test_an_object_holding_one_list_is_that_list(tmp_path):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"data": [{"text": "a"}, {"text": "b"}]}))
    data = load_file(path)
    assert (data.format, [r["text"] for r in data.rows]) == ("text", ["a", "b"])


def test_without_the_registry_a_lone_object_is_read_for_its_list(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"note": "x", **ROW}))
    assert read_file(path, max_bytes=1 << 20).rows == ROW["messages"]
    path.write_text(json.dumps({"note": "x"}))
    with pytest.raises(DatasetError, match="holds no list of rows"):
        read_file(path, max_bytes=1 << 20)
