"""The worker's start, phase by phase: a `phase` event as each one begins (the monitor and `ftune ls` show the
latest while the run is starting) and the seconds each took, which the `started` event carries as `phases`.

Light on purpose: the worker imports it before torch, so that "importing" is timed too.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ftune.runtime.events import EventWriter


def process_age() -> float | None:
    """Seconds since this process began (Linux: /proc), or None: the interpreter's own start, before any phase."""
    try:
        with open("/proc/self/stat", "rb") as f:
            start_ticks = int(f.read().rsplit(b")", 1)[1].split()[19])  # field 22, after the command's name
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


class Phases:
    """`begin(name)` ends the phase before it; `timeline()` is [{"phase", "s"}, ...] up to now."""

    def __init__(self, events: EventWriter, lead: bool = True, clock=time.monotonic, from_process_start=False):
        self.events, self.lead, self.clock = events, lead, clock
        self.done: list[dict[str, Any]] = []
        self.current: str | None = None
        self.since = clock()
        age = process_age() if from_process_start else None
        if age is not None:  # the interpreter and ftune's light imports, before the worker's first line
            self.done.append({"phase": "starting python", "s": round(age, 2)})

    def begin(self, name: str, **fields: Any) -> None:
        self._close()
        self.current, self.since = name, self.clock()
        if self.lead:
            self.events.emit("phase", phase=name, **fields)
            print(f"phase: {name}", flush=True)  # train.log says where a slow start spends its time

    def _close(self) -> None:
        if self.current is not None:
            self.done.append({"phase": self.current, "s": round(self.clock() - self.since, 2)})
            self.current = None

    def timeline(self) -> list[dict[str, Any]]:
        """The phases so far, the current one ended now."""
        self._close()
        return list(self.done)
