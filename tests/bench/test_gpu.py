"""bench/gpu.py --cpu-dry-run: the GPU run's code, every check, on tiny shapes through ftune's launcher (the workers
come from the tests' zygote). The GPU figures themselves need a GPU machine; here the script must run end to end."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytest.importorskip("bitsandbytes")


def load_gpu():
    spec = importlib.util.spec_from_file_location("ftune_bench_gpu", REPO / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_cpu_dry_run_runs_every_check(tmp_path, tiny_model):
    gpu = load_gpu()
    out = tmp_path / "dry.json"
    results = gpu.main(["--cpu-dry-run", "--model", str(tiny_model), "--out", str(out)])
    assert json.loads(out.read_text())["checks"].keys() == gpu.CHECKS.keys()
    checks = results["checks"]
    failed = {k: v["error"] for k, v in checks.items() if "error" in v}
    assert not failed, {k: checks[k].get("traceback") for k in failed}
    assert checks["peak"]["tflops"] > 0
    for name in ("lora", "qlora", "full", "dpo"):
        c = checks[name]
        assert c["steps"] == 3 and c["tokens_per_s"] > 0 and 0 < c["mfu"] and c["peak_gb"] > 0, (name, c)
        assert c["estimate_gb"] > 0 and "estimate_error_pct" in c
    assert checks["lora"]["attn_implementation"] == "sdpa_by_row"  # the CPU's padding-free attention
    assert checks["qlora"]["merged_4bit"]["generated_tokens"] >= 1
    assert checks["dpo"]["ref_model_bits"] == 4
    assert checks["liger"] == {"skipped": "Liger's Triton kernels need a GPU", "s": 0.0}
    assert checks["learnt"]["whole_ms"] > 0 and checks["learnt"]["learnt_ms"] > 0
    assert checks["nvml"]["system_events"] >= 1 and checks["nvml"]["with_gpus"] == 0  # no GPU here
    assert "worker memory" in checks["monitor"]["panel"]
