"""Atomic files and folders keep the modes users expect (tempfile's are private)."""

import os
import stat
import tempfile

from ftune.runtime.files import UMASK, publish_dir, write_atomic


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_an_atomic_file_gets_the_usual_mode_or_keeps_its_own(tmp_path):
    write_atomic(tmp_path / "status.json", "{}")
    assert mode(tmp_path / "status.json") == 0o666 & ~UMASK  # not mkstemp's 0600
    os.chmod(tmp_path / "status.json", 0o600)  # the user's choice stays
    write_atomic(tmp_path / "status.json", "{}")
    assert mode(tmp_path / "status.json") == 0o600


def test_a_published_folder_reads_like_its_neighbours(tmp_path):
    with publish_dir(tmp_path / "export") as tmp:
        fd, name = tempfile.mkstemp(dir=tmp)  # as safetensors writes: through a private temporary file
        os.close(fd)
        os.replace(name, tmp / "model.safetensors")
        (tmp / "config.json").write_text("{}")
    assert mode(tmp_path / "export") == 0o777 & ~UMASK  # not mkdtemp's 0700
    assert mode(tmp_path / "export" / "model.safetensors") == mode(tmp_path / "export" / "config.json")
