"""A long run in the monitor: a checkpoint asked for (the `c` key asks for one), a rollback, a stall; and the same
in `ftune ls`. State first, then what it looks like at 80x24 (tests/tui/__snapshots__/test_longrun/)."""

from __future__ import annotations

from ftune.runtime.runs import run_row
from ftune.tui.app import MonitorScreen, make_app
from ftune.tui.screens import ConfirmCheckpoint
from tests.tui.fakes import T0, hold_lock, long_run, run_async, wait_until
from tests.tui.test_snapshots import loaded

NOW = T0 + 62 + 14 * 60  # 14 minutes after the last step


def test_a_stalled_run_with_a_rollback_and_an_asked_checkpoint(tmp_path):
    run = long_run(tmp_path)

    async def go():
        app = make_app(tmp_path, run.name, clock=lambda: NOW, poll=0.05, live_system=False)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen.loaded,
                             what="the monitor")
            screen = app.screen
            assert screen.state == "stalled" and screen.view.rollbacks == 1
            assert screen.view.step == 26 and screen.view.stall["phase"] == "training"
            kinds = [p.kind for p in screen.view.problems]
            assert kinds == ["warning", "rollback", "warning"]  # the NaN, the rollback, the stall
            await pilot.press("c")
            assert isinstance(app.screen, ConfirmCheckpoint)
            await pilot.press("n")  # no: nothing asked
            assert app.screen is screen and not run.checkpoint_request_path.exists()
            await pilot.press("c", "y")
            assert app.screen is screen and run.checkpoint_request_path.exists() and screen.checkpoint_asked

    with hold_lock(run):
        run_async(go())
        row = run_row(run)
        assert (row["status"], row["ckpt"], row["progress"]) == ("stalled", "14", "26/100")
    assert run_row(run)["status"] == "crashed"  # no worker holds the lock: a stall is only a running run's


def test_long_run_snapshot(snap_compare, tmp_path):
    run = long_run(tmp_path)
    app = make_app(tmp_path, run.name, clock=lambda: NOW, poll=0.05, live_system=False)
    with hold_lock(run):
        assert snap_compare(app, terminal_size=(80, 24), run_before=loaded)
