"""`ftune watch`: past runs laid over the live run's loss chart (o, picked from the runs list), the runs list's
best-eval column, and the trackers of the started event in the header."""

from __future__ import annotations

from ftune.tui.app import MonitorScreen, make_app
from ftune.runtime.present import num
from ftune.tui.runs_list import RunRows
from ftune.tui.screens import OverlayPicker
from tests.tui.fakes import T0, Events, hold_lock, new_run, status, wait_until

TRACKERS = [{"name": "wandb", "run": "run-02", "mode": "online", "url": "https://wandb.ai/team/ftune/runs/x1y2z3"},
            {"name": "tensorboard", "dir": "/home/me/proj/runs/run-02/tensorboard"}]


def past_run(root, name: str, scale: float, steps: int = 60):
    run = new_run(root, name)
    ev = Events(run)
    ev.started(t=T0 - 5000, max_steps=steps)
    for i in range(1, steps + 1):
        ev.emit("step", T0 - 5000 + 2 * i, step=i, max_steps=steps, loss=round(scale * 0.97 ** i + 0.5, 4),
                lr=1e-4, grad_norm=0.5, tokens_per_s=1000.0)
    for s in (20, 40, 60):
        ev.emit("eval", T0 - 5000 + 2 * s + 0.5, step=s, eval_loss=round(scale * 0.97 ** s + 0.7, 4))
    ev.emit("finished", T0 - 5000 + 2 * steps + 5, step=steps, metrics={}, artifacts={})
    status(run, "finished", started_at=T0 - 5005, ended_at=T0 - 5000 + 2 * steps + 5)
    ev.close()
    return run


def live_run(root):
    run = new_run(root, "run-02")
    ev = Events(run)
    ev.started(trackers=TRACKERS)
    ev.steps(1, 40)
    ev.emit("eval", T0 + 40.5, step=20, eval_loss=1.45)
    ev.emit("eval", T0 + 80.5, step=40, eval_loss=1.31)
    status(run, "running")
    ev.close()
    return run


def project(tmp_path):
    past_run(tmp_path, "run-00", 3.0)
    past_run(tmp_path, "run-01", 1.5)
    return live_run(tmp_path)


async def overlay_run_00(pilot) -> None:
    """o, then space on the first other run (run-00) and enter: the large plot with run-00 laid over."""
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, MonitorScreen) and pilot.app.screen.loaded,
                     what="the monitor")
    monitor = pilot.app.screen
    await pilot.press("o")
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, OverlayPicker), what="the picker")
    await pilot.press("space", "enter")
    await wait_until(pilot, lambda: monitor.overlays and monitor.has_class("-plot"), what="the overlay")
    await pilot.pause()


def test_past_runs_are_picked_from_the_runs_list_and_laid_over_the_plot(tmp_path):
    import asyncio

    run = project(tmp_path)

    async def go():
        app = make_app(tmp_path, run.name, clock=lambda: T0 + 85, poll=0.05, live_system=False)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen.loaded)
            monitor = app.screen
            await pilot.press("o")
            await wait_until(pilot, lambda: isinstance(app.screen, OverlayPicker), what="the picker")
            picker = app.screen
            assert [r["name"] for r in picker.rows] == ["run-00", "run-01"]  # the watched run is not offered
            assert [r["best_eval"] for r in picker.rows] == [num(round(k * 0.97 ** 60 + 0.7, 4)) for k in (3.0, 1.5)]
            await pilot.press("down", "space", "enter")
            await wait_until(pilot, lambda: bool(monitor.overlays), what="the overlay")
            assert list(monitor.overlays) == ["run-01"] and monitor.has_class("-plot")
            (xs, ys), (exs, _) = monitor.overlays["run-01"]
            assert xs[:3] == [1, 2, 3] and len(ys) == 60 and exs == [20, 40, 60]
            await pilot.press("o")  # picked again: what is laid over is ticked; none picked takes it away
            await wait_until(pilot, lambda: isinstance(app.screen, OverlayPicker), what="the picker")
            await pilot.press("down", "space", "enter")
            await wait_until(pilot, lambda: not monitor.overlays, what="no overlay")

    with hold_lock(run):
        asyncio.run(go())


def test_the_runs_list_has_each_runs_best_eval_loss(tmp_path):
    project(tmp_path)
    rows = {r["name"]: r for r in RunRows(tmp_path).rows()}
    assert rows["run-02"]["best_eval"] == "1.31"
    assert rows["run-00"]["best_eval"] == num(round(3.0 * 0.97 ** 60 + 0.7, 4))


def test_overlay_snapshot(snap_compare, tmp_path):
    run = project(tmp_path)
    app = make_app(tmp_path, run.name, clock=lambda: T0 + 85, poll=0.05, live_system=False)
    with hold_lock(run):
        assert snap_compare(app, terminal_size=(120, 40), run_before=overlay_run_00)


def test_trackers_in_the_header_snapshot(snap_compare, tmp_path):
    run = project(tmp_path)
    app = make_app(tmp_path, run.name, clock=lambda: T0 + 85, poll=0.05, live_system=False)

    async def loaded(pilot):
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, MonitorScreen) and pilot.app.screen.loaded)

    with hold_lock(run):
        assert snap_compare(app, terminal_size=(120, 40), run_before=loaded)
