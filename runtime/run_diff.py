"""`ftune compare RUN RUN [RUN...]`: the settings that differ between runs and how each run ended, from files only.

Settings are each run file as `ftune train` reads it (defaults, preset and file merged), flattened to dotted keys
(spec/shorthand.flatten), so a learning rate left at its default still compares with one written down. Figures
come from events.jsonl: the last training loss, the last and best eval loss, the last eval's other metrics,
steps, tokens per second and wall time. The chart of the same runs is infer/plot.plot_runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from ftune.runtime.events import FINAL_TYPES, read_all, summarize
from ftune.runtime.present import cell, wall_time
from ftune.runtime.rundir import RunDir, RunError
from ftune.runtime.spec import shorthand

SKIP_SETTINGS = ("name",)  # differs by definition
EVAL_TIMING = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "eval_loss")


@dataclass
class RunResult:
    name: str
    status: str
    settings: dict[str, Any]
    figures: dict[str, Any] = field(default_factory=dict)


def run_settings(run: RunDir) -> dict[str, Any]:
    """The run file as the worker reads it, flattened; a file that no longer validates is read as written."""
    from ftune.runtime.spec import load_spec

    try:
        data = load_spec(run.spec_path).model_dump(mode="json")
    except Exception:  # noqa: BLE001 - an old or broken run file still compares by what it says
        try:
            raw = yaml.safe_load(run.spec_path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            raw = {}
        data = shorthand.expand(raw) if isinstance(raw, dict) else {}
    return {k: v for k, v in shorthand.flatten(data).items() if k not in SKIP_SETTINGS}


def figures(events: list[dict[str, Any]], status: dict[str, Any]) -> dict[str, Any]:
    """How a run ended (or stands): train_loss, eval_loss, best_eval_loss, eval metrics, steps, tokens/s, wall."""
    s = summarize(events)
    evals = [e for e in events if e.get("type") == "eval"]
    steps = [e for e in events if e.get("type") == "step"]
    final = s["final"] or {}
    metrics = final.get("metrics") or {}
    last_eval = evals[-1] if evals else {}
    rates = [e["tokens_per_s"] for e in steps if isinstance(e.get("tokens_per_s"), (int, float))]
    tokens, runtime = metrics.get("num_input_tokens_seen"), metrics.get("train_runtime")
    if isinstance(tokens, (int, float)) and isinstance(runtime, (int, float)) and runtime > 0:
        tokens_per_s = tokens / runtime
    else:
        tokens_per_s = sum(rates) / len(rates) if rates else None
    started = status.get("started_at") or next((e.get("t") for e in events if e.get("type") == "started"), None)
    ended = status.get("ended_at") or (final.get("t") if final else None)
    if ended is None and events:
        ended = events[-1].get("t")
    return {
        "train_loss": s["loss"],
        "eval_loss": last_eval.get("eval_loss"),
        "best_eval_loss": s["best_eval_loss"],
        "eval_metrics": {k: v for k, v in last_eval.items()
                         if k.startswith("eval_") and k not in EVAL_TIMING and isinstance(v, (int, float))},
        "steps": s["step"],
        "max_steps": s["max_steps"],
        "tokens_per_s": round(tokens_per_s, 1) if tokens_per_s is not None else None,
        "wall_s": round(ended - started, 1) if started and ended and ended >= started else None,
        "ended": final.get("type") if final.get("type") in FINAL_TYPES else None,
    }


def runs_named(root, names: list[str] | tuple[str, ...]) -> list[RunDir]:
    """The runs to compare: two at least, none twice, each one that exists."""
    if len(names) < 2:
        raise RunError("ftune compare needs at least two runs, e.g. ftune compare run-01 run-02")
    if len(set(names)) < len(names):
        raise RunError(f"a run is named twice: {' '.join(names)}")
    return [RunDir(root, n).require() for n in names]


def compare(runs: list[RunDir]) -> tuple[list[str], list[RunResult]]:
    """(the setting keys whose values differ, one result per run with those settings and its figures)."""
    results = []
    for run in runs:
        state = run.state()
        results.append(RunResult(run.name, "not started" if state == "new" else state, run_settings(run),
                                 figures(read_all(run.events_path), run.read_status())))
    keys = sorted({k for r in results for k in r.settings})
    differ = [k for k in keys if len({_key(r.settings.get(k, _MISSING)) for r in results}) > 1]
    for r in results:
        r.settings = {k: r.settings.get(k) for k in differ}
    return differ, results


_MISSING = object()


def _key(value: Any) -> str:
    return repr(value)


def as_json(differ: list[str], results: list[RunResult]) -> dict[str, Any]:
    return {"differing_settings": differ,
            "runs": [{"name": r.name, "status": r.status, "settings": r.settings, **r.figures} for r in results]}


def table_rows(differ: list[str], results: list[RunResult]) -> list[tuple[str, list[str]]]:
    """(label, one cell per run) rows: the differing settings, then the figures."""
    rows = [(k, [cell(r.settings.get(k)) for r in results]) for k in differ]
    rows.append(("status", [r.status for r in results]))
    f = [r.figures for r in results]
    rows.append(("train loss (last)", [cell(x["train_loss"]) for x in f]))
    rows.append(("eval loss (last)", [cell(x["eval_loss"]) for x in f]))
    rows.append(("eval loss (best)", [cell(x["best_eval_loss"]) for x in f]))
    for k in sorted({k for x in f for k in x["eval_metrics"]}):
        rows.append((k, [cell(x["eval_metrics"].get(k)) for x in f]))
    rows.append(("steps", [f"{x['steps']}/{x['max_steps']}" if x["max_steps"] else str(x["steps"]) for x in f]))
    rows.append(("tokens/s", [cell(x["tokens_per_s"]) for x in f]))
    rows.append(("wall time", [wall_time(x["wall_s"]) for x in f]))
    return rows
