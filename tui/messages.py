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
