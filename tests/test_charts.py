"""studio.charts: series helpers, figures, config labels, summary and CSV. Pure Python, fast."""
from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest

from studio import charts
from studio.charts import (compare_figure, config_diff, config_labels, downsample, ema, format_duration, rows_to_csv,
                           run_figure, summary)


def make_rows(n: int, *, eval_every: int = 0, seed: int = 0, panels: bool = True) -> list[dict]:
    """``n`` train steps with a falling noisy loss; an eval row every ``eval_every`` steps."""
    rng = np.random.default_rng(seed)
    rows = []
    for step in range(1, n + 1):
        rows.append({
            "step": step, "epoch": step / max(n, 1) * 2, "loss": 2.0 * math.exp(-step / max(n, 1)) + rng.random() * 0.1,
            "eval_loss": None, "learning_rate": 5e-4 * (1 - step / (n + 1)) if panels else None,
            "grad_norm": 1.0 + rng.random() if panels else None, "tokens_per_second": 1000.0 + step if panels else None,
            "memory_gb": 1.5 if panels else None, "time": 1_700_000_000.0 + step * 0.5,
        })
        if eval_every and step % eval_every == 0:
            rows.append({"step": step, "epoch": rows[-1]["epoch"], "loss": None,
                         "eval_loss": 1.5 + ((step / n) - 0.6) ** 2, "learning_rate": None, "grad_norm": None,
                         "tokens_per_second": None, "memory_gb": None, "time": rows[-1]["time"] + 0.1})
    return rows


def traces(fig, name: str):
    return [t for t in fig.data if t.name == name]


def ys(trace) -> np.ndarray:
    return np.asarray(trace.y, dtype=float)


# ---- ema --------------------------------------------------------------------------------------

def test_ema_zero_smoothing_is_identity():
    values = [3.0, 1.0, 4.0, 1.0, 5.0]
    assert ema(values, 0) == values


def test_ema_constant_series_stays_constant():
    assert ema([2.5] * 1000, 0.99) == pytest.approx([2.5] * 1000)


def test_ema_debiases_first_value_and_matches_tensorboard():
    values = [10.0, 0.0, 5.0]
    s = 0.6
    out = ema(values, s)
    assert out[0] == pytest.approx(10.0)  # debiased: not (1 - s) * 10
    last, expected = 0.0, []
    for t, v in enumerate(values, start=1):
        last = last * s + (1 - s) * v
        expected.append(last / (1 - s ** t))
    assert out == pytest.approx(expected)


def test_ema_skips_missing_values_and_long_series_match_a_loop():
    rng = np.random.default_rng(1)
    values = rng.random(5000).tolist()
    values[10] = None
    out = ema(values, 0.95)
    assert math.isnan(out[10])
    last, n, expected = 0.0, 0, []
    for v in values:
        if v is None:
            expected.append(math.nan)
            continue
        n += 1
        last = last * 0.95 + 0.05 * v
        expected.append(last / (1 - 0.95 ** n))
    assert np.allclose(out, expected, equal_nan=True, rtol=1e-12)
    assert ema([], 0.6) == []


# ---- downsample -------------------------------------------------------------------------------

def test_downsample_unchanged_when_small():
    steps, values = list(range(50)), [float(v) for v in range(50)]
    s, v = downsample(steps, values, 100)
    assert s.tolist() == steps and v.tolist() == values


def test_downsample_keeps_first_newest_and_extremes():
    rng = np.random.default_rng(2)
    n, max_points, tail = 100_000, 500, 200
    steps = np.arange(n)
    values = rng.random(n)
    spikes = rng.choice(np.arange(1, n - tail), size=20, replace=False)
    values[spikes[:10]] = 5.0 + np.arange(10)   # a spike in some bucket must survive
    values[spikes[10:]] = -5.0 - np.arange(10)  # and so must a dip
    s, v = downsample(steps, values, max_points, keep_tail=tail)
    assert len(s) <= max_points + tail
    assert s[0] == 0 and set(spikes) <= set(s.tolist())
    assert s[-tail:].tolist() == list(range(n - tail, n))  # newest points exact
    assert np.all(np.diff(s) > 0)
    assert v.max() == values.max() and v.min() == values.min()


def test_downsample_keeps_min_and_max_of_every_bucket():
    rng = np.random.default_rng(3)
    values = rng.random(10_000)
    s, _ = downsample(np.arange(10_000), values, 101, keep_tail=0)
    body = values[1:]
    width = math.ceil(len(body) / 50)
    kept = set(s.tolist())
    for start in range(0, len(body), width):
        bucket = body[start:start + width]
        assert 1 + start + int(bucket.argmin()) in kept
        assert 1 + start + int(bucket.argmax()) in kept


