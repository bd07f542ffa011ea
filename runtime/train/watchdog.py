"""The hang watchdog: a thread in every rank's worker that notices when no optimiser step has ended for too long.

The training loop only calls `beat()` (one clock read and a few assignments: nothing to measure beside a step). The
thread wakes a few times a minute; when the loop has been silent past the limit it writes every thread's Python
stack into the rank's log (faulthandler, train.log) and a `warning` event (`stall: true`) that names the phase and
the innermost frames of the training thread, so the monitor and `ftune ls` show the run as stalled. The next step
clears that (the monitor reads it from the step events). With `training.on_hang: stop`, a second limit later the
process ends with an `error` event: a scheduler can requeue it and `--resume` it.

Light on purpose: no torch. The lead writes status.json; every rank writes its own warning (one whole line, on
O_APPEND, like the error a failing rank writes), because in a hang each rank's stack tells a different part.
"""

from __future__ import annotations

import faulthandler
import os
import statistics
import sys
import threading
import time
import traceback
from collections import deque
from typing import Any, Callable

from ftune.runtime.present import span

MIN_LIMIT_S = 600.0  # the default: the larger of this and MEDIAN_TIMES x the median step
MEDIAN_TIMES = 20
START_LIMIT_S = 1800.0  # before the first step (data, model, the trainer's preparations): at least this
FRAMES = 6  # innermost frames of the training thread in the event


def innermost_frames(thread_id: int, keep: int = FRAMES) -> list[str]:
    """The innermost `keep` frames of a thread, innermost last: 'function (file.py:123)'."""
    frame = sys._current_frames().get(thread_id)
    if frame is None:
        return []
    return [f"{f.name} ({os.path.basename(f.filename)}:{f.lineno})" for f in traceback.extract_stack(frame)[-keep:]]


class Watchdog:
    """`beat()` from the loop; `start()` the thread. `warn(fields)` and `fail(fields)` write the events (the
    worker decides how, per rank); `phase()` names what the loop is doing ('loading the model', 'training')."""

    def __init__(self, hang_after: float | None, on_hang: str, warn: Callable[[dict[str, Any]], None],
                 fail: Callable[[dict[str, Any]], None], phase: Callable[[], str], poll: float | None = None,
                 clock: Callable[[], float] = time.monotonic, log=None) -> None:
        self.hang_after, self.on_hang = hang_after, on_hang
        self.warn, self.fail, self.phase, self.clock = warn, fail, phase, clock
        self.log = log  # where faulthandler writes: the rank's log (stderr) unless given
        self.poll = poll if poll is not None else min(5.0, (hang_after or MIN_LIMIT_S) / 4)
        self.last = clock()
        self.steps = 0
        self.durations: deque[float] = deque(maxlen=200)
        self.fired_at: float | None = None  # the silence (seconds) the warning was written at
        self.thread_id = threading.get_ident()  # the training thread: the one whose frames the event carries
        self.paused = False  # between training loops and after the last (export, after-training): nothing to time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ the loop's side
    def beat(self, step: bool = True) -> None:
        """An optimiser step ended (step=True) or another sign of progress (an evaluation batch, a save)."""
        now = self.clock()
        if step:
            if self.steps:
                self.durations.append(now - self.last)
            self.steps += 1
        self.last = now
        self.fired_at = None

    def pause(self, paused: bool = True) -> None:
        self.paused = paused
        self.beat(step=False)

    # ------------------------------------------------------------------ the thread's side
    def limit(self) -> float:
        """Seconds of silence that count as a hang now."""
        if self.steps == 0:
            return max(START_LIMIT_S, self.hang_after or 0.0)
        if self.hang_after is not None:
            return self.hang_after
        median = statistics.median(self.durations) if self.durations else 0.0
        return max(MIN_LIMIT_S, MEDIAN_TIMES * median)

    def check(self) -> None:
        """One look: warn once per silence past the limit; with on_hang stop, end it a second limit later."""
        if self.paused:
            return
        silent, limit = self.clock() - self.last, self.limit()
        if self.fired_at is None and silent > limit:
            self.fired_at = silent
            self.warn(self.describe(silent))
        elif self.fired_at is not None and self.on_hang == "stop" and silent > 2 * limit:
            self.fail(self.describe(silent))

    def describe(self, silent: float) -> dict[str, Any]:
        """The warning's fields; every thread's stack goes to the log first."""
        try:
            faulthandler.dump_traceback(file=self.log or sys.stderr, all_threads=True)
        except (OSError, ValueError, AttributeError):  # a log without a file descriptor: the event still says it
            pass
        median = statistics.median(self.durations) if self.durations else None
        what = f"no step for {span(silent)}" if self.steps else f"no first step after {span(silent)}"
        frames = innermost_frames(self.thread_id)
        return {"message": what + (f" (median step {span(median)})" if median is not None else ""),
                "phase": self.phase(), "frames": frames, "silent_s": round(silent, 1),
                "limit_s": round(self.limit(), 1), "median_step_s": round(median, 3) if median is not None else None,
                "hint": f"Stuck in {frames[-1].split(' ')[0] if frames else 'an unknown place'}; every thread's stack "
                        f"is in train.log. training.on_hang: stop ends a stalled run by itself."}

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - the watchdog must never take training down
                print(f"ftune: the hang watchdog failed: {exc!r}", file=sys.stderr)

    def start(self) -> "Watchdog":
        self._thread = threading.Thread(target=self._run, name="ftune-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
