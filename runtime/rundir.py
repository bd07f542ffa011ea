"""Run directories: `runs/<name>/` and what it holds.

    run.yaml       the spec, as the user edits it
    status.json    small, rewritten atomically (state, pid, step, where outputs went)
    events.jsonl   append-only events (runtime/events.py)
    train.log      the worker's stdout and stderr
    checkpoints/   trainer checkpoints   } or under output.dir when the run file
    export/        the final model       } sends them elsewhere
    .lock          held (flock) by the one worker training this run
    checkpoint.request   `ftune checkpoint`: asks the worker for a checkpoint at its next step end (it removes it)
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from ftune.runtime.errors import UserError
from ftune.runtime.files import write_atomic
from ftune.runtime.names import check_run_name  # not the spec package: 0.16 s of pydantic

RUNS_ENV = "FTUNE_RUNS_DIR"
ACTIVE_STATES = ("queued", "starting", "running", "stopping")  # queued: a Slurm job waiting for its nodes
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
CHECKPOINT_MARKER = "ftune_checkpoint.json"  # written (atomically) after the trainer has saved everything else
OWNER_MARKER = "ftune_owner.json"  # in an output.dir: the run whose checkpoints/ and export/ these are
WEIGHTS = ("adapter_model.safetensors", "model.safetensors", "adapter_model.bin", "pytorch_model.bin")


def checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from, or None when it can. What a resume reads is read here: a
    trainer_state.json that parses, and weights whose headers load. ftune's marker (written after the trainer saved
    everything, and after those files were fsynced) says the save ended; a folder without it (the worker died while
    saving, or an older ftune wrote it) must also have weights at its top. A marked folder whose files were damaged
    afterwards (a power loss, a full disk, a hand) fails the same reading, so resume passes over it too."""
    try:
        json.loads((folder / CHECKPOINT_MARKER).read_text(encoding="utf-8"))
        marked = True
    except FileNotFoundError:
        marked = False
    except (OSError, ValueError):
        return f"its {CHECKPOINT_MARKER} is torn"
    try:
        state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "it has no trainer_state.json"
    except (OSError, ValueError):
        return "its trainer_state.json is empty or torn"
    if not isinstance(state, dict) or "global_step" not in state:
        return "its trainer_state.json holds no trainer state"
    weights = [folder / n for n in WEIGHTS if (folder / n).is_file()] + sorted(folder.glob("model-*.safetensors"))
    for f in weights:
        problem = weights_problem(f)
        if problem:
            return f"its {f.name} {problem}"
    if not weights and not marked:  # sharded trainers (FSDP, DeepSpeed) keep theirs in folders of their own
        return "it has no weights"
    return None


def weights_problem(path: Path) -> str | None:
    """Whether a weights file's header loads without reading the weights: a safetensors header that parses and
    accounts for the file's size, or a torch file that is a whole zip archive. None when it does."""
    try:
        size = path.stat().st_size
        if path.suffix == ".bin":
            import zipfile

            return None if zipfile.is_zipfile(path) else "is not a whole torch file"
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            header = json.loads(f.read(n)) if 0 < n <= size - 8 else None
    except (OSError, ValueError):
        header = None
    if not isinstance(header, dict):
        return "is empty or torn (its header does not load)"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2]
    if size != 8 + n + max(ends, default=0):
        return "is cut short (its header names more bytes than it holds)"
    return None


class RunError(UserError):
    """A user-facing problem with a run (missing, busy, ...): one clear sentence."""


def runs_root(override: str | Path | None = None) -> Path:
    return Path(override or os.environ.get(RUNS_ENV) or Path.cwd() / "runs")


def project_of(root: str | Path) -> Path:
    """The project folder: the one that holds runs/. Relative paths in a run file start here."""
    return Path(root).resolve().parent


