"""The monitor's panels as functions of data: a View (runtime/history.py), the run's status and a time
in, a rich renderable out. No Textual and no I/O here, so each panel is easy to test and to reuse."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ftune.runtime.events import phase_share, phase_text
from ftune.runtime.history import SHOWN_ACTIVE, Problem, View, timing
from ftune.runtime.present import duration, finite, gib_figure, num, size
from ftune.runtime.rundir import shown_state

STATE_STYLE = {
    "not started": "yellow", "queued": "yellow", "starting": "yellow", "running": "bold green",
    "stalled": "bold red", "stopping": "bold yellow", "stopped": "yellow",
    "finished": "bold cyan", "failed": "bold red", "crashed": "bold red",
}
ACTIVE = SHOWN_ACTIVE  # polled quickly: watched until it starts


def display_state(recorded: str, stalled: bool = False) -> str:
    """RunDir.state() in the monitor: the words `ftune ls` uses (not started, starting, running, stalled, ...)."""
    return shown_state(recorded, stalled)


# --------------------------------------------------------------------------- numbers
def si(x: Any) -> str:
    """12.3k, 1.2M: throughput at a glance."""
    if not finite(x):
        return "–"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def clock_time(t: Any) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) if finite(t) else "–"


def short_model(name: Any) -> str:
    """A local model path shows its last two parts; a hub id stays whole."""
    text = str(name or "?")
    if text.startswith(("/", ".", "~")):
        parts = Path(text).parts
        return "/".join(parts[-2:]) if len(parts) > 1 else text
    return text


# --------------------------------------------------------------------------- header
def header(name: str, state: str, view: View, status: dict[str, Any], now: float) -> RenderableType:
    meta = view.meta
    elapsed, eta = timing(state, view, status, now)
    top = Table.grid(expand=True, padding=(0, 2))
    top.add_column(no_wrap=True)
    top.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
    top.add_column(no_wrap=True, justify="right")
    what = " · ".join(str(x) for x in (meta.get("stage"), meta.get("method")) if x)
    model = short_model(meta.get("model")) if meta.get("model") else ""
    top.add_row(
        Text.assemble((name, "bold"), "  ", ("● " + state, STATE_STYLE.get(state, "bold"))),
        Text(" · ".join(x for x in (what, model) if x), style="dim" if not what else ""),
        Text.assemble(("elapsed ", "dim"), duration(elapsed), ("  ETA ", "dim"),
                      duration(eta) if state in ("running", "stopping") else "–"),
    )
    bar = Table.grid(expand=True, padding=(0, 1))
    bar.add_column(ratio=1)
    bar.add_column(no_wrap=True, justify="right")
    share = phase_share(view.phase) if state == "starting" and view.phase is not None else None
    if share is not None:  # the worker's start counts its progress (a download, tokenising): its bar until steps
        done, of = share
        counted = (size(done), size(of)) if view.phase.get("unit") == "bytes" else (f"{done:,.0f}", f"{of:,.0f}")
        bar.add_row(ProgressBar(total=of, completed=done, complete_style="yellow"),
                    Text.assemble((f"{counted[0]}/{counted[1]}", "bold"), f" {100 * done / of:.0f}%"))
    else:
        total = view.max_steps or 0
        pct = f"{100 * view.step / total:.0f}%" if total else ""
        epoch = f"epoch {view.epoch:.2f}" if view.epoch is not None else ""
        bar.add_row(ProgressBar(total=max(total, 1), completed=min(view.step, total) if total else 0),
                    Text.assemble((f"{view.step}/{total or '?'}", "bold"), f" {pct}  ", (epoch, "dim")))
    return Group(top, bar, Text(_third_line(name, state, view, status, now), no_wrap=True, overflow="ellipsis",
                                style="dim"))


def starting_line(phase: dict[str, Any] | None, now: float) -> str:
    """'starting: tokenising 40% (12,000 rows/s) for 0:05 · l shows train.log': the worker's latest phase (a run
    written before phases were, or before the first one, says what the start does)."""
    what = phase_text(phase)
    if not what:
        return "starting: loading the model and the data (l shows train.log)"
    rate = phase.get("rows_per_s") if phase else None
    rate_text = f" ({rate:,.0f} rows/s)" if finite(rate) and rate > 0 else ""
    since = f" for {duration(now - phase['since'])}" if phase and finite(phase.get("since")) else ""
    return f"starting: {what}{rate_text}{since} · l shows train.log"


def _third_line(name: str, state: str, view: View, status: dict[str, Any], now: float) -> str:
    last = view.last_step or {}
    if state == "starting" and view.phase is not None:  # a resumed run too: its phases follow the last attempt's
        return starting_line(view.phase, now)
    if last:
        parts = [f"{si(last.get('tokens_per_s'))} tokens/s", f"{num(last.get('samples_per_s'), '.3g')} samples/s"]
    elif state == "not started" or (state == "starting" and status.get("state") is None):
        return f"not started: start it with `ftune train {name}`; this view follows it when it does"
    elif state == "starting" and not view.meta:
        return starting_line(view.phase, now)
    elif state == "starting":
        return "started: waiting for the first step"
    else:
        parts = ["no steps logged"]
    meta = view.meta
    if finite(meta.get("num_train_rows")):
        parts.append(f"{meta['num_train_rows']:,} rows")
    if finite(meta.get("world_size")) and meta["world_size"] > 1:
        parts.append(f"{meta['world_size']} processes")
    if meta.get("precision"):
        parts.append(str(meta["precision"]))
    if finite(meta.get("resumed_from")):
        parts.append(f"resumed from step {meta['resumed_from']}")
    tracked = trackers_line(meta.get("trackers"))
    return " · ".join(parts) + (f"   {tracked}" if tracked else "")


def trackers_line(trackers: Any) -> str:
    """`training.report_to` as the started event tells it: each tracker with its URL (or its folder, offline)."""
    if not isinstance(trackers, list):
        return ""
    out = []
    for t in trackers:
        if not isinstance(t, dict) or not t.get("name"):
            continue
        where = "failed" if t.get("failed") else t.get("url") or t.get("dir") or t.get("mode") or ""
        if where and where == t.get("dir"):
            where = _short_dir(str(where))
        out.append(f"{t['name']} {where}".strip())
    return ("→ " + " · ".join(out)) if out else ""


def _short_dir(path: str) -> str:
    """A tracker's folder from the runs folder on (runs/run-01/wandb/offline-run-…), else as it is."""
    parts = Path(path).parts
    if "runs" not in parts:
        return path
    return "/".join(parts[len(parts) - 1 - parts[::-1].index("runs"):])


