"""Pure functions: metric rows in, plotly Figure out.

A metric row is a dict (or any object with the same attributes, such as ``db.MetricPoint``) with
``step`` and, each possibly None: ``epoch``, ``loss`` (train), ``eval_loss``, ``learning_rate``,
``grad_norm``, ``tokens_per_second``, ``memory_gb``, ``time`` (unix seconds). The figure and
summary functions also take the same data as columns (``{"step": [...], "loss": [...]}``, lists
or numpy arrays), which skips the per-row work for very long runs.

No torch, no gradio, no database: the UI fetches rows and hands them here. Series are smoothed
on all points first, then thinned to a few thousand per trace, so a million-step run draws as
fast as a short one.
"""
from __future__ import annotations

import csv
import io
import math
from itertools import accumulate
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative

from .method_info import METHOD_METRICS

__all__ = [
    "ema", "downsample", "to_columns", "run_figure", "compare_figure", "empty_figure", "config_labels",
    "config_diff", "summary", "format_duration", "rows_to_csv", "METRICS", "MAX_COMPARE",
]

HEIGHT = 520
EXTRA_PANEL_HEIGHT = 70
MAX_COMPARE = 20
KEEP_TAIL = 200
MAX_SMOOTHING = 0.999

# metric key -> (label, hover/tick number format); the order is the order of the small panels
METRICS: dict[str, tuple[str, str]] = {
    "loss": ("train loss", ".4f"),
    "eval_loss": ("eval loss", ".4f"),
    "learning_rate": ("learning rate", ".2e"),
    "grad_norm": ("grad norm", ".3g"),
    "tokens_per_second": ("tokens/s", ",.0f"),
    "memory_gb": ("memory (GB)", ".2f"),
    # the training methods' own metrics (studio/method_info.py), drawn only when a run logged them
    "rewards/margins": ("reward margin", ".3f"),
    "rewards/chosen": ("reward chosen", ".3f"),
    "rewards/rejected": ("reward rejected", ".3f"),
    "kl": ("KL", ".3g"),
    "log_odds_chosen": ("log-odds chosen vs rejected", ".3f"),
    "logps/rejected": ("log p rejected", ".2f"),
    "nll_loss": ("SFT loss (chosen)", ".4f"),
    "reward": ("mean reward", ".3f"),
    "reward_std": ("reward spread (std)", ".3f"),
    "completions/mean_length": ("completion length", ".1f"),
}
METHOD_PANELS = tuple(METHOD_METRICS)
PANELS = ("learning_rate", "grad_norm", "tokens_per_second", "memory_gb", *METHOD_PANELS)
SMOOTHED = {"loss", "grad_norm", "tokens_per_second"}  # noisy series; lr, memory and eval are drawn raw
CSV_COLUMNS = ("step", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_second",
               "num_tokens", "memory_gb", "time")

TRAIN_COLOUR = "#2563eb"
EVAL_COLOUR = "#ea580c"
BEST_COLOUR = "#16a34a"
PANEL_COLOURS = {"learning_rate": "#7c3aed", "grad_norm": "#0891b2", "tokens_per_second": "#65a30d",
                 "memory_gb": "#b45309"} | {k: qualitative.Dark2[i % len(qualitative.Dark2)]
                                           for i, k in enumerate(METHOD_PANELS)}
RUN_COLOURS = qualitative.Dark24
FEW_POINTS = 40  # up to this many points a line also gets markers


# ---- series ---------------------------------------------------------------------------------

def ema(values: Iterable[float | None], smoothing: float) -> list[float]:
    """TensorBoard's debiased exponential moving average.

    ``smoothing`` 0 returns the values unchanged; 0.99 is very smooth (clamped to 0.999). The first
    value is its own average (debiasing), a constant series stays constant, and None/NaN/inf are
    passed through without moving the average.
    """
    return _ema_array(values, smoothing).tolist()


