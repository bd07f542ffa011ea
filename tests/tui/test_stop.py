"""The stop key stops a real run: a tiny model training on CPU, stopped from the monitor."""

from __future__ import annotations

from ftune.runtime import launch
from ftune.runtime.events import read_all
from ftune.tui.app import MonitorScreen, make_app
from ftune.tui.screens import ConfirmStop
from tests.runtime.helpers import make_run, of_type, wait_for
from tests.tui.fakes import run_async, wait_until


def test_stop_key_stops_a_real_run(project, tiny_model):
    run = make_run(project, tiny_model, training={"max_steps": 5000, "save_steps": 5000, "logging_steps": 1})
    proc = launch.start(run)
    try:
        wait_for(lambda: of_type(read_all(run.events_path), "step"), timeout=240)

        async def go():
            app = make_app(run.root, run.name, poll=0.1, live_system=False)
            async with app.run_test(size=(80, 24)) as pilot:
                await wait_until(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen.loaded,
                                 what="the monitor")
                screen = app.screen
                assert screen.state == "running"
                await pilot.press("s")
                assert isinstance(app.screen, ConfirmStop)
                await pilot.press("y")
                assert app.screen is screen and screen.state in ("stopping", "stopped")  # a tiny run stops fast
                await wait_until(pilot, lambda: screen.stop_result is not None, timeout=240, what="the stop")
                assert screen.stop_result.error is None, screen.stop_result.error
                assert screen.stop_result.final["type"] == "stopped"
                await wait_until(pilot, lambda: screen.state == "stopped", timeout=30, what="the stopped state")

        run_async(go())
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    stopped = of_type(read_all(run.events_path), "stopped")
    assert len(stopped) == 1 and 0 < stopped[0]["step"] < 5000
    assert run.state() == "stopped"
    assert run.latest_checkpoint()[0] == stopped[0]["step"]  # it saved where it stopped