class RunDir:
    def __init__(self, root: str | Path, name: str):
        self.root = Path(root)
        self.name = name
        self.path = self.root / name

    @property
    def project(self) -> Path:
        """The project folder (see `project_of`)."""
        return project_of(self.root)

    # ------------------------------------------------------------------ files
    @property
    def spec_path(self) -> Path:
        return self.path / "run.yaml"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    @property
    def events_path(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def log_path(self) -> Path:
        return self.path / "train.log"

    @property
    def lock_path(self) -> Path:
        return self.path / ".lock"

    @property
    def checkpoint_request_path(self) -> Path:
        """`ftune checkpoint` writes it; the worker's rank 0 looks for it at each step end (train/callbacks.py)."""
        return self.path / "checkpoint.request"

    def exists(self) -> bool:
        return self.spec_path.is_file()

    def require(self) -> "RunDir":
        problem = check_run_name(self.name)
        if problem:
            raise RunError(problem)
        if not self.exists():
            hint = f" (runs here: {', '.join(list_run_names(self.root))})" if list_run_names(self.root) else ""
            raise RunError(f"no run named '{self.name}' in {self.root}: expected {self.spec_path}{hint}")
        return self

    # ------------------------------------------------------------------ outputs
    def output_base(self, spec_output_dir: str | None = None) -> Path:
        """Where checkpoints/ and export/ live: the run directory unless the run file sends them elsewhere."""
        recorded = self.read_status().get("output_dir")
        chosen = spec_output_dir or recorded
        return Path(chosen).expanduser().resolve() if chosen else self.path

    def checkpoints_dir(self, spec_output_dir: str | None = None) -> Path:
        return self.output_base(spec_output_dir) / "checkpoints"

    def export_dir(self, spec_output_dir: str | None = None) -> Path:
        return self.output_base(spec_output_dir) / "export"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints (see `checkpoint_problem`), oldest first."""
        return [(step, path) for step, path, problem in self.all_checkpoints() if problem is None]

    def all_checkpoints(self) -> list[tuple[int, Path, str | None]]:
        """Every checkpoint folder, oldest first, with why it cannot be resumed from (None: it can)."""
        folder = self.checkpoints_dir()
        found = []
        if folder.is_dir():
            for child in folder.iterdir():
                m = CHECKPOINT_RE.match(child.name)
                if m and child.is_dir():
                    found.append((int(m.group(1)), child, checkpoint_problem(child)))
        return sorted(found)

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        found = self.checkpoints()
        return found[-1] if found else None

    # ------------------------------------------------------------------ status
    def read_status(self) -> dict[str, Any]:
        try:
            data = json.loads(self.status_path.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def update_status(self, **fields: Any) -> dict[str, Any]:
        status = self.read_status()
        status.update(fields)
        write_atomic(self.status_path, json.dumps(status, indent=2, default=str) + "\n")
        return status

    @property
    def nodes_lock_path(self) -> Path:
        """Shared-locked by each node's launcher of a multi-node run, from its start (before the rendezvous has made
        a rank 0 to take the run's lock) until its torchrun ends."""
        return self.path / ".lock-nodes"

    def is_locked(self) -> bool:
        """True while a worker holds this run's lock (it is alive), or a node's launcher of a multi-node run lives."""
        for path in (self.lock_path, self.nodes_lock_path):
            if not path.exists():
                continue
            with open(path, "a") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return True
                fcntl.flock(f, fcntl.LOCK_UN)
        return False

    def hold_node_lock(self) -> int:
        """A node launcher's shared hold on the run (see nodes_lock_path); the fd, inherited by its torchrun."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.nodes_lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        return fd

    def acquire_lock(self) -> int:
        """Take the run's lock and return its fd (inherited by the worker). Raises RunError if taken."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = self.read_status().get("pid")
            raise RunError(
                f"run '{self.name}' is already running (pid {pid}): watch it with `ftune watch {self.name}` "
                f"or stop it with `ftune stop {self.name}`"
            ) from None
        return fd

    def state(self) -> str:
        """new, queued, starting, running, stopping, finished, stopped, failed, or crashed (died without a final
        event)."""
        status = self.read_status()
        recorded = status.get("state")
        if recorded is None:
            return "new"
        if recorded == "queued":  # submitted, and no worker has written since: Slurm says where the job is
            from ftune.runtime import slurm

            return slurm.shown_state(str(status.get("slurm_job")))
        if recorded in ACTIVE_STATES and not self.is_locked():
            return "crashed"
        return recorded

    # ------------------------------------------------------------------ lifecycle
    def clear_history(self, keep_log: bool = False) -> None:
        """Forget a previous attempt (for --restart): events, status, log (unless keep_log), checkpoints and export."""
        for folder in (self.checkpoints_dir(), self.export_dir()):
            shutil.rmtree(folder, ignore_errors=True)
        for f in (self.events_path, self.status_path, *(() if keep_log else (self.log_path,))):
            f.unlink(missing_ok=True)

    def owns(self, folder: Path) -> bool | None:
        """Whether an output folder's marker names this run (None: the folder has no marker)."""
        try:
            owner = json.loads((folder / OWNER_MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return isinstance(owner, dict) and owner.get("run_dir") == str(self.path.resolve())

    def claim_output(self, folder: Path) -> None:
        """Take an output.dir for this run, or refuse one that holds another run's checkpoints and export: two runs
        in one folder would overwrite, and `ftune rm` delete, each other's."""
        folder = folder.resolve()
        owned = self.owns(folder)
        if owned is False:
            owner = json.loads((folder / OWNER_MARKER).read_text(encoding="utf-8"))
            raise RunError(f"output.dir {folder} belongs to run '{owner.get('run')}' ({owner.get('run_dir')}): give "
                           f"run '{self.name}' a folder of its own")
        if owned is None and any((folder / f).exists() for f in ("checkpoints", "export")) \
                and self.read_status().get("output_dir") != str(folder):
            raise RunError(f"output.dir {folder} already holds checkpoints or an export that are not run "
                           f"'{self.name}'s: give it an empty folder of its own")
        write_atomic(folder / OWNER_MARKER, json.dumps({"run": self.name, "run_dir": str(self.path.resolve())}) + "\n")

    def remove(self) -> Path | None:
        """Delete the run, and its outputs in an output.dir unless that folder belongs to another run. A run folder
        that is a symbolic link loses the link only (what it points at may hold more than this run): the target is
        returned, left in place."""
        base = self.output_base()
        if self.path.is_symlink():
            target = self.path.resolve()
            self.path.unlink()
            return target
        if base != self.path and self.owns(base) is not False:
            for folder in (base / "checkpoints", base / "export"):
                shutil.rmtree(folder, ignore_errors=True)
            (base / OWNER_MARKER).unlink(missing_ok=True)
        shutil.rmtree(self.path)
        return None


def shown_state(state: str, stalled: bool = False) -> str:
    """RunDir.state() in words, the same in `ftune ls` and the monitor: 'new' reads as 'not started', and a running
    run whose hang watchdog spoke after its last step (events.summarize's `stall`) as 'stalled'."""
    if state == "running" and stalled:
        return "stalled"
    return "not started" if state == "new" else state


def list_run_names(root: str | Path) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "run.yaml").is_file())


def next_free_name(root: str | Path, stem: str = "run") -> str:
    taken = set(list_run_names(root))
    n = 1
    while f"{stem}-{n:02d}" in taken:
        n += 1
    return f"{stem}-{n:02d}"
