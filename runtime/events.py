"""The events stream: `runs/<name>/events.jsonl`, schema v1 (docs/events.md).

One JSON object per line, appended by rank 0 of the training worker. The
reader is incremental (byte offset), tolerates a torn last line and unknown
event types, and starts over when the file is truncated or replaced. It is
what `ftune watch`, `ftune ls` and `ftune train --foreground` use.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Iterable

from ftune.runtime.present import duration, size

VERSION = 1
TYPES = ("started", "phase", "step", "eval", "checkpoint", "rollback", "system", "warning", "error", "finished",
         "stopped")
FINAL_TYPES = ("finished", "stopped", "error")


def phase_share(event: dict[str, Any] | None) -> tuple[float, float] | None:
    """(done, total) of a phase that counts its progress (rows tokenised, bytes downloaded); None otherwise."""
    done, total = (event or {}).get("done"), (event or {}).get("total")
    if isinstance(done, (int, float)) and isinstance(total, (int, float)) and total > 0:
        return min(done, total), total
    return None


def phase_text(event: dict[str, Any] | None, short: bool = False) -> str:
    """A `phase` event in words: 'loading the model', 'tokenising 40%', 'downloading the model ████░░░░░░ 40% of
    3.0 GB, 25.0 MB/s, 1:10 left' ('' for none, or one without a name). The bar is text, so `ftune ls`, `train
    --foreground` and the monitor all draw it. `short`: without the size and speed, for a table's row
    ('downloading the model ██░░░░░░░░ 25%, 1:00 left')."""
    if not event or not isinstance(event.get("phase"), str):
        return ""
    share = phase_share(event)
    if share is None:
        return event["phase"]
    done, total = share
    if event.get("unit") != "bytes":
        return f"{event['phase']} {int(100 * done / total)}%"
    rate, eta = event.get("bytes_per_s"), event.get("eta_s")
    speed = f", {size(rate)}/s" if isinstance(rate, (int, float)) and rate > 0 else ""
    left = f", {duration(eta)} left" if isinstance(eta, (int, float)) and eta > 0 else ""
    filled = int(10 * done / total)
    if short:
        return f"{event['phase']} {'█' * filled}{'░' * (10 - filled)} {int(100 * done / total)}%{left}"
    return f"{event['phase']} {'█' * filled}{'░' * (10 - filled)} {int(100 * done / total)}% of {size(total)}{speed}{left}"


def _clean(value: Any, nulled: list[str], key: str = "") -> Any:
    """NaN and infinity are not JSON: write null and remember which fields they were."""
    if isinstance(value, float) and not math.isfinite(value):
        nulled.append(key)
        return None
    if isinstance(value, dict):
        return {k: _clean(v, nulled, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v, nulled, key) for v in value]
    return value


def make_event(type_: str, **fields: Any) -> dict[str, Any]:
    nulled: list[str] = []
    event = {"v": VERSION, "t": round(time.time(), 3), "type": type_}
    event.update(_clean(fields, nulled))
    if nulled:
        event["nonfinite"] = nulled  # fields that were NaN/inf, written as null
    return event


class EventWriter:
    """Appends whole lines; safe to share between the training loop and a sampler thread.

    Only rank 0 should hold one: `EventWriter.for_rank(path, rank)` returns a
    writer that drops everything on the other ranks.
    """

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self._lock = threading.Lock()
        self._fd: int | None = None
        self.ended = False  # a final event (finished, stopped, error) is written: the stream's last word
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # O_APPEND: each os.write of one whole line lands at the end, in one piece.
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    @classmethod
    def for_rank(cls, path: str | Path, rank: int) -> "EventWriter":
        return cls(path, enabled=rank == 0)

    def emit(self, type_: str, unless_ended: bool = False, **fields: Any) -> dict[str, Any]:
        """Append one event. `unless_ended`, for background samplers: not after the final event, so a reader's last
        event is the outcome (a system sample taken as the run finished landed after `finished`)."""
        event = make_event(type_, **fields)
        if self._fd is not None:
            line = (json.dumps(event, ensure_ascii=False, default=str) + "\n").encode("utf-8")
            with self._lock:
                if not (unless_ended and self.ended):
                    os.write(self._fd, line)
                    self.ended = self.ended or type_ in FINAL_TYPES
        return event

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class EventReader:
    """Incremental reader: call `read_new()` as often as you like; it returns only new, whole events.

    `reset` is set after a read that found the file truncated or replaced; the
    caller should then drop what it had and take the events returned as the
    whole history.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.offset = 0
        self.inode: int | None = None
        self._partial = b""
        self.reset = False
        self.bad_lines = 0

    def read_new(self) -> list[dict[str, Any]]:
        self.reset = False
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self.offset:
                self._restart()
            return []
        if (self.inode is not None and st.st_ino != self.inode) or st.st_size < self.offset:
            self._restart()
        self.inode = st.st_ino
        if st.st_size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        self.offset += len(chunk)
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")  # the last piece is a torn line or b""
        return list(self.parse(lines))

    def _restart(self) -> None:
        self.offset, self._partial, self.inode, self.reset = 0, b"", None, True

    def parse(self, lines: Iterable[bytes]):
        """The events in whole lines of the file (counting the lines that are not events in bad_lines)."""
        for raw in lines:
            if not raw.strip():
                continue
            try:
                event = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                self.bad_lines += 1
                continue
            if isinstance(event, dict) and isinstance(event.get("type"), str):
                yield event  # unknown types pass through; consumers skip what they do not know
            else:
                self.bad_lines += 1


def file_id(path: str | Path) -> int:
    """Which events file this is: a checksum of its first whole line (0 when it has none), whose time tells one
    attempt's file from the next (a run started over writes a new file, which may even get the old one's inode)."""
    try:
        with open(path, "rb") as f:
            return _first_line_id(f)
    except FileNotFoundError:
        return 0


def _first_line_id(f) -> int:
    f.seek(0)
    first = f.readline(1 << 16)
    return zlib.crc32(first) if first.endswith(b"\n") else 0


def cursor_word(path: str | Path, offset: int) -> str:
    """Where a reader of an events file stands, as one opaque word for a client to pass back: which file (file_id)
    and the byte offset."""
    return f"{file_id(path) if offset else 0:x}-{offset}"


def read_from(path: str | Path, cursor: str | None, limit: int = 100) -> tuple[list[dict[str, Any]], str, bool, bool]:
    """(events after `cursor`, at most `limit`; the cursor after them; whether the file was started over since
    `cursor`, so these are its whole history; whether more whole lines are waiting). A torn last line waits for
    its end. A cursor that is not one of ours reads from the start."""
    which, _, offset = (cursor or "").partition("-")
    try:
        start, which_was = int(offset), int(which, 16)
    except ValueError:
        start, which_was = 0, 0
    try:
        with open(path, "rb") as f:
            which = _first_line_id(f)
            reset = bool(start) and (which != which_was or os.fstat(f.fileno()).st_size < start)
            if reset:
                start = 0
            f.seek(start)
            data = f.read(max(limit * 8192, 1 << 20))  # a long history is read a slice at a time
    except FileNotFoundError:
        return [], "0-0", bool(start), False
    reader, events, used = EventReader(path), [], 0
    for line in data.split(b"\n")[:-1]:  # whole lines only: the last piece is a torn line or b""
        if len(events) >= limit:
            break
        used += len(line) + 1
        events.extend(reader.parse([line]))
    more = b"\n" in data[used:]
    end = start + used
    if end and not which:  # the first line has just been read whole
        which = file_id(path)
    return events, f"{which if end else 0:x}-{end}", reset, more


def read_all(path: str | Path) -> list[dict[str, Any]]:
    return EventReader(path).read_new()


def summarize(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Fold a history into the few numbers a table or a header shows."""
    out: dict[str, Any] = {"step": 0, "max_steps": None, "loss": None, "final": None, "started_t": None,
                           "best_eval_loss": None, "phase": "", "checkpoint": None, "stall": None}
    for e in events:
        kind = e.get("type")
        if kind == "checkpoint" and isinstance(e.get("step"), int):  # the newest checkpoint's step
            out["checkpoint"] = e["step"]
        elif kind == "warning" and e.get("stall"):  # the hang watchdog: stalled until the next step
            out["stall"] = e
        elif kind == "phase":  # the worker's start, step by step: the latest, until training begins
            out["phase"] = phase_text(e, short=True)
        elif kind == "eval":
            v, best = e.get("eval_loss"), out["best_eval_loss"]
            if isinstance(v, (int, float)) and math.isfinite(v) and (best is None or v < best):
                out["best_eval_loss"] = v
        elif kind == "started":
            out.update(started_t=e.get("t"), max_steps=e.get("max_steps"), final=None, phase="", stall=None)
        elif kind == "step":
            out["stall"] = None
            out["step"] = e.get("step", out["step"])
            out["max_steps"] = e.get("max_steps") or out["max_steps"]
            if e.get("loss") is not None:
                out["loss"] = e["loss"]
        elif kind in FINAL_TYPES:
            out["final"], out["phase"], out["stall"] = e, "", None
            if e.get("step") is not None:
                out["step"] = e["step"]
    return out
