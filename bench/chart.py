"""Server-side chart cost: rows -> plotly Figure -> JSON, as gradio sends it to the browser.

    .venv/bin/python bench/chart.py            # all sizes (1M takes a few seconds to generate)
    .venv/bin/python bench/chart.py --quick    # 1k/10k/100k only

Section 1 times charts.run_figure / compare_figure plus fig.to_json() (what gr.Plot does), from
metric rows (dicts) and, in the last column, from the same data already converted by
charts.to_columns (what a live view holds when it converts only each poll's new points).
Every step logs every metric, plus an eval row every n/50 steps. Target: 100k points under 300 ms.

Section 2 times one live point end to end: the training callback writes it with studio.db, the
Runs tab's own handlers read and draw it: studio.ui.runs_tab.poll (the timer tick: the points since
the last seen id, the figure, status and progress) and runs_tab.select_run (choosing the run: every
stored point), each figure serialised as gr.Plot sends it.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from studio import charts  # noqa: E402

TARGET_100K_MS = 300.0


def make_rows(n: int, eval_every: int = 0) -> list[dict[str, Any]]:
    """A plausible run of ``n`` steps: every metric on every step, an eval row every ``eval_every``."""
    rows: list[dict[str, Any]] = []
    eval_every = eval_every or max(n // 50, 1)
    t0 = 1_700_000_000.0
    for step in range(1, n + 1):
        x = step / n
        rows.append({"step": step, "epoch": 3 * x, "loss": 2.0 * math.exp(-3 * x) + 0.3 + 0.05 * math.sin(step * 7.1),
                     "eval_loss": None, "learning_rate": 5e-4 * (1 - x), "grad_norm": 1.0 + 0.3 * math.sin(step),
                     "tokens_per_second": 5000.0 + step % 97, "memory_gb": 3.2, "time": t0 + step * 0.2})
        if step % eval_every == 0:
            rows.append({"step": step, "epoch": 3 * x, "loss": None, "eval_loss": 2.0 * math.exp(-2 * x) + 0.5,
                         "learning_rate": None, "grad_norm": None, "tokens_per_second": None, "memory_gb": None,
                         "time": t0 + step * 0.2 + 0.1})
    return rows


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Best wall time in ms over ``repeat`` calls, and the last result."""
    best, out = math.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000, out


def render_section(sizes: list[int]) -> bool:
    print("== render: rows -> figure -> to_json (best of runs, ms) ==")
    print(f"{'points':>10} {'figure':>9} {'to_json':>9} {'total':>9} {'JSON KB':>9} {'columns':>9}")
    ok = True
    for n in sizes:
        rows = make_rows(n)
        repeat = 5 if n <= 100_000 else 2
        t_fig, fig = timed(lambda: charts.run_figure(rows, total_steps=n), repeat)
        t_json, text = timed(fig.to_json, repeat)
        t_all, _ = timed(lambda: charts.run_figure(rows, total_steps=n).to_json(), repeat)
        t_dict, _ = timed(fig.to_plotly_json, repeat)
        columns = charts.to_columns(rows)  # what a live view holds, converting only each poll's new points
        t_cols, _ = timed(lambda: charts.run_figure(columns, total_steps=n).to_json(), repeat)
        print(f"{n:>10,} {t_fig:>9.1f} {t_json:>9.1f} {t_all:>9.1f} {len(text) / 1024:>9.0f} {t_cols:>9.1f}"
              f"   (to_plotly_json {t_dict:.1f})")
        if n == 100_000 and t_all > TARGET_100K_MS:
            ok = False
            print(f"  !! 100k points took {t_all:.0f} ms, target {TARGET_100K_MS:.0f} ms")
        del rows, columns
    runs = [(f"run {i}", make_rows(10_000)) for i in range(20)]
    t_all, text = timed(lambda: charts.compare_figure(runs).to_json(), 3)
    print(f"{'20 x 10k':>10} {'':>9} {'':>9} {t_all:>9.1f} {len(text) / 1024:>9.0f}   (compare_figure)")
    return ok


def end_to_end_delay(write: Callable[[dict[str, Any]], None], read: Callable[[], int], points: int = 20,
                     timeout_s: float = 5.0) -> dict[str, float]:
    """Delay from ``write(row)`` (the callback storing one metric point) until ``read()`` (the UI
    handler) returns a result that contains it. ``read`` returns the newest step it shows.
    Returns ms: median and max of the whole loop, and the median of each half."""
    last = read()
    totals, writes = [], []
    for i in range(1, points + 1):
        step = last + i
        t0 = time.perf_counter()
        write({"step": step, "epoch": None, "loss": 1.0 / step, "eval_loss": None, "learning_rate": 1e-4,
               "grad_norm": 1.0, "tokens_per_second": 1000.0, "memory_gb": 1.0, "time": time.time()})
        t1 = time.perf_counter()
        while read() < step:
            if time.perf_counter() - t0 > timeout_s:
                raise TimeoutError(f"step {step} did not appear within {timeout_s} s")
        t2 = time.perf_counter()
        writes.append((t1 - t0) * 1000)
        totals.append((t2 - t0) * 1000)
    return {"median_ms": statistics.median(totals), "max_ms": max(totals),
            "write_median_ms": statistics.median(writes),
            "read_median_ms": statistics.median(t - w for t, w in zip(totals, writes))}


def pipeline_section(history: int) -> None:
    print(f"\n== end to end: callback writes a point -> Runs handler returns it ({history:,} points stored) ==")
    from studio import db, settings
    from studio.ui import runs_tab

    with tempfile.TemporaryDirectory() as home:
        os.environ["STUDIO_HOME"] = home
        os.environ.pop("STUDIO_DATABASE_URL", None)
        settings.reset_settings()
        db.dispose_engines()
        try:
            with db.session() as s:
                job = db.Job(name="bench", spec_json="{}", status="running", total_steps=history + 100)
                s.add(job)
                s.commit()
            db.add_metrics(job.id, make_rows(history))
            state: dict[str, Any] = {"cache": None}

            def write(row: dict[str, Any]) -> None:
                db.add_metrics(job.id, [row])

            def shown(cache: dict, fig) -> int:
                if hasattr(fig, "to_json"):
                    fig.to_json()  # what gr.Plot sends to the browser
                return int(cache["rows"][-1]["step"]) if cache and cache.get("rows") else 0

            def poll() -> int:
                # the Runs tab's timer tick: new points since the last seen id, redraw, serialise
                cache, fig, *_ = runs_tab.poll(job.id, state["cache"], 0.0, False)
                state["cache"] = cache
                return shown(cache, fig)

            def select() -> int:
                # choosing the run again: every stored point read and drawn
                cache, fig, *_ = runs_tab.select_run(job.id, 0.0, False)
                return shown(cache, fig)

            for name, reader in (("timer tick (runs_tab.poll)", poll), ("full reload (runs_tab.select_run)", select)):
                r = end_to_end_delay(write, reader)
                print(f"{name:>34}: median {r['median_ms']:.1f} ms, max {r['max_ms']:.1f} ms "
                      f"(write {r['write_median_ms']:.1f}, read+draw {r['read_median_ms']:.1f})")
        finally:
            db.dispose_engines()
            settings.reset_settings()
            os.environ.pop("STUDIO_HOME", None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the 1M-point case")
    parser.add_argument("--history", type=int, default=10_000, help="points already stored for section 2")
    args = parser.parse_args()
    sizes = [1_000, 10_000, 100_000] + ([] if args.quick else [1_000_000])
    ok = render_section(sizes)
    pipeline_section(args.history)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
