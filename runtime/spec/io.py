"""Reading a run file into a RunSpec (every mistake at once, with its line) and writing one back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ftune.runtime.files import write_atomic
from ftune.runtime.spec import shorthand
from ftune.runtime.spec.editors import MODELINE, schema_path_for, write_schema
from ftune.runtime.spec.overrides import apply_overrides, deep_merge, preset_override
from ftune.runtime.spec.problems import Problem, SpecError, line_of, pydantic_problems
from ftune.runtime.spec.schema import DataSpec, MethodSpec, RunSpec, section_class


def build_spec(raw: Any, overrides: list[str] | None = None, source: str | None = None, yaml_root=None) -> RunSpec:
    """Built-in defaults < preset < raw run file < overrides, validated; every problem at once."""
    from ftune.presets import load_preset

    if not isinstance(raw, dict):
        raise SpecError([Problem("", "the run file must be a mapping of sections (name:, model:, data: ...)")], source)
    merged = shorthand.expand(raw)
    preset_name = (overrides and preset_override(overrides)) or merged.get("preset")
    problems: list[Problem] = []
    if isinstance(preset_name, str):
        try:
            merged = deep_merge(shorthand.expand(load_preset(preset_name)), merged)
        except KeyError as e:  # one mistake among the others: the rest of the file is still checked
            problems.append(Problem("preset", str(e.args[0])))
            merged = {k: v for k, v in merged.items() if k != "preset"}
    if overrides:
        merged = apply_overrides(merged, overrides)
    try:
        spec = RunSpec.model_validate(merged)
    except ValidationError as err:
        problems += pydantic_problems(err)
        spec = None
    if problems:
        for p in problems:
            p.line = line_of(yaml_root, p.path)
        problems.sort(key=lambda p: p.line or 0)
        raise SpecError(problems, source)
    return spec


class _UniqueKeys(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys without a word (a second `training:` block replaces the first):
    note every duplicate instead, with both lines."""

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicates: list[Problem] = []

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, str) and key in seen:
                self.duplicates.append(Problem(key, f"{key} appears twice (lines {seen[key]} and {line}): YAML would "
                                                    f"keep only the second; merge them into one", line))
            seen.setdefault(key, line)
        return super().construct_mapping(node, deep)


def read_yaml(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    """A run file's data and its node tree (for line numbers). Raises SpecError for text that is not YAML and for
    duplicate keys, every one with its lines."""
    try:
        loader = _UniqueKeys(text)
        try:
            raw = loader.get_single_data()
        finally:
            loader.dispose()
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else None
        raise SpecError([Problem("", f"not valid YAML: {getattr(e, 'problem', e)}", line)], source) from None
    except RecursionError:  # PyYAML composes nested nodes recursively
        raise SpecError([Problem("", "nested too deeply to be a run file (sections are two or three levels "
                                     "deep)", None)], source) from None
    if loader.duplicates:
        raise SpecError(sorted(loader.duplicates, key=lambda p: p.line), source)
    return raw, root


def load_spec(path: str | Path, overrides: list[str] | None = None) -> RunSpec:
    """Read and validate a run file. Raises SpecError (with lines) or FileNotFoundError."""
    path = Path(path)
    raw, root = read_yaml(path.read_text(encoding="utf-8"), str(path))
    return build_spec(raw or {}, overrides, source=str(path), yaml_root=root)


def spec_to_dict(spec: RunSpec) -> dict[str, Any]:
    """The spec as plain data for run.yaml: unset optional values left out."""

    def prune(cls: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key, value in data.items():
            info = cls.model_fields[key]
            sub = section_class(info.annotation, value)  # a stage's own class, by its type
            if sub is not None and isinstance(value, dict):
                value = prune(sub, value)
                if not value:
                    continue
            elif value is None and info.get_default(call_default_factory=True) is None:
                continue  # unset; a null that overrides a default (save_total_limit: null) stays
            elif isinstance(value, float) and value.is_integer() and abs(value) < 1e6:
                value = int(value)  # `alpha: 16`, not `alpha: 16.0`
            out[key] = value
        return out

    data = prune(RunSpec, spec.model_dump(mode="json"))
    method = data.get("method", {})
    for kind in ("lora", "freeze"):  # settings of the methods not chosen are noise in the file
        if method.get("type") != kind:
            method.pop(kind, None)
    if not method.get("quantization", {}).get("bits"):
        method.pop("quantization", None)
    for section, key in VISION_KEYS:  # vision-language settings at their defaults are noise in a text run's file
        fields = (MethodSpec if section == "method" else DataSpec).model_fields
        if data.get(section, {}).get(key) == fields[key].default:
            data[section].pop(key)
    return shorthand.collapse(data)


VISION_KEYS = (("method", "vision_tower"), ("method", "projector"), ("data", "image_max_pixels"),
               ("data", "image_min_pixels"))


def run_file_text(data: dict[str, Any], comments: list[str]) -> str:
    """A run file as every ftune writer writes it: the editors' schema line, `# comments`, then the YAML."""
    lines = [MODELINE, *(f"# {c}" if c else "#" for c in comments)]
    return "\n".join(lines) + "\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def write_run_file(path: str | Path, text: str) -> None:
    """Write `runs/<name>/run.yaml` (atomically) and keep `runs/run.schema.json`, which its first line names,
    up to date."""
    write_schema(schema_path_for(path))
    write_atomic(path, text)


def spec_to_yaml(spec: RunSpec) -> str:
    comment = f"ftune run file. Edit freely; `ftune train {spec.name}` validates it. Fields: docs/run-file.md"
    return run_file_text(spec_to_dict(spec), [comment])


def set_in_run_file(path: str | Path, overrides: list[str]) -> None:
    """`--set KEY=VALUE` written into a run file: its comments, order and shorthand kept, and the result validated
    before anything is written (the file's own mistakes, bad YAML or keys twice, name its lines)."""
    from ftune.runtime.spec.overrides import edit_in_place

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    read_yaml(text, str(path))
    edited = edit_in_place(text, overrides)
    raw, root = read_yaml(edited, f"{path} with --set")
    build_spec(raw or {}, source=f"{path} with --set", yaml_root=root)
    write_run_file(path, edited)


def save_spec(spec: RunSpec, path: str | Path) -> None:
    write_run_file(path, spec_to_yaml(spec))
