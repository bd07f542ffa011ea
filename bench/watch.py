"""`ftune watch`: time to the first full paint of a long history, and the CPU an idle monitor uses.

    python bench/watch.py                       # 10,000 and 1,000,000 step events; idle CPU for 30 s
    python bench/watch.py --steps 10000 --idle 60 --size 120x40 --runs 5
    python bench/watch.py --real --idle 60      # idle CPU over a real tiny training run

First paint: `ftune watch bench` runs in a pseudo-terminal of the given size, as a user would start
it; the clock runs from the fork until the terminal has received both the header's step count and
the newest step's line in the step log (Textual sends a frame whole, so the screen is complete).
It includes the interpreter and import start-up. The in-process load of the events file
(runtime/tail.py) is timed on its own too.

Idle CPU: the same monitor, nobody pressing keys, on a live run: by default a stand-in worker that
holds the run's lock and appends a step event every 0.5 s and a system sample every 10 s (the pace
of the demo run); with --real, the demo's tiny model really training. CPU is the monitor process's
user+system time over the window, as % of one core. Target: under 3 %.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import random
import select
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

import psutil
import yaml

T0 = 1_700_000_000.0


def write_history(run_dir: Path, steps: int, seed: int = 0) -> None:
    """A finished-looking history in the worker's own line format (json.dumps of make_event)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.yaml").write_text(yaml.safe_dump({"name": run_dir.name, "model": {"name_or_path": "Qwen/Qwen2.5-0.5B"},
                                                      "data": {"train": "train.jsonl"}}))
    rnd = random.Random(seed)
    with open(run_dir / "events.jsonl", "w") as f:
        f.write(json.dumps({"v": 1, "t": T0, "type": "started", "run": run_dir.name, "stage": "sft", "method": "lora",
                            "model": "Qwen/Qwen2.5-0.5B", "max_steps": steps, "num_train_rows": steps * 8,
                            "world_size": 1, "precision": "bf16", "resumed_from": None}) + "\n")
        for i in range(1, steps + 1):
            t = T0 + i * 0.25
            f.write(json.dumps({"v": 1, "t": round(t, 3), "type": "step", "step": i, "max_steps": steps,
                                "epoch": round(3 * i / steps, 4), "loss": 2.0 * 0.9999 ** i + rnd.random() * 0.1,
                                "lr": 2e-4, "grad_norm": rnd.random(), "tokens_per_s": 12345.6,
                                "samples_per_s": 32.1}) + "\n")
            if i % 1000 == 0:
                f.write(json.dumps({"v": 1, "t": round(t, 3), "type": "eval", "step": i, "eval_loss": 1.5}) + "\n")
            if i % 100 == 0:
                f.write(json.dumps({"v": 1, "t": round(t, 3), "type": "system", "rss": 3 << 30, "gpus": []}) + "\n")
            if i % 5000 == 0:
                f.write(json.dumps({"v": 1, "t": round(t, 3), "type": "checkpoint", "step": i,
                                    "path": str(run_dir / "checkpoints" / f"checkpoint-{i}"), "bytes": 1 << 24}) + "\n")
        f.write(json.dumps({"v": 1, "t": T0 + steps * 0.25 + 1, "type": "finished", "step": steps,
                            "metrics": {}, "artifacts": {}}) + "\n")
    (run_dir / "status.json").write_text(json.dumps({"state": "finished", "started_at": T0,
                                                     "ended_at": T0 + steps * 0.25 + 1}))


def spawn_monitor(project: Path, name: str, size: tuple[int, int]) -> tuple[int, int, float]:
    """`python -m ftune watch NAME` in a new pseudo-terminal of `size`; (pid, master fd, start time)."""
    cols, rows = size
    t0 = time.perf_counter()
    pid, fd = pty.fork()
    if pid == 0:
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            os.chdir(project)
            os.environ["FTUNE_RUNS_DIR"] = str(project / "runs")
            os.environ.setdefault("TERM", "xterm-256color")
            os.execv(sys.executable, [sys.executable, "-m", "ftune", "watch", name])
        finally:
            os._exit(127)
    return pid, fd, t0


def read_until(fd: int, needles: list[bytes], timeout: float) -> tuple[bool, float]:
    """Read the terminal until every needle has been seen; (seen all, when)."""
    seen, end = b"", time.perf_counter() + timeout
    while time.perf_counter() < end:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            try:
                seen += os.read(fd, 1 << 20)
            except OSError:
                return False, time.perf_counter()
            if all(n in seen for n in needles):
                return True, time.perf_counter()
    return False, time.perf_counter()


