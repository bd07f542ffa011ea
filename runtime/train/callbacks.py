"""TrainerCallbacks that turn the HF training loop into ftune events and honour `ftune stop`."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ftune.runtime.events import EventWriter
from ftune.runtime.files import write_atomic
from ftune.runtime.rundir import CHECKPOINT_MARKER, RunDir
from ftune.runtime.train.stopper import Stopper


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


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

    def on_train_begin(self, args, state, control, **kwargs):
        self.stopper.in_loop = True
        self._last_t, self._last_tokens, self._last_step = time.time(), state.num_input_tokens_seen, state.global_step
        if state.is_world_process_zero:
            trackers = {"trackers": [t.describe() for t in self.trackers]} if self.trackers else {}
            timeline = {"phases": self.phases.timeline()} if self.phases is not None else {}
            self.events.emit("started", max_steps=state.max_steps, **self.started_fields, **trackers, **timeline)
            self.run.update_status(state="running", step=state.global_step, max_steps=state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        if args.world_size > 1:  # `ftune stop` reaches rank 0 only: every rank stops at the same step
            import torch
            import torch.distributed as dist

            flag = torch.tensor([1.0 if self.stopper.requested else 0.0], device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            self.stopper.requested = bool(flag.item())
        if self.stopper.requested:  # `ftune stop`: checkpoint this step, then leave the loop
            if state.is_world_process_zero and not control.should_training_stop:
                self.run.update_status(state="stopping")
            control.should_save = True
            control.should_log = True
            control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
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

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if path.is_dir():  # the trainer has written everything: mark it complete, atomically and last
            write_atomic(path / CHECKPOINT_MARKER, json.dumps({"step": state.global_step, "run": self.run.name}) + "\n")
        self.events.emit("checkpoint", step=state.global_step, path=str(path),
                         bytes=_dir_bytes(path) if path.is_dir() else None)