# --------------------------------------------------------------------------- charts
def loss_caption(view: View) -> Text:
    last = view.last_step or {}
    loss = last.get("loss")
    text = Text.assemble(("loss ", "bold"))
    if loss is None and "loss" in (last.get("nonfinite") or []):
        text.append("NaN/inf", "bold red")
    else:
        text.append(num(loss), "bold")
    if finite(view.first_loss) and finite(loss):
        text.append(f"  from {num(view.first_loss)}", "dim")
    if view.last_eval:
        text.append("   eval ", "bold")
        text.append(num(view.last_eval.get("eval_loss")), "bold magenta")
        text.append(f" @{view.last_eval.get('step', '?')}", "dim")
    return text


def series_caption(label: str, value: Any, spec: str) -> Text:
    return Text.assemble((f"{label} ", "bold"), num(value, spec))


# --------------------------------------------------------------------------- GPU
def gpu_panel(sample: dict[str, Any] | None, width: int) -> RenderableType:
    """One line a device: memory used/total as a bar, utilisation, temperature, power. Without a GPU,
    the worker's memory."""
    gpus = [g for g in (sample or {}).get("gpus") or [] if isinstance(g, dict)]
    lines: list[Text] = []
    if not gpus:
        rss = (sample or {}).get("rss")
        line = Text.assemble(("no GPU", "dim"))
        if finite(rss):
            line.append(" · worker memory ", "dim")
            line.append(size(rss), "bold")
        lines.append(line)
    for g in gpus:
        used, total = g.get("mem_used"), g.get("mem_total")
        frac = used / total if finite(used) and finite(total) and total > 0 else 0.0
        figures = f" {gib_figure(used)}/{gib_figure(total)} GB" if finite(total) else " –"
        extra = " ".join(x for x in (
            f"{g['util']:.0f}%" if finite(g.get("util")) else "",
            f"{g['temp']:.0f}°C" if finite(g.get("temp")) else "",
            f"{g['power']:.0f}W" if finite(g.get("power")) else "") if x)
        name = str(g.get("name") or "").replace("NVIDIA ", "")
        room = width - (len(str(g.get("index", "?"))) + 1 + len(figures) + 1 + len(extra))
        show_name = bool(name) and room - len(name) - 1 >= 10
        bar_w = max(4, min(24, room - (len(name) + 1 if show_name else 0)))
        line = Text.assemble((f"{g.get('index', '?')} ", "bold"))
        if show_name:
            line.append(name + " ", "dim")
        line.append_text(meter(frac, bar_w))
        line.append(figures)
        line.append(" " + extra)
        lines.append(line)
    for line in lines:
        line.no_wrap, line.overflow = True, "ellipsis"
    return Group(*lines)


