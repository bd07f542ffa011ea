"""Which checkpoint folders a resume may use."""

import json

from ftune.runtime.rundir import CHECKPOINT_MARKER, RunDir, checkpoint_problem


def safetensors(data: bytes = b"\0\0\0\0", claimed: int = 4) -> bytes:
    """A safetensors file of one float32 tensor whose header names `claimed` bytes of data."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [claimed // 4], "data_offsets": [0, claimed]}}).encode()
    return len(header).to_bytes(8, "little") + header + data


def checkpoint(folder, state='{"global_step": 2}', weights=safetensors(), marker=False):
    folder.mkdir(parents=True)
    if state is not None:
        (folder / "trainer_state.json").write_text(state)
    if weights is not None:
        (folder / "adapter_model.safetensors").write_bytes(weights)
    if marker:
        (folder / CHECKPOINT_MARKER).write_text(json.dumps({"step": 2}))
    return folder


def test_a_checkpoint_is_complete_by_its_marker_or_by_what_resume_reads(tmp_path):
    assert checkpoint_problem(checkpoint(tmp_path / "marked", marker=True)) is None
    assert checkpoint_problem(checkpoint(tmp_path / "older")) is None  # written before ftune's marker existed
    assert checkpoint_problem(checkpoint(tmp_path / "torn", state="")) == "its trainer_state.json is empty or torn"
    assert checkpoint_problem(checkpoint(tmp_path / "cut", state='{"global_st')) == \
        "its trainer_state.json is empty or torn"
    assert checkpoint_problem(checkpoint(tmp_path / "none", state=None)) == "it has no trainer_state.json"
    assert checkpoint_problem(checkpoint(tmp_path / "empty", weights=None)) == "it has no weights"


def test_a_marked_checkpoint_damaged_afterwards_is_read_as_resume_reads_it(tmp_path):
    """The marker says the save ended; a power loss (data not on disk) or a hand can still empty its files after."""
    assert checkpoint_problem(checkpoint(tmp_path / "state", state="", marker=True)) == \
        "its trainer_state.json is empty or torn"
    assert checkpoint_problem(checkpoint(tmp_path / "nostate", state=None, marker=True)) == \
        "it has no trainer_state.json"
    assert checkpoint_problem(checkpoint(tmp_path / "zero", weights=b"", marker=True)) == \
        "its adapter_model.safetensors is empty or torn (its header does not load)"
    assert checkpoint_problem(checkpoint(tmp_path / "head", weights=safetensors()[:20], marker=True)) == \
        "its adapter_model.safetensors is empty or torn (its header does not load)"
    assert checkpoint_problem(checkpoint(tmp_path / "short", weights=safetensors(b"\0\0", 4), marker=True)) == \
        "its adapter_model.safetensors is cut short (its header names more bytes than it holds)"
    # FSDP and DeepSpeed keep their weights in folders of their own: a marked folder needs none at its top
    assert checkpoint_problem(checkpoint(tmp_path / "sharded", weights=None, marker=True)) is None


def test_incomplete_checkpoints_are_listed_but_never_resumed_from(tmp_path):
    run = RunDir(tmp_path / "runs", "r")
    checkpoint(run.checkpoints_dir() / "checkpoint-2", marker=True)
    checkpoint(run.checkpoints_dir() / "checkpoint-4", state="")
    assert run.latest_checkpoint() == (2, run.checkpoints_dir() / "checkpoint-2")
    assert [(s, p is None) for s, _, p in run.all_checkpoints()] == [(2, True), (4, False)]
