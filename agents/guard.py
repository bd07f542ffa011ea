"""What `ftune mcp` lets an agent touch, and the record of what it asked.

- Paths: the runs folder, the project folder that holds it (where a run file's relative paths start), the folders
  given with `--allow`, and the files the runs already name. Anything else is refused, symbolic links resolved.
- Remote code: a run that sets model.trust_remote_code is refused unless the server was started with
  `--trust-remote-code`.
- `--read-only`: no tool creates, starts, stops, changes or deletes anything.
- Every call is one JSON line in `mcp.log` in the runs folder.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ftune.runtime.errors import UserError
from ftune.runtime.models import local_path, looks_local
from ftune.runtime.rundir import RunDir, list_run_names, project_of
from ftune.runtime.spec import shorthand

LOG_FILE = "mcp.log"
LOGGED_ARG_CHARS = 400  # a long spec or list in mcp.log: its start, then how long it was

# The run-file fields that name a file or folder (a hub id or a run's name in them is not a path).
PATH_FIELDS = ("model.name_or_path", "data.train", "data.validation", "data.test", "data.dataset_dir", "output.dir",
               "stage.ref_model", "stage.reward_model", "method.lora.adapter")


class Refused(UserError):
    """A call the server's settings do not allow."""


def _get(raw: dict[str, Any], dotted: str) -> Any:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def named_paths(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, value) for every value of a run file's PATH_FIELDS (lists flattened)."""
    raw = shorthand.expand(raw) if isinstance(raw, dict) else {}
    out = []
    for dotted in PATH_FIELDS:
        value = _get(raw, dotted)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str) and v.strip():
                out.append((dotted, v))
    return out


@dataclass
class Guard:
    root: Path  # the runs folder
    allow: list[Path] = field(default_factory=list)  # more folders an agent may name (--allow)
    read_only: bool = False
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser().resolve()
        self.project = project_of(self.root)
        self.folders = [self.root, self.project, *(Path(p).expanduser().resolve() for p in self.allow)]

    # ------------------------------------------------------------------ paths
    def run(self, name: str) -> RunDir:
        """The run called `name` in this runs folder (a RunError naming the runs here when there is none)."""
        return RunDir(self.root, name).require()

    def inside(self, path: Path) -> bool:
        return any(path == f or path.is_relative_to(f) for f in self.folders)

    def files_runs_name(self) -> set[Path]:
        """Every local file or folder the runs here name in their run files."""
        found = set()
        for name in list_run_names(self.root):
            try:
                raw = yaml.safe_load((self.root / name / "run.yaml").read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError):
                continue
            found |= {local_path(v, self.project).resolve() for _, v in named_paths(raw)}
        return found

    def path(self, value: str, what: str) -> Path:
        """`value` as a path (relative ones from the project folder), refused when it lies outside what this
        server may read."""
        path = local_path(value, self.project).resolve()
        if self.inside(path) or path in self.files_runs_name():
            return path
        raise Refused(f"{what} {value!r} is outside the folders this server may read ({self.where()})",
                      hint="Move the file into the project folder, or start `ftune mcp` with --allow DIR.")

    def where(self) -> str:
        return ", ".join(dict.fromkeys(str(f) for f in self.folders))

    def spec_paths(self, raw: dict[str, Any]) -> None:
        """Refuse a run file that names a local path outside the allowed folders, or model code to run without
        the server's --trust-remote-code."""
        for dotted, value in named_paths(raw):
            local = local_path(value, self.project)
            if looks_local(value) or local.exists():
                self.path(value, dotted)
        self.remote_code(raw)

    def remote_code(self, raw: dict[str, Any]) -> None:
        raw = shorthand.expand(raw) if isinstance(raw, dict) else {}
        if _get(raw, "model.trust_remote_code") is True and not self.trust_remote_code:
            raise Refused("model.trust_remote_code is set, and this server was started without --trust-remote-code: "
                          "it does not run code that ships with a model",
                          hint="Ask the user to restart `ftune mcp --trust-remote-code` if they trust this model.")

    # ------------------------------------------------------------------ writes
    def writes(self, what: str) -> None:
        if self.read_only:
            raise Refused(f"this server is read-only (ftune mcp --read-only): it does not {what}",
                          hint="Ask the user to run it, or to restart the server without --read-only.")

    # ------------------------------------------------------------------ the log
    def log(self, tool: str, args: dict[str, Any], outcome: str, took_s: float, message: str = "") -> None:
        """One line of mcp.log: when, which tool, its arguments (long ones cut), ok/refused/error, how long."""
        shown = {}
        for k, v in args.items():
            text = json.dumps(v, ensure_ascii=False, default=str)
            shown[k] = v if len(text) <= LOGGED_ARG_CHARS else f"{text[:LOGGED_ARG_CHARS]}… ({len(text)} chars)"
        line = {"t": round(time.time(), 3), "tool": tool, "args": shown, "outcome": outcome,
                "took_s": round(took_s, 3)}
        if message:
            line["message"] = message.splitlines()[0][:300]
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(line, ensure_ascii=False, default=str) + "\n").encode("utf-8"))
        finally:
            os.close(fd)
