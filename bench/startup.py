"""Start-up time of `ftune --help` against the interpreter's own start (`python -c pass`).

    python bench/startup.py [--runs 15]

Target: `ftune --help` under 0.25 s over `python -c pass`. Prints medians and spreads.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def timed(cmd: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "ftune --help": [sys.executable, "-m", "ftune", "--help"],
        "ftune ls": [sys.executable, "-m", "ftune", "ls"],
    }
    timed(cases["ftune --help"], 2)  # warm the page cache and .pyc files
    results = {name: timed(cmd, args.runs) for name, cmd in cases.items()}
    base = statistics.median(results["python -c pass"])
    print(f"{'command':<16} {'median s':>9} {'min s':>7} {'max s':>7} {'over python':>12}")
    for name, times in results.items():
        med = statistics.median(times)
        print(f"{name:<16} {med:>9.3f} {min(times):>7.3f} {max(times):>7.3f} {med - base:>12.3f}")
    over = statistics.median(results["ftune --help"]) - base
    print(f"\nftune --help over the interpreter: {over:.3f} s (target < 0.250 s): {'OK' if over < 0.25 else 'MISSED'}")


if __name__ == "__main__":
    main()
