"""TrainerCallbacks that turn the HF training loop into ftune events and honour `ftune stop`, `ftune checkpoint`,
training.max_time, the hang watchdog's beat and training.on_blowup."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ftune.runtime.events import EventWriter
from ftune.runtime.files import fsync_tree, write_atomic
from ftune.runtime.rundir import CHECKPOINT_MARKER, RunDir
from ftune.runtime.train.stopper import Stopper


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


SPIKE_TIMES = 3  # a loss above this many times its recent maximum ...
SPIKE_STEPS = 3  # ... for this many logged steps in a row is a blow-up (training.on_blowup)
STOP_CODES = {"signal": 1, "max_time": 2}  # a stop's reason, agreed across ranks (the largest wins)


class EventsCallback(TrainerCallback):
    """Writes started / step / eval / checkpoint / warning events (rank 0 only) and keeps status.json fresh."""

    def __init__(self, events: EventWriter, run: RunDir, started_fields: dict[str, Any], stopper: Stopper):
        self.events, self.run, self.started_fields, self.stopper = events, run, started_fields, stopper
        self._last_t = time.time()
        self._last_tokens = 0
        self._last_step = 0
        self._last_rows = 0
        self.rows_seen: Any = None  # () -> rows this process trained on, where batches vary in rows (sft.py)
        self._recent: list[float] = []
        self.metrics: dict[str, Any] = {}
        self.phases: Any = None  # train/phases.Phases: its timeline goes into the started event
        self.trackers: list[Any] = []  # train/tracking.Guarded: they begin before this callback, so they can say
        self.watchdog: Any = None  # train/watchdog.Watchdog: beats at each step end
        self.max_time: float | None = None  # training.max_time, from the worker's start (stopper.t0)
        self.rollback_on_blowup = False  # training.on_blowup: rollback
        self.blowup: dict[str, Any] | None = None  # the blow-up that stopped the loop for a rollback
        self.last_good_step = 0  # the last logged step whose loss was fine: a rollback goes to a checkpoint at or before
        self.rollbacks = 0
        self.lr_scale = 1.0  # rollback_lr_scale ** rollbacks, applied as each loop after a rollback begins
        self._spikes = 0
        self._good: list[float] = []
        self._requested: int | None = None  # the step a requested checkpoint is saved at
        self._request_file = str(run.checkpoint_request_path)

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        self.stopper.check()  # a stop before the loop whose exception was swallowed on the way: end it here
        self.stopper.in_loop = True
        self._last_t, self._last_tokens, self._last_step = time.time(), state.num_input_tokens_seen, state.global_step
        self.blowup, self._spikes = None, 0
        if self.watchdog is not None:
            self.watchdog.pause(False)
        if self.rollbacks:  # the loop again, from a rollback's checkpoint: its event was written; no `started`
            scale_learning_rate(optimizer, lr_scheduler, self.lr_scale)
            return
        if state.is_world_process_zero:
            trackers = {"trackers": [t.describe() for t in self.trackers]} if self.trackers else {}
            timeline = {"phases": self.phases.timeline()} if self.phases is not None else {}
            self.events.emit("started", max_steps=state.max_steps, **self.started_fields, **trackers, **timeline)
            self.run.update_status(state="running", step=state.global_step, max_steps=state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        if self.watchdog is not None:
            self.watchdog.beat()
        if self.max_time is not None and not self.stopper.requested \
                and time.monotonic() - self.stopper.t0 > self.max_time:
            self.stopper.requested, self.stopper.reason = True, "max_time"
        asked = state.is_world_process_zero and os.path.exists(self._request_file)  # `ftune checkpoint`: one stat
        stop = self.stopper.requested
        if args.world_size > 1:  # `ftune stop` and `ftune checkpoint` reach rank 0 only: every rank acts at one step
            import torch
            import torch.distributed as dist

            code = STOP_CODES.get(self.stopper.reason or "signal", 1) if self.stopper.requested else 0
            flags = torch.tensor([float(code), 1.0 if asked else 0.0], device=args.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            code, asked = int(flags[0].item()), bool(flags[1].item())
            # act on what every rank agreed, never on the local flag: torchrun passes SIGTERM to every worker, and one
            # landing between the all_reduce and here would stop this rank alone while the others wait for it
            stop = code != 0
            if code and not self.stopper.requested:
                self.stopper.requested = True
                self.stopper.reason = next(k for k, v in STOP_CODES.items() if v == code)
        if asked:
            control.should_save = True
            self._requested = state.global_step
            if state.is_world_process_zero:
                self.run.checkpoint_request_path.unlink(missing_ok=True)
        if stop:  # `ftune stop`, a scheduler's SIGTERM or max_time: checkpoint this step, then leave
            if state.is_world_process_zero and not control.should_training_stop:
                self.run.update_status(state="stopping")
            control.should_save = True
            control.should_log = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.watchdog is not None:  # export and after-training are not steps
            self.watchdog.pause()

    def on_prediction_step(self, args, state, control, **kwargs):
        if self.watchdog is not None:  # an evaluation's batches are progress too
            self.watchdog.beat(step=False)

    def on_evaluate(self, args, state, control, **kwargs):
        if self.watchdog is not None:
            self.watchdog.beat(step=False)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs and self.rollback_on_blowup:  # every rank: the logged loss is the same on all
            self._watch_for_blowup(state.global_step, logs["loss"], control)
        if not state.is_world_process_zero or not logs:
            return
        if "loss" in logs:
            now = time.time()
            dt = max(now - self._last_t, 1e-9)
            tokens = state.num_input_tokens_seen - self._last_tokens
            steps = state.global_step - self._last_step
            if self.rows_seen is not None:
                rows = self.rows_seen()
                samples, self._last_rows = (rows - self._last_rows) * args.world_size, rows
            else:
                samples = steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
            self._last_t, self._last_tokens, self._last_step = now, state.num_input_tokens_seen, state.global_step
            loss, grad_norm = logs.get("loss"), logs.get("grad_norm")
            self.events.emit(
                "step",
                step=state.global_step,
                max_steps=state.max_steps,
                epoch=round(state.epoch or 0.0, 4),
                loss=loss,
                lr=logs.get("learning_rate"),
                grad_norm=grad_norm,
                tokens_per_s=round(tokens / dt, 1) if tokens else None,
                samples_per_s=round(samples / dt, 3),
                tokens_seen=state.num_input_tokens_seen or None,  # `ftune compare --plot --x tokens`
            )
            self._check_health(state.global_step, loss, grad_norm)
            self.run.update_status(step=state.global_step, max_steps=state.max_steps, loss=loss, updated_at=now)
        elif "eval_loss" in logs:
            fields = {k: v for k, v in logs.items() if k.startswith("eval_")}
            self.events.emit("eval", step=state.global_step, **fields,
                             tokens_seen=state.num_input_tokens_seen or None)
            self.metrics["eval_loss"] = logs["eval_loss"]
        elif "train_runtime" in logs:
            self.metrics.update(logs)

    def _check_health(self, step: int, loss: Any, grad_norm: Any) -> None:
        """Alert at once on runs that go bad silently: NaN/inf, a loss stuck at 0, a sudden jump."""
        if loss is not None and not _finite(loss):
            self.events.emit("warning", step=step, message=f"loss is {loss} at step {step}",
                             hint="Lower the learning rate, use bf16 instead of fp16, or check the data for empty answers.")
        elif grad_norm is not None and not _finite(grad_norm):
            self.events.emit("warning", step=step, message=f"grad norm is {grad_norm} at step {step}",
                             hint="Lower the learning rate or set training.max_grad_norm (e.g. 1.0).")
        elif loss == 0:
            self.events.emit("warning", step=step, message=f"loss is exactly 0 at step {step}",
                             hint="Usually every label is masked or the data repeats the answer in the prompt; "
                                  "check `data.train_on_prompt` and the data.")
        elif _finite(loss) and len(self._recent) >= 5 and loss > 3 * max(self._recent):
            self.events.emit("warning", step=step,
                             message=f"loss jumped to {loss:.4g} at step {step} (recent max {max(self._recent):.4g})",
                             hint="A learning rate too high for this model often does this; try half of it.")
        if _finite(loss):
            self._recent = (self._recent + [loss])[-20:]

    def _watch_for_blowup(self, step: int, loss: Any, control) -> None:
        """training.on_blowup rollback: a NaN/inf loss, or SPIKE_STEPS logged losses in a row above SPIKE_TIMES their
        recent maximum, ends this loop without saving (recipe.train rolls back and starts it again)."""
        if _finite(loss) and len(self._good) >= 5 and loss > SPIKE_TIMES * max(self._good):
            self._spikes += 1
            reason = f"loss above {SPIKE_TIMES}x its recent maximum for {self._spikes} logged steps"
        elif _finite(loss):
            self._spikes, reason = 0, None
            self._good = (self._good + [loss])[-20:]
            self.last_good_step = step
        else:
            reason = f"loss is {loss}"
        if reason and (not _finite(loss) or self._spikes >= SPIKE_STEPS):
            self.blowup = {"step": step, "reason": reason}
            control.should_training_stop = True
            control.should_save = control.should_evaluate = False  # never a checkpoint of the blown-up weights

    def on_save(self, args, state, control, **kwargs):
        if self.watchdog is not None:  # a long save is progress, not a hang
            self.watchdog.beat(step=False)
        if not state.is_world_process_zero:
            return
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if path.is_dir():  # the trainer has written everything: on disk first, then the marker, atomically and last
            fsync_tree(path)
            write_atomic(path / CHECKPOINT_MARKER, json.dumps({"step": state.global_step, "run": self.run.name}) + "\n")
        requested = {"requested": True} if self._requested == state.global_step else {}
        self.events.emit("checkpoint", step=state.global_step, path=str(path),
                         bytes=_dir_bytes(path) if path.is_dir() else None, **requested)


def scale_learning_rate(optimizer, lr_scheduler, scale: float) -> None:
    """After a rollback: the restored schedule, scaled (its base rates and the rates in force now)."""
    if scale == 1.0 or optimizer is None:
        return
    for group in optimizer.param_groups:
        group["lr"] *= scale
        if "initial_lr" in group:
            group["initial_lr"] *= scale
    if lr_scheduler is not None and hasattr(lr_scheduler, "base_lrs"):
        lr_scheduler.base_lrs = [lr * scale for lr in lr_scheduler.base_lrs]
    if isinstance(getattr(lr_scheduler, "_last_lr", None), list):  # what get_last_lr() (the step event's lr) says
        lr_scheduler._last_lr = [lr * scale for lr in lr_scheduler._last_lr]