def test_downsample_is_fast_for_a_million_points():
    import time

    values = np.random.default_rng(4).random(1_000_000)
    t0 = time.perf_counter()
    s, _ = downsample(np.arange(1_000_000), values, 2000)
    assert time.perf_counter() - t0 < 1.0
    assert len(s) <= 2200 and s[-1] == 999_999


# ---- run_figure -------------------------------------------------------------------------------

def test_run_figure_empty_state():
    fig = run_figure([])
    assert len(fig.data) == 0
    assert "waiting for the first step" in fig.layout.annotations[0].text
    assert fig.layout.height == charts.HEIGHT


def test_run_figure_single_point_shows_markers_and_progress_range():
    fig = run_figure(make_rows(1), total_steps=100)
    main = traces(fig, "train loss")[0]
    assert "markers" in main.mode and len(main.x) == 1
    assert tuple(fig.layout.xaxis.range)[1] >= 100
    assert "of 100" in fig.layout.title.text
    assert fig.layout.uirevision


def test_run_figure_five_points_with_eval_marks_best_step():
    rows = make_rows(5, eval_every=2)
    fig = run_figure(rows, total_steps=10)
    evals = traces(fig, "eval loss")
    assert evals and list(evals[0].x) == [2, 4]
    best = traces(fig, "best checkpoint")[0]
    expected = min((r for r in rows if r["eval_loss"] is not None), key=lambda r: r["eval_loss"])
    assert list(best.x) == [expected["step"]] and best.y[0] == pytest.approx(expected["eval_loss"])
    assert any(shape.x0 == expected["step"] for shape in fig.layout.shapes)  # the dotted line too
    # small panels for each metric that has data, sharing the step axis
    panel_names = {t.name for t in fig.data} & {"learning rate", "grad norm", "tokens/s", "memory (GB)"}
    assert panel_names == {"learning rate", "grad norm", "tokens/s", "memory (GB)"}
    assert fig.layout.xaxis.matches or fig.layout.xaxis2.matches


def test_run_figure_explicit_best_step_and_log_scale():
    rows = make_rows(10, eval_every=2)
    fig = run_figure(rows, best_step=4, log_scale=True)
    assert list(traces(fig, "best checkpoint")[0].x) == [4]
    assert fig.layout.yaxis.type == "log"
    assert run_figure(rows).layout.yaxis.type == "linear"


def test_run_figure_without_panel_data_has_one_panel_and_no_eval_trace():
    fig = run_figure(make_rows(20, panels=False))
    assert "xaxis2" not in fig.layout.to_plotly_json()
    assert not traces(fig, "eval loss") and not traces(fig, "best checkpoint")
    assert traces(fig, "train loss")


def test_run_figure_ten_thousand_rows_is_thinned_and_keeps_the_newest_point():
    rows = make_rows(10_000, eval_every=500)
    fig = run_figure(rows, smoothing=0.9, max_points=1000)
    main, raw = traces(fig, "train loss")[0], traces(fig, "train (raw)")[0]
    assert len(main.x) <= 1000 + charts.KEEP_TAIL and main.x[-1] == 10_000
    assert raw.y[-1] == pytest.approx(rows[-2]["loss"])  # rows[-1] is the eval row at step 10000
    assert ys(raw).max() == pytest.approx(max(r["loss"] for r in rows if r["loss"] is not None))
    assert len(traces(fig, "eval loss")[0].x) == 20
    json.loads(fig.to_json())  # serialisable as gradio sends it


def test_run_figure_sorts_rows_and_accepts_objects():
    class Point:
        def __init__(self, step, loss):
            self.step, self.loss = step, loss

    fig = run_figure([Point(3, 1.0), Point(1, 3.0), Point(2, 2.0)], smoothing=0)
    assert list(traces(fig, "train loss")[0].x) == [1, 2, 3]
    assert not traces(fig, "train (raw)")  # no faint copy when nothing is smoothed


# ---- compare_figure ---------------------------------------------------------------------------

def test_compare_figure_three_runs_same_colour_for_eval():
    runs = [(f"run {i}", make_rows(50, eval_every=10, seed=i)) for i in range(3)]
    fig = compare_figure(runs, log_scale=True)
    for name, _ in runs:
        train, evals = traces(fig, name)[0], traces(fig, f"{name} (eval)")[0]
        assert train.line.color == evals.line.color
        assert evals.line.dash == "dash" and train.line.dash == "solid"
        assert train.showlegend and evals.showlegend is False
    assert len({traces(fig, name)[0].line.color for name, _ in runs}) == 3
    assert fig.layout.yaxis.type == "log"


def test_compare_figure_other_metric_empty_and_too_many():
    runs = [(f"r{i}", make_rows(30, seed=i)) for i in range(25)]
    fig = compare_figure(runs, metric="learning_rate")
    assert len(fig.data) == charts.MAX_COMPARE
    assert "20 of 25" in fig.layout.annotations[0].text
    assert "choose runs" in compare_figure([]).layout.annotations[0].text
    with pytest.raises(ValueError, match="metric must be one of"):
        compare_figure(runs, metric="accuracy")


