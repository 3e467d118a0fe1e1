"""Identity sets are often shipped as templates for their users to fill in ("I am {{name}}, an AI assistant
developed by {{author}}", as LLaMA-Factory's identity.json is). Left unfilled, a run teaches the model to say the
braces: the preview and the run's log say so in one sentence, and the rows themselves are never rewritten."""
from __future__ import annotations

import json

TEMPLATE_ROWS = [
    {"instruction": "hi", "input": "", "output": "Hello! I am {{name}}, an AI assistant developed by {{author}}."},
    {"instruction": "Who are you?", "input": "", "output": "I am {{name}}, an AI assistant developed by {{author}}."},
    {"instruction": "你好", "input": "", "output": "您好，我是 {{name}}，一个由 {{author}} 开发的 AI 助手。"},
    {"instruction": "What can you do?", "input": "", "output": "I am {{ name }}. I can answer questions."},
]


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def test_unfilled_blanks_are_named_with_their_row_counts_and_the_rows_stay_as_written(tmp_path):
    from studio import library
    from studio.datasets.stats import carries_identity

    loaded = library.inspect(_write(tmp_path / "identity.jsonl", TEMPLATE_ROWS), filename="identity.jsonl")
    note = [n for n in loaded.notes if "template blanks" in n]
    assert note == ["the rows hold unfilled template blanks: {{name}} (4 rows), {{author}} (3 rows); a model "
                    "trained on them learns to say the braces, so replace them with your own values (your "
                    "assistant's name, its maker) in the file and add it again"]
    assert "{{name}}" in json.dumps(loaded.rows, ensure_ascii=False)     # nothing filled in behind the user's back
    assert carries_identity(loaded.rows)          # a blank for a name still teaches an identity: no default prompt


def test_filled_rows_and_ordinary_braces_get_no_note(tmp_path):
    from studio import library

    filled = [{k: v.replace("{{name}}", "Zorblax").replace("{{ name }}", "Zorblax").replace("{{author}}", "Q Labs")
               for k, v in r.items()} for r in TEMPLATE_ROWS]
    code = [{"instruction": "Format a Python string.", "input": "", "output": "Use f\"{value}\" or \"{}\".format(v)."},
            {"instruction": "Show JSON.", "input": "", "output": "{\"a\": {\"b\": 1}}"}]
    for name, rows in (("filled", filled), ("code", code)):
        loaded = library.inspect(_write(tmp_path / f"{name}.jsonl", rows), filename=f"{name}.jsonl")
        assert not [n for n in loaded.notes if "template blanks" in n], loaded.notes


def test_the_datasets_tab_preview_shows_the_sentence(studio_home, tmp_path, tiny_model_dir):
    from studio.ui import datasets_tab

    out = datasets_tab.check_upload(str(_write(tmp_path / "identity.jsonl", TEMPLATE_ROWS)), "auto", False,
                                    str(tiny_model_dir), 512)
    assert "**4 rows** ready to train" in out[0]
    assert "unfilled template blanks: {{name}} (4 rows), {{author}} (3 rows)" in out[2]


def test_the_run_log_warns_before_training_on_blanks(studio_home, tiny_model_dir, tmp_path):
    from studio import db, library
    from studio.spec import JobSpec
    from workers import train

    library.add(_write(tmp_path / "identity.jsonl", TEMPLATE_ROWS * 3), name="template")
    spec = JobSpec(base_model=str(tiny_model_dir), dataset="template", load_in_4bit=False, r=4, lora_alpha=8,
                   max_steps=1, eval_split=0.0, max_length=64, general_replay=0.0)
    job = db.Job(name="blanks", spec_json=spec.to_json(), output_dir="jobs/blanks")
    with db.session() as s:
        s.add(job)
        s.commit()
    assert train.run_job(job.id) == "completed", db.get_job(job.id).error
    log = (studio_home / "jobs" / "blanks" / "train.log").read_text()
    assert "WARNING studio.train: job " in log and "unfilled template blanks: {{name}}" in log
