"""Messages from the monitor's reader threads to the UI (posted with post_message, which is thread-safe)."""

from __future__ import annotations

from typing import Any

from textual.message import Message

from ftune.runtime.history import View


class HistoryUpdated(Message):
    """New events were folded in, or the run's state changed."""

    def __init__(self, view: View, state: str, status: dict[str, Any], note: str | None = None) -> None:
        super().__init__()
        self.view, self.state, self.status, self.note = view, state, status, note


class SystemSampled(Message):
    """A live sample of this machine (GPUs through NVML, the worker's memory), or None when the run is
    not running here: the panel then shows the run's own `system` events."""

    def __init__(self, sample: dict[str, Any] | None, t: float) -> None:
        super().__init__()
        self.sample, self.t = sample, t


class StopDone(Message):
    """`launch.stop` returned: the final event (or None), or the error it raised."""

    def __init__(self, final: dict[str, Any] | None, error: str | None) -> None:
        super().__init__()
        self.final, self.error = final, error


class OverlayChoices(Message):
    """The other runs the loss chart can lay over the watched one (rows as the runs list has them)."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        super().__init__()
        self.rows = rows


class OverlaysLoaded(Message):
    """The chosen runs' loss and eval-loss curves: name -> ((steps, losses), (steps, eval losses))."""

    def __init__(self, curves: dict[str, tuple[tuple[list[float], list[float]], tuple[list[float], list[float]]]]):
        super().__init__()
        self.curves = curves
