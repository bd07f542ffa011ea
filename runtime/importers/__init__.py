"""`ftune import`: a config written for another tool, turned into a run file, key by key.

    record.py        what an import carried over (source key, ftune key, value) and what it left out, and why
    common.py        transformers' TrainingArguments names, DeepSpeed configs, paths, a model's module names
    llamafactory.py  LLaMA-Factory training YAML (and `llamafactory-cli train FILE key=value` overrides)
    glm.py           GLM-4's finetune_demo config (data_config, training_args, peft_config)
    dodo.py          hosted-platform parameter sets with numeric codes (DoDo's Yi template)

The kind is found from the keys (`--kind` forces it). The run file is validated before it is written; settings
that need a CUDA GPU are left out (and listed) on a machine without one, so what is written trains here.
"""

from __future__ import annotations

import copy
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ftune.runtime.errors import UserError
from ftune.runtime.importers import dodo, glm, llamafactory
from ftune.runtime.importers.common import as_written, module_names
from ftune.runtime.importers.record import GPU_ONLY, NO_HOME, NO_MEANING, Carried, Context, Left
from ftune.runtime.models import local_path, looks_local
from ftune.runtime.rundir import RunDir
from ftune.runtime.spec import RunSpec, SpecError, build_spec
from ftune.runtime.spec.schema import STAGE_SPECS, not_of_stage, stages_text, stages_with
from ftune.runtime.spec.edit import compact, numbers, parse_assignment, set_path
from ftune.runtime.spec.io import read_yaml, run_file_text, write_run_file

__all__ = ["CONFIG_KINDS", "GPU_ONLY", "NO_HOME", "NO_MEANING", "Carried", "Imported", "Left", "detect_kind",
           "import_config", "is_foreign", "read_source", "write_imported"]

# the kinds of config `ftune import` reads (data kinds are formats.KINDS): kind -> what it is
CONFIG_KINDS = {"lf": "LLaMA-Factory training YAML", "glm": "GLM-4 finetune_demo config",
                "dodo": "hosted-platform parameter set (DoDo)"}
MAPPERS = {"lf": llamafactory, "glm": glm, "dodo": dodo}
EXPECTED = ("a LLaMA-Factory training YAML (model_name_or_path, stage, dataset, ...), a GLM-4 finetune_demo config "
            "(data_config, training_args, peft_config) or a hosted-platform parameter set (lora_r, model_save_type, "
            "...)")
RUN_FILE_KEYS = {"name", "preset", "model", "data", "training", "output", "resources"}


@dataclass
class Imported:
    kind: str
    source: Path
    raw: dict[str, Any]  # the run file, as it will be written
    carried: list[Carried]
    left: list[Left]
    warnings: list[str]
    spec: RunSpec

    @property
    def name(self) -> str:
        return self.raw["name"]


def read_source(path: str | Path) -> dict[str, Any]:
    """A config file as data: JSON or YAML (a key given twice is refused, with both lines)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror or e})") from None
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(text)
        except ValueError as e:
            raise UserError(f"{path}: not valid JSON ({e})") from None
    else:
        raw = read_yaml(text, str(path))[0]
        raw = numbers(raw)
    if not isinstance(raw, dict):
        raise UserError(f"{path} is not a config ftune can import: expected {EXPECTED}, as a mapping of keys")
    return raw


def detect_kind(raw: dict[str, Any]) -> str | None:
    """lf, glm or dodo, from the keys that only that tool writes; None when none of them fits."""
    scores = {kind: len(set(raw) & mod.MARKERS) for kind, mod in MAPPERS.items()}
    kind, score = max(scores.items(), key=lambda kv: kv[1])
    return kind if score else None


def is_foreign(raw: dict[str, Any]) -> bool:
    """A config of another tool (for `ftune new --from`), not an ftune run file."""
    return not (set(raw) & RUN_FILE_KEYS) and detect_kind(raw) is not None


def with_overrides(src: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`key=value` as llamafactory-cli takes them (dotted keys reach into sections), applied to the source."""
    out = copy.deepcopy(src)
    for item in overrides:
        parsed = parse_assignment(item)
        if parsed is None:
            raise UserError(f"override {item!r} is not KEY=VALUE (e.g. learning_rate=1e-5)")
        set_path(out, *parsed)
    return out


