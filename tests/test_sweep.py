"""Sweeps on the tiny model: a 2x2 grid queues four ordinary runs in one group, the leaderboard orders them,
cancelling the group stops every member (one of them running in a real consumer), and a sweep with one
invalid member queues nothing."""
from __future__ import annotations

import json

import pytest

from conftest import wait_for
from workerproc import Worker

LONG_RUN = 20_000


def _sweep_yaml(tiny_model_dir, name="grid", **base):
    fields = dict(base_model=str(tiny_model_dir), dataset="identity", load_in_4bit=False, lora_alpha=8,
                  per_device_train_batch_size=2, eval_split=0.0, max_length=128, max_steps=LONG_RUN,
                  save_steps=LONG_RUN, **base)
    return json.dumps({"name": name, "base": fields, "grid": {"learning_rate": [1e-3, 1e-4], "r": [4, 8]}})


@pytest.fixture
def home(studio_home, tmp_path):
    from identity_data import write
    from studio import library

    library.add(write(tmp_path / "identity.jsonl"), name="identity")
    return studio_home


def test_a_grid_queues_one_group_of_ordinary_runs_and_cancelling_it_stops_them_all(home, tiny_model_dir,
                                                                                  tmp_path, capsys):
    from studio import cli, db, sweep

    path = tmp_path / "grid.yaml"
    path.write_text(_sweep_yaml(tiny_model_dir))
    assert cli.main(["sweep", str(path), "--dry-run"]) == 0
    assert "4 runs (dry run: nothing queued)" in capsys.readouterr().out
    assert db.list_jobs() == []
    assert cli.main(["sweep", str(path)]) == 0
    members = db.group_jobs("grid")
    assert [j.name for j in members] == ["grid-1", "grid-2", "grid-3", "grid-4"]
    assert [(j.spec["learning_rate"], j.spec["r"]) for j in members] == [(1e-3, 4), (1e-3, 8), (1e-4, 4), (1e-4, 8)]
    assert all(j.status == "queued" and j.task_id for j in members)
    assert all(j.spec["lora_alpha"] == 8 and j.spec["max_steps"] == LONG_RUN for j in members)
    assert sweep.groups() == ["grid"]

    with Worker(home, tmp_path / "worker.log"):
        wait_for(lambda: db.get_job(members[0].id).current_step >= 2, 240, interval=0.2,
                 what="the first member to train")
        assert cli.main(["sweep", "--cancel", "grid"]) == 0
        wait_for(lambda: all(j.status in db.FINISHED for j in db.group_jobs("grid")), 120,
                 what="every member to stop")
    after = db.group_jobs("grid")
    assert [j.status for j in after] == ["cancelled"] * 4
    assert after[0].started_at is not None and after[0].current_step < LONG_RUN, "the running member stopped"
    assert all(j.started_at is None for j in after[1:]), "the queued members never started"


