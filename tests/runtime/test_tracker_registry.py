"""training.report_to: TensorBoard, W&B (offline) and MLflow (a file store) get the figures of events.jsonl, read
back with each tracker's own reader; no key from the environment lands in any file of the run; a tracker that is
not installed is refused before anything starts. (A tracker that fails while training is a warning event and the
run goes on: tests/runtime/test_compare.py, whose third run has a TensorBoard folder that cannot be made.)"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from ftune.runtime.launch import tracker_problem
from ftune.runtime.rundir import RunDir
from ftune.runtime.spec import load_spec
from ftune.runtime.tracker_registry import redact_url, scrub, tracker_env
from tests.conftest import write_messages
from tests.runtime.helpers import make_run, of_type, train_to_end

SECRETS = {"WANDB_API_KEY": "fake0wandb0key0" + "7" * 25, "HF_TOKEN": "hf_fakeTokenForTheTest123",
           "SWANLAB_API_KEY": "fake-swanlab-key-0042", "MLFLOW_TRACKING_PASSWORD": "fake-mlflow-password-9"}


def wandb_history(run_file: Path) -> list[dict]:
    """The history rows of a W&B offline run file (.wandb: a LevelDB log of protobuf Records; wandb 0.2x+ has no
    Python reader of its own any more)."""
    import json

    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, records, partial = 32768, 7, [], b""
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:  # a block's tail too short for a header is padding
            pos += room
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        partial = chunk if kind in (1, 2) else partial + chunk
        if kind in (1, 4):
            records.append(partial)
    rows = []
    for raw in records:
        r = pb.Record()
        r.ParseFromString(raw)
        if r.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item})
    return rows


def test_tensorboard_wandb_and_mlflow_hold_the_events_figures_and_no_key(tiny_model, tmp_path, monkeypatch):
    project = tmp_path
    write_messages(project / "train.jsonl", 24)
    (project / "runs").mkdir()
    store = project / "mlflow-store"  # the user's own file store: MLFLOW_TRACKING_URI=file:...
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    run = make_run(project, tiny_model, training={"max_steps": 3, "logging_steps": 1,
                                                  "report_to": ["tensorboard", "wandb", "mlflow"]})
    events = train_to_end(run)
    assert events[-1]["type"] == "finished", run.log_path.read_text()[-3000:]
    assert not of_type(events, "warning"), of_type(events, "warning")
    losses = {e["step"]: e["loss"] for e in of_type(events, "step")}
    evals = {e["step"]: e["eval_loss"] for e in of_type(events, "eval")}
    assert sorted(losses) == [1, 2, 3] and evals

    trackers = {t["name"]: t for t in of_type(events, "started")[-1]["trackers"]}
    assert set(trackers) == {"tensorboard", "wandb", "mlflow"}
    assert trackers["tensorboard"]["dir"] == str(run.path / "tensorboard")
    assert trackers["wandb"]["mode"] == "offline" and trackers["wandb"]["run"] == "run-01"
    assert Path(trackers["wandb"]["dir"]).parent == run.path / "wandb"
    assert trackers["mlflow"]["run"] == "run-01" and Path(trackers["mlflow"]["dir"]).is_relative_to(store)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(trackers["tensorboard"]["dir"])
    tb.Reload()
    assert {s.step: s.value for s in tb.Scalars("train/loss")} == pytest.approx(losses, rel=1e-6)
    assert {s.step: s.value for s in tb.Scalars("eval/loss")} == pytest.approx(evals, rel=1e-6)

    (wandb_file,) = Path(trackers["wandb"]["dir"]).glob("run-*.wandb")
    rows = wandb_history(wandb_file)
    assert {r["train/global_step"]: r["train/loss"] for r in rows if "train/loss" in r} == pytest.approx(losses)
    assert {r["train/global_step"]: r["eval/loss"] for r in rows if "eval/loss" in r} == pytest.approx(evals)

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    history = MlflowClient(store.as_uri()).get_metric_history(trackers["mlflow"]["id"], "loss")
    assert {m.step: m.value for m in history} == pytest.approx(losses)

    # no key or token anywhere: run.yaml, events, status, train.log, the model card, the trackers' own folders
    for f in [p for p in run.path.rglob("*") if p.is_file()] + [p for p in store.rglob("*") if p.is_file()]:
        data = f.read_bytes()
        for name, secret in SECRETS.items():
            assert secret.encode() not in data, f"{name} in {f}"
    assert (run.export_dir() / "README.md").is_file()  # the model card was among them


def test_a_tracker_that_is_not_installed_is_named_with_its_extra_before_anything_starts(tiny_model, tmp_path,
                                                                                         monkeypatch):
    import sys

    from tests.runtime.trained import cli

    monkeypatch.setitem(sys.modules, "swanlab", None)  # absent, whatever this machine has
    write_messages(tmp_path / "train.jsonl", 8)
    (tmp_path / "runs").mkdir()
    run = make_run(tmp_path, tiny_model, training={"report_to": "swanlab"})
    assert "pip install 'ftune[swanlab]'" in tracker_problem(load_spec(run.spec_path))
    result = cli(run, "train", "run-01")
    assert result.exit_code == 2
    assert "training.report_to names swanlab, which is not installed: pip install 'ftune[swanlab]'" in result.output
    assert not run.events_path.exists() and RunDir(run.root, "run-01").state() != "running"


def test_report_to_takes_one_name_or_none_and_refuses_others(tiny_model, tmp_path):
    from ftune.runtime.spec import SpecError

    for value, expected in (("wandb", ["wandb"]), ("none", []), (["tensorboard", "tensorboard"], ["tensorboard"])):
        run = make_run(tmp_path, tiny_model, training={"report_to": value})
        assert load_spec(run.spec_path).training.report_to == expected
    run = make_run(tmp_path, tiny_model, training={"report_to": ["comet"]})
    with pytest.raises(SpecError, match="report_to"):
        load_spec(run.spec_path)


def test_tracker_folders_default_under_the_run_and_the_users_environment_wins(tmp_path):
    env = tracker_env(["tensorboard", "wandb", "mlflow", "swanlab", "trackio"], tmp_path, {"WANDB_DIR": "/mine"})
    assert "WANDB_DIR" not in env and env["WANDB_PROJECT"] == "ftune"
    assert env["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "tensorboard")
    assert env["MLFLOW_TRACKING_URI"] == (tmp_path / "mlruns").as_uri() and env["MLFLOW_ALLOW_FILE_STORE"] == "true"
    assert env["SWANLAB_LOG_DIR"] == str(tmp_path / "swanlog") and env["TRACKIO_DIR"] == str(tmp_path / "trackio")
    server = tracker_env(["mlflow"], tmp_path, {"MLFLOW_TRACKING_URI": "https://mlflow.example"})
    assert "MLFLOW_TRACKING_URI" not in server and "MLFLOW_ALLOW_FILE_STORE" not in server


def test_urls_and_messages_lose_their_secrets():
    assert redact_url("https://me:s3cret@mlflow.example/api?token=abc&x=1") == "https://***@mlflow.example/api?token=***&x=1"
    assert scrub("401: key fake0wandb0key0 refused", {"WANDB_API_KEY": "fake0wandb0key0", "HOME": "/root"}) \
        == "401: key *** refused"
