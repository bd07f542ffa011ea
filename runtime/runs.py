"""What `ftune ls` (and the monitor's run picker) shows: one summary row per run, from files only."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from ftune.runtime.events import read_all, summarize
from ftune.runtime.rundir import RunDir, list_run_names
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
    status = run.state()
    if status == "new":
        status = "not started"
    loss = summary["loss"]
    started = run.read_status().get("started_at") or summary["started_t"]
    return {
        "name": run.name,
        "status": status,
        **spec_fields(run),
        "step": summary["step"],
        "max_steps": summary["max_steps"],
        "progress": f"{summary['step']}/{summary['max_steps']}" if summary["max_steps"] else "–",
        "loss": f"{loss:.4g}" if isinstance(loss, (int, float)) else "–",
        "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)) if started else "–",
        "error": final.get("message") if final and final.get("type") == "error" else None,
    }


def run_rows(root: str | Path) -> list[dict[str, Any]]:
    return [run_row(RunDir(root, name)) for name in list_run_names(root)]
