"""The CLI's faces: tables, messages and exit codes (training itself is tested in tests/runtime)."""

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from ftune.cli import main
from tests.runtime.helpers import make_run, train_to_end


def invoke(*args):
    return CliRunner().invoke(main, list(args), prog_name="ftune")


def test_help_lists_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for cmd in ("demo", "train", "stop", "ls", "logs", "rm"):
        assert f"  {cmd}" in result.output


def test_ls_empty_and_with_runs(project, tiny_model):
    assert "No runs in" in invoke("ls").output
    run = make_run(project, tiny_model, training={"max_steps": 3})
    make_run(project, tiny_model, name="run-02")
    train_to_end(run)
    result = invoke("ls")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].split() == ["run", "status", "stage/method", "model", "step", "loss", "started"]
    row1 = lines[1].split()
    assert row1[:3] == ["run-01", "finished", "sft/lora"] and row1[4] == "3/3"
    assert lines[2].split()[:2] == ["run-02", "not"]


@pytest.mark.parametrize("args,message", [
    (("train", "nope"), "ftune: no run named 'nope' in "),
    (("train", "Bad_Name"), "ftune: 'Bad_Name' is not a valid run name"),
    (("stop", "nope"), "ftune: no run named 'nope'"),
    (("logs", "nope"), "ftune: no run named 'nope'"),
    (("rm", "nope"), "ftune: no run named 'nope'"),
])
def test_missing_or_bad_run_exit_2(project, args, message):
    result = invoke(*args)
    assert result.exit_code == 2 and result.output.startswith(message), result.output
    assert "Traceback" not in result.output


def test_bad_run_file_lists_every_mistake_and_writes_nothing(project, tiny_model):
    run = make_run(project, tiny_model, training={"learning_rat": 1, "num_train_epochs": "x"})
    result = invoke("train", "run-01")
    assert result.exit_code == 2
    assert "has 2 mistakes" in result.output
    assert "training.learning_rat: unknown key — did you mean 'learning_rate'?" in result.output
    assert "training.num_train_epochs: Input should be a valid number" in result.output
    assert sorted(p.name for p in run.path.iterdir()) == ["run.yaml"]


def test_missing_data_file_exit_2(project, tiny_model):
    make_run(project, tiny_model, data={"train": "gone.jsonl"})
    result = invoke("train", "run-01")
    assert result.exit_code == 2 and "data file not found:" in result.output


def test_set_is_validated_then_written(project, tiny_model):
    run = make_run(project, tiny_model)
    before = run.spec_path.read_text()
    result = invoke("train", "run-01", "--set", "training.learning_rate=lots")
    assert result.exit_code == 2 and "training.learning_rate" in result.output
    assert run.spec_path.read_text() == before  # nothing written on a bad override


def test_rm_asks_and_refuses_without_tty(project, tiny_model):
    run = make_run(project, tiny_model)
    result = invoke("rm", "run-01")
    assert result.exit_code == 2 and "pass --yes" in result.output and run.path.exists()
    result = invoke("rm", "run-01", "--yes")
    assert result.exit_code == 0 and not run.path.exists()


def test_rm_refuses_a_running_run(project, tiny_model):
    from ftune.runtime import launch

    run = make_run(project, tiny_model, training={"max_steps": 100000})
    proc = launch.start(run)
    try:
        result = invoke("rm", "run-01", "--yes")
        assert result.exit_code == 2 and "stop it first" in result.output and run.path.exists()
    finally:
        launch.stop(run, wait=120)
        proc.wait(timeout=60)


def test_logs_prints_the_worker_output(project, tiny_model):
    run = make_run(project, tiny_model, training={"max_steps": 2})
    train_to_end(run)
    result = invoke("logs", "run-01", "-n", "5")
    assert result.exit_code == 0 and "train_runtime" in result.output
    full = invoke("logs", "run-01")
    assert "=== ftune train run-01 at" in full.output


def test_train_foreground_shows_progress_and_summary(project, tiny_model):
    make_run(project, tiny_model, training={"max_steps": 6, "save_steps": 3})
    out = subprocess.run([sys.executable, "-m", "ftune", "train", "run-01", "--foreground"],
                         capture_output=True, text=True, timeout=240, env=dict(os.environ, COLUMNS="120"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Training run-01:" in out.stdout and "checkpoint saved" in out.stdout
    assert "Finished 6 steps" in out.stdout and "loss " in out.stdout


def test_train_set_refuses_a_run_file_with_duplicate_keys_before_writing(project, tiny_model):
    run = make_run(project, tiny_model)
    run.spec_path.write_text(run.spec_path.read_text() + "training:\n  seed: 3\n")  # a second training: block
    before = run.spec_path.read_text()
    result = invoke("train", "run-01", "--set", "training.learning_rate=1e-4")
    assert result.exit_code == 2 and "training appears twice" in result.output and "Traceback" not in result.output
    assert run.spec_path.read_text() == before and not run.events_path.exists()
