"""Keep freed host memory in the process when training on a CPU.

glibc hands every allocation above 32 MB (logits, activations, their gradients) to its own mmap and gives it
back with munmap when the tensor is freed, so each step faults the same gigabytes in again, page by page: on
SmolLM2 at batch 4 that was ~2.4 M page faults and a fifth of every step spent in the kernel. With mmap off and
the heap never trimmed, a step reuses the memory the last step freed. The resident size stays at the peak a
step needs, which a training process reaches every step anyway. On a GPU the big tensors are in CUDA's own
caching allocator, so nothing changes there. Measured in docs/benchmarks.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt(3) parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Tell glibc to serve every allocation from its heap and never return the heap's top to the system.
    False where the C library has no mallopt (musl, macOS) or refuses: then nothing changed."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, -1))  # -1: never trim (mallopt(3))
