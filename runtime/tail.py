"""Reading `events.jsonl` for the monitor: a fast first load of a long history, then tailing.

A run with a million step events is a ~200 MB file; parsing every line would take seconds. The
first load parses every line that is not a step event (found with one regex pass over a memory
map), `SAMPLES` step events spread evenly through the file for the charts, and the last
`LOG_KEEP` lines in full. Files up to `FULL_PARSE_BYTES` are simply parsed whole.

After that, `Tail` (an `EventReader`) reads only what is appended, from where the load stopped.
A file that was truncated or replaced is loaded again from scratch (`Tail.replaced()`).

A long first load (the regex pass is a memory-bound read of the whole file, then some 14,000 events to
parse) runs in a forked child process, `ChildScan`, on a core of its own, while the monitor imports Textual
and sets up the screen; `load(..., scan=...)` takes the child's history (a pickle: 2 ms to read back) and
parses only what was appended since. In the monitor's own process the load's Python would share the GIL
with Textual's start, so most of its cost would still be on the way to the first paint.
"""

from __future__ import annotations

import mmap
import os
import pickle
import re
from pathlib import Path

from ftune.runtime.events import EventReader
from ftune.runtime.history import LOG_KEEP, History

FULL_PARSE_BYTES = 4 << 20  # ~20,000 events: parse them all
SAMPLES = 2000  # step events read from the body of a longer history, for the charts
WARNINGS_KEPT = 200  # of a long history's warnings: the first and last half of these, the rest counted
_OTHER = re.compile(rb'"type"\s*:\s*"(?!step")')  # every event line that is not a step
_STEP = re.compile(rb'"type"\s*:\s*"step"')


