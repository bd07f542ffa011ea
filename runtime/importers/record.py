"""What an import did, key by key: each source key carried over (to which ftune key, as what value), or left out
and why. An importer only ever adds to this record, so nothing it read goes unmentioned."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import TypeAdapter, ValidationError

from ftune.runtime.spec import RunSpec
from ftune.runtime.spec.edit import del_path, field_info, get_path, literal_values, set_path
from ftune.runtime.spec.schema import class_at

# Why a key is not carried over (the three kinds `ftune import` names).
NO_HOME = "no home yet"
NO_MEANING = "no meaning here"
GPU_ONLY = "GPU-only, not checkable here"


@dataclass
class Carried:
    source: str  # the key as the source file names it (dotted inside sections: training_args.max_steps)
    target: str  # the ftune key (dotted)
    value: Any  # as written to the run file
    note: str = ""  # how it was translated, where that is not one to one
    gpu: bool = False  # needs a CUDA GPU (moved to `left` on a machine without one)


@dataclass
class Left:
    source: str
    value: Any
    reason: str  # NO_HOME, NO_MEANING or GPU_ONLY
    why: str


@dataclass
class Record:
    """A run file being built from a foreign config: the nested data, what was carried, what was left."""

    kind: str
    raw: dict[str, Any] = field(default_factory=dict)
    carried: list[Carried] = field(default_factory=list)
    left: list[Left] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def put(self, source: str, target: str, value: Any, note: str = "", gpu: bool = False) -> bool:
        """Carry `source` to `target` when the schema takes the value there; otherwise leave it, saying what the
        field takes. Returns whether it was carried."""
        problem = field_problem(target, value)
        if problem:
            self.leave(source, value, NO_HOME, f"{target} {problem}")
            return False
        for earlier in [c for c in self.carried if c.target == target and c.source != source]:  # the later wins
            self.carried.remove(earlier)
            self.leave(earlier.source, earlier.value, NO_MEANING, f"{target} is set from {source} instead")
        self.carried.append(Carried(source, target, value, note, gpu))
        set_path(self.raw, target, value)
        return True

    def leave(self, source: str, value: Any, reason: str, why: str) -> None:
        self.left.append(Left(source, value, reason, why))

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def has(self, target: str) -> bool:
        return any(c.target == target for c in self.carried)

    def get(self, target: str, default: Any = None) -> Any:
        return get_path(self.raw, target, default)

    def drop(self, target: str) -> None:
        """Take a carried value back out of the run file (it stays listed, as left)."""
        del_path(self.raw, target)
        self.carried = [c for c in self.carried if c.target != target]


def field_problem(target: str, value: Any) -> str | None:
    """Why the schema's field at `target` refuses `value` on its own (None when it takes it)."""
    parts = target.split(".")
    cls = class_at(tuple(parts[:-1])) if len(parts) > 1 else RunSpec
    info = cls.model_fields.get(parts[-1]) if cls is not None else None
    if info is None:
        try:
            info = field_info(target)  # a stage's own setting: `stage` is a union of the stages' sections
        except KeyError:
            return "is not a field of the run file"
    try:
        TypeAdapter(Annotated[info.annotation, info]).validate_python(value)
    except ValidationError as e:
        allowed = literal_values(info.annotation)
        if allowed:
            return f"takes {', '.join(map(str, allowed))}"
        return e.errors()[0]["msg"].lower()
    return None


@dataclass
class Context:
    """Where an import reads from and writes to."""

    path: Path  # the source file
    project: Path  # the folder holding runs/: paths are written relative to it
    dataset_dir: Path | None = None  # --dataset-dir: LLaMA-Factory's dataset_dir, GLM-4's data folder

    @property
    def look_in(self) -> list[Path]:
        """Folders a relative path in the source may start from: the file's own folder and those above it
        (LLaMA-Factory's examples name files from the repository root), then the current folder."""
        here = self.path.resolve().parent
        return list(dict.fromkeys([here, *here.parents[:3], Path.cwd()]))
