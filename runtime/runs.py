"""What `ftune ls` (and the monitor's run picker) shows: one summary row per run, from files only."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import yaml

from ftune.runtime.events import cursor_word, phase_text, read_all, summarize
from ftune.runtime.present import num
from ftune.runtime.rundir import ACTIVE_STATES, RunDir, RunError, list_run_names, shown_state
from ftune.runtime.spec import shorthand


def spec_fields(run: RunDir) -> dict[str, str]:
    """Stage, method and model from run.yaml, read loosely: a broken file still gets a row."""
    try:
        raw = yaml.safe_load(run.spec_path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {"stage_method": "?", "model": "(run.yaml unreadable)"}
    raw = shorthand.expand(raw) if isinstance(raw, dict) else {}
    stage = raw["stage"].get("type", "sft") if isinstance(raw.get("stage"), dict) else "sft"
    method = raw["method"].get("type", "lora") if isinstance(raw.get("method"), dict) else "lora"
    model = (raw.get("model") or {}).get("name_or_path", "?") if isinstance(raw.get("model"), dict) else "?"
    return {"stage_method": f"{stage}/{method}", "model": str(model)}


def run_row(run: RunDir) -> dict[str, Any]:
    summary = summarize(read_all(run.events_path))
    final = summary["final"]
    status = shown_state(run.state(), summary["stall"] is not None)
    loss = summary["loss"]
    started = run.read_status().get("started_at") or summary["started_t"]
    return {
        "name": run.name,
        "status": status,
        **spec_fields(run),
        "step": summary["step"],
        "max_steps": summary["max_steps"],
        "progress": f"{summary['step']}/{summary['max_steps']}" if summary["max_steps"] else "–",
        "ckpt": str(summary["checkpoint"]) if summary["checkpoint"] is not None else "–",  # the newest checkpoint
        "loss": num(loss),
        "best_eval": num(summary["best_eval_loss"]),
        "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)) if started else "–",
        "error": final.get("message") if final and final.get("type") == "error" else None,
        "phase": summary["phase"] if status == "starting" else "",  # the worker's start: 'tokenising 40%'…
        # the same as numbers, for `ftune ls --json`
        "last_loss": loss if isinstance(loss, (int, float)) else None,
        "best_eval_loss": summary["best_eval_loss"],
        "checkpoint_step": summary["checkpoint"],
        "started_at": started,
        "path": str(run.path),
    }


JSON_KEYS = ("name", "status", "phase", "stage", "method", "model", "step", "max_steps", "last_loss",
             "best_eval_loss", "checkpoint_step", "started_at", "error", "path")


def run_records(root: str | Path) -> list[dict[str, Any]]:
    """`ftune ls --json`: each run's row with numbers as numbers (times in unix seconds)."""
    out = []
    for row in run_rows(root):
        stage, _, method = row["stage_method"].partition("/")
        out.append({k: row[k] for k in JSON_KEYS if k in row} | {"stage": stage, "method": method or None})
    return [{k: r[k] for k in JSON_KEYS} for r in out]


def run_rows(root: str | Path) -> list[dict[str, Any]]:
    return [run_row(RunDir(root, name)) for name in list_run_names(root)]


def deletable(run: RunDir) -> str:
    """The state of a run that may be deleted (`ftune rm`, the agents' delete); a RunError for one that trains."""
    state = run.require().state()
    if state in ACTIVE_STATES:
        raise RunError(f"run '{run.name}' is {state}: stop it first with `ftune stop {run.name}`")
    return state


def short_number(x: Any) -> Any:
    """A figure in 4 significant digits (an agent pays per token), ints and the rest as they are."""
    return float(f"{x:.4g}") if isinstance(x, float) and math.isfinite(x) else x


def run_settings_as_written(run: RunDir) -> dict[str, Any]:
    """The run file as its author wrote it, flattened to dotted keys (name left out): what was chosen, without
    the hundred defaults."""
    try:
        raw = yaml.safe_load(run.spec_path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
    flat = shorthand.flatten(shorthand.expand(raw)) if isinstance(raw, dict) else {}
    return {k: short_number(v) for k, v in flat.items() if k != "name"}


def run_summary(run: RunDir, problems: int = 5) -> dict[str, Any]:
    """One run in a few hundred bytes: where it stands, its numbers, its newest problems and checkpoint, the ETA,
    its settings as written, and the events cursor where this look ended (`ftune mcp`'s show_run)."""
    from ftune.runtime.history import timing
    from ftune.runtime.tail import load

    history, tail = load(run.events_path)
    view = history.view()
    status = run.read_status()
    shown = shown_state(run.state(), view.stall is not None)
    elapsed, eta = timing(shown, view, status, time.time())
    fields = spec_fields(run)
    stage, _, method = fields["stage_method"].partition("/")
    last = view.last_step or {}
    final = view.final or {}
    latest = run.latest_checkpoint()
    evals = {k: short_number(v) for k, v in (view.last_eval or {}).items()
             if k.startswith("eval_") and isinstance(v, (int, float)) and not k.endswith(("_runtime", "_per_second"))}
    return {
        "name": run.name, "status": shown, "phase": (phase_text(view.phase) or None) if shown == "starting" else None,
        "stage": stage, "method": method or None, "model": fields["model"],
        "step": view.step, "max_steps": view.max_steps, "epoch": short_number(view.epoch),
        "loss": short_number(view.loss[1][-1]) if view.loss[1] else None, "first_loss": short_number(view.first_loss),
        "best_eval_loss": short_number(min(view.eval_loss[1])) if view.eval_loss[1] else None,
        "eval": evals or None, "tokens_per_s": short_number(last.get("tokens_per_s")),
        "elapsed_s": round(elapsed) if elapsed is not None else None, "eta_s": round(eta) if eta is not None else None,
        "checkpoint": {"step": latest[0], "path": str(latest[1])} if latest else None,
        "problems": [{"kind": p.kind, "message": p.message, "hint": p.hint, "count": p.count, "step": p.step}
                     for p in view.problems[-problems:]],
        "ended": final.get("type"), "message": final.get("message"),
        "settings": {k: v for k, v in run_settings_as_written(run).items()
                     if k not in ("model.name_or_path", "stage.type", "method.type")},  # said above
        "cursor": cursor_word(run.events_path, tail.offset),
    }


def loss_series(run: RunDir, points: int = 100) -> dict[str, list]:
    """The run's training loss, eval loss and learning rate as at most `points` (step, value) pairs each, evenly
    thinned: a chart's worth of numbers."""
    from ftune.runtime.tail import load

    view = load(run.events_path)[0].view()

    def thin(xs: list[float], ys: list[float]) -> list[list[float]]:
        keep = range(len(ys)) if len(ys) <= points else sorted({round(i * (len(ys) - 1) / (points - 1))
                                                                 for i in range(points)})
        return [[int(xs[i]) if float(xs[i]).is_integer() else xs[i], short_number(ys[i])] for i in keep]

    return {"loss": thin(*view.loss), "eval_loss": thin(*view.eval_loss), "lr": thin(*view.lr)}
