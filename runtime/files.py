"""Where ftune keeps files of its own (the user cache), and writing so that a reader, a crash or a second run
never sees half of it: files and whole folders."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def cache_root() -> Path:
    """The user cache: $FTUNE_CACHE, else $XDG_CACHE_HOME/ftune, else ~/.cache/ftune (demo models, converted GGUF
    files)."""
    base = os.environ.get("FTUNE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ftune"
    return Path(base)


def write_atomic(path: str | Path, text: str) -> None:
    """Write a file so that readers see the old or the new content, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def publish_dir(out: str | Path) -> Iterator[Path]:
    """Build a folder in a hidden temporary sibling, then swap it in for `out` in one rename.

        with publish_dir(run.export_dir()) as tmp:
            model.save_pretrained(tmp)

    If the block raises, the temporary folder is removed and `out` is left as it was: a folder that
    exists under its real name is always complete."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    try:
        yield tmp
        if out.exists():
            # the old folder is renamed away first, so there is no moment without a complete one on disk
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