class Tail(EventReader):
    """An EventReader that continues where `load` stopped."""

    def __init__(self, path: str | Path, offset: int = 0, inode: int | None = None):
        super().__init__(path)
        self.offset = offset
        self.inode = inode

    def replaced(self) -> bool:
        """True when the file was replaced (new inode), truncated, or deleted since it was loaded."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self.offset > 0
        return (self.inode is not None and st.st_ino != self.inode) or st.st_size < self.offset


def load(path: str | Path, generation: int = 0, samples: int = SAMPLES,
         full_parse_bytes: int = FULL_PARSE_BYTES, scan: ChildScan | None = None) -> tuple[History, Tail]:
    """The whole history as it is now, decimated for the charts, and a Tail to follow it. `scan`: a ChildScan
    of the same file, started earlier: its history, and what was appended after it looked."""
    loaded = scan.result() if scan is not None else None
    if loaded is not None:
        inode, history, offset, bad_lines = loaded
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        if st is not None and st.st_ino == inode and st.st_size >= offset:  # the same file, only grown
            history.generation = generation
            tail = Tail(path, offset, inode)
            tail.bad_lines = bad_lines
            history.extend(tail.read_new())
            return history, tail
    history = History(generation)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return history, Tail(path)
    with f:
        st = os.fstat(f.fileno())
        tail = Tail(path, 0, st.st_ino)
        if st.st_size == 0:
            return history, tail
        if st.st_size <= full_parse_bytes:
            data = f.read()
            end = data.rfind(b"\n") + 1  # whole lines only: a torn last line waits for its end
            history.extend(tail.parse(data[:end].split(b"\n")))
        else:
            # A memory map: no copy of a file this size. ftune never truncates events.jsonl in place
            # (--restart unlinks it, and a mapped unlinked file stays readable), so no page vanishes.
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                end = m.rfind(b"\n") + 1
                split = _start_of_last_lines(m, end, LOG_KEEP)
                _load_body(m, split, history, tail, samples, _scan(m, 0, split))
                history.extend(tail.parse(m[split:end].split(b"\n")))
    tail.offset = end
    return history, tail


def _start_of_last_lines(m: mmap.mmap, end: int, steps: int, most: int = 20) -> int:
    """Where the last `steps` step events begin (at most `most` times as many lines back)."""
    pos, found = end - 1, 0  # pos: the newline that ends the line being looked at
    for _ in range(steps * most):
        start = m.rfind(b"\n", 0, pos) + 1
        if _STEP.search(m, start, pos):
            found += 1
        if start == 0 or found == steps:
            return start
        pos = start - 1
    return pos + 1


def _scan(m: mmap.mmap, begin: int, split: int) -> dict[int, tuple[bytes, int]]:
    """Every line of m[begin:split] that is not a step event: line start -> (type, line end)."""
    found: dict[int, tuple[bytes, int]] = {}
    for match in _OTHER.finditer(m, begin, split):
        start = m.rfind(b"\n", 0, match.start()) + 1
        if start not in found:
            kind = m[match.end():m.find(b'"', match.end(), split)]
            found[start] = (kind, m.find(b"\n", match.end(), split))
    return found


class ChildScan:
    """The first `load` of a long events file, in a forked child process started now; `result()` is (inode,
    history, offset loaded to, bad lines) or None (a short file, no fork here, or the child failed)."""

    def __init__(self, path: str | Path, full_parse_bytes: int = FULL_PARSE_BYTES, samples: int = SAMPLES):
        self.pid: int | None = None
        self._result: tuple[int, History, int, int] | None = None
        try:
            if os.stat(path).st_size <= full_parse_bytes or not hasattr(os, "fork"):
                return
            read, write = os.pipe()
            self.pid = os.fork()
        except OSError:
            return
        if self.pid == 0:  # the child: load, hand the history over, leave without running anything else
            code = 1
            try:
                os.close(read)
                history, tail = load(path, samples=samples, full_parse_bytes=full_parse_bytes)
                data = pickle.dumps((tail.inode, history, tail.offset, tail.bad_lines), pickle.HIGHEST_PROTOCOL)
                view = memoryview(data)
                while view:
                    view = view[os.write(write, view):]
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        self._read = read

    def result(self) -> tuple[int, History, int, int] | None:
        if self.pid is None:
            return self._result
        chunks = []
        try:
            while chunk := os.read(self._read, 1 << 20):
                chunks.append(chunk)
        finally:
            os.close(self._read)
            _, status = os.waitpid(self.pid, 0)
            self.pid = None
        try:
            if os.waitstatus_to_exitcode(status) == 0:
                self._result = pickle.loads(b"".join(chunks))
        except (pickle.UnpicklingError, EOFError, ValueError):
            self._result = None
        result, self._result = self._result, None  # one history, for one load: its reader goes on changing it
        return result


def _load_body(m: mmap.mmap, split: int, history: History, tail: Tail, samples: int,
               found: dict[int, tuple[bytes, int]]) -> None:
    """Fold m[:split] into history: every non-step event (`found`), and `samples` step events spread evenly."""
    keep, history.omitted_warnings = _bounded(found)
    steps: dict[int, int] = {}  # line start -> line end
    for k in range(0, split, max(1, split // max(samples, 1))):
        start = 0 if k == 0 else m.find(b"\n", k - 1, split) + 1
        if k and start == 0:
            break
        for _ in range(4):  # the first step line at or after this point
            end = m.find(b"\n", start, split)
            if end < 0:
                break
            if _STEP.search(m, start, end):
                steps[start] = end
                break
            start = end + 1
    for start, end in sorted([*steps.items(), *keep]):
        for event in tail.parse([m[start:end]]):
            history.add(event, sampled=start in steps)
    if steps:  # decimate what follows like this: one chart point per so many step events
        step_bytes = split - sum(end - start + 1 for start, (_, end) in found.items())
        mean_line = sum(end - start + 1 for start, end in steps.items()) / len(steps)
        history.set_stride(max(1, round(step_bytes / mean_line / len(steps))))


def _bounded(found: dict[int, tuple[bytes, int]]) -> tuple[list[tuple[int, int]], int]:
    """Which non-step lines to parse, and how many warnings were left out: all lines, except only the
    latest `system` sample and at most `WARNINGS_KEPT` warnings (a loss stuck at 0 warns every step)."""
    keep, warnings, system = [], [], None
    for start, (kind, end) in sorted(found.items()):
        if kind == b"system":
            system = (start, end)
        elif kind == b"warning":
            warnings.append((start, end))
        else:
            keep.append((start, end))
    if system:
        keep.append(system)
    omitted = max(0, len(warnings) - WARNINGS_KEPT)
    if omitted:
        warnings = warnings[:WARNINGS_KEPT // 2] + warnings[-(WARNINGS_KEPT // 2):]
    return keep + warnings, omitted
