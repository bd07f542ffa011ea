"""The `ftune` command. Thin: parse, call the runtime, print. Heavy modules are imported inside commands
so that `ftune --help` stays fast and never imports torch."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from ftune import __version__
from ftune.runtime.errors import UserError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class FtuneGroup(click.Group):
    """Prints user mistakes as one clear message with exit code 2 instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.secho(f"ftune: {e}", fg="red", err=True)
            if e.hint and "\n" not in str(e):
                click.echo(f"  {e.hint}", err=True)
            ctx.exit(2)


def _runs_root(ctx: click.Context) -> Path:
    from ftune.runtime.rundir import runs_root

    return runs_root(ctx.find_root().params.get("runs_dir"))


def _complete_run(ctx: click.Context, param, incomplete: str):
    from ftune.runtime.rundir import list_run_names, runs_root

    root = runs_root(ctx.find_root().params.get("runs_dir"))
    return [n for n in list_run_names(root) if n.startswith(incomplete)]


def _run(ctx: click.Context, name: str):
    from ftune.runtime.rundir import RunDir

    return RunDir(_runs_root(ctx), name).require()


run_argument = click.argument("name", metavar="RUN", shell_complete=_complete_run)


@click.group(cls=FtuneGroup, context_settings=CONTEXT)
@click.option("--runs-dir", type=click.Path(file_okay=False), envvar="FTUNE_RUNS_DIR", show_envvar=True,
              help="Folder holding the runs (default: ./runs).")
@click.version_option(__version__, prog_name="ftune")
def main(runs_dir: str | None) -> None:
    """Fine-tune large language models from a terminal.

    \b
    Start here:    ftune demo                 tiny model, bundled data, < 1 minute on a CPU
    Train a run:   ftune train run-01         detached; survives closing the terminal
    Follow it:     ftune logs run-01 -f       or ftune ls for every run
    Stop it:       ftune stop run-01          saves a checkpoint; resume with --resume

    Shell completion: eval "$(_FTUNE_COMPLETE=bash_source ftune)" (zsh_source, fish_source).
    """


# --------------------------------------------------------------------------- demo
@main.command(context_settings=CONTEXT)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a run-file value, e.g. --set training.num_train_epochs=1 (repeatable).")
@click.option("--detach", is_flag=True, help="Start it in the background instead of showing progress here.")
@click.pass_context
def demo(ctx: click.Context, overrides: tuple[str, ...], detach: bool) -> None:
    """Fine-tune a tiny model on bundled customer-service chats (offline, CPU, < 1 minute).

    Builds the model once into the user cache (~/.cache/ftune), writes runs/demo/run.yaml from
    the fast preset and trains it, showing the loss fall. The learning rate is raised for the
    tiny random model; everything else is the fast preset.
    """
    from ftune.runtime import demo as demo_mod
    from ftune.runtime import launch

    root = _runs_root(ctx)
    click.echo("Preparing the tiny demo model (built once, then cached)…")
    t0 = time.time()
    model_dir = demo_mod.ensure_demo_model()
    click.echo(f"  model: {model_dir} ({time.time() - t0:.1f} s)")
    run = demo_mod.write_demo_run(root, model_dir, list(overrides))
    click.echo(f"  run file: {run.spec_path}")
    proc = launch.start(run, restart=True)
    _after_start(run, proc, foreground=not detach)


def _after_start(run, proc, foreground: bool) -> None:
    if not foreground:
        click.echo(f"Started {run.name} in the background (pid {proc.pid}); it keeps going if you log out.")
        click.echo(f"  follow:  ftune logs {run.name} -f    ·  all runs: ftune ls")
        click.echo(f"  stop:    ftune stop {run.name}       (saves a checkpoint; continue with --resume)")
        return
    from ftune.tui.progress import follow

    final = follow(run, proc)
    if final is None or final.get("type") == "error":
        sys.exit(1)


# --------------------------------------------------------------------------- train
@main.command(context_settings=CONTEXT)
@run_argument
@click.option("--foreground", "-f", is_flag=True, help="Show progress here; Ctrl+C stops gracefully.")
@click.option("--resume", is_flag=True, help="Continue from the newest complete checkpoint.")
@click.option("--restart", is_flag=True, help="Start over: delete this run's checkpoints, export and history.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Change a run-file value before starting (written to run.yaml), e.g. --set training.max_steps=100.")
@click.option("--node-rank", default=0, show_default=True, help="This machine's rank in a multi-node run (0 on node 0).")
@click.pass_context
def train(ctx: click.Context, name: str, foreground: bool, resume: bool, restart: bool,
          overrides: tuple[str, ...], node_rank: int) -> None:
    """Train RUN from runs/RUN/run.yaml in a detached process.

    The worker runs in its own session: closing the terminal or losing SSH does not stop it.
    Its output goes to runs/RUN/train.log and its progress to runs/RUN/events.jsonl.
    """
    from ftune.runtime import launch

    if resume and restart:
        raise click.UsageError("--resume and --restart exclude each other")
    run = _run(ctx, name)
    if overrides:
        _apply_overrides(run, list(overrides))
    proc = launch.start(run, resume=resume, restart=restart, node_rank=node_rank)
    _after_start(run, proc, foreground)