def test_the_leaderboard_orders_members_by_best_eval_then_final_loss(home, tiny_model_dir, tmp_path, capsys):
    from studio import charts, cli, db, sweep
    from studio.settings import get_settings

    queued = sweep.queue(sweep.parse(_sweep_yaml(tiny_model_dir, name="board")))
    summaries = [{"final_loss": 1.5, "best_eval_loss": 2.0, "runtime_seconds": 10, "tokens_per_second": 100},
                 {"final_loss": 1.0, "best_eval_loss": None, "runtime_seconds": 12, "tokens_per_second": 90},
                 {"final_loss": 1.2, "best_eval_loss": 1.1, "runtime_seconds": 11, "tokens_per_second": 95},
                 {"final_loss": 0.9, "best_eval_loss": 2.0, "runtime_seconds": 9, "tokens_per_second": 120}]
    for job, summary in zip(queued, summaries):
        db.update_job(job.id, status="completed", summary_json=json.dumps(summary))
    folder = get_settings().resolve(queued[2].output_dir)
    (folder / "probe").mkdir(parents=True)
    (folder / "probe" / "general.json").write_text(json.dumps({"kept": 0.9}))
    (folder / "judge").mkdir()
    (folder / "judge" / "vs-base.json").write_text(json.dumps({"win": {"rate": 0.75, "low": 0.5, "high": 0.9}}))

    swept, rows = sweep.leaderboard("board")
    assert swept == ("r", "learning_rate")
    assert [r["run"] for r in rows] == ["board-3", "board-4", "board-1", "board-2"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["probe_kept"] == 0.9 and rows[0]["judge_win_rate"] == 0.75 and rows[0]["tokens_per_second"] == 95
    assert rows[1]["probe_kept"] is None
    fig = charts.sweep_figure(rows, swept)
    labels = [d.label for d in fig.data[0].dimensions]
    assert labels[:2] == ["r", "learning_rate"] and "best eval loss" in labels and "judge win rate" in labels
    assert cli.main(["sweep", "--leaderboard", "board"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("rank\trun\tstatus\tr\tlearning_rate\tbest_eval_loss")
    assert [line.split("\t")[1] for line in lines[1:]] == ["board-3", "board-4", "board-1", "board-2"]


def test_a_sweep_with_an_invalid_member_queues_nothing(home, tiny_model_dir, tmp_path, capsys):
    from studio import cli, db, sweep

    text = json.dumps({"name": "bad", "base": {"base_model": str(tiny_model_dir), "dataset": "identity",
                                              "load_in_4bit": False},
                       "grid": {"learning_rate": [1e-3, 2.0]}})
    with pytest.raises(sweep.SweepError) as err:
        sweep.parse(text)
    assert str(err.value) == ("run bad-2 (learning_rate=2.0) is invalid: learning rate must be between 0 and 1 "
                              "(exclusive), got 2.0")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert cli.main(["sweep", str(path)]) == 2
    assert "run bad-2 (learning_rate=2.0) is invalid" in capsys.readouterr().err
    missing = text.replace('"identity"', '"nope"').replace("2.0", "0.002")
    with pytest.raises(sweep.SweepError, match="run bad-1 is invalid: there is no dataset named 'nope'"):
        sweep.queue(sweep.parse(missing))
    assert db.list_jobs() == []


def test_a_random_sample_is_seeded_and_capped(home, tiny_model_dir):
    from studio import sweep

    text = json.dumps({"name": "rnd", "base": {"base_model": str(tiny_model_dir), "dataset": "identity"},
                       "random": {"learning_rate": {"min": 1e-5, "max": 1e-3, "log": True}, "r": [4, 8, 16]},
                       "samples": 5, "seed": 7})
    first, again = sweep.parse(text), sweep.parse(text)
    assert [(m.learning_rate, m.r) for m in first.members] == [(m.learning_rate, m.r) for m in again.members]
    assert len(first.members) == 5 and all(1e-5 <= m.learning_rate <= 1e-3 for m in first.members)
    assert {m.r for m in first.members} <= {4, 8, 16}
    big = json.dumps({"base": {"dataset": "identity"}, "grid": {"r": list(range(1, 20)), "seed": list(range(20))}})
    with pytest.raises(sweep.SweepError, match="the grid has 380 combinations; a sweep may queue at most 256"):
        sweep.parse(big)


def test_the_train_tabs_sweep_panel_queues_shows_the_board_and_cancels(home, tiny_model_dir):
    """The Sweep panel's module-level handlers in the Train tab, and its place there (not in the Runs tab)."""
    import gradio as gr

    from studio import db
    from studio.ui import runs_tab, train_tab

    message, _, board, _ = train_tab.sweep_queue("grid: [not, a, mapping", None)
    assert message.startswith("Not queued: ") and db.list_jobs() == []
    assert train_tab.sweep_queue("  ", None)[0] == "Paste a sweep YAML or upload one first."
    message, group, board, _ = train_tab.sweep_queue(_sweep_yaml(tiny_model_dir, name="panel"), None)
    assert message == "Queued 4 runs in sweep **panel**." and group["value"] == "panel"
    assert sorted(row[1] for row in board["data"]) == ["panel-1", "panel-2", "panel-3", "panel-4"]
    assert board["headers"][:3] == ["rank", "run", "status"] and set(board["headers"][3:5]) == {"learning_rate", "r"}
    message, board, _ = train_tab.sweep_cancel("panel")
    assert message == "Sweep panel cancelled: queued runs will not start."
    assert [j.status for j in db.group_jobs("panel")] == ["cancelled"] * 4
    assert train_tab.sweep_cancel(None)[0] == "Choose a sweep first."
    with gr.Blocks() as demo:
        with gr.Tabs():
            train_tab.build()
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"sweep-yaml", "sweep-queue", "sweep-leaderboard", "sweep-cancel"} <= ids
    with gr.Blocks() as runs:
        with gr.Tabs():
            runs_tab.build()
    assert "sweep-yaml" not in {getattr(block, "elem_id", None) for block in runs.blocks.values()}
