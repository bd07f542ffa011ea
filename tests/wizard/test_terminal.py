"""`ftune new` in a real 80×24 terminal, read back from a VT emulator: locally through a pty, and over a
real OpenSSH server on loopback (TERM=xterm and xterm-256color, a C locale and a UTF-8 one, no mouse)."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftune.runtime import catalog
from ftune.runtime.spec import load_spec
from tests.wizard.terminal import CTRL_C, DOWN, ENTER, MOUSE_ON, Terminal

FTUNE = str(Path(sys.executable).with_name("ftune"))


def base_env(project: Path, term: str, lang: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "FTUNE_"))}
    env.update(TERM=term, LANG=lang, FTUNE_RUNS_DIR=str(project / "runs"), COLUMNS="80", LINES="24")
    return env


def walk_through(t: Terminal, tiny_model: Path, ascii_only: bool) -> None:
    """The beginner's wizard with a local model folder: model, data, preset, then "write it; start later"."""
    t.wait_for("Base model")
    t.send(DOWN * len(catalog.groups()) + ENTER)  # past the makers (and the separator): a local folder
    t.wait_for("Model folder")
    t.send(str(tiny_model) + ENTER)
    t.wait_for("Training data file")
    t.send("train.jsonl" + ENTER)
    t.wait_for("Scenario preset")
    t.send(ENTER)
    screen = t.wait_for("Go?")
    corner = "+" if ascii_only else "╰"  # the panel's foot: at 24 lines its head has scrolled up
    foot = next(line for line in t.screen.display if line.startswith(corner))
    assert len(foot) == 80 and foot.rstrip().endswith("+" if ascii_only else "╯"), screen  # the panel fills the width
    assert "memory: ~" in screen and "method: lora" in screen
    assert "training rows" in screen and "steps on the CPU" in screen
    t.send(DOWN + ENTER)  # write it; start later
    t.wait_for("Start it when you are ready: ftune train run-01")


def check_written(project: Path) -> None:
    spec = load_spec(project / "runs" / "run-01" / "run.yaml")
    assert spec.name == "run-01" and spec.data.train == ["train.jsonl"]


# --------------------------------------------------------------------------- a local pty
@pytest.mark.parametrize("term,lang", [("xterm", "C"), ("xterm-256color", "C.UTF-8")])
def test_whole_wizard_in_a_pty(project, tiny_model, term, lang):
    t = Terminal([FTUNE, "new"], base_env(project, term, lang), str(project))
    walk_through(t, tiny_model, ascii_only=lang == "C")
    assert t.finish() == 0
    check_written(project)
    assert not any(seq in t.raw for seq in MOUSE_ON)  # never asks the terminal for the mouse
    if lang == "C":
        assert t.raw.isascii(), sorted({chr(b) for b in t.raw if b > 127})


@pytest.mark.parametrize("term,lang,message", [("xterm", "C", "Cancelled - nothing was written"),
                                               ("xterm-256color", "C.UTF-8", "Cancelled — nothing was written")])
def test_ctrl_c_in_a_pty(project, term, lang, message):
    t = Terminal([FTUNE, "new"], base_env(project, term, lang), str(project))
    t.wait_for("Base model")
    t.send(CTRL_C)
    t.wait_for(message)
    assert t.finish() == 130
    assert not any((project / "runs").iterdir())


# --------------------------------------------------------------------------- over SSH
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sshd(tmp_path_factory):
    """An OpenSSH server on 127.0.0.1 that lets this user in with a throwaway key; skipped when it cannot start."""
    binary = shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if
                                           os.path.exists(p)), None)
    if binary is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("OpenSSH server or client not installed (apt-get install openssh-server openssh-client)")
    d = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "id"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    (d / "authorized_keys").write_text((d / "id.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = _free_port()
    (d / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d / 'host_key'}
PidFile {d / 'sshd.pid'}
AuthorizedKeysFile {d / 'authorized_keys'}
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
PrintMotd no
LogLevel ERROR
""")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
    proc = subprocess.Popen([binary, "-D", "-e", "-f", str(d / "sshd_config")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 10
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.skip(f"sshd could not start: {proc.stdout.read().decode(errors='replace').strip()[:300]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.skip("sshd did not listen within 10 s")
    ssh = ["ssh", "-tt", "-F", "/dev/null", "-p", str(port), "-i", str(d / "id"), "-o", "IdentitiesOnly=yes",
           "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
           "-o", "LogLevel=ERROR", f"{getpass.getuser()}@127.0.0.1"]
    probe = subprocess.run(ssh[:1] + ssh[2:] + ["true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        proc.kill()
        pytest.skip(f"cannot log in to the loopback sshd: {probe.stderr.strip()[:300]}")
    yield ssh
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.parametrize("term,lang", [("xterm", "C"), ("xterm-256color", "C.UTF-8")])
def test_whole_wizard_over_ssh(project, tiny_model, sshd, term, lang):
    remote = (f"cd {project} && exec env -u LC_ALL -u LC_CTYPE TERM={term} LANG={lang} "
              f"FTUNE_RUNS_DIR={project / 'runs'} {FTUNE} new")
    t = Terminal(sshd + [remote], base_env(project, term, lang), str(project))
    walk_through(t, tiny_model, ascii_only=lang == "C")
    assert t.finish() == 0
    check_written(project)
    assert not any(seq in t.raw for seq in MOUSE_ON)
    if lang == "C":
        assert t.raw.isascii(), sorted({chr(b) for b in t.raw if b > 127})
