"""One tiny trained run per test module, for the after-training commands (export, chat, serve, eval, plot)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from ftune.cli import main
from ftune.runtime.rundir import RunDir
from tests.conftest import write_messages
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
