"""A real terminal for tests: a pty (pexpect) whose output is drawn by a VT emulator (pyte), so a test
reads the 80×24 screen a user would see."""

from __future__ import annotations

import time

import pexpect
import pyte

DOWN, ENTER, CTRL_C = "\x1b[B", "\r", "\x03"
MOUSE_ON = (b"\x1b[?1000h", b"\x1b[?1002h", b"\x1b[?1003h", b"\x1b[?1006h")


class _Screen(pyte.Screen):
    """Answers the terminal's reports (the cursor position prompt_toolkit asks for), as a terminal does."""

    child: pexpect.spawn | None = None

    def write_process_input(self, data: str) -> None:
        if self.child is not None:
            self.child.send(data)


class Terminal:
    def __init__(self, argv: list[str], env: dict[str, str], cwd: str, cols: int = 80, rows: int = 24):
        self.screen = _Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = b""
        self.child = pexpect.spawn(argv[0], argv[1:], env=env, cwd=cwd, dimensions=(rows, cols))
        self.screen.child = self.child

    def pump(self, seconds: float = 0.2) -> None:
        end = time.time() + seconds
        while time.time() < end:
            try:
                data = self.child.read_nonblocking(65536, timeout=0.05)
            except pexpect.TIMEOUT:
                continue
            except pexpect.EOF:
                return
            self.raw += data
            self.stream.feed(data)

    @property
    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def wait_for(self, needle: str, timeout: float = 60) -> str:
        end = time.time() + timeout
        while time.time() < end:
            self.pump(0.05)
            if needle in self.text:
                self.pump(0.2)  # let the rest of the frame arrive
                return self.text
            if not self.child.isalive() and needle not in self.text:
                self.pump(0.2)
                break
        raise AssertionError(f"{needle!r} never appeared on the screen:\n{self.text}")

    def send(self, keys: str) -> None:
        self.child.send(keys)

    def finish(self, timeout: float = 30) -> int:
        end = time.time() + timeout
        while self.child.isalive() and time.time() < end:
            self.pump(0.2)
        self.pump(0.2)
        self.child.close()
        return self.child.exitstatus if self.child.exitstatus is not None else -(self.child.signalstatus or 0)
