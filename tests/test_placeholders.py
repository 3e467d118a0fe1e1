"""Identity sets are often shipped as templates for their users to fill in ("I am {{name}}, an AI assistant
developed by {{author}}", as LLaMA-Factory's identity.json is). Left unfilled, a run teaches the model to say the
braces: the preview and the run's log say so in one sentence, and the rows themselves are never rewritten. The
user fills them in when adding the file (the Datasets tab's box, `studio dataset add --fill`): the stored file stays
as uploaded and every read of the dataset (preview, training) sees the values."""
from __future__ import annotations

import json

import pytest

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
                    "trained on them learns to say them as written, so fill them in with your own values (your "
                    "assistant's name, its maker) when you add the file (Fill template blanks, or `studio dataset "
                    "add --fill name=VALUE`)"]
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


FILL = {"name": "Zorblax", "author": "Quintar Labs"}


def test_blanks_filled_when_adding_reach_every_read_and_the_file_stays_as_uploaded(studio_home, tmp_path):
    from studio import db, library
    from studio.spec import JobSpec
    from workers.train import load_training_rows

    path = _write(tmp_path / "identity.jsonl", TEMPLATE_ROWS)
    preview = library.inspect(path, fill=FILL)
    text = json.dumps(preview.rows, ensure_ascii=False)
    assert "{{" not in text and "I am Zorblax, an AI assistant developed by Quintar Labs." in text
    assert "您好，我是 Zorblax，一个由 Quintar Labs 开发的 AI 助手。" in text and "I am Zorblax. I can" in text
    assert preview.notes == ["template blanks filled in as you asked: {{name}} -> 'Zorblax' (4 rows), {{author}} "
                             "-> 'Quintar Labs' (3 rows); the file itself is kept as uploaded"]
    rec, created = library.add(path, name="mine", fill=FILL)
    assert created and rec.fill == {"{{name}}": "Zorblax", "{{author}}": "Quintar Labs"} and rec.rows == 4
    assert studio_home.joinpath(rec.path).read_bytes() == path.read_bytes(), "the stored file was rewritten"
    _, train, _ = load_training_rows(JobSpec(dataset="mine", eval_split=0.0))
    assert "{{" not in json.dumps(train, ensure_ascii=False) and "Zorblax" in json.dumps(train)
    assert library.add(path, name="again", fill=dict(FILL))[0].name == "mine"       # the same file read the same way
    other, created = library.add(path, name="other-name", fill={"name": "Vexa", "author": "Quintar Labs"})
    assert created and "Vexa" in json.dumps(library.load("other-name").rows)
    assert db.get_dataset("mine").fill["{{name}}"] == "Zorblax"


def test_a_fill_that_does_not_fit_the_file_is_one_sentence_and_adds_nothing(studio_home, tmp_path):
    from studio import db, library
    from studio.datasets import DatasetError
    from studio.datasets.stats import parse_fill

    path = _write(tmp_path / "identity.jsonl", TEMPLATE_ROWS)
    for fill, sentence in (({"nmae": "Zorblax"}, "the rows hold no blank {{nmae}} to fill (their blanks: {{name}}, "
                                                 "{{author}})"),
                           ({"name": "  "}, "give a value for {{name}}, or leave it out"),
                           ({"name": "{{ other }}"}, "the value for {{name}} is itself a template blank")):
        with pytest.raises(DatasetError) as err:
            library.add(path, name="bad", fill=fill)
        assert str(err.value).startswith(sentence)
    assert db.list_datasets() == [] and not list((studio_home / "datasets").glob("*/*"))
    partly = library.inspect(path, fill={"{{name}}": "Zorblax"})          # braces typed too: the same blank
    assert [n for n in partly.notes if "unfilled" in n][0].startswith("the rows hold unfilled template blanks: "
                                                                      "{{author}} (3 rows)")
    assert parse_fill(["name = Zorblax", "author =", ""], skip_empty=True) == {"name": "Zorblax"}
    with pytest.raises(DatasetError, match="fill line 1 should look like 'name = Zorblax', got 'Zorblax'"):
        parse_fill(["Zorblax"])


def test_the_datasets_tab_offers_the_blanks_to_fill_and_adds_the_filled_rows(studio_home, tmp_path, tiny_model_dir):
    from studio import db
    from studio.ui import datasets_tab

    path = str(_write(tmp_path / "identity.jsonl", TEMPLATE_ROWS))
    *_, fill_box = datasets_tab.check_upload(path, "auto", False, str(tiny_model_dir), 512)
    assert fill_box["visible"] and fill_box["value"] == "{{name}} = \n{{author}} = "  # for the user to complete
    typed = "{{name}} = Zorblax\nauthor = Quintar Labs"          # as listed, or by the bare name
    message, preview, stats, *_, fill_box = datasets_tab.check_upload(path, "auto", False, str(tiny_model_dir), 512,
                                                                     "", typed)
    assert "Zorblax" in str(preview["value"]) and "{{" not in str(preview["value"])
    assert "template blanks filled in as you asked" in stats and "unfilled" not in stats
    assert fill_box["value"] == "{{name}} = Zorblax\n{{author}} = Quintar Labs" and fill_box["visible"]
    bad, *_ = datasets_tab.check_upload(path, "auto", False, str(tiny_model_dir), 512, "", "nmae = Zorblax")
    assert bad == "**This file cannot be used:** the rows hold no blank {{nmae}} to fill (their blanks: {{name}}, {{author}})"
    message, _, _ = datasets_tab.add_upload(path, "auto", False, "zorblax", "", typed)
    assert message == ("Added: **zorblax**, 4 rows (alpaca), blanks filled: {{name}} = Zorblax, {{author}} = "
                       "Quintar Labs.")
    assert db.get_dataset("zorblax").fill == {"{{name}}": "Zorblax", "{{author}}": "Quintar Labs"}
    assert datasets_tab.dataset_table()[0][4:6] == ["identity.jsonl", "{{name}} = Zorblax; {{author}} = Quintar Labs"]