def _apply_overrides(run, overrides: list[str]) -> None:
    import yaml

    from ftune.runtime.spec import apply_overrides, build_spec, write_atomic

    raw = yaml.safe_load(run.spec_path.read_text(encoding="utf-8")) or {}
    merged = apply_overrides(raw, overrides)
    build_spec(merged, source=f"{run.spec_path} with --set")  # validate before touching the file
    header = "# ftune run file (updated by ftune train --set)\n"
    write_atomic(run.spec_path, header + yaml.safe_dump(merged, sort_keys=False, allow_unicode=True))
    click.echo(f"Updated {run.spec_path}: {', '.join(overrides)}")


# --------------------------------------------------------------------------- stop
@main.command(context_settings=CONTEXT)
@run_argument
@click.option("--wait", default=600.0, show_default=True, help="Seconds to wait for the checkpoint.")
@click.pass_context
def stop(ctx: click.Context, name: str, wait: float) -> None:
    """Stop RUN gracefully: it saves a checkpoint at the current step, then ends."""
    from ftune.runtime import launch

    run = _run(ctx, name)
    click.echo(f"Stopping {name}: it finishes the current step and saves a checkpoint…")
    final = launch.stop(run, wait=wait)
    if final is None:
        click.echo(f"{name} ended without a final event; see `ftune logs {name}`.")
    elif final["type"] == "stopped":
        ckpt = (final.get("artifacts") or {}).get("checkpoint")
        click.echo(f"Stopped at step {final.get('step')}." + (f" Checkpoint: {ckpt}" if ckpt else ""))
        click.echo(f"Continue with: ftune train {name} --resume")
    else:
        click.echo(f"{name} ended with '{final['type']}' before it could stop: {final.get('message', '')}".rstrip())


# --------------------------------------------------------------------------- ls
@main.command(name="ls", context_settings=CONTEXT)
@click.pass_context
def ls_(ctx: click.Context) -> None:
    """List runs: status, stage/method, model, progress, last loss, start time."""
    from rich.console import Console
    from rich.table import Table

    from ftune.runtime.runs import run_rows

    root = _runs_root(ctx)
    rows = run_rows(root)
    if not rows:
        click.echo(f"No runs in {root}. Try `ftune demo`.")
        return
    console = Console()
    cols = ("run", "status", "stage/method", "model", "step", "loss", "started")
    keys = ("name", "status", "stage_method", "model", "progress", "loss", "started")
    widths = {c: max(len(c), *(len(str(r[k])) for r in rows)) for c, k in zip(cols, keys)}
    # one line per run: the model column gives way on a narrow terminal, the others keep their width
    room = max(8, console.width - sum(w for c, w in widths.items() if c != "model") - 2 * (len(cols) - 1))
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in cols:
        table.add_column(col, justify="right" if col in ("step", "loss") else "left", no_wrap=True,
                         min_width=widths[col] if col != "model" else None,
                         max_width=room if col == "model" else None, overflow="ellipsis")
    colours = {"running": "green", "finished": "cyan", "failed": "red", "crashed": "red", "stopped": "yellow"}
    for r in rows:
        status = f"[{colours.get(r['status'], 'white')}]{r['status']}[/]"
        model = r["model"] if len(r["model"]) <= room else "…" + r["model"][-(room - 1):]
        table.add_row(r["name"], status, r["stage_method"], model, r["progress"], r["loss"], r["started"])
    console.print(table)


# --------------------------------------------------------------------------- logs
@main.command(context_settings=CONTEXT)
@run_argument
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the run ends (Ctrl+C leaves).")
@click.option("--tail", "-n", type=int, default=None, help="Only the last N lines.")
@click.pass_context
def logs(ctx: click.Context, name: str, follow: bool, tail: int | None) -> None:
    """Print RUN's train.log (the worker's output, tracebacks included)."""
    run = _run(ctx, name)
    if not run.log_path.exists():
        click.echo(f"{name} has no log yet: start it with `ftune train {name}`.")
        return
    with open(run.log_path, "rb") as f:
        data = f.read()
        lines = data.decode("utf-8", "replace").splitlines(keepends=True)
        sys.stdout.write("".join(lines[-tail:] if tail else lines))
        sys.stdout.flush()
        if not follow:
            return
        try:
            while True:
                chunk = f.read()
                if chunk:
                    sys.stdout.write(chunk.decode("utf-8", "replace"))
                    sys.stdout.flush()
                elif not run.is_locked() and run.state() not in ("starting",):
                    break  # the worker is gone and everything it wrote is printed
                else:
                    time.sleep(0.3)
        except KeyboardInterrupt:
            pass


