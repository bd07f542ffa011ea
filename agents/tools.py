"""The tools of `ftune mcp`, as plain functions over the runtime: the same calls the CLI makes (`ftune ls`, `new
--yes`, `data check`, `train`, `stop`, `compare`, `export`, `eval`, `rm`), under the server's Guard. Each returns a
schemas model or raises a UserError (message and hint), which the server hands to the agent as they are.

Nothing here imports `mcp`: the server (server.py) registers these methods as tools.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ftune.agents import schemas
from ftune.agents.guard import Guard
from ftune.runtime.errors import UserError
from ftune.runtime.present import no_final_event
from ftune.runtime.rundir import ACTIVE_STATES, RunError

FOLLOW_POLL_S = 0.5
MAX_WAIT_S = 60.0


class Tools:
    def __init__(self, guard: Guard):
        self.guard = guard

    # ------------------------------------------------------------------ looking
    def list_runs(self) -> schemas.RunList:
        """Every run in the runs folder: status, phase while starting, stage/method, model, step of max_steps, the
        last training loss and the best eval loss (what `ftune ls` shows)."""
        from ftune.runtime.runs import run_records, short_number

        rows = [schemas.RunRow(**{k: short_number(v) for k, v in r.items() if k in schemas.RunRow.model_fields and
                                  v != ""}) for r in run_records(self.guard.root)]
        return schemas.RunList(runs_dir=str(self.guard.root), runs=rows)

    def show_run(self, name: str) -> schemas.RunSummary:
        """One run: status, step, losses, last eval, ETA, newest checkpoint, newest problems, how it ended, its
        settings as written, and a cursor for read_events."""
        from ftune.runtime.runs import run_summary

        return schemas.RunSummary(**run_summary(self.guard.run(name)))

    def read_events(self, name: str, cursor: str | None = None, limit: int = 50, wait_s: float = 0,
                    types: list[str] | None = None) -> schemas.Events:
        """A run's events after `cursor` (from show_run, start_run or the last call; none: from the start), at most
        `limit`. With `wait_s`, waits up to that long (60 s at most) for new events while the run is active. `types`
        keeps only those event types (e.g. ["eval", "checkpoint", "warning", "error", "finished", "stopped"])."""
        from ftune.runtime.events import FINAL_TYPES, read_from
        from ftune.runtime.rundir import shown_state

        run = self.guard.run(name)
        limit = max(1, min(int(limit), 500))
        deadline = time.monotonic() + max(0.0, min(float(wait_s), MAX_WAIT_S))
        while True:
            events, after, reset, more = read_from(run.events_path, cursor, limit)
            state = run.state()
            if events or more or state not in ACTIVE_STATES or time.monotonic() >= deadline:
                break
            time.sleep(FOLLOW_POLL_S)
        over = state not in (*ACTIVE_STATES, "new") or bool(events and events[-1].get("type") in FINAL_TYPES)
        ended = over and not more  # an old attempt's `stopped` with a newer attempt after it is not the end
        if types:
            events = [e for e in events if e.get("type") in types]
        return schemas.Events(events=[{k: v for k, v in e.items() if k != "v"} for e in events], cursor=after,
                              status=shown_state(state), ended=ended, more=more, reset=reset)

    def compare_runs(self, names: list[str]) -> schemas.Comparison:
        """Two runs or more side by side: the settings that differ (defaults filled in) and each run's figures
        (last and best eval loss, eval metrics, steps, tokens/s, wall time): `ftune compare --json`."""
        from ftune.runtime.run_diff import as_json, compare, runs_named

        differ, results = compare(runs_named(self.guard.root, names))
        return schemas.Comparison(**as_json(differ, results))

    # ------------------------------------------------------------------ run files
    def validate_spec(self, spec: dict[str, Any]) -> schemas.Validation:
        """Check a run spec (the run file as JSON: name, model, data, stage, method, training, ...; the
        ftune://schema resource has every field) without writing anything: every mistake at once, each with its
        dotted path. A preset named in it (`preset: fast`) is merged under it, as `ftune train` does."""
        from ftune.runtime.spec import SpecError, build_spec

        try:
            built = build_spec(spec, source="the spec")
        except SpecError as e:
            return schemas.Validation(valid=False, name=spec.get("name") if isinstance(spec, dict) else None,
                                      problems=[schemas.SpecProblem(path=p.path, message=p.message)
                                                for p in e.problems])
        self.guard.spec_paths(spec)
        return schemas.Validation(valid=True, name=built.name)

    def create_run(self, model: str | None = None, data: str | None = None, name: str | None = None,
                   preset: str | None = None, stage: str | None = None, method: str | None = None,
                   overrides: list[str] | None = None, spec: dict[str, Any] | None = None,
                   overwrite: bool = False) -> schemas.Created:
        """Write runs/NAME/run.yaml as `ftune new --yes` does: from a preset (standard, quality, fast) plus
        `overrides` (["training.learning_rate=2e-4", ...]), or from a whole or partial `spec`, with model, data,
        stage, method and name on top. The model, the data and every setting are checked first; nothing is
        written on a mistake. Paths are relative to the project folder (the one holding the runs folder)."""
        from ftune.runtime.spec import SpecError
        from ftune.wizard.noninteractive import Flags, answers_from, run_noninteractive

        self.guard.writes("create runs")
        flags = Flags(name=name, model=model, data=data, preset=preset, stage=stage, method=method,
                      overrides=list(overrides or []), yes=True, overwrite=overwrite)
        answers = answers_from(flags, cwd=self.guard.project, project=self.guard.project, partial=spec)
        try:
            raw = answers.to_raw()
        except SpecError:
            raw = {}  # the overrides' own mistakes: run_noninteractive reports them with the rest
        self.guard.spec_paths(raw)
        written = run_noninteractive(flags, answers, self.guard.root, tty=False)
        return schemas.Created(name=written.run.name, run_file=str(written.run.spec_path), memory=written.memory_line,
                               next=f"start_run(name={written.run.name!r})")

    def check_data(self, path: str, model: str | None = None, max_length: int = 1024,
                   show: int = 0) -> schemas.DataCheck:
        """`ftune data check`: the data file's format, which stages it suits, every row checked (the first
        invalid ones with their lines); with `model` (a hub id or a model folder) how it tokenises: lengths,
        rows over max_length, and `show` samples with the learnt tokens marked."""
        from ftune.runtime.data.check import check

        file = self.guard.path(path, "data file")
        report = check(str(file), self._model(model) if model else None, max_length, None,
                       max(0, min(int(show), 5))).to_dict()
        return schemas.DataCheck(**{k: v for k, v in report.items() if k in schemas.DataCheck.model_fields and
                                    v not in ({}, None)})

    def estimate_memory(self, name: str | None = None, spec: dict[str, Any] | None = None) -> schemas.MemoryEstimate:
        """The memory a run needs per GPU (weights, optimiser states, activations) against the GPUs here: for an
        existing run (`name`) or a spec not written yet."""
        from ftune.runtime import catalog, memory_estimate
        from ftune.runtime.spec import build_spec, load_spec
        from ftune.runtime.sysmon import gpu_samples
        from ftune.wizard.runfile import estimate_for, estimate_line

        if (name is None) == (spec is None):
            raise UserError("give a run's name or a spec, one of the two")
        if name is not None:
            built = load_spec(self.guard.run(name).spec_path)
        else:
            self.guard.spec_paths(spec)
            built = build_spec(spec, source="the spec")
        self._model(built.model.name_or_path)
        gpus = memory_estimate.gpus_from_samples(gpu_samples())
        info = catalog.resolve(built.model.name_or_path, self.guard.project)
        result = estimate_for(info, built, gpus)
        return schemas.MemoryEstimate(
            text=estimate_line(info, built, gpus), need_gb=round(result[0].total_gb, 1) if result else None,
            verdict=result[1].label if result else None, gpus=[f"{g.name} ({g.free_gb:.0f} of {g.total_gb:.0f} GB free)"
                                                             for g in gpus])

    # ------------------------------------------------------------------ training
    def start_run(self, name: str, restart: bool = False, overrides: list[str] | None = None) -> schemas.Started:
        """Start training a run in a detached process (it outlives this server), as `ftune train` does: the run file
        checked, the model and every data row checked, then the worker started. A run with checkpoints needs
        resume_run or restart (which deletes its checkpoints, export and history). `overrides` change the run file
        first (["training.max_steps=100"]). Follow it with read_events."""
        return self._start(name, resume=False, restart=restart, overrides=overrides)

    def resume_run(self, name: str, overrides: list[str] | None = None) -> schemas.Started:
        """Continue a stopped (or crashed) run from its newest complete checkpoint: `ftune train --resume`."""
        return self._start(name, resume=True, restart=False, overrides=overrides)

    def _start(self, name: str, resume: bool, restart: bool, overrides: list[str] | None) -> schemas.Started:
        from ftune.runtime import launch
        from ftune.runtime.events import file_id
        from ftune.runtime.spec import apply_overrides

        self.guard.writes("start runs")
        run = self.guard.run(name)
        raw = _raw(run.spec_path)
        self.guard.spec_paths(apply_overrides(raw, list(overrides)) if overrides else raw)  # as it will train
        warnings: list[str] = []
        before = (file_id(run.events_path), run.events_path.stat().st_size if run.events_path.exists() else 0)
        proc = launch.train(run, overrides=list(overrides or []), resume=resume, restart=restart,
                            warn=warnings.append)
        same = before[0] and file_id(run.events_path) == before[0]  # else started over: from the new file's start
        cursor = f"{before[0]:x}-{before[1]}" if same else "0-0"
        return schemas.Started(name=run.name, pid=proc.pid, resumed=resume or run.read_status().get("resumed", False),
                               warnings=warnings, cursor=cursor)

    def stop_run(self, name: str, wait_s: float = 600) -> schemas.Stopped:
        """Stop a training run gracefully: it finishes its step, saves a checkpoint and ends (`ftune stop`).
        Waits up to `wait_s` for the checkpoint. Continue later with resume_run."""
        from ftune.runtime import launch

        self.guard.writes("stop runs")
        final = launch.stop(self.guard.run(name), wait=float(wait_s))
        if final is None:
            return schemas.Stopped(name=name, message=no_final_event(name, "see its train.log"))
        return schemas.Stopped(name=name, ended=final.get("type"), step=final.get("step"),
                               checkpoint=(final.get("artifacts") or {}).get("checkpoint"),
                               message=final.get("message"))

    def checkpoint_run(self, name: str, wait_s: float = 600) -> schemas.Checkpointed:
        """Save a checkpoint of a training run at the end of its current step; training goes on (`ftune
        checkpoint`). Waits up to `wait_s` for it."""
        from ftune.runtime import launch

        self.guard.writes("ask runs for checkpoints")
        event = launch.checkpoint(self.guard.run(name), wait=float(wait_s))
        if event is None:
            return schemas.Checkpointed(name=name, message=no_final_event(name, "see its train.log",
                                                                          when=" before it saved"))
        if event["type"] == "checkpoint":
            return schemas.Checkpointed(name=name, step=event.get("step"), path=event.get("path"))
        return schemas.Checkpointed(name=name, ended=event["type"], step=event.get("step"),
                                    message=event.get("message"))

    def delete_run(self, name: str) -> schemas.Deleted:
        """Delete a run that is not training: its folder, checkpoints and export (`ftune rm --yes`)."""
        from ftune.runtime.runs import deletable

        self.guard.writes("delete runs")
        run = self.guard.run(name)
        deletable(run)
        kept = run.remove()
        return schemas.Deleted(name=name, kept=str(kept) if kept else None)

    # ------------------------------------------------------------------ after training
    def export_run(self, name: str, format: str | None = None, checkpoint: int | None = None,
                   quant: str | None = None) -> schemas.Exported:
        """Write a trained run's model as lora (the adapter), merged_16bit, merged_4bit or gguf into
        runs/NAME/exports/, checked against the run's model before it is kept (`ftune export`)."""
        from ftune.runtime.infer.export import export_run

        self.guard.writes("export models")
        run = self._finished_or_checkpoint(name, checkpoint)
        result = export_run(run, format, checkpoint, None, quant=quant)
        return schemas.Exported(path=str(result.path), format=result.format, source=result.source, dtype=result.dtype,
                                check={k: v for k, v in result.check.items() if k != "answers"},
                                gguf=result.gguf or None)

    def eval_run(self, name: str, checkpoint: int | None = None, test: str | None = None,
                 max_new_tokens: int | None = None, batch_size: int | None = None) -> schemas.Evaluated:
        """Answer the prompts of the run's test file (data.test, or `test`) with its model and score them: BLEU,
        ROUGE-1/2/L (`ftune eval`). Writes runs/NAME/eval/.../predictions.jsonl and metrics.json."""
        from ftune.runtime.infer.evaluate import evaluate_run

        self.guard.writes("evaluate runs")
        run = self._finished_or_checkpoint(name, checkpoint)
        test_path = str(self.guard.path(test, "test file")) if test else None
        result = evaluate_run(run, checkpoint, test_path, max_new_tokens, batch_size)
        return schemas.Evaluated(metrics=result.metrics, predictions=str(result.predictions),
                                 metrics_path=str(result.metrics_path))

    # ------------------------------------------------------------------ helpers
    def _model(self, model: str) -> str:
        """A model as the runtime opens it: a local one (which must lie where this server may read) as its full
        path, a hub id as it is."""
        from ftune.runtime.models import local_path, looks_local

        if looks_local(model) or local_path(model, self.guard.project).exists():
            return str(self.guard.path(model, "model"))
        return model

    def _finished_or_checkpoint(self, name: str, checkpoint: int | None):
        run = self.guard.run(name)
        self.guard.remote_code(_raw(run.spec_path))
        if checkpoint is None and run.state() in ACTIVE_STATES:
            raise RunError(f"run '{name}' is still training: wait for it to finish, or name one of its checkpoints")
        return run


def _raw(path: Path) -> dict[str, Any]:
    from ftune.runtime.spec.io import read_yaml

    return read_yaml(path.read_text(encoding="utf-8"), str(path))[0] or {}