def drain(fd: int, seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                os.read(fd, 1 << 20)
            except OSError:
                return


def close(pid: int, fd: int) -> None:
    try:
        os.write(fd, b"q")
        drain(fd, 1.0)
    except OSError:
        pass
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    os.close(fd)


def first_paint(project: Path, steps: int, size: tuple[int, int], runs: int) -> dict:
    from ftune.runtime.tail import load

    name = f"bench-{steps}"
    write_history(project / "runs" / name, steps)
    size_mb = (project / "runs" / name / "events.jsonl").stat().st_size / 1e6
    loads = []
    for _ in range(runs):
        t = time.perf_counter()
        load(project / "runs" / name / "events.jsonl")
        loads.append(time.perf_counter() - t)
    needles = [b"epoch 3.00", f"{steps}/{steps} ep ".encode()]  # the header, and the step log's last line
    paints, cpus = [], []
    for _ in range(runs):
        pid, fd, t0 = spawn_monitor(project, name, size)
        proc = psutil.Process(pid)
        ok, t1 = read_until(fd, needles, timeout=120)
        c = proc.cpu_times()  # at the paint: the monitor's own CPU (its forked loader is a child, reaped by then)
        close(pid, fd)
        if not ok:
            raise SystemExit(f"the monitor did not paint {steps} steps within 120 s")
        paints.append(t1 - t0)
        cpus.append((c.user + c.system, c.children_user + c.children_system))
    return {"steps": steps, "mb": size_mb, "load": statistics.median(loads), "paint": statistics.median(paints),
            "paint_min": min(paints), "paint_max": max(paints),
            "cpu": statistics.median(c for c, _ in cpus), "child_cpu": statistics.median(k for _, k in cpus),
            "loadavg": os.getloadavg()[0]}


STAND_IN = r"""
import fcntl, json, os, sys, time
run = sys.argv[1]
fd = os.open(os.path.join(run, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
json.dump({"state": "running", "pid": os.getpid(), "host": os.uname().nodename, "started_at": time.time()},
          open(os.path.join(run, "status.json"), "w"))
out = os.open(os.path.join(run, "events.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
def emit(**e):
    os.write(out, (json.dumps({"v": 1, "t": round(time.time(), 3), **e}) + "\n").encode())
emit(type="started", run="live", stage="sft", method="lora", model="Qwen/Qwen2.5-0.5B", max_steps=100000,
     num_train_rows=1000, world_size=1, precision="bf16", resumed_from=None)
step, last_sys = 0, 0.0
while True:
    step += 1
    emit(type="step", step=step, max_steps=100000, epoch=step / 1000, loss=2.0 / (1 + step / 500), lr=2e-4,
         grad_norm=0.5, tokens_per_s=12000.0, samples_per_s=30.0)
    if time.time() - last_sys > 10:
        emit(type="system", rss=3 << 30, gpus=[])
        last_sys = time.time()
    time.sleep(0.5)
"""


def idle_cpu(project: Path, seconds: float, size: tuple[int, int], real: bool) -> dict:
    runs = project / "runs"
    if real:
        env = dict(os.environ, FTUNE_RUNS_DIR=str(runs))
        subprocess.run([sys.executable, "-m", "ftune", "demo", "--detach", "--set", "training.max_steps=100000"],
                       cwd=project, env=env, check=True, stdout=subprocess.DEVNULL)
        name, worker = "demo", None
        deadline = time.time() + 180
        while b'"type": "step"' not in _read(runs / name / "events.jsonl") and time.time() < deadline:
            time.sleep(0.5)
    else:
        name = "live"
        (runs / name).mkdir(parents=True, exist_ok=True)
        (runs / name / "run.yaml").write_text("name: live\nmodel:\n  name_or_path: Qwen/Qwen2.5-0.5B\n")
        worker = subprocess.Popen([sys.executable, "-c", STAND_IN, str(runs / name)])
        time.sleep(1.0)
    pid, fd, _ = spawn_monitor(project, name, size)
    try:
        ok, _ = read_until(fd, [b"running"], timeout=60)
        if not ok:
            raise SystemExit("the monitor did not show the live run")
        drain(fd, 3.0)  # settle after the first load
        proc = psutil.Process(pid)
        c0, t0 = proc.cpu_times(), time.perf_counter()
        drain(fd, seconds)  # the terminal reads what the monitor draws, as a real one would
        c1, t1 = proc.cpu_times(), time.perf_counter()
        steps_seen = _read(runs / name / "events.jsonl").count(b'"type": "step"')
    finally:
        close(pid, fd)
        if worker is not None:
            worker.kill()
            worker.wait()
        else:
            subprocess.run([sys.executable, "-m", "ftune", "stop", name, "--wait", "120"], cwd=project,
                           env=dict(os.environ, FTUNE_RUNS_DIR=str(runs)), stdout=subprocess.DEVNULL)
    used = (c1.user - c0.user) + (c1.system - c0.system)
    return {"seconds": t1 - t0, "cpu_s": used, "percent": 100 * used / (t1 - t0), "steps": steps_seen,
            "source": "real demo run" if real else "stand-in worker, 2 step events/s"}


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, nargs="*", default=[10_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=3, help="first-paint repeats (median)")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle CPU measurement (0: skip)")
    parser.add_argument("--size", default="80x24")
    parser.add_argument("--real", action="store_true", help="idle CPU over a real demo run instead of a stand-in")
    args = parser.parse_args()
    size = tuple(int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="ftune-bench-watch-") as tmp:
        project = Path(tmp)
        (project / "runs").mkdir()
        if args.steps:
            print(f"first full paint at {args.size} (median of {args.runs}; from process start; CPU: user+system "
                  f"of the monitor until then, and of its forked loader)")
            print(f"{'step events':>12} {'file MB':>8} {'load s':>7} {'paint s':>8} {'min':>6} {'max':>6} "
                  f"{'CPU s':>6} {'loader':>6} {'loadavg':>7}")
            for steps in args.steps:
                r = first_paint(project, steps, size, args.runs)
                print(f"{r['steps']:>12,} {r['mb']:>8.1f} {r['load']:>7.3f} {r['paint']:>8.3f} "
                      f"{r['paint_min']:>6.3f} {r['paint_max']:>6.3f} {r['cpu']:>6.3f} {r['child_cpu']:>6.3f} "
                      f"{r['loadavg']:>7.2f}", flush=True)
        if args.idle:
            r = idle_cpu(project, args.idle, size, args.real)
            verdict = "OK" if r["percent"] < 3 else "MISSED"
            print(f"\nidle monitor on a live run ({r['source']}): {r['cpu_s']:.2f} s CPU in {r['seconds']:.0f} s "
                  f"= {r['percent']:.2f} % of one core (target < 3 %): {verdict}; {r['steps']} step events by the end")


if __name__ == "__main__":
    main()
