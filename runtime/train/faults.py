"""Deterministic faults for the long-run tests: `FTUNE_FAULTS="stall@3:6,nan@5"` in a worker's environment.

    stall@N:S   the training thread sleeps S seconds as step N begins (in `injected_stall`, so a watchdog's
                stack names it), once
    nan@N       the first trainable weight turns NaN as step N begins, once: step N's loss is NaN, as in a blow-up

Nothing here runs unless the variable is set; the worker adds the callback only then. It exists so that a hang and
a blow-up can be shown happening, at a step chosen in advance, in a real training run.
"""

from __future__ import annotations

import os
import time

from transformers import TrainerCallback

ENV = "FTUNE_FAULTS"


def planned() -> dict[str, tuple[int, float]]:
    """The faults asked for: kind -> (step, seconds)."""
    out: dict[str, tuple[int, float]] = {}
    for item in filter(None, (x.strip() for x in os.environ.get(ENV, "").split(","))):
        kind, _, when = item.partition("@")
        step, _, seconds = when.partition(":")
        out[kind] = (int(step), float(seconds or 0))
    return out


def injected_stall(seconds: float) -> None:
    time.sleep(seconds)


class Faults(TrainerCallback):
    def __init__(self, plan: dict[str, tuple[int, float]]) -> None:
        self.plan = dict(plan)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        step = state.global_step + 1
        if self.plan.get("nan", (None,))[0] == step:
            del self.plan["nan"]
            import torch

            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))
        if self.plan.get("stall", (None,))[0] == step:
            injected_stall(self.plan.pop("stall")[1])


def callbacks() -> list[TrainerCallback]:
    plan = planned()
    return [Faults(plan)] if plan else []
