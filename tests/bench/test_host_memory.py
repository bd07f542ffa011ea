"""Smoke test of bench/host_memory.py: one arm, in its own process as the benchmark runs it, on the tiny model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "host_memory.py"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_one_arm_trains_passes_with_the_memory_kept(tiny_model):
    out = subprocess.run([sys.executable, str(SCRIPT), "--model", str(tiny_model), "--arm",
                          "freed memory kept, learnt logits", "--iters", "2", "--rows", "2", "--length", "32"],
                         capture_output=True, text=True, check=True).stdout
    res = json.loads(out.strip().splitlines()[-1])
    assert res["kept"] is True and len(res["times"]) == 2 and all(t > 0 for t in res["times"])
    assert res["faults"] > 0
