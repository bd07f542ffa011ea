"""Trained runs for the after-training commands (export, chat, serve, eval, plot): one default run trained once
per test session and copied into each module that uses it, or a run of its own where a test needs other settings."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from ftune.cli import main
from ftune.runtime.events import read_all
from ftune.runtime.rundir import RunDir
from tests.conftest import built_once, shared_root, write_messages
from tests.runtime.helpers import make_run, train_to_end


def train_tiny_run(root: Path, model_dir: Path, max_steps: int = 8, rows: int = 48,
                   **sections) -> tuple[RunDir, list[dict]]:
    """A project in `root` (runs/, train.jsonl, test.jsonl) with run-01 trained to the end."""
    write_messages(root / "train.jsonl", rows)
    write_messages(root / "test.jsonl", 6, seed=7)
    (root / "runs").mkdir(exist_ok=True)
    training = {"max_steps": max_steps, "save_steps": 4, **sections.pop("training", {})}
    run = make_run(root, model_dir, training=training, **sections)
    events = train_to_end(run)
    assert events and events[-1]["type"] == "finished", run.log_path.read_text()[-3000:]
    return run, events


def cli(run: RunDir, *args: str):
    """`ftune --runs-dir RUNS ARGS...` in-process."""
    return CliRunner().invoke(main, ["--runs-dir", str(run.root), *args], prog_name="ftune")


def copy_of_trained_run(tmp_path_factory, tiny_model: Path) -> tuple[RunDir, list[dict]]:
    """A copy of the session's default trained run (8 LoRA steps, train.jsonl and test.jsonl beside it), in a
    project folder of the caller's own: trained once by whichever test process asks first. The copy's events and
    status name its own paths, as if it had been trained where it lies."""
    template = built_once(shared_root(tmp_path_factory), "trained-run", lambda root: train_tiny_run(root, tiny_model))
    project = tmp_path_factory.mktemp("trained")
    shutil.copytree(template, project, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".built"))
    run = RunDir(project / "runs", "run-01")
    for f in (run.events_path, run.status_path):
        f.write_text(f.read_text().replace(str(template), str(project)))
    return run, read_all(run.events_path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(run: RunDir, api_key: str):
    """`ftune serve RUN` started as a subprocess on a free loopback port (its key in FTUNE_API_KEY, as the docs
    advise); yields the base URL once /health answers."""
    port = free_port()
    log = open(run.path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "ftune", "--runs-dir", str(run.root), "serve", run.name,
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "FTUNE_API_KEY": api_key})
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if json.load(r)["status"] == "ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail("the server did not start:\n" + (run.path / "serve.log").read_text()[-3000:])
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