# ---- config labels and diff -------------------------------------------------------------------

BASE = {"name": "a", "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "r": 8, "lora_alpha": 16,
        "learning_rate": 2e-4, "load_in_4bit": True, "load_in_8bit": False, "use_dora": False, "seed": 42}


def test_config_labels_name_only_what_differs():
    configs = {"a": BASE, "b": {**BASE, "name": "b", "r": 32, "load_in_4bit": False}}
    assert config_labels(configs) == {"a": "r=8, 4-bit", "b": "r=32, 16-bit"}
    configs = {"a": BASE, "b": {**BASE, "name": "b", "learning_rate": 1e-5, "use_dora": True}}
    assert config_labels(configs) == {"a": "lr=2e-4, no DoRA", "b": "lr=1e-5, DoRA"}


def test_config_labels_identical_or_single_runs_use_ids():
    assert config_labels({"a": BASE}) == {"a": "a"}
    assert config_labels({"a": BASE, "b": {**BASE, "name": "b"}}) == {"a": "a", "b": "b"}


def test_config_diff_rows():
    configs = {"a": BASE, "b": {**BASE, "name": "b", "r": 32, "learning_rate": 5e-4},
               "c": {**BASE, "name": "c", "target_modules": ["q_proj", "v_proj"]}}
    rows = config_diff(configs)
    assert rows == [["r", "8", "32", "8"], ["learning_rate", "2e-4", "5e-4", "2e-4"],
                    ["target_modules", "", "", "q_proj,v_proj"]]
    assert config_diff({"a": BASE}) == []


# ---- summary and csv --------------------------------------------------------------------------

def test_summary():
    rows = make_rows(10, eval_every=5)
    s = summary(rows)
    assert s["steps"] == 10 and s["points"] == len(rows)
    assert s["final_loss"] == pytest.approx(rows[-2]["loss"])
    assert s["best_eval_step"] == 5 and s["best_eval_loss"] == pytest.approx(rows[5]["eval_loss"])
    assert s["runtime_s"] == pytest.approx(rows[-1]["time"] - rows[0]["time"])
    assert s["mean_tokens_per_second"] == pytest.approx(1005.5)
    assert s["peak_memory_gb"] == 1.5
    assert summary(rows, best_step=10)["best_eval_step"] == 10
    empty = summary([])
    assert empty["points"] == 0 and empty["final_loss"] is None
    assert format_duration(45) == "45 s" and format_duration(192) == "3 min 12 s"
    assert format_duration(7500) == "2 h 05 min" and format_duration(None) == "—"


def test_rows_to_csv_round_trips():
    rows = make_rows(3, eval_every=3)
    rows[0]["note"] = "x"
    text = rows_to_csv(rows)
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert list(parsed[0])[:4] == ["step", "epoch", "loss", "eval_loss"] and "note" in parsed[0]
    assert len(parsed) == len(rows)
    assert float(parsed[1]["loss"]) == rows[1]["loss"]  # full precision
    assert parsed[-1]["loss"] == "" and float(parsed[-1]["eval_loss"]) == rows[-1]["eval_loss"]


def test_figures_accept_columns_as_well_as_rows():
    rows = make_rows(30, eval_every=10)
    columns = {k: [r.get(k) for r in rows] for k in rows[0]}
    a, b = run_figure(rows, total_steps=50), run_figure(columns, total_steps=50)
    assert a.to_json() == b.to_json()
    assert summary(columns) == summary(rows)
    assert compare_figure([("x", columns)]).to_json() == compare_figure([("x", rows)]).to_json()
    assert len(run_figure({"step": []}).data) == 0


def test_to_columns_can_be_built_incrementally():
    rows = make_rows(40, eval_every=10)
    whole = charts.to_columns(rows)
    first, rest = charts.to_columns(rows[:25]), charts.to_columns(rows[25:])
    joined = {k: np.concatenate([first[k], rest[k]]) for k in whole}
    assert all(np.array_equal(whole[k], joined[k], equal_nan=True) for k in whole)
    assert whole["step"].dtype.kind == "i" and np.isnan(whole["loss"][10])  # row 10 is the step-10 eval row
    assert run_figure(joined).to_json() == run_figure(rows).to_json()


def test_length_histogram_reports_truncated_rows():
    from studio.charts import length_histogram

    fig = length_histogram([10, 20, 30, 600, 700], 512)
    assert "2 longer than max length 512" in fig.layout.title.text
    assert list(fig.data[0].x) == [10, 20, 30, 600, 700]
    assert any(getattr(s, "x0", None) == 512 for s in fig.layout.shapes)
