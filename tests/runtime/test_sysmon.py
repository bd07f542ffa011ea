"""GPU samples honour CUDA_VISIBLE_DEVICES (indices and UUIDs), for the process count, the memory verdict and the
monitor. There is no GPU here: the NVML module is a fake with eight boards (the one thing faked)."""

import sys
import types

import pytest

from ftune.runtime import sysmon
from ftune.runtime.distributed import processes_per_node
from ftune.runtime.spec import build_spec

UUIDS = [f"GPU-{i}{i}a{i}c0de-0000-4000-8000-00000000000{i}" for i in range(8)]


class _Handle:
    def __init__(self, i):
        self.i = i


def fake_nvml(count: int = 8) -> types.ModuleType:
    nv = types.ModuleType("pynvml")
    nv.nvmlInit = lambda: None
    nv.nvmlDeviceGetCount = lambda: count
    nv.nvmlDeviceGetHandleByIndex = lambda i: _Handle(i)
    nv.nvmlDeviceGetUUID = lambda h: UUIDS[h.i]
    nv.nvmlDeviceGetName = lambda h: "NVIDIA H100 80GB HBM3"
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=(h.i + 1) << 30, total=80 << 30)
    nv.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=10 * h.i)
    nv.nvmlDeviceGetTemperature = lambda h, sensor: 40 + h.i
    nv.nvmlDeviceGetPowerUsage = lambda h: 100_000 + h.i
    return nv


@pytest.fixture
def eight_gpus(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml())
    monkeypatch.setattr(sysmon, "_nvml_ok", None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    yield monkeypatch


@pytest.mark.parametrize("env,indices", [
    (None, list(range(8))),
    ("0,1", [0, 1]),
    ("3, 1", [3, 1]),  # CUDA's order: cuda:0 is board 3
    ("", []), ("-1", []),
    ("2,x,3", [2]),  # CUDA stops at the first entry that names no board
    ("1,9,2", [1]),  # ... and at an index past the last board
    ("1,1", [1]),  # ... and at a board named twice
    (UUIDS[5], [5]),
    ("GPU-44a4,GPU-66a6", [4, 6]),  # a unique prefix names its board
    ("GPU-", []),  # a prefix of every board names none
    (f"0,{UUIDS[7]}", [0, 7]),
])
def test_gpu_samples_honour_cuda_visible_devices(eight_gpus, env, indices):
    if env is not None:
        eight_gpus.setenv("CUDA_VISIBLE_DEVICES", env)
    samples = sysmon.gpu_samples()
    assert [s["index"] for s in samples] == indices
    assert all(s["mem_used"] == (s["index"] + 1) << 30 and s["power"] == pytest.approx(100 + s["index"] / 1000)
               for s in samples)


def test_gpus_per_node_auto_and_the_monitor_count_only_the_visible_gpus(eight_gpus):
    spec = build_spec({"name": "r", "model": {"name_or_path": "m"}, "data": {"train": "t.jsonl"},
                       "resources": {"gpus_per_node": "auto"}})
    assert processes_per_node(spec) == 8
    eight_gpus.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert processes_per_node(spec) == 2  # torchrun starts 2 ranks, not 8
    # the monitor samples with the worker's CUDA_VISIBLE_DEVICES (from status.json), not its own
    eight_gpus.delenv("CUDA_VISIBLE_DEVICES")
    sample = sysmon.system_sample(visible=f"{UUIDS[6]},{UUIDS[2]}")
    assert [g["index"] for g in sample["gpus"]] == [6, 2] and sample["rss"] > 0


def test_the_memory_verdict_counts_only_the_visible_gpus(eight_gpus, project, tiny_model):
    import yaml

    from ftune.runtime import launch
    from tests.runtime.helpers import make_run

    run = make_run(project, tiny_model, model={"name_or_path": "Qwen/Qwen2.5-7B-Instruct"}, method="full",
                   training={"per_device_train_batch_size": 1}, data={"max_length": 512},
                   resources={"strategy": "deepspeed-zero3"})
    spec = build_spec(yaml.safe_load(run.spec_path.read_text()))
    assert launch.fit_warning(spec, run) is None  # ZeRO-3 over 8 × 80 GB: ~15 GB each
    eight_gpus.setenv("CUDA_VISIBLE_DEVICES", "5")
    assert "more than the" in launch.fit_warning(spec, run)  # one board holds all ~120 GB of states


@pytest.mark.parametrize("flags,native", [
    ("fpu avx2 amx_bf16 amx_tile avx512_bf16", True),  # Sapphire Rapids and later
    ("fpu avx2 avx512f avx512_bf16", True),  # Cooper Lake, AMD Zen 4
    ("fpu avx2 avx512f", False),  # bf16 would be emulated: slower than fp32
])
def test_cpu_native_bf16_reads_the_cpu_flags_and_the_override_wins(tmp_path, monkeypatch, flags, native):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: a CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    monkeypatch.delenv("FTUNE_CPU_BF16", raising=False)
    assert sysmon.cpu_native_bf16(str(info)) is native
    assert sysmon.cpu_native_bf16(str(tmp_path / "absent")) is False  # not Linux: fp32 as before
    monkeypatch.setenv("FTUNE_CPU_BF16", "0" if native else "1")
    assert sysmon.cpu_native_bf16(str(info)) is not native
