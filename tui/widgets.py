"""Widgets of the monitor that are more than a Static."""

from __future__ import annotations

from typing import Iterable

from rich.console import RenderableType
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Log

from ftune.runtime.history import LOG_KEEP


class StepLog(Log):
    """The step log: follows the newest line while you are at the bottom; scrolled up, it stays put
    and counts the lines that arrived below (`unseen`, shown as "+N new")."""

    # no scrollbar: the title above says "+N new"
    DEFAULT_CSS = "StepLog { height: 1fr; padding: 0 1; overflow-x: hidden; scrollbar-size-vertical: 0; }"
    unseen: reactive[int] = reactive(0)

    def __init__(self, **kwargs) -> None:
        super().__init__(max_lines=LOG_KEEP, auto_scroll=False, **kwargs)
        self.sticky = True  # at the bottom; only the user scrolling up clears it (a resize does not)

    def append(self, lines: Iterable[str]) -> None:
        lines = list(lines)
        if not lines:
            return
        self.write_lines(lines, scroll_end=False)
        if self.sticky:
            self._to_end()
        else:
            self.unseen += len(lines)

    def reset(self, lines: Iterable[str]) -> None:
        self.clear()
        self.unseen, self.sticky = 0, True
        self.write_lines(list(lines), scroll_end=False)
        self._to_end()

    def _to_end(self) -> None:
        self.scroll_end(animate=False, immediate=True, x_axis=False)
        self.call_after_refresh(self.scroll_end, animate=False, x_axis=False)  # and again once laid out

    def action_scroll_end(self) -> None:
        """End: back to following. No animation: lines arriving during one would be left behind."""
        self.sticky, self.unseen = True, 0
        self._to_end()

    def on_resize(self) -> None:  # the panels above grew or shrank, or the terminal did
        if self.sticky:
            self._to_end()

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if self.is_vertical_scroll_end:
            self.sticky, self.unseen = True, 0
        elif new_value < old_value:  # the user scrolled up
            self.sticky = False


class Panel(Widget):
    """A region that draws one renderable (from tui/panels.py). Updating it repaints only itself:
    Static.update() lays the whole screen out again each time, which is most of an idle monitor's
    CPU. A new layout happens only when `key` (what decides the panel's height) changes."""

    DEFAULT_CSS = "Panel { height: auto; }"

    def __init__(self, renderable: RenderableType = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self._renderable: RenderableType = renderable
        self._key: object = None
        self._same: object = None

    @property
    def content(self) -> RenderableType:
        return self._renderable

    def render(self) -> RenderableType:
        return self._renderable

    def update(self, renderable: RenderableType, key: object = None, same: object = None) -> None:
        """Draw `renderable`; `same`: what it was drawn from, to skip drawing it again unchanged."""
        if same is not None and same == self._same:
            return
        self._same = same
        self._renderable = renderable
        layout = key is not None and key != self._key
        self._key = key
        self.refresh(layout=layout)


class Title(Panel):
    """A region's one-line title (GPU, Checkpoints)."""

    DEFAULT_CSS = "Title { height: 1; color: $text-muted; text-style: bold; }"
