"""The launcher: detached workers, the lock, graceful stop and resume, errors before anything starts."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ftune.cli import main
from ftune.runtime import launch
from ftune.runtime.errors import UserError
from ftune.runtime.events import EventReader, read_all
from ftune.runtime.rundir import RunDir, RunError
from tests.runtime.helpers import make_run, of_type, train_to_end, wait_for

LONG = {"max_steps": 100000, "save_steps": 100000, "logging_steps": 1}


def first_step(run: RunDir, reader: EventReader | None = None, after: int = 0):
    reader = reader or EventReader(run.events_path)
    return wait_for(lambda: [e for e in reader.read_new() if e["type"] == "step" and e["step"] > after], 180)


def test_stop_saves_a_checkpoint_and_resume_continues_from_it(project, tiny_model):
    run = make_run(project, tiny_model, training=LONG)
    proc = launch.start(run)
    first_step(run)
    with pytest.raises(RunError, match="already running"):
        launch.start(run)  # the lock refuses a second trainer
    before = run.spec_path.read_text()
    refused = CliRunner().invoke(main, ["--runs-dir", str(run.root), "train", run.name, "--set",
                                        "training.learning_rate=1e-5"])
    assert refused.exit_code == 2 and "is training now: --set would change its run file" in refused.output
    assert run.spec_path.read_text() == before  # refused before anything was written

    final = launch.stop(run, wait=120)
    assert proc.wait(timeout=60) == 0
    assert final["type"] == "stopped" and final["reason"] == "signal" and final["message"].startswith("SIGTERM asked")
    stopped_at = final["step"]
    ckpt = final["artifacts"]["checkpoint"]
    assert os.path.isfile(os.path.join(ckpt, "trainer_state.json"))
    assert of_type(read_all(run.events_path), "checkpoint")[-1]["step"] == stopped_at
    assert run.state() == "stopped" and run.latest_checkpoint()[0] == stopped_at

    with pytest.raises(RunError, match="has checkpoints .* use --resume"):
        launch.start(run)  # a plain start would silently throw the progress away

    # Resume to a near end, from the checkpoint's step.
    run.spec_path.write_text(run.spec_path.read_text().replace("max_steps: 100000", f"max_steps: {stopped_at + 3}"))
    reader = EventReader(run.events_path)
    reader.read_new()
    proc = launch.start(run, resume=True)
    proc.wait(timeout=180)
    new = reader.read_new()
    started = of_type(new, "started")[0]
    assert started["resumed_from"] == stopped_at
    assert [s["step"] for s in of_type(new, "step")] == [stopped_at + 1, stopped_at + 2, stopped_at + 3]
    assert new[-1]["type"] == "finished" and run.state() == "finished"


def test_worker_survives_its_parent_exiting(project, tiny_model):
    run = make_run(project, tiny_model, training={"max_steps": 30})
    parent = textwrap.dedent(f"""
        import sys
        from ftune.runtime import launch
        from ftune.runtime.rundir import RunDir
        proc = launch.start(RunDir({str(run.root)!r}, {run.name!r}))
        print(proc.pid)
    """)
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=60, check=True)
    pid = int(out.stdout.strip())
    # The parent has exited; the worker is in its own session and carries on to the end.
    assert os.getsid(pid) == pid
    wait_for(lambda: run.state() == "finished", 180, 0.3)
    assert read_all(run.events_path)[-1]["type"] == "finished"


@pytest.mark.real_spawn  # the stop lands while a real worker is still importing
def test_stop_at_once_after_start_ends_the_run_stopped(project, tiny_model):
    run = make_run(project, tiny_model, training=LONG)
    proc = launch.start(run)
    final = launch.stop(run, wait=120)  # no waiting: the worker writes its pid before its heavy imports
    proc.wait(timeout=60)
    assert final["type"] == "stopped" and final["message"] == "stopped before training began"
    assert run.state() == "stopped"


def test_finished_run_needs_restart_and_a_torn_checkpoint_is_passed_over(project, tiny_model):
    run = make_run(project, tiny_model, training={"max_steps": 4, "save_steps": 2})
    assert train_to_end(run)[-1]["type"] == "finished"
    with pytest.raises(RunError, match="has finished: use --restart"):
        launch.start(run)
    assert [s for s, _ in run.checkpoints()] == [2, 4]

    # What a kill while the trainer writes checkpoint-4 leaves: an empty trainer_state.json and no ftune marker.
    torn = run.checkpoints_dir() / "checkpoint-4"
    (torn / "ftune_checkpoint.json").unlink()
    (torn / "trainer_state.json").write_text("")
    assert [s for s, _ in run.checkpoints()] == [2]
    reader = EventReader(run.events_path)
    reader.read_new()
    events = train_to_end(run, resume=True)
    new = reader.read_new()
    warning = of_type(new, "warning")[0]["message"]
    assert "checkpoint-4 is incomplete (its trainer_state.json is empty or torn): resuming from checkpoint-2" in warning
    assert of_type(new, "started")[0]["resumed_from"] == 2 and events[-1]["type"] == "finished"

    events = train_to_end(run, restart=True)
    assert len(of_type(events, "started")) == 1  # history was cleared


def test_crashed_worker_is_reported(project, tiny_model):
    run = make_run(project, tiny_model, training=LONG)
    proc = launch.start(run)
    first_step(run)
    proc.kill()  # no chance to write a final event
    proc.wait()
    wait_for(lambda: not run.is_locked(), 10)
    assert run.state() == "crashed"


@pytest.mark.parametrize("change,message", [
    ({"data": {"train": "missing.jsonl"}}, "data file not found: "),
    ({"model": {"name_or_path": "./no-such-model"}}, "model folder not found: "),
    ({"model": {"name_or_path": "not a hub id"}}, "is neither a model folder, a .gguf file nor a hub id"),
    ({"model": {"name_or_path": "empty-model"}}, "has no config.json"),
])
def test_bad_paths_fail_before_anything_starts(project, tiny_model, change, message):
    (project / "empty-model").mkdir()
    run = make_run(project, tiny_model, **change)
    with pytest.raises(UserError, match=message):
        launch.start(run)
    assert not run.events_path.exists() and not run.status_path.exists()


BAD_INPUTS = yaml.safe_load((Path(__file__).parent / "bad_inputs.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c["case"] for c in BAD_INPUTS])
def test_bad_input_is_refused_before_anything_detaches(project, tiny_model, monkeypatch, case):
    target = project / case.get("file", "train.jsonl")
    target.parent.mkdir(exist_ok=True)
    if "content_repeat" in case:
        text, times = case["content_repeat"]
        target.write_text(text * times)
    elif "content" in case:
        target.write_bytes(case["content"].encode(case.get("encoding", "utf-8")))
    for key, value in case.get("env", {}).items():
        monkeypatch.setenv(key, value)
    run = make_run(project, tiny_model, **case.get("run", {}))
    with pytest.raises(UserError) as info:
        launch.start(run)
    assert str(info.value).startswith(case["expect"].format(project=project)), str(info.value)
    assert not run.events_path.exists() and not run.status_path.exists() and not run.is_locked()


def test_train_exits_2_with_the_message_and_starts_nothing(project, tiny_model):
    (project / "train.jsonl").write_text('{"text": "pre-training text"}\n')
    make_run(project, tiny_model)
    result = CliRunner().invoke(main, ["train", "run-01"])
    assert result.exit_code == 2
    assert result.output.startswith(f"ftune: {project}/train.jsonl holds text data"), result.output
    assert "Choose the stage that fits the data" in result.output and "started" not in result.output


def test_missing_run_and_stop_of_idle_run(project, tiny_model):
    with pytest.raises(RunError, match="no run named 'nope'"):
        launch.start(RunDir(project / "runs", "nope"))
    run = make_run(project, tiny_model)
    with pytest.raises(RunError, match="is not running"):
        launch.stop(run)
