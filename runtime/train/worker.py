"""The training worker process: `python -m ftune.runtime.train RUN_DIR [--resume] [--lock-fd N]`.

It holds the run's lock, writes its pid and installs the stop handler before any heavy import (so `ftune stop`
works from its first second), samples the system, runs the recipe (train/recipe.py) and makes sure every outcome
ends the event stream with `finished`, `stopped` or `error`. Tracebacks go to train.log (stderr) only; the
error event carries a message and a hint for the user.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

from ftune.runtime.events import EventWriter
from ftune.runtime.rundir import RunDir, RunError
from ftune.runtime.spec import RunSpec, load_spec
from ftune.runtime.sysmon import Sampler
from ftune.runtime.train import hints, nodes
from ftune.runtime.train.phases import Phases
from ftune.runtime.train.stopper import Stopper, StopRequested
from ftune.runtime.train.watchdog import Watchdog


def skip_unused_imports(spec: RunSpec) -> None:
    """peft imports bitsandbytes whenever it is installed (1.2 s of a worker's start here), and TRL imports wandb
    and trackio (0.4 s). A run that does not use them goes without: with sys.modules[name] = None, find_spec
    says the package is absent, to peft, TRL and transformers alike. GaLore and APOLLO import bitsandbytes
    themselves."""
    from ftune.runtime.launch import needs_bitsandbytes  # here: the pid is written before this import

    m = spec.method
    unused = [name for name in ("wandb", "trackio") if name not in spec.training.report_to]
    if not (needs_bitsandbytes(spec) or m.galore is not None or m.apollo is not None):
        unused.append("bitsandbytes")
    for name in unused:
        sys.modules.setdefault(name, None)


def hang_watchdog(spec: RunSpec, run: RunDir, events: EventWriter, rank: int, phases: Phases) -> Watchdog:
    """The hang watchdog of this rank (train/watchdog.py): each rank writes its own `warning` (its stack differs);
    the lead keeps status.json and, with training.on_hang: stop, ends the run with one `error` (torchrun then ends
    the other ranks)."""
    lead = rank == 0

    def writer() -> EventWriter:
        return events if lead else EventWriter(run.events_path)

    def warn(fields: dict) -> None:
        w = writer()
        message = fields.pop("message")
        w.emit("warning", message=message if lead else f"rank {rank}: {message}", stall=True, rank=rank, **fields)
        if w is not events:
            w.close()

    def fail(fields: dict) -> None:
        if not lead:
            return
        message = f"stalled: {fields.pop('message')}; ended by training.on_hang: stop"
        fields.pop("hint", None)
        events.emit("error", message=message, kind="Stalled", rank=rank, stall=True,
                    hint=f"The stacks are in train.log (`ftune logs {run.name}`). Resume with `ftune train {run.name} "
                         f"--resume` (a scheduler can requeue it: training.auto_resume).", **fields)
        run.update_status(state="failed", ended_at=time.time(), error=message)
        sys.stderr.flush()
        os._exit(3)  # the training thread is stuck: nothing can unwind it

    return Watchdog(spec.training.hang_after, spec.training.on_hang, warn, fail,
                    lambda: phases.current or "training")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ftune-worker")
    parser.add_argument("run_dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--lock-fd", type=int, default=None, help="inherited fd holding the run's lock")
    parser.add_argument("--rendezvous", action="store_true",
                        help="started by torchrun's c10d rendezvous on each node: rank 0 takes the run's lock")
    args = parser.parse_args(argv)

    path = Path(args.run_dir).resolve()
    run = RunDir(path.parent, path.name)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if args.rendezvous:  # no launcher holds the lock: each node's `ftune train` (or srun) only started torchrun
        place = nodes.join(run)
        # torchrun restarted the group (a process failed, a node was lost or joined): on from the newest checkpoint
        args.resume = args.resume or bool(place["restart"] and run.latest_checkpoint())
    if args.lock_fd is None and (rank == 0 or not args.rendezvous):  # started by hand, or rank 0 of a rendezvous
        try:
            args.lock_fd = run.acquire_lock()
        except RunError as e:
            print(f"ftune: {e}", file=sys.stderr)
            return 2
    lead = rank == 0
    stopper = Stopper(world).install()
    events = EventWriter.for_rank(run.events_path, rank)
    spec: RunSpec | None = None
    try:
        if lead:  # the pid `ftune stop` signals (rank 0, which agrees the stopping step with the others); inside
            # the try: a stop that lands the moment the pid is written still ends the stream with `stopped`
            # the GPUs it sees, so the monitor's live panel shows those and not every board on the host
            run.update_status(state="starting", pid=os.getpid(), host=os.uname().nodename, world_size=world,
                              cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
        phases = Phases(events, lead, from_process_start=True)
        phases.begin("importing")
        spec = load_spec(run.spec_path)
        skip_unused_imports(spec)
        sampler = Sampler(lambda s: events.emit("system", unless_ended=True, **s), spec.training.system_interval_s)
        if lead:
            sampler.start()
        watchdog = hang_watchdog(spec, run, events, rank, phases).start()
        try:
            from ftune.runtime.train import recipe  # the heavy imports, after the pid and the stop handler

            r = recipe.setup(spec, run, events, stopper, args.resume, lead, phases)
            r.callback.watchdog = watchdog
            recipe.train(r)
        finally:
            watchdog.stop()
            sampler.stop()
        return 0
    except StopRequested:
        step = (run.latest_checkpoint() or (0, None))[0]
        events.emit("stopped", step=step, metrics={}, artifacts={}, message="stopped before training began",
                    reason=stopper.reason or "signal")
        run.update_status(state="stopped", ended_at=time.time())
        return 0
    except BaseException as exc:  # noqa: BLE001 - every failure must end the stream with an error event
        traceback.print_exc()
        message, hint = nodes.lost_node_error(run, exc, world, run.read_status().get("step")) \
            or hints.explain(exc, spec, run)
        if not lead:  # any rank's failure ends the run with an error event naming it
            events = EventWriter(run.events_path)
            message = f"rank {rank}: {message}"
        try:  # on a full disk these small writes may fail too: the process still ends, and the lock with it
            events.emit("error", message=message, hint=hint, kind=type(exc).__name__, rank=rank)
            run.update_status(state="failed", ended_at=time.time(), error=message)
        except OSError as e:
            print(f"ftune: could not record the failure ({e}): {message}", file=sys.stderr)
        return 1
    finally:
        sys.stderr.flush()
        events.close()