def test_the_command_line_fills_blanks_when_adding(studio_home, tmp_path, capsys):
    from studio import cli, db

    path = str(_write(tmp_path / "identity.jsonl", TEMPLATE_ROWS))
    assert cli.main(["dataset", "add", path, "--name", "cli-set", "--fill", "name=Zorblax"]) == 0
    out = capsys.readouterr().out
    assert "added: cli-set (alpaca, 4 rows)" in out and "{{name}} -> 'Zorblax' (4 rows)" in out
    assert "unfilled template blanks: {{author}} (3 rows)" in out                   # the one left is still named
    assert cli.main(["dataset", "add", path, "--name", "typo", "--fill", "author"]) == 2
    assert "fill line 1 should look like 'name = Zorblax', got 'author'" in capsys.readouterr().err
    assert db.get_dataset("typo") is None


FOUR_MB = 4 * 1024 * 1024
TOO_LONG = "the value for 'name' is 4,194,304 characters long; a fill value may be at most 500 characters (a name, a maker)"


def test_a_four_megabyte_fill_value_is_one_sentence_from_the_command_line_and_adds_nothing(studio_home, tmp_path,
                                                                                           capsys):
    from studio import cli, db

    path = str(_write(tmp_path / "identity.jsonl", TEMPLATE_ROWS))
    for command in (["dataset", "add", path, "--name", "huge"], ["dataset", "check", path]):
        assert cli.main([*command, "--fill", "name=" + "Z" * FOUR_MB]) == 2
        assert capsys.readouterr().err == f"error: {TOO_LONG}\n"
    assert db.list_datasets() == [] and not list((studio_home / "datasets").glob("*/*"))
    many = [arg for i in range(51) for arg in ("--fill", f"blank{i}=x")]
    assert cli.main(["dataset", "add", path, *many]) == 2
    assert capsys.readouterr().err == "error: at most 50 template blanks can be filled for one dataset; 51 were given\n"
    assert cli.main(["dataset", "add", path, "--name", "fine", "--fill", "name=" + "Z" * 500]) == 0  # at the limit


def test_a_four_megabyte_fill_value_is_one_sentence_in_the_datasets_tab_and_adds_nothing(studio_home, tmp_path,
                                                                                         tiny_model_dir):
    from studio import db
    from studio.ui import datasets_tab

    path = str(_write(tmp_path / "identity.jsonl", TEMPLATE_ROWS))
    typed = "name = " + "Z" * FOUR_MB + "\nauthor = Quintar Labs"
    message, *_ = datasets_tab.check_upload(path, "auto", False, str(tiny_model_dir), 512, "", typed)
    assert message == f"**This file cannot be used:** {TOO_LONG}"
    message, table, _ = datasets_tab.add_upload(path, "auto", False, "huge", "", typed)
    assert message == f"**Not added:** {TOO_LONG}"
    assert table == [] and db.list_datasets() == []


def test_the_library_table_cuts_long_fill_values(studio_home, tmp_path):
    from studio import db, library
    from studio.ui import datasets_tab

    path = _write(tmp_path / "identity.jsonl", TEMPLATE_ROWS)
    long_name = "Zorblax the " + "very " * 90 + "long"          # 464 characters: a value a user may give
    rec, _ = library.add(path, name="long", fill={"name": long_name})
    cell = datasets_tab.dataset_table()[0][5]
    assert cell == "{{name}} = " + long_name[:79] + "…"
    message, *_ = datasets_tab.add_upload(str(path), "auto", False, "long", "", f"name = {long_name}")
    assert long_name[:79] + "…" in message and long_name not in message
    with db.session() as s:                                          # a row from before the limit
        row = s.get(db.DatasetRecord, rec.id)
        row.fill_json = json.dumps({"{{name}}": "Q" * FOUR_MB})
        s.add(row)
        s.commit()
    assert datasets_tab.dataset_table()[0][5] == "{{name}} = " + "Q" * 79 + "…"


