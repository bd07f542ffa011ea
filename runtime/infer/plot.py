"""A PNG of a run's training loss, eval loss and learning rate, drawn from its events.

`ftune plot RUN` draws it on demand (also while the run trains); the worker draws it at the end
of every run. matplotlib's object API on the Agg canvas: no display, no pyplot global state, safe
inside the worker. Written atomically to `runs/<name>/loss.png`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ftune.runtime.events import read_all
from ftune.runtime.rundir import RunDir, RunError

FILE_NAME = "loss.png"


def curves(events: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) series for loss, eval_loss and lr. A resumed run logs some steps twice: the last
    attempt's value wins. Values that were not finite (written as null) are left out."""
    series: dict[str, dict[int, float]] = {"loss": {}, "eval_loss": {}, "lr": {}}
    for e in events:
        kind, step = e.get("type"), e.get("step")
        if not isinstance(step, int):
            continue
        keys = ("loss", "lr") if kind == "step" else ("eval_loss",) if kind == "eval" else ()
        for k in keys:
            v = e.get(k)
            if isinstance(v, (int, float)) and math.isfinite(v):
                series[k][step] = float(v)
    return {k: sorted(v.items()) for k, v in series.items()}


def title_of(events: list[dict[str, Any]], name: str) -> str:
    started = [e for e in events if e.get("type") == "started"]
    if not started:
        return name
    s = started[-1]
    return f"{name} · {s.get('stage', '?')}/{s.get('method', '?')} · {Path(str(s.get('model', ''))).name}"


def plot_run(run: RunDir, out: str | Path | None = None) -> Path:
    """Draw the run's curves to `out` (default runs/<name>/loss.png) and return the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    events = read_all(run.events_path)
    c = curves(events)
    if not c["loss"]:
        raise RunError(f"run '{run.name}' has no logged training steps yet: nothing to plot")
    fig = Figure(figsize=(9, 6.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, lr_ax = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    steps, values = zip(*c["loss"])
    loss_ax.plot(steps, values, color="#1f77b4", linewidth=1.4, label="training loss",
                 marker="o" if len(steps) < 30 else None, markersize=3)
    if c["eval_loss"]:
        es, ev = zip(*c["eval_loss"])
        loss_ax.plot(es, ev, color="#d62728", linewidth=1.4, marker="o", markersize=4, label="eval loss")
    loss_ax.set_ylabel("loss")
    loss_ax.grid(True, alpha=0.3)
    loss_ax.legend(loc="upper right")
    loss_ax.set_title(title_of(events, run.name))
    if c["lr"]:
        ls, lv = zip(*c["lr"])
        lr_ax.plot(ls, lv, color="#2ca02c", linewidth=1.2)
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("step")
    lr_ax.grid(True, alpha=0.3)
    path = Path(out) if out else run.path / FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


def run_curves(events: list[dict[str, Any]], x: str = "step") -> dict[str, list[tuple[float, float]]]:
    """Training and eval loss of one run against `x`: "step", or "tokens" (tokens seen, from the events'
    tokens_seen; older events without it give no points)."""
    if x == "step":
        c = curves(events)
        return {"loss": c["loss"], "eval_loss": c["eval_loss"]}
    series: dict[str, dict[float, float]] = {"loss": {}, "eval_loss": {}}
    for e in events:
        key = "loss" if e.get("type") == "step" else "eval_loss" if e.get("type") == "eval" else None
        seen, v = e.get("tokens_seen"), e.get(key) if key else None
        if key and isinstance(seen, (int, float)) and isinstance(v, (int, float)) and math.isfinite(v):
            series[key][seen] = float(v)
    return {k: sorted(v.items()) for k, v in series.items()}


def plot_runs(runs: list[RunDir], out: str | Path, x: str = "step") -> Path:
    """`ftune compare --plot`: every run's training loss (line) and eval loss (dashed, dots) on one chart,
    against steps or tokens seen, one colour per run. Written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    drawn = {run.name: run_curves(read_all(run.events_path), x) for run in runs}
    empty = [name for name, c in drawn.items() if not c["loss"]]
    if len(empty) == len(drawn):
        what = "logged training steps" if x == "step" else "steps with tokens_seen (runs from before ftune wrote it)"
        raise RunError(f"none of {', '.join(drawn)} has {what}: nothing to plot")
    fig = Figure(figsize=(9, 5.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    colours = [f"C{i}" for i in range(10)]
    for i, (name, c) in enumerate(drawn.items()):
        colour = colours[i % len(colours)]
        if c["loss"]:
            xs, ys = zip(*c["loss"])
            ax.plot(xs, ys, color=colour, linewidth=1.4, label=f"{name} training loss",
                    marker="o" if len(xs) < 30 else None, markersize=3)
        if c["eval_loss"]:
            xs, ys = zip(*c["eval_loss"])
            ax.plot(xs, ys, color=colour, linewidth=1.2, linestyle="--", marker="o", markersize=4,
                    label=f"{name} eval loss")
    ax.set_xlabel("step" if x == "step" else "tokens seen")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    ax.set_title("loss: " + " · ".join(drawn) + (f" (no points: {', '.join(empty)})" if empty else ""))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path
