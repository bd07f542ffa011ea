"""`ftune stop` inside the worker: signals become a graceful stop. Light on purpose (no torch, no transformers):
the worker installs it before its heavy imports, so a stop in the first second still ends the run `stopped`."""

from __future__ import annotations

import signal
import time
from typing import Any


class StopRequested(BaseException):
    """Raised when a stop arrives before the training loop runs (nothing to checkpoint yet). A BaseException, like
    KeyboardInterrupt: libraries that import optional parts under `except Exception` must not swallow it."""


class Stopper:
    """SIGTERM (from `ftune stop`) and SIGINT ask for a graceful stop; SIGHUP is ignored so a dropped
    SSH session never kills training. Outside the loop the first signal aborts at once."""

    def __init__(self, world_size: int = 1) -> None:
        self.requested = False
        self.reason: str | None = None  # "signal" (ftune stop, Ctrl+C, a scheduler's SIGTERM) or "max_time"
        self.signal: str | None = None  # SIGTERM or SIGINT
        self.in_loop = False
        self.world_size = world_size
        self.t0 = time.monotonic()  # the worker's start: training.max_time counts from here

    def install(self) -> "Stopper":
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        already = self.requested
        self.requested = True
        if not already:
            self.reason, self.signal = "signal", signal.Signals(signum).name
        # before the loop a single process can just leave; several must reach step 1 and agree there
        if not self.in_loop and not already and self.world_size == 1:
            raise StopRequested()

    def check(self) -> None:
        """Raise again a stop that came before the loop but never surfaced: the handler's exception is lost where it
        lands inside a finaliser (`Exception ignored in ...`) or a library's `except BaseException` (CI saw a stop in
        the first second train one step and end `stopped` at step 1). The trainer calls this as its loop begins."""
        if self.requested and self.reason == "signal" and not self.in_loop and self.world_size == 1:
            raise StopRequested()
