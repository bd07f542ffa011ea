"""Memory and GPU samples: NVML through nvidia-ml-py when a driver is there, process RSS always.

Light on purpose (no torch): the monitor samples live with it, the worker
records `system` events with it so a finished run keeps its history.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable

_nvml_ok: bool | None = None


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


def gpu_samples() -> list[dict[str, Any]]:
    """One dict per visible GPU: index, name, mem_used, mem_total (bytes), util (%), temp (C), power (W)."""
    nv = _nvml()
    if nv is None:
        return []
    out = []
    try:
        count = nv.nvmlDeviceGetCount()
    except Exception:
        return []
    for i in range(count):
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


def system_sample(pid: int | None = None) -> dict[str, Any]:
    """Fields of a `system` event: gpus when there are any, and the process RSS."""
    sample: dict[str, Any] = {"rss": rss_bytes(pid)}
    gpus = gpu_samples()
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
