"""Which checkpoint folders a resume may use."""

import json

from ftune.runtime.rundir import CHECKPOINT_MARKER, RunDir, checkpoint_problem


def checkpoint(folder, state='{"global_step": 2}', weights=b"x", marker=False):
    folder.mkdir(parents=True)
    if state is not None:
        (folder / "trainer_state.json").write_text(state)
    if weights is not None:
        (folder / "adapter_model.safetensors").write_bytes(weights)
    if marker:
        (folder / CHECKPOINT_MARKER).write_text(json.dumps({"step": 2}))
    return folder


def test_a_checkpoint_is_complete_by_its_marker_or_by_what_resume_reads(tmp_path):
    assert checkpoint_problem(checkpoint(tmp_path / "marked", state=None, marker=True)) is None
    assert checkpoint_problem(checkpoint(tmp_path / "older")) is None  # written before ftune's marker existed
    assert checkpoint_problem(checkpoint(tmp_path / "torn", state="")) == "its trainer_state.json is empty or torn"
    assert checkpoint_problem(checkpoint(tmp_path / "cut", state='{"global_st')) == \
        "its trainer_state.json is empty or torn"
    assert checkpoint_problem(checkpoint(tmp_path / "none", state=None)) == "it has no trainer_state.json"
    assert checkpoint_problem(checkpoint(tmp_path / "empty", weights=b"")) == "it has no weights"


def test_incomplete_checkpoints_are_listed_but_never_resumed_from(tmp_path):
    run = RunDir(tmp_path / "runs", "r")
    checkpoint(run.checkpoints_dir() / "checkpoint-2", marker=True)
    checkpoint(run.checkpoints_dir() / "checkpoint-4", state="")
    assert run.latest_checkpoint() == (2, run.checkpoints_dir() / "checkpoint-2")
    assert [(s, p is None) for s, _, p in run.all_checkpoints()] == [(2, True), (4, False)]
