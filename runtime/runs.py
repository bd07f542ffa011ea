"""What `ftune ls` (and the monitor's run picker) shows: one summary row per run, from files only."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from ftune.runtime.events import read_all, summarize
from ftune.runtime.rundir import RunDir, list_run_names, shown_state
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
        "loss": f"{loss:.4g}" if isinstance(loss, (int, float)) else "–",
        "best_eval": f"{best:.4g}" if isinstance(best := summary["best_eval_loss"], (int, float)) else "–",
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


def fit_names(names: list[str], short: int) -> list[str]:
    """Run names `short` columns narrower (the longest sets the width, 12 at least), each cut by fit_name.
    `ftune ls` and the monitor's runs list."""
    if short <= 0 or not names:
        return names
    keep = max(12, max(map(len, names)) - short)
    return [fit_name(n, keep) for n in names]


def fit_name(name: str, room: int) -> str:
    """A run's name in `room` columns, its middle cut where a long name would push the table past the screen: names
    often differ at their ends (run-01, run-02)."""
    if len(name) <= room:
        return name
    head = (room - 1) // 2
    return name[:head] + "…" + name[len(name) - (room - 1 - head):]


def fit_model(name: str, room: int) -> str:
    """A model path or hub id in `room` columns: its last parts whole ('…/models/tiny-qwen2', 'Qwen2.5-7B'),
    never a cut name ('…y-model') while the last part fits. `ftune ls` and the monitor's runs list."""
    if len(name) <= room:
        return name
    parts = [x for x in name.split("/") if x]
    for keep in range(len(parts) - 1, 0, -1):
        tail = "…/" + "/".join(parts[-keep:])
        if len(tail) <= room:
            return tail
    last = parts[-1] if parts else name
    return last if len(last) <= room else last[: room - 1] + "…"
