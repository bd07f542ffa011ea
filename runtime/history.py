"""Folding events into what the monitor draws: a bounded, decimated history. Pure data: no Textual here.

`History.add(event)` takes events in file order (docs/events.md) and keeps only what the panels need:
chart series capped at `MAX_POINTS` (decimated by keeping every `stride`-th value, the stride doubling
when a series fills), the last `LOG_KEEP` step events for the step log, checkpoints, problems grouped
by message, and the latest `system` sample. `History.view()` copies that into a `View` that the UI
thread can keep while the reader goes on folding.
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from ftune.runtime.events import TYPES
from ftune.runtime.present import finite

MAX_POINTS = 2048  # per chart series
LOG_KEEP = 1000  # step events kept for the step log
CHECKPOINTS_KEEP = 200
PROBLEM_GROUPS = 50
RATE_WINDOW_S = 300.0  # the ETA's rate: steps over the last five minutes of step events ...
RATE_MIN_EVENTS = 30  # ... and never fewer than this many events (an eval or a checkpoint barely moves it)

_NUMBERS = re.compile(r"[-+]?(\d+\.?\d*(e[-+]?\d+)?|nan|inf(inity)?|none)", re.IGNORECASE)


class Series:
    """(x, y) points, at most `MAX_POINTS`; keeps every `stride`-th value it is given.

    Non-finite values (NaN and infinity arrive as null) are not points: they are reported as
    problems instead, and a chart cannot draw them.
    """

    def __init__(self, stride: int = 1):
        self.xs: list[float] = []
        self.ys: list[float] = []
        self.stride = stride
        self._pending = 0

    def add(self, x: Any, y: Any) -> None:
        if not finite(y):
            return
        self._pending += 1
        if self._pending < self.stride:
            return
        self._pending = 0
        self.xs.append(x if finite(x) else (self.xs[-1] if self.xs else 0))
        self.ys.append(float(y))
        if len(self.ys) > MAX_POINTS:  # full: keep every other point from here on
            self.xs, self.ys = self.xs[1::2], self.ys[1::2]
            self.stride *= 2

    def __len__(self) -> int:
        return len(self.ys)


@dataclass
class Problem:
    kind: str  # "warning", "error" or "rollback"
    message: str
    hint: str | None
    step: int | None
    t: float | None
    count: int = 1
    seq: int = 0  # order of arrival, for "newest first"


def problem_key(kind: str, message: str) -> str:
    """Warnings that differ only in their numbers are one problem: 'loss is nan at step 5' x 40."""
    return kind + ":" + _NUMBERS.sub("#", message)


@dataclass(frozen=True)
class View:
    """What the panels draw, copied out of a History at one moment."""

    meta: dict[str, Any]
    started_t: float | None
    step: int
    max_steps: int | None
    epoch: float | None
    last_step: dict[str, Any] | None
    first_loss: float | None
    loss: tuple[list[float], list[float]]
    eval_loss: tuple[list[float], list[float]]
    lr: tuple[list[float], list[float]]
    grad_norm: tuple[list[float], list[float]]
    last_eval: dict[str, Any] | None
    checkpoints: list[dict[str, Any]]
    problems: list[Problem]
    warnings_total: int
    final: dict[str, Any] | None
    system: dict[str, Any] | None
    phase: dict[str, Any] | None  # the latest `phase` event (+ `since`: its phase's first) until training began
    log: list[tuple[int, dict[str, Any]]]
    log_seq: int
    generation: int
    rate: float | None  # steps per second, recent
    rate_t: float | None  # time of the last step used for the rate
    events: int
    unknown: int
    omitted_warnings: int
    stride: int
    stall: dict[str, Any] | None = None  # the hang watchdog's warning, until the next step: the run is stalled
    rollbacks: int = 0


class History:
    def __init__(self, generation: int = 0):
        self.generation = generation  # bumped by the reader when the file was replaced: start over
        self.meta: dict[str, Any] = {}
        self.started_t: float | None = None
        self.step = 0
        self.max_steps: int | None = None
        self.epoch: float | None = None
        self.last_step: dict[str, Any] | None = None
        self.first_loss: float | None = None
        self.loss, self.eval_loss, self.lr, self.grad_norm = Series(), Series(), Series(), Series()
        self.last_eval: dict[str, Any] | None = None
        self.checkpoints: deque[dict[str, Any]] = deque(maxlen=CHECKPOINTS_KEEP)
        self.problems: OrderedDict[str, Problem] = OrderedDict()
        self.warnings_total = 0
        self.omitted_warnings = 0
        self.final: dict[str, Any] | None = None
        self.system: dict[str, Any] | None = None
        self.phase: dict[str, Any] | None = None
        self.stall: dict[str, Any] | None = None
        self.rollbacks = 0
        self.log: deque[tuple[int, dict[str, Any]]] = deque(maxlen=LOG_KEEP)
        self.log_seq = 0
        self._recent: deque[tuple[float, int]] = deque(maxlen=4096)
        self._problem_seq = 0
        self.events = 0
        self.unknown = 0

    # ------------------------------------------------------------------ folding
    def set_stride(self, stride: int) -> None:
        """Decimate what comes next like the sampled history before it (see tail.load)."""
        for series in (self.loss, self.lr, self.grad_norm):
            series.stride = max(series.stride, stride)

    def extend(self, events, sampled: bool = False) -> None:
        for e in events:
            self.add(e, sampled)

    def add(self, e: dict[str, Any], sampled: bool = False) -> None:
        """Fold one event. `sampled`: a step event picked out of a long history (not for the step log)."""
        self.events += 1
        kind = e.get("type")
        handler = getattr(self, f"_on_{kind}", None) if kind in _KNOWN else None
        if handler is None:
            self.unknown += 1  # a newer writer's type: skipped, as the contract says
            return
        handler(e, sampled)

    def _on_started(self, e: dict[str, Any], sampled: bool) -> None:
        self.meta = dict(e)
        self.started_t = _num(e.get("t"))
        if finite(e.get("max_steps")):
            self.max_steps = int(e["max_steps"])
        if finite(e.get("resumed_from")):
            self.step = int(e["resumed_from"])
        self.final = None
        self.phase = None
        self.stall = None
        self._recent.clear()
        if self.started_t is not None:  # the start is the rate's first point: an ETA from the first logged step on
            self._recent.append((self.started_t, int(e["resumed_from"]) if finite(e.get("resumed_from")) else 0))

    def _on_phase(self, e: dict[str, Any], sampled: bool) -> None:
        same = self.phase is not None and self.phase.get("phase") == e.get("phase")  # progress within one phase
        self.phase = {**e, "since": self.phase["since"] if same else e.get("t")}

    def _on_step(self, e: dict[str, Any], sampled: bool) -> None:
        step = e.get("step")
        if finite(step):
            self.step = int(step)
        if finite(e.get("max_steps")):
            self.max_steps = int(e["max_steps"])
        if finite(e.get("epoch")):
            self.epoch = float(e["epoch"])
        self.stall = None
        loss = e.get("loss")
        if self.first_loss is None and finite(loss):
            self.first_loss = float(loss)
        self.loss.add(step, loss)
        self.lr.add(step, e.get("lr"))
        self.grad_norm.add(step, e.get("grad_norm"))
        self.last_step = e
        if sampled:
            return
        self.log_seq += 1
        self.log.append((self.log_seq, e))
        t = e.get("t")
        if finite(t) and finite(step):
            self._recent.append((float(t), int(step)))

    def _on_eval(self, e: dict[str, Any], sampled: bool) -> None:
        self.last_eval = e
        self.eval_loss.add(e.get("step"), e.get("eval_loss"))

    def _on_checkpoint(self, e: dict[str, Any], sampled: bool) -> None:
        self.checkpoints.append(e)

    def _on_system(self, e: dict[str, Any], sampled: bool) -> None:
        self.system = e

    def _on_rollback(self, e: dict[str, Any], sampled: bool) -> None:
        self.rollbacks += 1
        self._recent.clear()  # the steps count again from the checkpoint
        to = e.get("to_step")
        if finite(to):
            self.step = int(to)
        scale = e.get("lr_scale")
        self._problem("rollback", f"rolled back from step {e.get('step', '?')} to checkpoint-{to if to is not None else '?'} "
                                  f"({e.get('reason') or 'loss blew up'}): {e.get('skipped_batches', '?')} batches "
                                  f"skipped", f"rollback {e.get('rollback', '?')} of {e.get('max_rollbacks', '?')}"
                      + (f"; learning rate × {scale:.3g}" if finite(scale) and scale != 1 else ""), e.get("step"),
                      e.get("t"))

    def _on_warning(self, e: dict[str, Any], sampled: bool) -> None:
        if e.get("stall"):
            self.stall = e
        self._problem("warning", str(e.get("message") or "warning"), e.get("hint"), e.get("step"), e.get("t"))

    def _on_error(self, e: dict[str, Any], sampled: bool) -> None:
        self.final, self.phase, self.stall = e, None, None
        self._problem("error", str(e.get("message") or "the run failed"), e.get("hint"), e.get("step"), e.get("t"))

    def _on_finished(self, e: dict[str, Any], sampled: bool) -> None:
        self.final, self.phase, self.stall = e, None, None
        if finite(e.get("step")):
            self.step = int(e["step"])

    _on_stopped = _on_finished

    def _problem(self, kind: str, message: str, hint: Any, step: Any, t: Any) -> None:
        if kind == "warning":
            self.warnings_total += 1
        key = problem_key(kind, message)
        self._problem_seq += 1
        known = self.problems.pop(key, None)
        p = Problem(kind, message, hint if isinstance(hint, str) else None, step if finite(step) else None,
                    _num(t), (known.count + 1) if known else 1, self._problem_seq)
        self.problems[key] = p
        while len(self.problems) > PROBLEM_GROUPS:
            self.problems.popitem(last=False)

    # ------------------------------------------------------------------ reading
    def rate(self) -> float | None:
        """Steps per second over a window: the step events of the last RATE_WINDOW_S seconds, at least
        RATE_MIN_EVENTS of them. A window of events alone jumped with every eval or checkpoint pause when steps
        are logged often; one of time alone is a single pair of points when they are logged rarely."""
        recent = self._recent
        if len(recent) < 2:
            return None
        t1, s1 = recent[-1]
        first = max(0, len(recent) - RATE_MIN_EVENTS)
        while first > 0 and recent[first - 1][0] >= t1 - RATE_WINDOW_S:
            first -= 1
        t0, s0 = recent[first]
        return (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else None

    def view(self) -> View:
        return View(
            meta=dict(self.meta), started_t=self.started_t, step=self.step, max_steps=self.max_steps,
            epoch=self.epoch, last_step=self.last_step, first_loss=self.first_loss,
            loss=(list(self.loss.xs), list(self.loss.ys)),
            eval_loss=(list(self.eval_loss.xs), list(self.eval_loss.ys)),
            lr=(list(self.lr.xs), list(self.lr.ys)), grad_norm=(list(self.grad_norm.xs), list(self.grad_norm.ys)),
            last_eval=self.last_eval, checkpoints=list(self.checkpoints),
            problems=sorted(self.problems.values(), key=lambda p: p.seq),
            warnings_total=self.warnings_total, final=self.final, system=self.system, phase=self.phase,
            log=list(self.log), log_seq=self.log_seq, generation=self.generation,
            rate=self.rate(), rate_t=self._recent[-1][0] if self._recent else None,
            events=self.events, unknown=self.unknown, omitted_warnings=self.omitted_warnings,
            stride=self.loss.stride, stall=self.stall, rollbacks=self.rollbacks,
        )


_KNOWN = frozenset(TYPES)


def _num(x: Any) -> float | None:
    return float(x) if finite(x) else None


def empty_view() -> View:
    return History().view()


SHOWN_ACTIVE = ("not started", "queued", "starting", "running", "stalled", "stopping")  # states (as shown) that may still change


def timing(state: str, view: View, status: dict[str, Any], now: float) -> tuple[float | None, float | None]:
    """(elapsed, eta) in seconds, for a run in `state` as shown (rundir.shown_state). Elapsed counts this attempt:
    from its launch (loading included; the `started` event when status.json does not say) to now, or to the final
    event once there is one. The monitor's header and the agents' run summary."""
    begun = _num(status.get("started_at")) or view.started_t
    if begun is None:
        return None, None
    final_t = _num((view.final or {}).get("t")) or (_num(status.get("ended_at")) if state not in SHOWN_ACTIVE else None)
    end = final_t if final_t is not None else now
    elapsed = max(0.0, end - begun)
    eta = None
    if state in ("running", "stopping") and view.rate and view.max_steps and view.rate_t is not None:
        eta = max(0.0, view.rate_t + (view.max_steps - view.step) / view.rate - now)
    return elapsed, eta
