"""Memory and GPU samples: NVML through nvidia-ml-py when a driver is there, process RSS always.

Light on purpose (no torch): the monitor samples live with it, the worker
records `system` events with it so a finished run keeps its history.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable

_nvml_ok: bool | None = None

# The CPU flags of native bf16 matrix maths (Intel AMX tiles, AVX512-BF16; AMD Zen 4 has avx512_bf16): there bf16
# autocast trains several times faster than fp32 (docs/benchmarks.md); elsewhere torch emulates bf16, slower than fp32.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU does bf16 matrix maths natively, so training.precision auto picks bf16 autocast on it.
    FTUNE_CPU_BF16=0 or 1 overrides what the flags say (a VM may hide or misreport them)."""
    forced = os.environ.get("FTUNE_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:  # not Linux: no way to tell here, so fp32 as before
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def _nvml() -> Any | None:
    """The pynvml module once initialised, or None when there is no driver (quietly)."""
    global _nvml_ok
    if _nvml_ok is False:
        return None
    try:
        import pynvml

        if not _nvml_ok:
            pynvml.nvmlInit()
            _nvml_ok = True
        return pynvml
    except Exception:
        _nvml_ok = False
        return None


def visible_devices(env: str | None = None) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as CUDA reads it: None when unset (every GPU), else its entries up to the first one
    that is not a device (CUDA stops there: `-1` or an empty value hides every GPU). Entries are indices or UUIDs
    (GPU-..., MIG-...; a unique prefix is enough)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES") if env is None else env
    if env is None:
        return None
    out = []
    for entry in (e.strip() for e in env.split(",")):
        if entry.isdigit() or entry.startswith(("GPU-", "MIG-")):
            out.append(entry)
        else:
            break
    return out


def _chosen(nv, count: int, visible: list[str] | None) -> list[int]:
    """The NVML indices of the GPUs a process sees, in CUDA's order. Indices count as NVML numbers them (PCI bus
    order: set CUDA_DEVICE_ORDER=PCI_BUS_ID, as clusters do, for CUDA to agree); a UUID or its unique prefix names
    one board. Like CUDA, the list stops at an entry that names no board, and a board named twice stops it too."""
    if visible is None:
        return list(range(count))
    uuids: list[str] = []
    if any(not e.isdigit() for e in visible):
        for i in range(count):
            try:
                u = nv.nvmlDeviceGetUUID(nv.nvmlDeviceGetHandleByIndex(i))
                uuids.append(u.decode() if isinstance(u, bytes) else str(u))
            except Exception:
                uuids.append("")
    chosen: list[int] = []
    for entry in visible:
        if entry.isdigit():
            i = int(entry)
        else:
            matches = [k for k, u in enumerate(uuids) if u and u.startswith(entry)]
            i = matches[0] if len(matches) == 1 else -1
        if not 0 <= i < count or i in chosen:
            break
        chosen.append(i)
    return chosen


def gpu_samples(visible: str | None = None) -> list[dict[str, Any]]:
    """One dict per GPU this process sees (CUDA_VISIBLE_DEVICES, or `visible` given as its value, honoured):
    index (NVML's, as nvidia-smi shows it), name, mem_used, mem_total (bytes), util (%), temp (C), power (W)."""
    nv = _nvml()
    if nv is None:
        return []
    out = []
    try:
        count = nv.nvmlDeviceGetCount()
    except Exception:
        return []
    for i in _chosen(nv, count, visible_devices(visible)):
        try:
            h = nv.nvmlDeviceGetHandleByIndex(i)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            sample: dict[str, Any] = {"index": i, "name": nv.nvmlDeviceGetName(h), "mem_used": int(mem.used),
                                      "mem_total": int(mem.total)}
            for key, call in (("util", lambda: nv.nvmlDeviceGetUtilizationRates(h).gpu),
                              ("temp", lambda: nv.nvmlDeviceGetTemperature(h, 0)),
                              ("power", lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0)):
                try:
                    sample[key] = call()
                except Exception:
                    sample[key] = None  # not every board reports every sensor
            out.append(sample)
        except Exception:
            continue
    return out


def rss_bytes(pid: int | None = None) -> int | None:
    try:
        import psutil

        return int(psutil.Process(pid or os.getpid()).memory_info().rss)
    except Exception:
        return None


def system_sample(pid: int | None = None, visible: str | None = None) -> dict[str, Any]:
    """Fields of a `system` event: gpus when there are any (those `visible` names: the worker's
    CUDA_VISIBLE_DEVICES), and the process RSS."""
    sample: dict[str, Any] = {"rss": rss_bytes(pid)}
    gpus = gpu_samples(visible)
    if gpus:
        sample["gpus"] = gpus
    return sample


class Sampler(threading.Thread):
    """Calls `emit(sample)` every `interval` seconds until stopped; quits at once on stop()."""

    def __init__(self, emit: Callable[[dict[str, Any]], None], interval: float):
        super().__init__(name="ftune-sysmon", daemon=True)
        self.emit, self.interval = emit, interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:  # a first sample at once, so even a short run keeps one
            try:
                self.emit(system_sample())
            except Exception:
                pass  # a sampling hiccup must never touch training
            if self._stop_event.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop_event.set()
