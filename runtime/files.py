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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()  # read once, at import: os.umask can only be read by setting it


def default_mode(folder: bool = False) -> int:
    """The mode a plain open() or mkdir() would give: tempfile's private 0600/0700 is for secrets, not exports."""
    return (0o777 if folder else 0o666) & ~UMASK


def write_atomic(path: str | Path, text: str) -> None:
    """Write a file so that readers see the old or the new content, never half of it. It keeps the mode of the
    file it replaces, or gets the usual one (mkstemp's is 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync_tree(folder: str | Path) -> None:
    """Every file under `folder`, and the folders themselves, on disk: what a marker written after it promises
    must survive a power loss (the page cache may otherwise keep data that the marker's rename already made
    durable). Files another process wrote are flushed too: fsync works on the file, not the descriptor."""
    folder = Path(folder)
    for p in sorted(folder.rglob("*"), reverse=True) + [folder]:  # files before the folders that hold them
        if p.is_symlink():
            continue
        try:
            fd = os.open(p, os.O_RDONLY | (os.O_DIRECTORY if p.is_dir() else 0))
        except OSError:
            continue  # removed meanwhile (a rotating save_total_limit): nothing of it to promise
        try:
            os.fsync(fd)
        except OSError:
            if not p.is_dir():  # a file's data that did not reach the disk: no marker may say it did
                raise
            # some file systems refuse fsync on a folder
        finally:
            os.close(fd)


def _usual_modes(folder: Path) -> None:
    """mkdtemp makes the folder 0700, and writers that go through a temporary file (safetensors) leave 0600: give
    what has no group or other bits the usual mode, so an export reads like its neighbours."""
    os.chmod(folder, default_mode(folder=True))
    for p in folder.rglob("*"):
        mode = p.lstat().st_mode
        if not p.is_symlink() and not mode & 0o077:
            executable = 0o111 & ~UMASK if mode & 0o100 else 0
            os.chmod(p, default_mode(folder=p.is_dir()) | executable)


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
        _usual_modes(tmp)
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
