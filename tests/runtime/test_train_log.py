"""Following train.log (runtime/train_log.py): whole lines, progress bars as their last redraw, a replaced log."""

from __future__ import annotations

import os

from ftune.runtime.train_log import LogFollower, readable_log


def test_a_progress_bar_shows_its_last_redraw():
    assert readable_log("a\n 10%\r 50%\r100%\nb") == "a\n100%\nb"
    assert readable_log("plain\n") == "plain\n"


def test_whole_lines_as_they_come_then_a_new_log_from_its_start(tmp_path):
    path = tmp_path / "train.log"
    log = LogFollower(path)
    assert log.read() is None  # no log yet
    path.write_bytes(b"one\ntw")
    assert log.read() == "one\n"
    with open(path, "ab") as f:
        f.write(b"o\nthr")
    assert log.read() == "two\n" and log.read() == ""
    assert log.read(partial=True) == "thr"  # the writer is gone: the unfinished line too
    path.unlink()
    path.write_bytes(b"new\n")  # replaced (ftune train --restart)
    assert log.read() == "new\n"


def test_the_end_of_a_long_log_starts_at_a_whole_line(tmp_path):
    path = tmp_path / "train.log"
    path.write_bytes(b"".join(b"line %d\n" % i for i in range(1000)))
    log = LogFollower(path, tail_bytes=100)
    text = log.read()
    assert text.startswith("line ") and text.endswith("line 999\n") and len(text) <= 100
    assert os.path.getsize(path) == log.offset