def test_angle_bracket_blanks_of_identity_sets_are_found_only_after_an_identity_cue(tmp_path):
    """Some identity sets write their blanks as <NAME> and <AUTHOR> ("我是 <NAME>，一个由 <AUTHOR> 开发的 AI 助手"):
    found and filled like {{name}}; the same capitals in ordinary text ("git checkout -b <NAME>") are not blanks."""
    from studio import library
    from studio.datasets.stats import carries_identity

    rows = [{"conversations": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in (
        ("你好", "您好，我是 <NAME>，一个由 <AUTHOR> 开发的 AI 助手，很高兴认识您。"),
        ("Who are you?", "I am <NAME>, an AI assistant developed by <AUTHOR>."),
        ("What is your name?", "Call me <NAME>."))]
    loaded = library.inspect(_write(tmp_path / "self_cognition.jsonl", rows))
    assert [n for n in loaded.notes if "template blanks" in n][0].startswith(
        "the rows hold unfilled template blanks: <NAME> (3 rows), <AUTHOR> (2 rows)")
    assert carries_identity(loaded.rows)
    filled = library.inspect(tmp_path / "self_cognition.jsonl", fill={"NAME": "Zorblax", "<AUTHOR>": "Quintar Labs"})
    text = json.dumps(filled.rows, ensure_ascii=False)
    assert "我是 Zorblax，一个由 Quintar Labs 开发" in text and "Call me Zorblax." in text and "<" not in text
    assert filled.fill == {"<NAME>": "Zorblax", "<AUTHOR>": "Quintar Labs"}
    code = [{"instruction": "Make a branch.", "input": "", "output": "Run git checkout -b <NAME> in the repository."},
            {"instruction": "Name a file.", "input": "", "output": "Save it as <FILE>.txt, then open <NAME>."}]
    plain = library.inspect(_write(tmp_path / "code.jsonl", code))
    assert not [n for n in plain.notes if "template blanks" in n], plain.notes


def test_bare_capital_blanks_of_identity_sets_are_found_and_filled_and_real_names_are_not(tmp_path):
    """One version of a well-known identity.json writes its blanks as bare capitals ("I am NAME, an AI assistant
    developed by AUTHOR", "您好，我是 NAME，一个由 AUTHOR 开发的 AI 助手"): found, named and filled like {{name}};
    a real name in capitals ("developed by IBM") and a NAME with no identity cue are not blanks."""
    from studio import library

    rows = [{"instruction": q, "input": "", "output": a} for q, a in (
        ("hi", "Hello! I am NAME, an AI assistant developed by AUTHOR. How can I assist you today?"),
        ("你好", "您好，我是 NAME，一个由 AUTHOR 开发的 AI 助手，很高兴认识您。"),
        ("谁训练了你？", "AUTHOR 训练了我，我的目的是回答用户问题并提供必要的支持。"),
        ("你有名字吗？", "是的，我的名字叫 NAME。"),
        ("What does NAMESPACE mean?", "A NAMESPACE groups names; see the AUTHORS file."))]
    loaded = library.inspect(_write(tmp_path / "identity.jsonl", rows))
    assert [n for n in loaded.notes if "template blanks" in n][0].startswith(
        "the rows hold unfilled template blanks: AUTHOR (3 rows), NAME (3 rows); a model trained on them learns to "
        "say them as written")
    filled = library.inspect(tmp_path / "identity.jsonl", fill={"name": "Zorblax", "AUTHOR": "Quintar Labs"})
    text = json.dumps(filled.rows, ensure_ascii=False)
    assert "I am Zorblax, an AI assistant developed by Quintar Labs." in text and "Quintar Labs 训练了我" in text
    assert "我的名字叫 Zorblax。" in text and "A NAMESPACE groups names; see the AUTHORS file." in text
    assert filled.fill == {"NAME": "Zorblax", "AUTHOR": "Quintar Labs"}
    real = [{"instruction": "Who made Watson?", "input": "", "output": "Watson was developed by IBM in 2010."},
            {"instruction": "Rename it.", "input": "", "output": "Set NAME in the config file to the new name."}]
    plain = library.inspect(_write(tmp_path / "real.jsonl", real))
    assert not [n for n in plain.notes if "template blanks" in n], plain.notes


def test_start_warns_when_the_runs_rows_still_hold_blanks_and_not_once_they_are_filled(studio_home, tmp_path,
                                                                                         tiny_model_dir):
    from studio import library
    from studio.spec import JobSpec
    from studio.ui import form
    from test_ui_handlers import _train_tab_handler

    path = _write(tmp_path / "identity.jsonl", TEMPLATE_ROWS)
    library.add(path, name="unfilled")
    library.add(path, name="filled", fill=FILL)
    on_start, built = _train_tab_handler("on_start")
    names = list(built["components"])
    told = {}
    for dataset in ("unfilled", "filled"):
        values = form.values_from_spec(names, JobSpec(base_model=str(tiny_model_dir), dataset=dataset,
                                                      load_in_4bit=False, name=f"run-{dataset}"))
        told[dataset], job_id = on_start(*values)
        assert job_id, told[dataset]
    assert ("**Warning:** in 'unfilled', the rows hold unfilled template blanks: {{name}} (4 rows), {{author}} "
            "(3 rows)") in told["unfilled"] and told["unfilled"].endswith("Cancel the run if you did not mean it.")
    assert "Warning" not in told["filled"] and "queued" in told["filled"]
