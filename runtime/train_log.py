"""Reading `runs/<name>/train.log` (the worker's stdout and stderr) as it grows: `ftune logs -f` and the monitor's
log view follow it through one `LogFollower`.

The worker writes whatever its libraries print, so a follower hands out whole lines only (a line still being
written waits for its newline), with a progress bar's redraws reduced to their last state (`readable_log`). A log
that was replaced or cut short (`ftune train --restart`) is read again from its start.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path


def readable_log(text: str) -> str:
    """train.log as lines: a progress bar (tqdm) redraws its line with carriage returns, which a file keeps as one
    long line of every redraw; each line keeps only its last redraw. Newlines are kept as they are."""
    if "\r" not in text:
        return text
    out = []
    for line in text.split("\n"):
        if "\r" in line:
            redraws = [part for part in line.split("\r") if part.strip()]
            line = redraws[-1] if redraws else ""
        out.append(line)
    return "\n".join(out)


class LogFollower:
    """What was appended to a log since the last `read`. `tail_bytes`: the first read starts this far from the end
    (at the next whole line) instead of at the start, for a view that shows only the end of a long log."""

    def __init__(self, path: str | Path, tail_bytes: int | None = None):
        self.path = Path(path)
        self.tail_bytes = tail_bytes
        self.offset: int | None = None  # bytes read so far; None before the first look
        self.inode: int | None = None
        self.pending = b""  # the start of a line whose newline has not come yet

    def read(self, partial: bool = False) -> str | None:
        """The whole lines appended since the last read, readable ('' for none; None while there is no log).
        `partial`: the unfinished last line too (the writer is gone, or the whole file is wanted now)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self.offset is None:  # a log that appears later is read from its start
                self.offset = 0
            return None
        mid_line = False
        if self.offset is None or st.st_ino != self.inode or st.st_size < self.offset:  # first look, or a new file
            tail = self.offset is None and self.tail_bytes is not None
            self.offset = max(0, st.st_size - self.tail_bytes) if tail else 0
            self.inode, self.pending = st.st_ino, b""
            mid_line = self.offset > 0
        chunk = b""
        if st.st_size > self.offset:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
            self.offset += len(chunk)
            if mid_line:  # started inside the file: drop the partial first line
                chunk = chunk[chunk.find(b"\n") + 1:]
        data = self.pending + chunk
        cut = len(data) if partial else data.rfind(b"\n") + 1
        self.pending = data[cut:]
        return readable_log(data[:cut].decode("utf-8", "replace"))


def print_log(run, tail: int | None = None, follow: bool = False, poll: float = 0.3) -> Iterator[str]:
    """`ftune logs`: the log's text as it is (its last `tail` lines), then, with `follow`, what the worker appends
    until it is gone, its last line included whether finished or not. `run`: a RunDir."""
    log = LogFollower(run.log_path)
    lines = (log.read(partial=not follow) or "").splitlines(keepends=True)  # following: a line being drawn waits
    yield "".join(lines[-tail:] if tail else lines)
    while follow:
        text = log.read()
        if text:
            yield text
        elif not run.is_locked() and run.state() not in ("starting",):
            rest = log.read(partial=True)
            if rest:  # the worker is gone: its last line, finished or not
                yield rest + "\n"
            return  # everything it wrote is printed
        else:
            time.sleep(poll)
