"""`ftune new` without questions: every answer from flags or a `--from` file, through the same checks.

With no terminal to ask on, a missing answer is an error that names the flag to pass; every missing
answer is listed at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftune.runtime import memory_estimate
from ftune.runtime.catalog import local_problem, resolve
from ftune.runtime.models import is_hub_id, local_path, looks_local
from ftune.runtime.rundir import ACTIVE_STATES, RunDir, next_free_name, project_of
from ftune.runtime.spec import Problem, SpecError, check_run_name
from ftune.runtime.spec.io import read_yaml
from ftune.runtime.spec.edit import get_path
from ftune.wizard.runfile import (
    METHOD_SETTINGS,
    STAGES,
    Answers,
    WizardError,
    as_written,
    check,
    estimate_line,
    matched_template,
    model_as_written,
    write_run,
)

METHOD_ALIASES = {"qlora": "qlora-4"}


@dataclass
class Flags:
    name: str | None = None
    model: str | None = None
    data: str | None = None
    validation: str | None = None
    val_size: float | None = None
    stage: str | None = None
    method: str | None = None
    preset: str | None = None
    template: str | None = None
    trust_remote_code: bool = False
    overrides: list[str] = field(default_factory=list)
    from_file: str | None = None
    full: bool = False  # the wizard asks every question, not only model, data and preset
    yes: bool = False
    overwrite: bool = False
    start: bool = False


def read_partial(path: str, project: Path | None = None, on_import=None) -> dict[str, Any]:
    """A partial run file for --from: a YAML mapping (mistakes in it surface with their line later). Another
    tool's config (LLaMA-Factory, GLM-4, a platform's parameters) goes through `ftune import`'s mapping first;
    `on_import` is shown what it carried over and what it left out."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise WizardError(f"--from {path}: cannot read it ({e.strerror or e})") from None
    raw = read_yaml(text, path)[0]  # not YAML, or a key given twice: SpecError with the lines
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError([Problem("", "a run file is a mapping of sections (name:, model:, data: ...)")], path)
    from ftune.runtime.importers import import_config, is_foreign

    if is_foreign(raw):
        imported = import_config(p, project=project or Path.cwd(), require_all=False)
        if on_import:
            on_import(imported)
        return imported.raw
    return raw


def answers_from(flags: Flags, cwd: Path | None = None, project: Path | None = None, on_import=None,
                 partial: dict[str, Any] | None = None) -> Answers:
    """Answers from --from (if any; or a `partial` run file given as data) with the flags on top. Paths given as
    flags are relative to the current folder and written relative to the project folder."""
    cwd = cwd or Path.cwd()
    if partial is not None and not isinstance(partial, dict):
        raise SpecError([Problem("", "a run file is a mapping of sections (name:, model:, data: ...)")], "the spec")
    if flags.from_file:
        partial = read_partial(flags.from_file, project, on_import)
    a = Answers.from_raw(partial) if partial else Answers()
    if flags.name:
        a.name = flags.name
    if flags.model:
        local = Path(flags.model).expanduser()
        is_local = (cwd / local).is_dir() if not local.is_absolute() else local.is_dir()
        a.model = model_as_written(local, project, cwd) if project and (is_local or looks_local(flags.model)) else flags.model
    if flags.data:
        a.data = as_written(flags.data, project, cwd) if project else flags.data
        a.base.get("data", {}).pop("dataset_dir", None)  # a file now, not a key of the --from file's dataset_info
    if flags.validation:
        a.validation = as_written(flags.validation, project, cwd) if project else flags.validation
    if flags.val_size is not None:
        a.val_size = flags.val_size
    if flags.stage:
        a.stage = flags.stage
    if flags.method:
        a.method = METHOD_ALIASES.get(flags.method, flags.method)
    if flags.preset:
        a.preset = flags.preset
    if flags.template:
        a.template = a.template_choice = flags.template
    if flags.trust_remote_code:
        a.trust_remote_code = True
    a.overrides = list(flags.overrides)
    return a


@dataclass
class Written:
    run: RunDir
    memory_line: str


