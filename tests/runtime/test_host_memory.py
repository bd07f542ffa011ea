"""train/host_memory.py: with freed memory kept, a second allocation of the same size faults no new pages."""

import subprocess
import sys

import pytest

PROBE = """
import resource, sys
from ftune.runtime.train.host_memory import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
n = 256 * 2**20  # above glibc's largest mmap threshold (32 MB), so without the setting it is mmapped
b = b"x" * n; del b  # touches every page, then frees them
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
b = b"y" * n; del b
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    kept, n = out.split()
    return kept, int(n)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_freed_memory_is_reused_not_faulted_in_again():
    pages = 256 * 2**20 // 4096
    kept, with_setting = faults("keep")
    _, without = faults("default")
    assert kept == "True"
    assert without > pages // 2  # the default gives the 256 MB back and faults it in again: the test can fail
    assert with_setting < pages // 20
