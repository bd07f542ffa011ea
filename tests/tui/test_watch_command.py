"""`ftune watch` from the command line: errors for the user, and a monitor that leaves when the
terminal hangs up instead of spinning."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import sys
import termios
import time

from click.testing import CliRunner

from ftune.cli import main
from tests.tui.fakes import new_run, scenario


def test_a_run_that_does_not_exist_is_a_clear_error(project):
    new_run(project / "runs", "run-01")
    result = CliRunner().invoke(main, ["watch", "nope"])
    assert result.exit_code == 2
    assert "no run named 'nope'" in result.output and "run-01" in result.output
    assert "Traceback" not in result.output


def test_without_a_terminal_it_says_what_to_use_instead(project):
    new_run(project / "runs", "run-01")
    result = CliRunner().invoke(main, ["watch", "run-01"])
    assert result.exit_code == 2
    assert "needs a terminal" in result.output and "ftune logs" in result.output


def test_help_names_the_keys():
    result = CliRunner().invoke(main, ["watch", "--help"])
    assert result.exit_code == 0
    for key in ("q leave (the run goes on)", "s stop the run", "c save a checkpoint now", "l train.log",
                "p large loss plot", "? help"):
        assert key in " ".join(result.output.split())


def _read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    seen, end = b"", time.monotonic() + timeout
    while needle not in seen and time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                break
    return seen


def test_exits_when_the_terminal_hangs_up(project):
    scenario(project / "runs", "finished")
    pid, fd = pty.fork()
    if pid == 0:  # the monitor, in a terminal of its own; SIGHUP ignored as under nohup
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            os.execv(sys.executable, [sys.executable, "-m", "ftune", "watch", "run-01"])
        finally:
            os._exit(127)
    try:
        shown = _read_until(fd, b"100/100", timeout=60)
        assert b"100/100" in shown, shown[-2000:]
        os.close(fd)  # the terminal goes away (an SSH connection dropping)
        end = time.monotonic() + 20
        status = None
        while time.monotonic() < end:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the monitor kept running after its terminal hung up")
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0 or os.WIFSIGNALED(status)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def test_a_monitor_session_never_imports_the_training_stack(tmp_path):
    """Not just importing tui.app: opening a run, the plot, train.log, help and the run list."""
    import subprocess

    scenario(tmp_path / "runs", "finished")
    code = f"""
import asyncio, sys
from ftune.tui.app import make_app
async def go():
    app = make_app({str(tmp_path / 'runs')!r}, None, poll=0.05)
    async with app.run_test(size=(80, 24)) as pilot:
        for _ in range(200):
            await pilot.pause(0.02)
            if getattr(app.screen, "loaded", False):
                break
        await pilot.press("enter")
        for _ in range(200):
            await pilot.pause(0.02)
            if type(app.screen).__name__ == "MonitorScreen" and app.screen.loaded:
                break
        assert type(app.screen).__name__ == "MonitorScreen", app.screen
        await pilot.press("p", "p", "l", "escape", "question_mark", "escape", "s")
        await pilot.pause(0.2)
asyncio.run(go())
print("HEAVY=" + ",".join(m for m in ("torch", "transformers", "trl", "datasets", "peft", "accelerate")
                          if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("HEAVY="), out.stdout + out.stderr[-2000:]
