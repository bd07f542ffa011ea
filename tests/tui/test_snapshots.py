"""What the monitor looks like, compared with accepted screenshots (tests/tui/__snapshots__/).

Textual is pinned exactly in pyproject.toml because of these. The clock is frozen and every event
has a fixed time, so a screenshot changes only when the monitor does. After an intended change:
`pytest tests/tui/test_snapshots.py --snapshot-update`, then look at the new SVGs.
"""

from __future__ import annotations

import pytest

from ftune.tui.app import MonitorScreen, make_app
from tests.tui.fakes import T0, hold_lock, scenario

CLOCK = {"running": T0 + 85, "finished": T0 + 300, "failed": T0 + 300}  # 5 s after the running run's last step


async def loaded(pilot) -> None:
    for _ in range(500):
        screen = pilot.app.screen
        if isinstance(screen, MonitorScreen) and screen.loaded:
            break
        await pilot.pause(0.01)
    await pilot.pause()


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
@pytest.mark.parametrize("kind", ["running", "finished", "failed"])
def test_monitor(snap_compare, tmp_path, kind, size):
    run = scenario(tmp_path, kind)
    app = make_app(tmp_path, run.name, clock=lambda: CLOCK[kind], poll=0.05, live_system=False)
    with hold_lock(run) if kind == "running" else _nothing():
        assert snap_compare(app, terminal_size=size, run_before=loaded)


def test_large_plot(snap_compare, tmp_path):
    run = scenario(tmp_path, "finished")
    app = make_app(tmp_path, run.name, clock=lambda: CLOCK["finished"], poll=0.05, live_system=False)

    async def plot(pilot) -> None:
        await loaded(pilot)
        await pilot.press("p")

    assert snap_compare(app, terminal_size=(80, 24), run_before=plot)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
