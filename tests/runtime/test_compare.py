"""`ftune compare` and `ftune ls --json` on three real runs that differ in learning rate and LoRA rank: the
session's trained run (8 steps) and two short ones trained side by side. The third also has a TensorBoard tracker
whose folder cannot be made: a tracker that fails is one warning event and the run trains to the end."""

from __future__ import annotations

import json

import pytest

from ftune.runtime import launch
from ftune.runtime.events import read_all
from ftune.runtime.rundir import RunDir
from tests.runtime.helpers import make_run, of_type
from tests.runtime.trained import cli, copy_of_trained_run


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory, tiny_model) -> list[RunDir]:
    first, _ = copy_of_trained_run(tmp_path_factory, tiny_model)  # lr 3e-3, rank 8, 8 steps
    project = first.root.parent
    second = make_run(project, tiny_model, "run-02",
                      training={"max_steps": 4, "save_steps": 4, "learning_rate": 1e-3})
    third = make_run(project, tiny_model, "run-03", method={"lora": {"rank": 4}},
                     training={"max_steps": 4, "save_steps": 4, "report_to": ["tensorboard"]})
    (third.path / "tensorboard").write_text("a file where TensorBoard's folder would go\n")
    procs = [launch.start(second), launch.start(third)]  # side by side: half the wall time of one after the other
    for run, proc in zip((second, third), procs):
        proc.wait(timeout=240)
        assert read_all(run.events_path)[-1]["type"] == "finished", run.log_path.read_text()[-3000:]
    return [first, second, third]


def test_compare_shows_the_settings_that_differ_and_how_each_run_ended(three_runs, tmp_path):
    first = three_runs[0]
    result = cli(first, "compare", "run-01", "run-02", "run-03", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["differing_settings"] == ["method.lora.rank", "training.learning_rate", "training.max_steps",
                                          "training.report_to"]
    rows = {r["name"]: r for r in data["runs"]}
    assert [rows[n]["settings"]["training.learning_rate"] for n in ("run-01", "run-02", "run-03")] == [3e-3, 1e-3, 3e-3]
    assert [rows[n]["settings"]["method.lora.rank"] for n in ("run-01", "run-02", "run-03")] == [8, 8, 4]
    for run in three_runs:
        events, row = read_all(run.events_path), rows[run.name]
        assert row["train_loss"] == of_type(events, "step")[-1]["loss"]
        assert row["eval_loss"] == of_type(events, "eval")[-1]["eval_loss"]
        assert row["best_eval_loss"] == min(e["eval_loss"] for e in of_type(events, "eval"))
        assert row["steps"] == row["max_steps"] == (8 if run is first else 4)
        assert row["tokens_per_s"] > 0 and row["wall_s"] > 0 and row["ended"] == "finished"

    table = cli(first, "compare", "run-01", "run-02", "run-03", "--plot", str(tmp_path / "steps.png"))
    assert table.exit_code == 0, table.output
    for text in ("training.learning_rate", "method.lora.rank", "0.003", "0.001", "train loss (last)",
                 "eval loss (best)", "tokens/s", "wall time", "8/8", "4/4"):
        assert text in table.output
    tokens = cli(first, "compare", "run-01", "run-03", "--plot", str(tmp_path / "tokens.png"), "--x", "tokens")
    assert tokens.exit_code == 0, tokens.output
    for png in ("steps.png", "tokens.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli(first, "compare", "run-01").exit_code == 2  # one run is no comparison


def test_a_failing_tracker_is_a_warning_and_training_goes_on(three_runs):
    third = three_runs[2]
    events = read_all(third.events_path)
    (warning,) = [e for e in of_type(events, "warning") if e.get("tracker")]
    assert warning["tracker"] == "tensorboard" and "training goes on" in warning["message"]
    assert of_type(events, "started")[-1]["trackers"][0]["name"] == "tensorboard"
    assert "failed" in of_type(events, "started")[-1]["trackers"][0]
    assert events[-1]["type"] == "finished" and events[-1]["step"] == 4


def test_ls_json_lists_each_run_with_numbers(three_runs):
    result = cli(three_runs[0], "ls", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert set(rows) == {"run-01", "run-02", "run-03"}
    for run in three_runs:
        r, events = rows[run.name], read_all(run.events_path)
        assert r["status"] == "finished" and r["stage"] == "sft" and r["method"] == "lora"
        assert r["last_loss"] == of_type(events, "step")[-1]["loss"]
        assert r["best_eval_loss"] == min(e["eval_loss"] for e in of_type(events, "eval"))
        assert isinstance(r["started_at"], float) and r["path"] == str(run.path)