def run_noninteractive(flags: Flags, answers: Answers, root: Path, *, tty: bool,
                       gpus: list[memory_estimate.Gpu] | None = None) -> Written:
    """Check every answer, then write the run file. Raises WizardError / SpecError (the CLI prints them)."""
    project = project_of(root)
    a = answers
    missing = []
    if not a.model:
        missing.append("--model MODEL (a hub id or a local model folder)")
    if not a.data:
        missing.append("--data FILE (the training data)")
    if not flags.yes:
        missing.append("--yes (to write the run file without confirming)")
    if missing:
        why = "no terminal to ask on" if not tty else "--yes asks no questions"
        raise WizardError(f"missing answers ({why}): pass " + ", ".join(missing))

    a.name = a.name or next_free_name(root)
    problem = check_run_name(a.name)
    if problem:
        raise WizardError(f"--name: {problem}")
    if a.stage not in STAGES:
        raise WizardError(f"--stage: unknown stage {a.stage!r}: one of {', '.join(STAGES)}")
    if a.method not in METHOD_SETTINGS:
        raise WizardError(f"--method: unknown method {a.method!r}: one of {', '.join(METHOD_SETTINGS)}")

    info = resolve(a.model, project)
    if info.source == "local":
        problem = local_problem(local_path(a.model, project))
        given = flags.model or a.model
        if problem and not given.startswith((".", "/", "~")) and not local_path(a.model, project).exists():
            raise WizardError(f"--model: {given!r} is neither a model folder nor a hub id (owner/name)")
        if problem:
            raise WizardError(f"--model: {problem}")
    elif not is_hub_id(a.model):
        raise WizardError(f"--model: {a.model!r} is neither a model folder nor a hub id (owner/name)")
    if a.template == "auto" and not flags.template and not get_path(a.base, "model.template"):
        a.template = matched_template(a, info)  # as the wizard's default: the model's own, named
    if info.trust_remote_code and not a.trust_remote_code:
        raise WizardError(f"{a.model} ships its own model code, which runs when it loads: pass --trust-remote-code "
                          f"to allow it")

    checked = check(a)
    _check_data(a, project)
    run = RunDir(root, checked.raw["name"])
    if run.exists():
        state = run.state()
        if state in ACTIVE_STATES:
            raise WizardError(f"run '{run.name}' is {state}: not touching its run file; pass another --name")
        if not flags.overwrite:
            raise WizardError(f"{run.spec_path} exists ({state}): pass --overwrite to replace it, or another --name")
    if gpus is None:
        from ftune.runtime.sysmon import gpu_samples

        gpus = memory_estimate.gpus_from_samples(gpu_samples())
    written = write_run(root, checked)
    return Written(written, estimate_line(info, checked.spec, gpus, a.method))


def _check_data(a: Answers, project: Path) -> None:
    from ftune.runtime.data.load import summarize_file

    files = [("--data", f) for f in ([a.data] if isinstance(a.data, str) else a.data or [])]
    if (a.base.get("data") or {}).get("dataset_dir"):  # keys of a dataset_info.json: `ftune train` checks them
        files = []
    for flag, written in files + [("--validation", a.validation)]:
        if not written:
            continue
        path = local_path(written, project)
        if not path.is_file():
            raise WizardError(f"{flag}: data file not found: {path}")
        s = summarize_file(path)
        if s.fatal:
            raise WizardError(f"{flag}: {s.fatal}")
        if s.format is None:
            raise WizardError(f"{flag}: {path}: format not recognised ({s.reason})")
        if s.stages and a.stage not in s.stages:
            raise WizardError(f"{flag}: {path} holds {s.format} data, which suits {', '.join(s.stages)}, not stage "
                              f"{a.stage}: pass --stage {s.stages[0]} or another file")
        if flag == "--data" and s.invalid and a.on_invalid != "skip" \
                and "data.on_invalid=skip" not in [o.replace(" ", "") for o in a.overrides]:
            shown = "\n".join(f"  {e}" for e in s.errors)
            raise WizardError(f"{s.invalid} of {s.total} rows in {path} are invalid:\n{shown}\n"
                              f"Fix them, or pass --set data.on_invalid=skip to train on the {s.valid} valid rows.")
