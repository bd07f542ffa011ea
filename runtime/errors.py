"""The one base class for mistakes a user can fix: the CLI prints them in one line (exit 2), no traceback.
And the one sentence for a full disk, which is no one's mistake but needs the same plainness."""

from __future__ import annotations

import errno
import os
import shutil


class UserError(Exception):
    def __init__(self, message: str = "", hint: str = ""):
        super().__init__(message)
        self.hint = hint


def free_bytes(path: str | os.PathLike | None) -> int | None:
    """Free space on the disk that holds `path` (its nearest existing folder), or None when unknown."""
    probe = os.path.abspath(path or ".")
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe) if os.path.dirname(probe) != probe else ""
    try:
        return shutil.disk_usage(probe or ".").free
    except OSError:
        return None


def disk_full_message(error: OSError | None = None, path: str | os.PathLike | None = None, what: str = "") -> str:
    """"no space left on device writing checkpoint-20 to /runs/a/checkpoints (3 MB free)"."""
    where = path or (error.filename if error is not None else None)
    free = free_bytes(where)
    target = " ".join(x for x in (what, f"to {where}" if what and where else str(where or "")) if x)
    left = f" ({free / 1e6:,.0f} MB free)" if free is not None else ""
    return f"no space left on device{' writing ' + target if target else ''}{left}"


# What a full disk looks like from below: the OS error, torch's zip writer, safetensors' Rust error.
_FULL_TEXT = ("no space left on device", "storagefull", "unexpected pos", "file write failed", "disk quota exceeded")


def is_disk_full(exc: BaseException | None) -> bool:
    """True when `exc`, or an error it was raised from, is a full disk (or quota)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(t in str(exc).lower() for t in _FULL_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