def _ema_array(values: Iterable[float | None], smoothing: float) -> np.ndarray:
    v = np.array(values if isinstance(values, np.ndarray) else list(values), dtype=float)
    s = min(max(float(smoothing), 0.0), MAX_SMOOTHING)
    finite = np.isfinite(v)
    all_finite = bool(finite.all())
    x = v if all_finite else v[finite]
    n = len(x)
    if s == 0.0 or n == 0:
        return v
    # y[t] = s*y[t-1] + (1-s)*x[t], y[-1] = 0, computed in chunks: within a chunk as a cumulative sum
    # scaled by s**-k (chunk length chosen so s**-k stays below e**30), across chunks by a scalar carry.
    size = max(1, min(n, int(30.0 / -math.log(s))))
    chunks = -(-n // size)
    k = np.arange(size)
    grid = np.zeros(chunks * size)
    grid[:n] = x
    grid = grid.reshape(chunks, size)
    grid *= s ** -k
    np.cumsum(grid, axis=1, out=grid)
    grid *= (1.0 - s) * s ** k  # each chunk as if it started from 0
    step = s ** size
    ends = list(accumulate(grid[:, -1].tolist(), lambda carry, end: carry * step + end))
    grid += np.outer([0.0] + ends[:-1], s ** (k + 1))  # plus what the earlier chunks carry in
    y = grid.ravel()[:n]
    head = min(n, int(40.0 / -math.log(s)) + 1)  # past this, 1 - s**t == 1 in float64
    y[:head] /= -np.expm1(np.arange(1, head + 1) * math.log(s))  # debias: 1 - s**t
    if all_finite:
        return y
    out = v.copy()
    out[finite] = y
    return out


def downsample(steps: Sequence[float], values: Sequence[float], max_points: int,
               keep_tail: int = KEEP_TAIL) -> tuple[np.ndarray, np.ndarray]:
    """Thin a series for drawing: the first point, the min and max of each bucket, the newest
    ``keep_tail`` points exact. Returns at most ``max_points + keep_tail`` points (numpy arrays),
    in order; a series of ``max_points`` or fewer comes back unchanged.
    """
    s = np.asarray(steps)
    v = np.asarray(values, dtype=float)
    if len(s) != len(v):
        raise ValueError(f"steps and values differ in length ({len(s)} vs {len(v)})")
    idx = _keep_indices(v, max_points, keep_tail)
    return s[idx], v[idx]


def _keep_indices(values: np.ndarray, max_points: int, keep_tail: int = KEEP_TAIL) -> np.ndarray:
    n = len(values)
    if max_points < 1:
        raise ValueError(f"max_points must be at least 1, got {max_points}")
    if n <= max_points:
        return np.arange(n)
    head_end = n - min(max(keep_tail, 0), n - 1)  # [0, head_end) is bucketed, the rest kept exact
    body = values[1:head_end]
    buckets = min((max_points - 1) // 2, len(body))
    kept = [np.zeros(1, dtype=np.int64), np.arange(head_end, n)]
    if buckets:
        width = -(-len(body) // buckets)
        rows = -(-len(body) // width)
        offsets = np.arange(rows) * width + 1
        nan = np.isnan(body)
        lo = np.full(rows * width, np.inf)
        lo[:len(body)] = np.where(nan, np.inf, body)
        hi = np.full(rows * width, -np.inf)
        hi[:len(body)] = np.where(nan, -np.inf, body)
        kept += [lo.reshape(rows, width).argmin(axis=1) + offsets, hi.reshape(rows, width).argmax(axis=1) + offsets]
    return np.unique(np.concatenate(kept))


Rows = Sequence[Any] | Mapping[str, Sequence[Any]]


def to_columns(rows: Rows, keys: Iterable[str] = CSV_COLUMNS[1:]) -> dict[str, np.ndarray]:
    """Rows (or a mapping of columns) -> ``{"step": int array, key: float array (None -> NaN)}``,
    sorted by step. The figures accept this form directly; a live view can convert only the new
    points of each poll and ``np.concatenate`` them onto what it already holds.
    """
    keys = ("step", *(k for k in keys if k != "step"))
    nan = math.nan
    if isinstance(rows, Mapping):  # already columns, e.g. {"step": [...], "loss": [...]}
        n = len(rows["step"])
        cols = {k: _float_array(rows.get(k), n) for k in keys}
    elif isinstance(rows[0], Mapping):
        cols = {k: np.fromiter((nan if (v := r.get(k)) is None else v for r in rows), float, len(rows)) for k in keys}
    else:
        cols = {k: np.fromiter((nan if (v := getattr(r, k, None)) is None else v for r in rows), float, len(rows))
                for k in keys}
    steps = cols["step"]
    if not np.isfinite(steps).all():  # a row without a step cannot be placed
        cols = {k: v[np.isfinite(steps)] for k, v in cols.items()}
    if len(cols["step"]) > 1 and (np.diff(cols["step"]) < 0).any():
        order = np.argsort(cols["step"], kind="stable")
        cols = {k: v[order] for k, v in cols.items()}
    cols["step"] = cols["step"].astype(np.int64)  # integer x values: exact, and half the JSON of floats
    return cols


def _float_array(column: Any, n: int) -> np.ndarray:
    if column is None:
        return np.full(n, math.nan)
    if isinstance(column, np.ndarray) and column.dtype.kind in "fiub":
        return column.astype(float, copy=False)
    return np.fromiter((math.nan if v is None else v for v in column), float, n)


def _is_empty(rows: Rows) -> bool:
    if isinstance(rows, Mapping):
        return rows.get("step") is None or not len(rows["step"])
    return not len(rows)


def _series(cols: dict[str, np.ndarray], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, values, row positions) of the rows where ``key`` has a finite value."""
    finite = np.isfinite(cols[key])
    if finite.all():
        return cols["step"], cols[key], np.arange(len(finite))
    where = np.flatnonzero(finite)
    return cols["step"][where], cols[key][where], where


def _mode(n: int) -> str:
    return "lines+markers" if n <= FEW_POINTS else "lines"


# ---- figures --------------------------------------------------------------------------------
# Figures are assembled as one plain dict and validated once by go.Figure(): several times faster
# than make_subplots() + add_trace() + update_layout(), which re-validate on every call.

def _axis_id(row: int) -> str:
    return "" if row == 1 else str(row)


def _layout(uirevision: str, **extra: Any) -> dict[str, Any]:
    return dict(height=HEIGHT, template="plotly_white", uirevision=uirevision, hovermode="x unified",
                margin=dict(l=60, r=20, t=60, b=40), **extra)


def empty_figure(message: str = "waiting for the first step…", *, uirevision: str = "run") -> go.Figure:
    """A blank chart with one friendly line in the middle."""
    return go.Figure(dict(data=[], layout=dict(
        height=HEIGHT, template="plotly_white", uirevision=uirevision, margin=dict(l=40, r=20, t=30, b=40),
        xaxis=dict(visible=False), yaxis=dict(visible=False),
        annotations=[dict(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                          font=dict(size=16, color="#6b7280"))],
    )))


def run_figure(rows: Rows, *, smoothing: float = 0.6, log_scale: bool = False,
               best_step: int | None = None, total_steps: int | None = None, max_points: int = 2000,
               keep_tail: int = KEEP_TAIL, uirevision: str = "run") -> go.Figure:
    """One run: train loss (smoothed line over faint raw values) and eval loss on the main panel,
    the best eval checkpoint marked, and small linked panels for learning rate, grad norm, tokens/s,
    memory and the method's own metrics (reward margins, mean reward, KL, ...; only those with data)
    below it, all on one step axis.

    ``rows``: metric rows, or a mapping of columns (``{"step": [...], "loss": [...]}``, faster).
    ``best_step``: the checkpoint the trainer kept; default the step of the lowest eval loss.
    ``total_steps``: when known the step axis spans the whole run, so progress shows.
    ``uirevision``: keep one value per run so live updates keep the user's zoom; switching
    ``log_scale`` resets the loss axis only.
    """
    if _is_empty(rows):
        return empty_figure(uirevision=uirevision)
    cols = to_columns(rows, ("epoch", "loss", "eval_loss", *PANELS))
    panels = [k for k in PANELS if np.isfinite(cols[k]).any()]
    if not (np.isfinite(cols["loss"]).any() or np.isfinite(cols["eval_loss"]).any() or panels):
        return empty_figure(uirevision=uirevision)

    data: list[dict] = []
    shapes: list[dict] = []
    _add_train(data, cols, smoothing, max_points, keep_tail)
    best = _add_eval(data, shapes, cols, best_step, max_points, keep_tail)
    for row, key in enumerate(panels, start=2):
        _add_panel(data, cols, key, row, smoothing if key in SMOOTHED else 0.0, max_points, keep_tail)

    # stacked panels: the loss panel on top, the small ones share the rest of the height
    n_rows = 1 + len(panels)
    gap = 0.03
    main = 1.0 if not panels else 0.6 if len(panels) <= 2 else 0.5
    heights = [main] + [(1 - main) / len(panels)] * len(panels) if panels else [main]
    usable = 1 - gap * (n_rows - 1)
    last_step = int(cols["step"][-1])
    x_range = [0, max(total_steps, last_step) * 1.01] if total_steps else None
    bottom = f"x{_axis_id(n_rows)}"
    annotations: list[dict] = []
    layout = _layout(uirevision, showlegend=True, shapes=shapes, annotations=annotations,
                     legend=dict(orientation="h", x=0, y=1.0, yanchor="bottom", bgcolor="rgba(0,0,0,0)"))
    layout["height"] = HEIGHT + EXTRA_PANEL_HEIGHT * max(0, len(panels) - 4)  # a method's panels add room
    top = 1.0
    for row, h in enumerate(heights, start=1):
        a = _axis_id(row)
        domain = [max(top - h * usable, 0.0), top]
        top = domain[0] - gap
        layout[f"xaxis{a}"] = dict(anchor=f"y{a}", showticklabels=row == n_rows,
                                   **({"matches": bottom} if row < n_rows else {"title": dict(text="step")}),
                                   **({"range": x_range} if x_range else {}))
        if row == 1:
            layout["yaxis"] = dict(domain=domain, anchor="x", title=dict(text="loss"),
                                   type="log" if log_scale else "linear",
                                   uirevision=f"{uirevision}:{'log' if log_scale else 'linear'}")
        else:
            key = panels[row - 2]
            layout[f"yaxis{a}"] = dict(domain=domain, anchor=f"x{a}", nticks=3, tickfont=dict(size=9),
                                       exponentformat="e" if key == "learning_rate" else "SI")
            # a label inside the panel's corner: a rotated axis title would not fit the height
            annotations.append(dict(text=METRICS[key][0], xref=f"x{a} domain", yref=f"y{a} domain", x=0.005,
                                    y=1.0, xanchor="left", yanchor="top", showarrow=False,
                                    font=dict(size=10, color="#4b5563"), bgcolor="rgba(255,255,255,0.7)"))

    title = f"step {last_step:,}"
    if total_steps:
        title += f" of {total_steps:,} ({min(last_step / total_steps, 1):.0%})"
    if best is not None:
        title += f" · best eval {best[1]:.4f} at step {best[0]:,}"
    # top right: gradio draws the component's label over the chart's top left corner
    layout["title"] = dict(text=title, x=1.0, xref="paper", xanchor="right", y=0.99, yanchor="top",
                           font=dict(size=13))
    return go.Figure(dict(data=data, layout=layout))


def _add_train(data: list, cols: dict, smoothing: float, max_points: int, keep_tail: int) -> None:
    steps, raw, where = _series(cols, "loss")
    if not len(raw):
        return
    smooth = _ema_array(raw, smoothing)
    epochs = cols["epoch"][where]
    hover = "train %{customdata[0]:.4f}" + (" (smoothed %{y:.4f})" if smoothing > 0 else "")
    hover += " · epoch %{customdata[1]:.2f}" if np.isfinite(epochs).any() else ""
    if smoothing > 0:
        r = _keep_indices(raw, max_points, keep_tail)
        data.append(dict(
            type="scatter", x=steps[r], y=raw[r], name="train (raw)",
            mode="lines" if len(r) > FEW_POINTS else "markers", line=dict(color=TRAIN_COLOUR, width=1),
            marker=dict(color=TRAIN_COLOUR, size=5), opacity=0.25, hoverinfo="skip", showlegend=False))
    i = _keep_indices(smooth, max_points, keep_tail)
    data.append(dict(
        type="scatter", x=steps[i], y=smooth[i], name="train loss", mode=_mode(len(i)),
        line=dict(color=TRAIN_COLOUR, width=2), marker=dict(size=6, color=TRAIN_COLOUR),
        customdata=np.column_stack([raw[i], epochs[i]]), hovertemplate=hover + "<extra></extra>"))


def _add_eval(data: list, shapes: list, cols: dict, best_step: int | None, max_points: int,
              keep_tail: int) -> tuple[int, float] | None:
    """Eval loss markers+line and the best checkpoint; returns (best step, its eval loss) if known."""
    steps, values, _ = _series(cols, "eval_loss")
    if len(values):
        i = _keep_indices(values, max_points, keep_tail)
        data.append(dict(
            type="scatter", x=steps[i], y=values[i], name="eval loss", mode="lines+markers",
            line=dict(color=EVAL_COLOUR, width=2), marker=dict(size=7, color=EVAL_COLOUR),
            hovertemplate="eval %{y:.4f}<extra></extra>"))
    if best_step is None and len(values):
        best_step = int(steps[np.argmin(values)])
    if best_step is None:
        return None
    shapes.append(dict(type="line", xref="x", yref="y domain", x0=best_step, x1=best_step, y0=0, y1=1,
                       line=dict(color=BEST_COLOUR, width=1, dash="dot")))
    at = np.flatnonzero(steps == best_step)
    if not len(at):
        return None
    best = float(values[at[-1]])
    data.append(dict(
        type="scatter", x=[best_step], y=[best], name="best checkpoint", mode="markers",
        marker=dict(symbol="star", size=16, color=BEST_COLOUR, line=dict(color="white", width=1)),
        hovertemplate=f"best checkpoint: step {best_step:,}, eval {best:.4f}<extra></extra>"))
    return best_step, best


def _add_panel(data: list, cols: dict, key: str, row: int, smoothing: float, max_points: int,
               keep_tail: int) -> None:
    steps, values, _ = _series(cols, key)
    values = _ema_array(values, smoothing) if smoothing > 0 else values
    i = _keep_indices(values, max_points, keep_tail)
    label, fmt = METRICS[key]
    colour = PANEL_COLOURS[key]
    a = _axis_id(row)
    data.append(dict(
        type="scatter", x=steps[i], y=values[i], name=label, mode=_mode(len(i)), showlegend=False,
        xaxis=f"x{a}", yaxis=f"y{a}", line=dict(color=colour, width=1.5), marker=dict(size=4, color=colour),
        hovertemplate=f"{label} %{{y:{fmt}}}<extra></extra>"))


def compare_figure(runs: Sequence[tuple[str, Rows]], *, smoothing: float = 0.6, log_scale: bool = False,
                   metric: str = "loss", max_points: int = 2000, keep_tail: int = KEEP_TAIL,
                   uirevision: str = "compare") -> go.Figure:
    """Overlay up to 20 runs, each ``(label, rows)``, one colour per run (by position).

    ``metric="loss"`` draws smoothed train loss solid and eval loss dashed in the same colour;
    any other key of ``METRICS`` draws that series alone. Runs past the 20th are left out, and
    the chart says so.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if not runs:
        return empty_figure("choose runs to compare", uirevision=uirevision)
    keys = ("loss", "eval_loss") if metric == "loss" else (metric,)
    data: list[dict] = []
    for n, (name, rows) in enumerate(list(runs)[:MAX_COMPARE]):
        if _is_empty(rows):
            continue
        colour = RUN_COLOURS[n % len(RUN_COLOURS)]
        cols = to_columns(rows, keys)
        for key in keys:
            steps, values, _ = _series(cols, key)
            if not len(values):
                continue
            if key in SMOOTHED and smoothing > 0:
                values = _ema_array(values, smoothing)
            i = _keep_indices(values, max_points, keep_tail)
            is_eval = key == "eval_loss" and metric == "loss"
            data.append(dict(
                type="scatter", x=steps[i], y=values[i],
                mode="lines+markers" if is_eval or len(i) <= FEW_POINTS else "lines",
                name=f"{name} (eval)" if is_eval else name, legendgroup=name, showlegend=not is_eval,
                line=dict(color=colour, width=1.5 if is_eval else 2, dash="dash" if is_eval else "solid"),
                marker=dict(size=5, color=colour),
                hovertemplate=f"{name}{' eval' if is_eval else ''} %{{y:{METRICS[key][1]}}}<extra></extra>"))
    notes = []
    if metric == "loss":
        notes.append("solid: train (smoothed) · dashed: eval")
    if len(runs) > MAX_COMPARE:
        notes.append(f"showing the first {MAX_COMPARE} of {len(runs)} runs")
    layout = _layout(
        uirevision, legend=dict(orientation="v", x=1.01, y=1, font=dict(size=11)),
        xaxis=dict(title=dict(text="step")),
        yaxis=dict(title=dict(text="loss" if metric == "loss" else METRICS[metric][0]),
                   type="log" if log_scale else "linear",
                   uirevision=f"{uirevision}:{'log' if log_scale else 'linear'}"),
        annotations=[dict(text=" · ".join(notes), x=0, y=1.0, xref="paper", yref="paper", xanchor="left",
                          yanchor="bottom", showarrow=False, font=dict(size=11, color="#6b7280"))] if notes else [],
    )
    return go.Figure(dict(data=data, layout=layout))


# ---- configs --------------------------------------------------------------------------------

# spec key -> short name practitioners use ("" = show the value alone)
SHORT_NAMES = {
    "base_model": "", "method": "", "dataset": "data", "r": "r", "lora_alpha": "alpha", "bits": "",
    "learning_rate": "lr", "lora_dropout": "dropout", "target_modules": "targets",
    "num_train_epochs": "epochs", "max_steps": "steps", "per_device_train_batch_size": "bs",
    "gradient_accumulation_steps": "accum", "max_length": "len", "lr_scheduler_type": "",
    "warmup_ratio": "warmup", "weight_decay": "wd", "max_grad_norm": "clip", "precision": "",
    "bnb_4bit_quant_type": "", "bnb_4bit_compute_dtype": "compute", "lora_bias": "bias",
    "eval_split": "eval", "eval_dataset": "eval data", "seed": "seed", "beta": "beta", "num_gpus": "gpus",
    "padding_free": "padding-free", "attn_implementation": "attention", "eval_steps": "eval every",
    "save_steps": "save every",
    "early_stopping_patience": "patience", "logging_steps": "log every",
}
FLAG_NAMES = {"use_dora": "DoRA", "use_rslora": "rsLoRA", "gradient_checkpointing": "grad ckpt",
              "assistant_only_loss": "assistant-only", "bnb_4bit_use_double_quant": "double quant"}
NOT_COMPARED = {"name"}               # the run's own name: already the column / legend label
NOT_IN_LABELS = {"golden_prompts"}    # too long for a legend; still in the diff table
_MISSING = object()


def _number(v: float) -> str:
    if v == 0:
        return "0"
    if float(v).is_integer() and abs(v) < 1e6:
        return str(int(v))
    if abs(v) < 1e-2 or abs(v) >= 1e6:
        mantissa, exponent = f"{v:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{v:g}"


def _text(v: Any) -> str:
    if v is None or v is _MISSING:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return _number(v)
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v)) if v else "none"
    return str(v)


def _bits(config: Mapping[str, Any]) -> str | None:
    if "load_in_4bit" not in config and "load_in_8bit" not in config:
        return None
    return "4-bit" if config.get("load_in_4bit") else "8-bit" if config.get("load_in_8bit") else "16-bit"


def _differing(configs: Mapping[str, Mapping[str, Any]], skip: set[str]) -> list[str]:
    keys: dict[str, None] = {}
    for c in configs.values():
        keys.update(dict.fromkeys(k for k in c if k not in skip))
    values = list(configs.values())
    return [k for k in keys if any(c.get(k, _MISSING) != values[0].get(k, _MISSING) for c in values[1:])]


def _ordered(keys: list[str]) -> list[str]:
    known = [k for k in SHORT_NAMES if k in keys] + [k for k in FLAG_NAMES if k in keys]
    return known + [k for k in keys if k not in known]


def _label_part(key: str, value: Any) -> str:
    if value is _MISSING or value is None:
        return ""
    if key in FLAG_NAMES:
        return FLAG_NAMES[key] if value else f"no {FLAG_NAMES[key]}"
    text = _text(value)
    if key == "base_model":
        text = text.rstrip("/").rsplit("/", 1)[-1]
    if key == "method":
        text = text.upper()
    short = SHORT_NAMES.get(key, key)
    return f"{short}={text}" if short else text


def config_labels(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Run id -> a short label naming only what differs, e.g. ``"r=8, 4-bit"`` vs ``"r=32, 16-bit"``.

    The two quantisation switches become one ``4-bit``/``8-bit``/``16-bit`` part. Runs whose
    settings are all equal (or a single run) are labelled by their id.
    """
    if len(configs) < 2:
        return {run: run for run in configs}
    with_bits = {}
    for run, c in configs.items():
        bits = _bits(c)
        c = {k: v for k, v in c.items() if k not in ("load_in_4bit", "load_in_8bit")}
        with_bits[run] = {**c, "bits": bits} if bits is not None else c
    keys = _ordered(_differing(with_bits, NOT_COMPARED | NOT_IN_LABELS))
    labels = {}
    for run, c in with_bits.items():
        parts = [p for p in (_label_part(k, c.get(k, _MISSING)) for k in keys) if p]
        labels[run] = ", ".join(parts) or run
    counts: dict[str, int] = {}
    for text in labels.values():
        counts[text] = counts.get(text, 0) + 1
    return {run: text if counts[text] == 1 or text == run else f"{text} ({run})" for run, text in labels.items()}


def config_diff(configs: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    """Rows ``[key, value in run 1, value in run 2, ...]`` (runs in the mapping's order) for every
    setting that differs, as text ("2e-4", "true", "q_proj,v_proj"; "" where a run lacks the key).
    Headers for a gr.Dataframe: ``["setting", *configs]``.
    """
    if len(configs) < 2:
        return []
    keys = _ordered(_differing(configs, NOT_COMPARED))
    return [[k, *(_text(c.get(k, _MISSING)) for c in configs.values())] for k in keys]


# ---- end-of-run card and export -------------------------------------------------------------

def summary(rows: Rows, *, smoothing: float = 0.6, best_step: int | None = None) -> dict[str, Any]:
    """Numbers for the end-of-run card; a value is None when the rows do not have it.

    ``final_loss`` is the last train loss logged, ``final_loss_smoothed`` the same point of the
    smoothed curve (less noisy). ``best_step`` defaults to the step of the lowest eval loss.
    ``runtime_s`` spans the first to the last metric point.
    """
    out: dict[str, Any] = dict.fromkeys((
        "steps", "epoch", "final_loss", "final_loss_smoothed", "final_eval_loss", "best_eval_loss",
        "best_eval_step", "runtime_s", "mean_tokens_per_second", "peak_memory_gb", "points"))
    out["points"] = 0
    if _is_empty(rows):
        return out
    cols = to_columns(rows, ("epoch", "loss", "eval_loss", "tokens_per_second", "memory_gb", "time"))
    out["points"] = len(cols["step"])
    out["steps"] = int(cols["step"][-1])

    def last(key: str) -> float | None:
        _, v, _ = _series(cols, key)
        return float(v[-1]) if len(v) else None

    out["epoch"] = last("epoch")
    out["final_loss"] = last("loss")
    _, loss, _ = _series(cols, "loss")
    if len(loss):
        out["final_loss_smoothed"] = float(_ema_array(loss, smoothing)[-1])
    out["final_eval_loss"] = last("eval_loss")
    steps, evals, _ = _series(cols, "eval_loss")
    if len(evals):
        at = np.flatnonzero(steps == best_step) if best_step is not None else [int(np.argmin(evals))]
        if len(at):
            out["best_eval_step"], out["best_eval_loss"] = int(steps[at[-1]]), float(evals[at[-1]])
    _, times, _ = _series(cols, "time")
    if len(times):
        out["runtime_s"] = float(times.max() - times.min())
    _, tps, _ = _series(cols, "tokens_per_second")
    if len(tps):
        out["mean_tokens_per_second"] = float(tps.mean())
    _, mem, _ = _series(cols, "memory_gb")
    if len(mem):
        out["peak_memory_gb"] = float(mem.max())
    return out


def format_duration(seconds: float | None) -> str:
    """``45 s``, ``3 min 12 s``, ``2 h 05 min``; an em dash when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    s = int(round(max(seconds, 0)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def rows_to_csv(rows: Sequence[Any]) -> str:
    """CSV text: the known metric columns in a fixed order, then any other keys; None -> empty."""
    dicts = [r if isinstance(r, Mapping) else {k: getattr(r, k, None) for k in CSV_COLUMNS} for r in rows]
    extra: dict[str, None] = {}
    for r in dicts:
        extra.update(dict.fromkeys(k for k in r if k not in CSV_COLUMNS))
    header = [*CSV_COLUMNS, *extra]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for r in dicts:
        writer.writerow(["" if r.get(k) is None else r.get(k) for k in header])
    return buf.getvalue()


def length_histogram(lengths: Sequence[int], max_length: int | None = None) -> go.Figure:
    """Token lengths of a dataset with the chosen max length drawn on it; the title says how many rows
    will be truncated."""
    lengths = np.asarray(list(lengths), dtype=float)
    over = int((lengths > max_length).sum()) if max_length else 0
    title = f"{len(lengths):,} rows · median {np.median(lengths):.0f} tokens" if len(lengths) else "no rows"
    if max_length:
        title += f" · {over:,} longer than max length {max_length} (truncated)"
    fig = go.Figure(go.Histogram(x=lengths, nbinsx=40, marker_color="#6366f1", name="rows"))
    if max_length:
        fig.add_vline(x=max_length, line_dash="dash", line_color="#dc2626",
                      annotation_text=f"max length {max_length}", annotation_position="top right")
    fig.update_layout(title=title, height=300, margin=dict(l=40, r=20, t=50, b=40), xaxis_title="tokens",
                      yaxis_title="rows", bargap=0.05, showlegend=False)
    return fig


SWEEP_METRICS = {"best_eval_loss": "best eval loss", "final_loss": "final loss", "probe_kept": "probe kept",
                 "judge_win_rate": "judge win rate", "tokens_per_second": "tokens/s"}


def _sweep_axis(label: str, values: list[Any]) -> dict[str, Any] | None:
    """One parallel-coordinates dimension; text values (target modules, schedulers) become ticks. None when
    no member has a value."""
    if all(v is None for v in values):
        return None
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values if v is not None):
        return {"label": label, "values": [math.nan if v is None else float(v) for v in values]}
    texts = ["+".join(map(str, v)) if isinstance(v, list) else str(v) for v in values]
    ticks = sorted(set(texts))
    return {"label": label, "values": [ticks.index(t) for t in texts], "tickvals": list(range(len(ticks))),
            "ticktext": ticks}


def sweep_figure(rows: Sequence[Mapping[str, Any]], swept: Sequence[str]) -> go.Figure:
    """Parallel coordinates of a sweep: one line per run across the swept fields and the results, coloured
    by best eval loss (lower is better, darker)."""
    if not rows:
        return empty_figure("no runs in this sweep", uirevision="sweep")
    axes = [_sweep_axis(key, [r.get(key) for r in rows]) for key in swept]
    axes += [_sweep_axis(label, [r.get(key) for r in rows]) for key, label in SWEEP_METRICS.items()]
    color = [r.get("best_eval_loss") if r.get("best_eval_loss") is not None else r.get("final_loss") for r in rows]
    line: dict[str, Any] = {}
    if any(c is not None for c in color):
        line = {"color": [math.nan if c is None else c for c in color], "colorscale": "Viridis",
                "showscale": True, "colorbar": {"title": "eval loss"}}
    fig = go.Figure(go.Parcoords(dimensions=[a for a in axes if a is not None], line=line))
    fig.update_layout(height=420, margin=dict(l=60, r=60, t=60, b=30), uirevision="sweep")
    return fig