def meter(frac: float, width: int) -> Text:
    frac = min(max(frac, 0.0), 1.0)
    done = round(frac * width)
    style = "red" if frac > 0.95 else "yellow" if frac > 0.85 else "green"
    return Text.assemble(("█" * done, style), ("░" * (width - done), "dim"))


# --------------------------------------------------------------------------- checkpoints
def checkpoints_panel(checkpoints: list[dict[str, Any]], run_path: Path, rows: int,
                      removed: frozenset[str] = frozenset()) -> RenderableType:
    """The newest `rows` checkpoints, newest last: step, size, time written, path. Those in `removed`
    (paths no longer there: `save_total_limit` rotated them out) are struck through."""
    if not checkpoints:
        return Text("no checkpoint yet", style="dim")
    lines = []
    for c in checkpoints[-rows:] if rows > 0 else []:
        gone = str(c.get("path")) in removed
        line = Text.assemble((f"{c.get('step', '?'):>5}", "bold" if not gone else "dim"), f" {size(c.get('bytes')):>8}",
                             f" {clock_time(c.get('t'))} ", ("asked " if c.get("requested") and not gone else "", "bold cyan"),
                             (_near(c.get("path"), run_path), "dim strike" if gone else "dim"),
                             (" removed" if gone else "", "dim italic"), style="dim" if gone else "")
        line.no_wrap, line.overflow = True, "ellipsis"
        lines.append(line)
    return Group(*lines)


def _near(path: Any, run_path: Path) -> str:
    """A checkpoint in the run's own checkpoints/ shows as checkpoint-N; one elsewhere, whole."""
    text = str(path or "?")
    try:
        rel = Path(text).relative_to(run_path)
    except ValueError:
        return text
    return rel.name if rel.parent == Path("checkpoints") else str(rel)


# --------------------------------------------------------------------------- problems
def problems_panel(problems: Iterable[Problem], state: str, name: str, status: dict[str, Any],
                   omitted: int = 0) -> Text | None:
    """Newest first: the error with its hint, then warnings (grouped: 'x 40'). None when all is well."""
    items = sorted(problems, key=lambda p: (p.kind != "error", -p.seq))
    text = Text()
    if state == "crashed":
        text.append("✖ crashed: ", "bold red")
        text.append(f"the worker (pid {status.get('pid', '?')}) ended without a final event\n")
        text.append(f"  see `ftune logs {name}` (or press l); resume with `ftune train {name} --resume`\n", "dim")
    for p in items:
        mark, style, colour = {"error": ("✖ failed: ", "bold red", "red"), "rollback": ("↺ ", "bold magenta", "magenta")
                               }.get(p.kind, ("▲ ", "bold yellow", "yellow"))
        text.append(mark, style)
        text.append(p.message, colour)
        if p.count > 1:
            text.append(f"  ×{p.count}", "bold")
        text.append("\n")
        if p.hint:
            text.append(f"  {p.hint}\n", "dim")
    if omitted:
        text.append(f"  (+{omitted} older warnings not loaded)\n", "dim")
    if not text:
        return None
    text.rstrip()
    return text


# --------------------------------------------------------------------------- step log
def step_line(e: dict[str, Any], started_t: float | None) -> str:
    """One step event as a log line: step/total, epoch, loss, lr, grad norm, throughput, time."""
    bad = e.get("nonfinite") or []

    def val(key: str, spec: str) -> str:
        return "NaN/inf" if e.get(key) is None and key in bad else num(e.get(key), spec)

    total = e.get("max_steps")
    step = f"{e.get('step', '?')}/{total}" if finite(total) else str(e.get("step", "?"))
    t = e.get("t")
    when = f"+{duration(t - started_t)}" if finite(t) and started_t is not None and t >= started_t else clock_time(t)
    epoch = f"ep {e['epoch']:.2f}" if finite(e.get("epoch")) else ""
    return (f"{step:>9} {epoch:<7} loss {val('loss', '.4f'):<7} lr {val('lr', '.2e'):<8} "
            f"gn {val('grad_norm', '.3g'):<5} {si(e.get('tokens_per_s')):>5} tok/s {when}")


def _num(x: Any) -> float | None:
    return float(x) if finite(x) else None
