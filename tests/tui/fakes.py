"""Run directories for monitor tests: events written with the real EventWriter at fixed times."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import random
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import yaml

from ftune.runtime import events as events_mod
from ftune.runtime.events import EventWriter
from ftune.runtime.rundir import RunDir

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC: every event time in these tests counts from here
GPU = {"index": 0, "name": "NVIDIA H100 80GB HBM3", "mem_used": 41 * 1024**3, "mem_total": 80 * 1024**3,
       "util": 97, "temp": 65, "power": 350.2}


def new_run(root: Path, name: str = "run-01", model: str = "Qwen/Qwen2.5-0.5B-Instruct") -> RunDir:
    run = RunDir(root, name)
    run.path.mkdir(parents=True, exist_ok=True)
    run.spec_path.write_text(yaml.safe_dump({"name": name, "model": {"name_or_path": model},
                                             "data": {"train": "train.jsonl"}}))
    return run


class Events:
    """An EventWriter whose clock is ours: `ev.at(t).emit(...)`, or emit with t= given."""

    def __init__(self, run: RunDir):
        self.run = run
        self.writer = EventWriter(run.events_path)

    def emit(self, type_: str, t: float, **fields) -> dict:
        with mock.patch.object(events_mod, "time", SimpleNamespace(time=lambda: t)):
            return self.writer.emit(type_, **fields)

    def started(self, t: float = T0, max_steps: int = 100, **extra) -> dict:
        fields = dict(run=self.run.name, stage="sft", method="lora", model="Qwen/Qwen2.5-0.5B-Instruct",
                      max_steps=max_steps, num_train_rows=5000, num_eval_rows=500, skipped_rows=0, total_rows=5500,
                      world_size=1, trainable_params=1_081_344, total_params=494_032_768, precision="bf16",
                      resumed_from=None)
        fields.update(extra)
        return self.emit("started", t, **fields)

    def steps(self, first: int, last: int, max_steps: int = 100, t0: float = T0, seed: int = 0) -> None:
        rnd = random.Random(seed)
        for i in range(first, last + 1):
            self.emit("step", t0 + 2 * i, step=i, max_steps=max_steps, epoch=round(3 * i / max_steps, 4),
                      loss=round(2.5 * 0.98 ** i + 0.3 + 0.05 * rnd.random(), 4), lr=2e-4 * min(1.0, i / 10),
                      grad_norm=round(0.4 + 0.3 * rnd.random(), 3), tokens_per_s=12345.6, samples_per_s=3.2)

    def close(self) -> None:
        self.writer.close()


def status(run: RunDir, state: str, **fields) -> None:
    run.update_status(state=state, pid=fields.pop("pid", 4242), host=fields.pop("host", "elsewhere"),
                      started_at=fields.pop("started_at", T0 - 5), **fields)


@contextmanager
def hold_lock(run: RunDir):
    """What a live worker does: hold the run's lock (so the monitor sees it alive)."""
    fd = os.open(run.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def scenario(root: Path, kind: str, name: str = "run-01") -> RunDir:
    """A run 40 steps into 100 with eval, checkpoints, GPU samples and a warning; then finished or failed."""
    run = new_run(root, name)
    ev = Events(run)
    ev.started()
    ev.emit("system", T0 + 1, rss=3 * 1024**3, gpus=[GPU])
    ev.steps(1, 40)
    ev.emit("warning", T0 + 61, step=30, message="loss jumped to 9.1 at step 30 (recent max 2.1)",
            hint="A learning rate too high for this model often does this; try half of it.")
    (run.path / "checkpoints" / "checkpoint-40").mkdir(parents=True)  # checkpoint-20 was rotated out
    for s in (20, 40):
        ev.emit("eval", T0 + 2 * s + 0.5, step=s, eval_loss=round(2.5 * 0.98 ** s + 0.45, 4))
        ev.emit("checkpoint", T0 + 2 * s + 1, step=s, path=str(run.path / "checkpoints" / f"checkpoint-{s}"),
                bytes=12_345_678 * s // 20)
    ev.emit("system", T0 + 81, rss=3 * 1024**3, gpus=[GPU])
    if kind == "finished":
        ev.steps(41, 100, seed=1)
        ev.emit("finished", T0 + 205, step=100, metrics={"train_loss": 0.61, "eval_loss": 0.74},
                artifacts={"export": str(run.path / "export"), "format": "adapter"})
        status(run, "finished", ended_at=T0 + 205)
    elif kind == "failed":
        ev.emit("error", T0 + 90, message="CUDA out of memory while training at step 41",
                hint="Lower training.per_device_train_batch_size (or use QLoRA: method.quantization.bits: 4).",
                kind="OutOfMemoryError", rank=0)
        status(run, "failed", ended_at=T0 + 90)
    else:
        status(run, "running")
    ev.close()
    return run


def long_run(root: Path, name: str = "run-01") -> RunDir:
    """A running run that looked after itself: a checkpoint at step 10, one asked for at step 14, a NaN at step 18
    rolled back to it (batches skipped, learning rate halved), then no step after step 26 for 10 minutes: the hang
    watchdog's warning, with the stuck frames."""
    run = new_run(root, name)
    ev = Events(run)
    ev.started(max_steps=100)
    ev.emit("system", T0 + 1, rss=3 * 1024**3, gpus=[GPU])
    ev.steps(1, 17)
    (run.path / "checkpoints").mkdir()
    for s, asked in ((10, False), (14, True)):
        (run.path / "checkpoints" / f"checkpoint-{s}").mkdir()
        ev.emit("checkpoint", T0 + 2 * s + 1, step=s, path=str(run.path / "checkpoints" / f"checkpoint-{s}"),
                bytes=12_345_678, **({"requested": True} if asked else {}))
    ev.emit("step", T0 + 36, step=18, max_steps=100, epoch=0.54, loss=float("nan"), lr=2e-4, grad_norm=float("nan"),
            tokens_per_s=12345.6, samples_per_s=3.2)
    ev.emit("warning", T0 + 36, step=18, message="loss is nan at step 18",
            hint="Lower the learning rate, use bf16 instead of fp16, or check the data for empty answers.")
    ev.emit("rollback", T0 + 38, step=18, to_step=14, path=str(run.path / "checkpoints" / "checkpoint-14"),
            reason="loss is nan", skipped_batches=32, lr_scale=0.5, rollback=1, max_rollbacks=3)
    ev.steps(15, 26, t0=T0 + 10, seed=2)
    ev.emit("warning", T0 + 62 + 600, message="no step for 10 min (median step 2.0 s)", stall=True, rank=0,
            phase="training", silent_s=600.0, limit_s=600.0, median_step_s=2.0,
            frames=["_run_epoch (trainer.py:1954)", "training_step (trainer.py:2212)", "all_reduce (distributed_c10d.py:2806)"],
            hint="Stuck in all_reduce; every thread's stack is in train.log. training.on_hang: stop ends a stalled run "
                 "by itself.")
    status(run, "running")
    ev.close()
    return run


async def wait_until(pilot, predicate, timeout: float = 10.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            await pilot.pause()
            return
        await pilot.pause(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def run_async(coro):
    return asyncio.run(coro)


def append_raw(run: RunDir, data: bytes) -> None:
    with open(run.events_path, "ab") as f:
        f.write(data)


def line(type_: str, t: float, **fields) -> bytes:
    return (json.dumps({"v": 1, "t": t, "type": type_, **fields}) + "\n").encode()