def import_config(path: str | Path, *, project: Path, kind: str | None = None, name: str | None = None,
                  dataset_dir: str | Path | None = None, model: str | None = None, data: str | None = None,
                  overrides: list[str] | tuple[str, ...] = (), gpu: bool | None = None,
                  require_all: bool = True) -> Imported:
    """Map a foreign config onto a validated run file. `gpu`: whether to keep settings that need a CUDA GPU
    (default: whether nvidia-ml-py sees one). `require_all`: a missing model or data set is an error (the wizard
    asks for them instead)."""
    path = Path(path)
    src = read_source(path)
    if kind is None:
        if set(src) & RUN_FILE_KEYS and not detect_kind({k: v for k, v in src.items() if k not in RUN_FILE_KEYS}):
            raise UserError(f"{path} is an ftune run file already: start from it with `ftune new --from {path}`, or "
                            "copy it to runs/<name>/run.yaml")
        kind = detect_kind(src)
        if kind is None:
            raise UserError(f"{path} is not a config ftune can import: expected {EXPECTED}")
    src = with_overrides(src, list(overrides))
    cwd = Path.cwd()
    ctx = Context(path, project, (cwd / Path(dataset_dir).expanduser()).resolve() if dataset_dir else None)
    rec = MAPPERS[kind].map_config(src, ctx)
    for key in overrides:
        key = key.partition("=")[0].strip()
        for c in rec.carried:
            if c.source == key:
                c.note = "; ".join(x for x in ("from the command line", c.note) if x)

    if model:
        rec.put("--model", "model.name_or_path", _model_as_written(model, project, cwd))
    else:
        given = rec.get("model.name_or_path")
        if given and not looks_local(given):
            found = next((base / given for base in ctx.look_in if (base / given / "config.json").is_file()), None)
            if found is not None:  # a folder beside the config (LLaMA-Factory's `models/...`)
                rec.put("model_name_or_path", "model.name_or_path", _model_as_written(found, project, cwd),
                        f"the folder {found}")
            elif given.split("/")[0] in ("models", "saves", "output", "outputs", "checkpoints"):
                rec.warn(f"model {given} reads as a hub id here, and no such folder is beside {path.name}: if it "
                         "is a local folder, pass --model PATH")
    if data:
        rec.put("--data", "data.train", [as_written(cwd / Path(data).expanduser(), project)])
        if rec.get("data.dataset_dir"):
            rec.drop("data.dataset_dir")
    if require_all:
        if not rec.get("model.name_or_path"):
            raise UserError(f"{path} ({CONFIG_KINDS[kind]}) names no model: pass --model PATH_OR_HUB_ID")
        if not rec.get("data.train"):
            raise UserError(f"{path} ({CONFIG_KINDS[kind]}) names no training data: pass --data FILE",
                            hint="; ".join(rec.warnings))
    rec.raw["name"] = name or _name_from(path)

    if gpu is None:
        from ftune.runtime.sysmon import gpu_samples

        gpu = bool(gpu_samples())
    if not gpu:
        for c in [c for c in rec.carried if c.gpu]:
            rec.drop(c.target)
            rec.leave(c.source, f"{c.target}: {_yaml(c.value)}", GPU_ONLY, "needs a CUDA GPU and none is visible "
                                                                           "here: add it on a GPU machine (or import "
                                                                           "with --gpu)")
    if rec.get("training.predict_with_generate") and not rec.get("data.test"):
        c = next(c for c in rec.carried if c.target == "training.predict_with_generate")
        rec.drop(c.target)
        rec.leave(c.source, c.value, NO_HOME, "training.predict_with_generate answers data.test, and no single test "
                                              "file was carried over")
    stage = rec.get("stage.type", "sft")
    staged = {c.target.removeprefix("stage."): c for c in rec.carried if c.target.startswith("stage.")}
    for key in not_of_stage(stage, staged) if stage in STAGE_SPECS else []:
        # LLaMA-Factory reads pref_beta for its preference stages and ignores it elsewhere: so here, saying so
        rec.drop(staged[key].target)
        rec.leave(staged[key].source, staged[key].value, NO_MEANING,
                  f"a setting of stage {stages_text(stages_with(key))}; this run is stage {stage}")
    _check_targets(rec, project)
    raw = compact(rec.raw)
    try:
        spec = build_spec(copy.deepcopy(raw), source=f"the run file imported from {path}")
    except SpecError as e:
        e.hint = e.hint or "Change the source file (or pass KEY=VALUE overrides) and import it again."
        raise
    return Imported(kind, path, raw, rec.carried, rec.left, rec.warnings, spec)


