"""Reading the monitor's widgets in tests."""

from __future__ import annotations

from rich.console import Console

from ftune.tui.app import MonitorScreen
from ftune.tui.widgets import Panel


def text_of(widget: Panel, width: int = 200) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"), color_system=None)
    console.print(widget.content)
    return console.export_text()


def monitor(app) -> MonitorScreen:
    screen = app.screen
    assert isinstance(screen, MonitorScreen), screen
    return screen


def static(app, selector: str) -> str:
    return text_of(monitor(app).query_one(selector, Panel))