# --------------------------------------------------------------------------- data
@main.group(context_settings=CONTEXT)
def data() -> None:
    """Look at data sets before training on them."""


@data.command(name="check", context_settings=CONTEXT)
@click.argument("file")
@click.option("--model", metavar="PATH_OR_ID", help="Tokenise with this model's tokenizer: lengths, truncation, masks.")
@click.option("--max-length", default=1024, show_default=True, help="Cutoff length to check against (data.max_length).")
@click.option("--dataset-dir", type=click.Path(file_okay=False), help="FILE is a key of DIR/dataset_info.json.")
@click.option("--show", default=0, help="With --model: print N tokenised samples, learnt tokens highlighted.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def data_check(file: str, model: str | None, max_length: int, dataset_dir: str | None, show: int, as_json: bool) -> None:
    """Detect FILE's format, check every row, and (with --model) how it tokenises.

    Exit code 0 when every row is valid, 1 when some are not, 2 when the file cannot be read.
    """
    import json

    from ftune.runtime.datacheck import check
    from ftune.runtime.formats import DataError

    report = check(file, model, max_length, dataset_dir, show)
    if as_json:
        click.echo(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        _print_data_report(report)
    if report["fatal"]:
        if as_json:
            sys.exit(2)
        raise DataError(report["fatal"])
    sys.exit(1 if report["invalid"] else 0)


def _print_data_report(r: dict) -> None:
    from rich.console import Console
    from rich.text import Text

    console = Console(highlight=False, soft_wrap=True)  # paths and errors stay whole lines (grep, copy)
    console.print(f"[bold]{r['path']}")
    if r["fatal"]:
        return
    if not r["format"]:
        console.print(f"  format   [red]not recognised[/]: {r['reason']}")
    else:
        console.print(f"  format   {r['format']}, {r['kind']} data ({r['reason']}); suits: {', '.join(r['stages'])}")
    colour = "red" if r["invalid"] else "green"
    console.print(f"  rows     {r['total']}: [green]{r['valid']} valid[/], [{colour}]{r['invalid']} invalid[/]")
    if r["turns"]:
        turns = ", ".join(f"{k}: {v}" for k, v in sorted(r["turns"].items()))
        console.print(f"  answers  per row (answers: rows) {turns}")
        console.print(f"  roles    {', '.join(f'{k} {v}' for k, v in r['roles'].items())}")
    tokens = r.get("tokens")
    if tokens:
        t = tokens["tokens"]
        console.print(f"  tokens   min {t['min']}, p50 {t['p50']}, p90 {t['p90']}, p99 {t['p99']}, max {t['max']} "
                      f"({tokens['tokenizer']})")
        console.print(f"  cutoff   {tokens['over_max_length']} rows longer than {tokens['max_length']} tokens; "
                      f"{tokens['answer_cut_away']} would lose their whole answer")
        for i, sample in enumerate(tokens["samples"], 1):
            console.print(f"  sample {i} ([green]learnt[/], [dim]not learnt[/]):")
            text = Text()
            for seg in sample:
                text.append(seg["text"], style="green" if seg["learnt"] else "dim")
            console.print(text)
    for e in r["errors"]:
        console.print(f"  [red]error[/]    {e}")
    if r["invalid"] > len(r["errors"]):
        console.print(f"  ... and {r['invalid'] - len(r['errors'])} more invalid rows")


# --------------------------------------------------------------------------- rm
@main.command(context_settings=CONTEXT)
@run_argument
@click.option("--yes", "-y", is_flag=True, help="Do not ask.")
@click.pass_context
def rm(ctx: click.Context, name: str, yes: bool) -> None:
    """Delete RUN: its folder, checkpoints and export (asks first; refuses a running run)."""
    from ftune.runtime.rundir import ACTIVE_STATES, RunError

    run = _run(ctx, name)
    state = run.state()
    if state in ACTIVE_STATES:
        raise RunError(f"run '{name}' is {state}: stop it first with `ftune stop {name}`")
    where = run.output_base()
    extra = f" and its outputs in {where}" if where != run.path else ""
    if not yes:
        if not sys.stdin.isatty():
            raise RunError(f"not deleting {name} without confirmation: pass --yes")
        click.confirm(f"Delete {run.path}{extra} ({state})?", abort=True)
    run.remove()
    click.echo(f"Deleted {name}.")


if __name__ == "__main__":  # pragma: no cover
    main()
