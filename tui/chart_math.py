"""The numbers behind the monitor's charts: pure functions of the series, no Textual (tests/tui/test_chart_math.py).

A series is (steps, values), as runtime/history.py's View holds it."""

from __future__ import annotations

import math
from typing import Callable, Sequence


def curve(values: Sequence[float]) -> list[float]:
    """A sparkline's data: one point is no curve (a Sparkline draws it as a solid block), so it waits for two; the
    caption beside it says the value meanwhile. A new list each time: a Sparkline redraws only on a new one."""
    return list(values) if len(values) > 1 else []


def mean(values: Sequence[float]) -> float:  # a Sparkline bar's value (statistics.fmean, without importing it)
    return sum(values) / len(values)


def log_scale(values: Sequence[float]) -> bool:
    """Losses are drawn on a log scale when there are some and all are positive (log10 of 0 is no number)."""
    return bool(values) and all(y > 0 for y in values)


def scaler(log: bool) -> Callable[[float], float]:
    """What the plot draws for a value: its log10 on a log scale (textual-plotext's own log axis raises on resize)."""
    return math.log10 if log else (lambda y: y)


def loss_ticks(values: Sequence[float]) -> tuple[list[float], list[str]]:
    """Five y ticks from the smallest to the largest loss, placed on the log10 scale and labelled as losses
    (one where they are all the same). The values must be positive (`log_scale`)."""
    lo, hi = math.log10(min(values)), math.log10(max(values))
    ticks = [lo + (hi - lo) * i / 4 for i in range(5)] if hi > lo else [lo]
    return ticks, [f"{10 ** t:.4g}" for t in ticks]


def step_ticks(steps: Sequence[float]) -> list[int]:
    """Up to five whole steps from the first to the last, for the x axis."""
    lo, hi = min(steps), max(steps)
    return sorted({round(lo + (hi - lo) * i / 4) for i in range(5)})
