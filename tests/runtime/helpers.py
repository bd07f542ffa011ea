"""Helpers for tests that train for real through the launcher."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from ftune.runtime import launch
from ftune.runtime.events import read_all
from ftune.runtime.rundir import RunDir


def make_run(project: Path, model_dir: Path, name: str = "run-01", **sections) -> RunDir:
    raw = {
        "name": name,
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": "train.jsonl"},
        "training": {"learning_rate": 3e-3, "logging_steps": 1, "save_steps": 10, "num_train_epochs": 1,
                     "per_device_train_batch_size": 8},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    run = RunDir(project / "runs", name)
    run.path.mkdir(parents=True, exist_ok=True)
    run.spec_path.write_text(yaml.safe_dump(raw))
    return run


@contextmanager
def recipe_builder(project: Path, model_dir: Path, prefix: str):
    """build(folder=None, **sections) -> the Recipe the worker builds (recipe.setup) for a run file like make_run's,
    each under its own name; their event files are closed at the end."""
    from ftune.runtime.events import EventWriter
    from ftune.runtime.spec import load_spec
    from ftune.runtime.train import recipe
    from ftune.runtime.train.stopper import Stopper

    recipes = []

    def build(folder: Path | None = None, **sections):  # `model=` is the run file's section, as in make_run
        run = make_run(project, folder or model_dir, name=f"{prefix}-{len(recipes)}", **sections)
        recipes.append(recipe.setup(load_spec(run.spec_path), run, EventWriter(run.events_path), Stopper()))
        return recipes[-1]

    try:
        yield build
    finally:
        for r in recipes:
            r.events.close()


def train_to_end(run: RunDir, timeout: float = 240, **kwargs) -> list[dict]:
    proc = launch.start(run, **kwargs)
    proc.wait(timeout=timeout)
    return read_all(run.events_path)


def wait_for(predicate, timeout: float = 120, poll: float = 0.1):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError("condition not met in time")


def of_type(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["type"] == kind]
