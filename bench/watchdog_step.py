"""What the long-run machinery adds to one optimiser step: the callback's on_step_end with and without the hang
watchdog's beat and `ftune checkpoint`'s look for its file (runtime/train/callbacks.py, runtime/train/watchdog.py).

    python bench/watchdog_step.py [--calls 200000] [--rounds 5]

A microbenchmark of the callback itself (no training): the same EventsCallback, a single process, no request
file, the watchdog's thread running as in a worker. Printed: nanoseconds per call for each arm (the best of the
rounds) and the difference, next to a step of the tiny test model (~50 ms on a CPU) and of a real fine-tune
(~0.5-20 s on a GPU).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from types import SimpleNamespace

from ftune.runtime.events import EventWriter
from ftune.runtime.rundir import RunDir
from ftune.runtime.train.callbacks import EventsCallback
from ftune.runtime.train.stopper import Stopper
from ftune.runtime.train.watchdog import Watchdog


def per_call(cb: EventsCallback, calls: int) -> float:
    args = SimpleNamespace(world_size=1, device="cpu")
    state = SimpleNamespace(is_world_process_zero=True, global_step=1)
    control = SimpleNamespace(should_save=False, should_log=False, should_training_stop=False)
    step = cb.on_step_end
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        step(args, state, control)
    return (time.perf_counter_ns() - t0) / calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    a = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(tmp, "bench")
        run.path.mkdir()
        events = EventWriter(run.path / "events.jsonl")
        plain = EventsCallback(events, run, {}, Stopper())
        watched = EventsCallback(events, run, {}, Stopper())
        watched.watchdog = Watchdog(None, "warn", lambda f: None, lambda f: None, lambda: "training").start()
        best = {"callback without the watchdog": float("inf"), "callback with the watchdog": float("inf")}
        for _ in range(a.rounds):  # alternating, the best of each
            best["callback without the watchdog"] = min(best["callback without the watchdog"], per_call(plain, a.calls))
            best["callback with the watchdog"] = min(best["callback with the watchdog"], per_call(watched, a.calls))
        beat = Watchdog(None, "warn", lambda f: None, lambda f: None, lambda: "training")
        t0 = time.perf_counter_ns()
        for _ in range(a.calls):
            beat.beat()
        best["Watchdog.beat alone"] = (time.perf_counter_ns() - t0) / a.calls
        watched.watchdog.stop()
        for name, ns in best.items():
            print(f"{name:34} {ns / 1000:8.2f} µs a step")
        extra = best["callback with the watchdog"] - best["callback without the watchdog"]
        print(f"{'the watchdog adds':34} {extra / 1000:8.2f} µs a step: {extra / 50e6:.1e} of a 50 ms step, "
              f"{extra / 500e6:.1e} of a 0.5 s one")


if __name__ == "__main__":
    main()
