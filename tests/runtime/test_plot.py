"""The loss plot: drawn at the end of a run and by `ftune plot`, a real PNG of the run's curves."""

import struct

import pytest

from ftune.runtime.infer.plot import curves
from tests.runtime.helpers import of_type
from tests.runtime.trained import cli, copy_of_trained_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    return copy_of_trained_run(tmp_path_factory, tiny_model)


def check_png(path):
    """A PNG by its signature and header, decoded whole by matplotlib, with something drawn on it."""
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    pixels = matplotlib.image.imread(str(path))
    assert pixels.shape[:2] == (height, width) and width >= 600 and height >= 400
    assert pixels[..., :3].std() > 0.05  # not a blank canvas
    return width, height


def test_the_worker_draws_the_plot_when_the_run_ends(trained):
    run, events = trained
    path = run.path / "loss.png"
    assert events[-1]["artifacts"]["plot"] == str(path)
    assert not of_type(events, "warning")
    check_png(path)


def test_ftune_plot_writes_a_png(trained, tmp_path):
    run, _ = trained
    out = tmp_path / "curves.png"
    result = cli(run, "plot", "run-01", "--out", str(out))
    assert result.exit_code == 0 and f"Wrote {out}" in result.output
    check_png(out)


def test_curves_follow_the_events(trained):
    run, events = trained
    c = curves(events)
    steps = [e["step"] for e in of_type(events, "step")]
    assert steps == list(range(1, 9)) and [s for s, _ in c["loss"]] == steps  # 8 steps, a loss each
    assert c["eval_loss"] and all(v > 0 for _, v in c["eval_loss"]) and len(c["lr"]) == len(steps)


def test_a_resumed_run_keeps_the_last_value_of_a_step_and_skips_non_finite():
    events = [
        {"type": "step", "step": 1, "loss": 2.0, "lr": 1e-3}, {"type": "step", "step": 2, "loss": 1.5, "lr": 9e-4},
        {"type": "started"},  # resumed from step 1: step 2 again
        {"type": "step", "step": 2, "loss": 1.4, "lr": 9e-4}, {"type": "step", "step": 3, "loss": None, "lr": 8e-4},
        {"type": "eval", "step": 3, "eval_loss": 1.6}, {"type": "warning", "step": 3, "message": "loss is nan"},
    ]
    c = curves(events)
    assert c["loss"] == [(1, 2.0), (2, 1.4)] and c["eval_loss"] == [(3, 1.6)] and len(c["lr"]) == 3


def test_nothing_to_plot_is_said_plainly(tmp_path, tiny_model):
    from tests.runtime.helpers import make_run

    (tmp_path / "runs").mkdir()
    run = make_run(tmp_path, tiny_model, name="empty")
    result = cli(run, "plot", "empty")
    assert result.exit_code == 2 and "has no logged training steps yet" in result.output