def write_imported(root: Path, imported: Imported, overwrite: bool = False) -> RunDir:
    """Write runs/<name>/run.yaml, with what was not carried over as comments at its top."""
    run = RunDir(root, imported.name)
    if run.spec_path.exists():
        if not overwrite:
            raise UserError(f"{run.spec_path} exists already: choose another --name, or pass --overwrite")
        if run.is_locked():
            raise UserError(f"run '{run.name}' is training now: stop it first (`ftune stop {run.name}`)")
    stamp = time.strftime("%Y-%m-%d %H:%M")
    lines = [f"ftune run file, imported by `ftune import` from {imported.source} ({CONFIG_KINDS[imported.kind]}) "
             f"on {stamp}.",
             "Values not set here are ftune's defaults (docs/run-file.md; docs/import.md)."]
    if imported.left:
        lines.append("Not carried over:")
        lines += [f"  {x.source}: {_yaml(x.value)} ({x.reason}: {x.why})" for x in imported.left]
    lines += [f"warning: {w}" for w in imported.warnings]
    write_run_file(run.spec_path, run_file_text(imported.raw, lines))
    return run


def _name_from(path: Path) -> str:
    """qwen3_lora_sft.yaml -> qwen3-lora-sft."""
    name = re.sub(r"[^a-z0-9]+", "-", path.stem.lower()).strip("-")[:64].strip("-")
    return name or "imported"


def _model_as_written(model: str | Path, project: Path, cwd: Path) -> str:
    """A local model folder relative to the project (with ./ where it would read as a hub id); a hub id as is."""
    text = str(model)
    folder = Path(text).expanduser()
    folder = folder if folder.is_absolute() else cwd / folder
    if not (looks_local(text) or folder.exists()):
        return text
    written = as_written(folder, project)
    return written if Path(written).is_absolute() or looks_local(written) else f"./{written}"


def _check_targets(rec, project: Path) -> None:
    """Warn when LoRA's named target modules are not in the chosen model (GLM-4's query_key_value on a Qwen)."""
    targets = rec.get("method.lora.target_modules")
    model = rec.get("model.name_or_path")
    if not isinstance(targets, list) or not model or rec.get("method.type", "lora") != "lora":
        return
    folder = local_path(model, project)
    names = module_names(folder) if folder.is_dir() else None
    if names is None:
        rec.warn(f"method.lora.target_modules {targets}: not checked against {model} (not a local folder with "
                 "safetensors weights); LoRA fails when the model has no module of these names")
        return
    missing = [t for t in targets if t not in names]
    if missing:
        linear = sorted(n for n in names if n.endswith("proj") or n in ("query_key_value", "dense", "c_attn"))
        rec.warn(f"method.lora.target_modules: {model} has no module named {', '.join(missing)}"
                 + (f" (its projections: {', '.join(linear[:8])})" if linear else "")
                 + "; use target_modules: all, or its own names")


def _yaml(value: Any) -> str:
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()
