"""Workers forked from a process that has already imported the training stack, for the tests only.

Every training test starts a worker, and a worker spent ~5 s of its first seconds importing torch, transformers,
TRL and peft (tens of workers per session, on 2 cores). A zygote (one per test process) imports them once and
forks a child per worker; the child then does exactly what `python -m ftune.runtime.train RUN_DIR --lock-fd N`
does: its own session, stdout and stderr into train.log, the run's lock, the run's environment and folder, the
worker's `main`, the exit handlers, and `os._exit` (runtime/train/__main__.py). Training, events, checkpoints and
stopping are the real ones. What differs is only where the process comes from, so tests of that (a worker that
outlives its parent, the command line, several processes) keep the real spawn: `@pytest.mark.real_spawn`, any
command that is not the single-process worker, and every `ftune` started as a subprocess.

    python -m tests.zygote SOCKET PARENT_PID     # started by spawn() on first use
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

WORKER = ["-m", "ftune.runtime.train"]
REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- the test process's side
class ZygoteChild:
    """What launch.start returns for a forked worker: the Popen calls the tests and the CLI make."""

    def __init__(self, args: list[str], conn: socket.socket):
        self.args, self._conn, self._buf, self.returncode = args, conn, b"", None
        self.pid = self._message(None)["pid"]

    def _message(self, timeout: float | None) -> dict | None:
        """The zygote's next line for this child: {"pid"} once forked, {"returncode"} once reaped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buf:
            self._conn.settimeout(None if deadline is None else max(0.0, deadline - time.monotonic()))
            try:
                data = self._conn.recv(4096)
            except (TimeoutError, BlockingIOError):
                return None
            if not data:  # the zygote is gone
                return {"returncode": -9}
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def _read(self, timeout: float | None) -> int | None:
        if self.returncode is None:
            msg = self._message(timeout)
            if msg is None:
                return None
            self.returncode = msg["returncode"]
            self._conn.close()
        return self.returncode

    def poll(self) -> int | None:
        return self._read(0.0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._read(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return code

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


_zygote: tuple[subprocess.Popen, str] | None = None


def _socket_path() -> str:
    global _zygote
    if _zygote is None or _zygote[0].poll() is not None:
        path = os.path.join(tempfile.mkdtemp(prefix="ftune-zygote-"), "s")
        proc = subprocess.Popen([sys.executable, "-m", "tests.zygote", path, str(os.getpid())], cwd=REPO,
                                stdin=subprocess.DEVNULL)
        deadline = time.time() + 120
        while not os.path.exists(path):
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("the test zygote did not start")
            time.sleep(0.05)
        _zygote = (proc, path)
    return _zygote[1]


def spawn(cmd, *, stdin=None, stdout=None, stderr=None, cwd=None, env=None, start_new_session=False,
          pass_fds=(), **kwargs):
    """subprocess.Popen for launch.start: the single-process worker is forked from the zygote."""
    if list(cmd[:3]) != [sys.executable, *WORKER] or stdout is None or len(pass_fds) != 1:
        return subprocess.Popen(cmd, stdin=stdin, stdout=stdout, stderr=stderr, cwd=cwd, env=env,
                                start_new_session=start_new_session, pass_fds=pass_fds, **kwargs)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(_socket_path())
    request = {"args": list(cmd[3:]), "cwd": str(cwd or os.getcwd()), "env": dict(env or os.environ),
               "lock_fd": pass_fds[0]}
    socket.send_fds(conn, [json.dumps(request).encode()], [stdout.fileno(), pass_fds[0]])
    return ZygoteChild(list(cmd), conn)


# --------------------------------------------------------------------------- the zygote
def preload() -> None:
    """What every worker imports, once (runtime/train/recipe.py and what its functions import)."""
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer  # noqa: F401
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer  # noqa: F401

    from ftune.runtime.train import batching, callbacks, recipe, sft, stages, worker  # noqa: F401


def child(request: dict, log_fd: int, lock_fd: int) -> None:
    """In the forked child: become `python -m ftune.runtime.train ...` (runtime/train/__main__.py)."""
    import atexit

    code = 1
    try:
        os.setsid()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        sys.stdout.reconfigure(line_buffering=True, write_through=True)
        sys.stderr.reconfigure(line_buffering=True, write_through=True)
        os.set_inheritable(lock_fd, True)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        args = list(request["args"])
        args[args.index("--lock-fd") + 1] = str(lock_fd)
        sys.argv = ["ftune.runtime.train", *args]
        from ftune.runtime.train.worker import main

        code = main(args)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - the child must end here, never return into the zygote's loop
        traceback.print_exc()
    finally:
        try:
            atexit._run_exitfuncs()  # as a normal exit does: trackers flush in theirs
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)


def serve(path: str, parent: int) -> None:
    preload()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path + ".tmp")
    server.listen(16)
    os.rename(path + ".tmp", path)  # the client waits for this name: the zygote is ready
    children: dict[int, socket.socket] = {}
    sel = selectors.DefaultSelector()
    sel.register(server, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    while os.getppid() == parent:
        for key, _ in sel.select(timeout=1.0):
            if key.fileobj is server:
                conn, _ = server.accept()
                msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 2)
                request = json.loads(msg)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    sel.close()
                    server.close()
                    conn.close()
                    for c in children.values():
                        c.close()
                    child(request, *fds)
                for fd in fds:  # the child holds the log and the lock now; the run unlocks when it ends
                    os.close(fd)
                conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
                children[pid] = conn
            else:
                os.read(wake_r, 4096)
        while children:  # reap every child that ended, and say how to its client
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = children.pop(pid, None)
            if conn is not None:
                try:
                    conn.sendall(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
                except OSError:
                    pass
                conn.close()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
