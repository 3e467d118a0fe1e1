"""The Datasets tab's preview and `studio dataset check` follow the chosen base model and max length."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from browser import SHARED_MODELS
from test_formats import TOOL_ROW

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_preview_follows_the_train_tabs_base_model_and_max_length(studio_home, tmp_path, tiny_model_dir, monkeypatch):
    from identity_data import write
    from studio.settings import reset_settings
    from studio.ui import datasets_tab

    monkeypatch.setenv("STUDIO_MODELS_DIR", str(SHARED_MODELS))
    reset_settings()
    path = write(tmp_path / "id.jsonl")
    # System prompt keep: each template's own default system prompt shows (auto leaves it out of identity rows)
    bundled = datasets_tab.check_upload(str(path), "auto", False, "SmolLM2-135M-Instruct", 512, "", "", "keep")
    tiny = datasets_tab.check_upload(str(path), "auto", False, str(tiny_model_dir), 512, "", "", "keep")
    short = datasets_tab.check_upload(str(path), "auto", False, str(tiny_model_dir), 32)
    assert "Preview for **SmolLM2-135M-Instruct** at max length **512**" in bundled[2]
    assert f"Preview for **{tiny_model_dir}** at max length **32**" in short[2]
    assert bundled[3]["value"] != tiny[3]["value"]  # each model's own chat template
    assert "You are a helpful assistant." in "".join(t for t, _ in tiny[3]["value"])  # the tiny ChatML default
    assert "(0 rows over max length)" in tiny[2] and "(0 rows over max length)" not in short[2]


def test_preview_of_a_tool_file_shows_schema_call_and_trained_parts(studio_home, tmp_path, tiny_model_dir):
    from studio.ui import datasets_tab

    path = _write(tmp_path / "tools.jsonl", [TOOL_ROW])
    message, _, stats, segments, *_ = datasets_tab.check_upload(str(path), "auto", False, str(tiny_model_dir), 512)
    assert "messages format (chat)" in message
    text = "".join(t for t, _ in segments["value"])
    assert '"name": "get_weather"' in text and '"arguments": {"city": "Paris"}' in text
    trained = [t for t, flag in segments["value"] if flag == "trained"]
    assert any("get_weather" in t for t in trained) and not any("Current weather" in t for t in trained)
    assert "written into the system turn" in stats


def test_cli_check_json_reports_kind_and_token_counts(tmp_path, tiny_model_dir):
    from identity_data import write

    path = write(tmp_path / "id.jsonl")
    env = {**os.environ, "STUDIO_HOME": str(tmp_path / "home")}
    run = subprocess.run([sys.executable, "-m", "studio.cli", "dataset", "check", str(path), "--json", "--base-model",
                          str(tiny_model_dir), "--max-length", "40"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert (report["format"], report["kind"], report["rows"]) == ("messages", "chat", 40)
    assert report["trained_tokens"] > 0 and report["masked_tokens"] > 0 and report["truncated_tokens"] > 0
    assert any("would be cut" in w for w in report["warnings"])
    bad = _write(tmp_path / "kto.jsonl", [{"prompt": "Q", "completion": "A", "kto_tag": "maybe"}])
    run = subprocess.run([sys.executable, "-m", "studio.cli", "dataset", "check", str(bad), "--json"], cwd=ROOT,
                         env=env, capture_output=True, text=True)
    assert run.returncode == 2 and run.stdout == "" and run.stderr.count("\n") == 1
