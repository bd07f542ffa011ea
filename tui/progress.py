"""Foreground progress for `ftune train --foreground` and `ftune demo`: rich output drawn from events."""

from __future__ import annotations

import signal
import subprocess
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ftune.runtime.events import FINAL_TYPES, EventReader, phase_text
from ftune.runtime.rundir import RunDir
from ftune.runtime.present import here, no_final_event, num, resume_hint, size

BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 40) -> str:
    """Unicode sparkline of the values, averaged down to `width` buckets."""
    vals = [v for v in values if v is not None]
    if not vals:
        return ""
    if len(vals) > width:
        size = len(vals) / width
        vals = [sum(chunk) / len(chunk) for chunk in
                (vals[int(i * size): max(int((i + 1) * size), int(i * size) + 1)] for i in range(width))]
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or 1.0
    return "".join(BLOCKS[min(7, int((v - lo) / span * 7.999))] for v in vals)


def follow(run: RunDir, proc: subprocess.Popen, console: Console | None = None) -> dict[str, Any] | None:
    """Draw the run until its worker exits; Ctrl+C asks for a graceful stop, a second one leaves."""
    console = console or Console()
    reader = EventReader(run.events_path)
    reader.read_new()  # events of earlier attempts are history, not this run's progress
    losses: list[float] = []
    final: dict[str, Any] | None = None
    started_t = time.time()
    interrupts = 0
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss [cyan]{task.fields[loss]}[/] lr {task.fields[lr]}"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False,
    )
    with progress:
        task = progress.add_task("loading model and data", total=None, loss="–", lr="–")
        while True:
            try:
                events = reader.read_new()
                for e in events:
                    final = _show(e, progress, task, console, losses) or final
                if proc.poll() is not None:
                    for e in reader.read_new():
                        final = _show(e, progress, task, console, losses) or final
                    break
                time.sleep(0.2)
            except KeyboardInterrupt:
                interrupts += 1
                if interrupts == 1:
                    from ftune.runtime.launch import request_stop

                    if request_stop(run) is None:  # not started yet: stop the launcher's child itself
                        proc.send_signal(signal.SIGTERM)
                    console.print("[yellow]Stopping gracefully: saving a checkpoint… "
                                  "(Ctrl+C again leaves; the run finishes stopping on its own)")
                else:
                    console.print(f"[yellow]Left the display; follow the run with `ftune watch {run.name}`.")
                    return None
    _summary(run, final, losses, time.time() - started_t, console)
    return final


def _show(e: dict[str, Any], progress: Progress, task, console: Console, losses: list[float]):
    kind = e.get("type")
    if kind == "started":
        progress.update(task, total=e.get("max_steps"), description=f"{e.get('stage')}/{e.get('method')}")
        resumed = f", resumed from step {e['resumed_from']}" if e.get("resumed_from") else ""
        console.print(
            f"Training [bold]{e.get('run')}[/]: {e.get('num_train_rows')} training rows, "
            f"{e.get('num_eval_rows')} for evaluation, {e.get('skipped_rows', 0)} skipped; "
            f"{e.get('trainable_params', 0):,} of {e.get('total_params', 0):,} parameters trainable; "
            f"{e.get('precision')}{resumed}"
        )
    elif kind == "phase":  # the worker's start: importing, tokenising 40%, loading the model…
        progress.update(task, description=phase_text(e) or "starting")
    elif kind == "step":
        if e.get("loss") is not None:
            losses.append(e["loss"])
        progress.update(task, completed=e.get("step", 0), total=e.get("max_steps"),
                        loss=num(e.get("loss")), lr=num(e.get("lr"), ".2e"))
    elif kind == "eval":
        console.print(f"  step {e.get('step')}: eval loss [cyan]{num(e.get('eval_loss'))}")
    elif kind == "checkpoint":
        asked = " (asked for)" if e.get("requested") else ""
        console.print(f"  step {e.get('step')}: checkpoint saved{asked} ({size(e.get('bytes'))}) {here(e.get('path'))}")
    elif kind == "rollback":
        console.print(f"[magenta]rolled back[/] from step {e.get('step')} to step {e.get('to_step')} ({e.get('reason')}): "
                      f"{e.get('skipped_batches')} batches skipped, rollback {e.get('rollback')} of "
                      f"{e.get('max_rollbacks')}")
    elif kind == "warning":
        console.print(f"[yellow]warning:[/] {e.get('message')}" + (f"\n  [dim]{e['hint']}" if e.get("hint") else ""))
    elif kind in FINAL_TYPES:
        if e.get("step") is not None:
            progress.update(task, completed=e["step"])
        return e
    return None


def _summary(run: RunDir, final: dict[str, Any] | None, losses: list[float], seconds: float, console: Console) -> None:
    if final is None:
        console.print(f"[red]{no_final_event(run.name, f'see `ftune logs {run.name}`.')}")
        return
    kind = final["type"]
    if kind == "error":
        console.print(f"[bold red]Failed:[/] {final.get('message')}")
        if final.get("hint"):
            console.print(f"  {final['hint']}")
        return
    if losses:
        console.print(f"loss {losses[0]:.4g} → {losses[-1]:.4g}  [cyan]{sparkline(losses)}")
    arts = final.get("artifacts") or {}
    if kind == "stopped":
        why = f" ({final['message']})" if final.get("reason") == "max_time" and final.get("message") else ""
        console.print(f"[yellow]Stopped[/] at step {final.get('step')}{why}; "
                      f"checkpoint: {here(arts.get('checkpoint'))}\n{resume_hint(run.name)}")
    else:
        console.print(f"[green]Finished[/] {final.get('step')} steps in {seconds:.0f} s; "
                      f"model ({arts.get('format')}): {here(arts.get('export'))}")
