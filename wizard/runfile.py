"""From answers to `runs/<name>/run.yaml`: shared by the questions and the flags.

The run file the wizard writes holds the answers only (name, preset, model, data, stage, method and
the settings changed on purpose); `ftune train` merges the preset and the defaults under it, the same
way for every run file. Every check goes through `build_spec`: a stage, method or template is
"supported" exactly when the run spec accepts it, so the wizard follows the spec as it grows.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ftune.presets import load_preset
from ftune.runtime import memory_estimate
from ftune.runtime.catalog import ModelInfo
from ftune.runtime.errors import UserError
from ftune.runtime.models import looks_local
from ftune.runtime.present import gb, value_text
from ftune.runtime.rundir import RunDir
from ftune.runtime.spec import Problem, RunSpec, SpecError, build_spec, shorthand
from ftune.runtime.spec import io as spec_io
from ftune.runtime.spec.edit import compact, del_path, get_path, set_path
from ftune.runtime.spec.schema import not_of_stage
from ftune.runtime.train import stages

# --------------------------------------------------------------------------- the choices
# stage: (label, what it is, when to use it), from the stage registry (train/stages/)
STAGES: dict[str, tuple[str, str, str]] = {s.name: (s.label, s.what, s.when) for s in stages.STAGES.values()}

METHODS: dict[str, str] = {
    "lora": "Trains a small adapter beside the frozen weights: the usual choice.",
    "qlora-8": "LoRA on a base model loaded in 8 bits: about half the memory of LoRA, a little slower.",
    "qlora-4": "LoRA on a 4-bit base model: the least memory, for big models on small GPUs.",
    "dora": "LoRA that learns the size and direction of each change apart: often a little better, slower.",
    "full": "Updates every weight with mixed precision: the most capacity and by far the most memory.",
    "full-bf16": "Updates every weight in bf16 without fp32 copies: less memory than AMP; needs a bf16 GPU.",
    "freeze": "Trains only the last few layers and freezes the rest: between LoRA and full.",
}

# What each method sets in the run file (dotted path -> value); the other methods' keys are cleared.
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "lora": {"method.type": "lora"},
    "qlora-8": {"method.type": "lora", "method.quantization.bits": 8},
    "qlora-4": {"method.type": "lora", "method.quantization.bits": 4},
    "dora": {"method.type": "lora", "method.lora.use_dora": True},
    "full": {"method.type": "full"},
    "full-bf16": {"method.type": "full", "training.precision": "pure_bf16"},
    "freeze": {"method.type": "freeze"},
}
_METHOD_PATHS = ("method.type", "method.quantization.bits", "method.lora.use_dora")

PLACEHOLDERS = {"name": "run-01", "model.name_or_path": "model", "data.train": "train.jsonl"}


class WizardError(UserError):
    """An answer that cannot be used, or one that is missing where nobody can be asked."""


def method_from_raw(raw: dict[str, Any]) -> str:
    raw = shorthand.expand(raw)
    return memory_estimate.method_key(get_path(raw, "method.type", "lora"), get_path(raw, "method.quantization.bits"),
                             bool(get_path(raw, "method.lora.use_dora", False)),
                             get_path(raw, "training.precision", "auto"))


# --------------------------------------------------------------------------- the answers
@dataclass
class Answers:
    base: dict[str, Any] = field(default_factory=dict)  # a --from file, as written
    name: str | None = None
    model: str | None = None  # as the run file will say it
    trust_remote_code: bool = False
    template: str = "auto"  # the value written (named templates only where the spec accepts them)
    template_choice: str | None = None  # what the user picked, for going back
    stage: str = "sft"
    method: str = "lora"
    data: str | None = None  # as the run file will say it
    validation: str | None = None
    val_size: float | None = None  # None: the spec's default
    on_invalid: str | None = None
    preset: str | None = "standard"
    settings: dict[str, Any] = field(default_factory=dict)  # dotted path -> value (advanced)
    overrides: list[str] = field(default_factory=list)  # --set KEY=VALUE, applied last

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> "Answers":
        """Answers pre-filled from a (partial) run file; everything else in it is kept as it is."""
        raw = shorthand.expand(raw)
        a = cls(base=raw)
        a.name = raw.get("name")
        a.model = get_path(raw, "model.name_or_path")
        a.trust_remote_code = bool(get_path(raw, "model.trust_remote_code", False))
        a.template = get_path(raw, "model.template", "auto")
        train = get_path(raw, "data.train")
        a.data = train[0] if isinstance(train, list) and len(train) == 1 else train
        a.validation = get_path(raw, "data.validation")
        a.val_size = get_path(raw, "data.val_size")
        a.on_invalid = get_path(raw, "data.on_invalid")
        a.stage = get_path(raw, "stage.type", "sft")
        a.method = method_from_raw(raw)
        a.preset = raw.get("preset", "standard")  # `preset: null` in the file: none
        return a

    def to_raw(self, placeholders: bool = False) -> dict[str, Any]:
        """The run file for these answers (`placeholders` fills a name, model and data not given yet,
        so one answer can be checked before the others exist)."""
        raw = shorthand.expand(self.base)
        for key, value in (("name", self.name), ("model.name_or_path", self.model), ("data.train", self.data)):
            if value:
                set_path(raw, key, value)
            elif placeholders and not get_path(raw, key):
                set_path(raw, key, PLACEHOLDERS[key])
        if self.preset:
            raw["preset"] = self.preset
        else:
            raw.pop("preset", None)
        if self.trust_remote_code:
            set_path(raw, "model.trust_remote_code", True)
        if self.template != "auto":
            set_path(raw, "model.template", self.template)
        else:
            del_path(raw, "model.template")
        for key, value in (("data.validation", self.validation), ("data.val_size", self.val_size),
                           ("data.on_invalid", self.on_invalid)):
            if value is not None:
                set_path(raw, key, value)
            else:
                del_path(raw, key)
        set_path(raw, "stage.type", self.stage)
        for key in not_of_stage(self.stage, list(raw["stage"])):  # a --from file's settings of its own stage
            del raw["stage"][key]
        for path in _METHOD_PATHS:
            del_path(raw, path)
        if get_path(raw, "training.precision") == "pure_bf16":
            del_path(raw, "training.precision")
        for path, value in METHOD_SETTINGS[self.method].items():
            set_path(raw, path, value)
        for path, value in self.settings.items():
            set_path(raw, path, value)
        if self.overrides:
            from ftune.runtime.spec import apply_overrides

            raw = apply_overrides(raw, self.overrides)
        return compact(raw)


# --------------------------------------------------------------------------- checking through the spec
def problems_of(raw: dict[str, Any]) -> list[Problem]:
    try:
        build_spec(raw)
        return []
    except SpecError as e:
        return e.problems


def _under(problem: Problem, prefix: str) -> bool:
    return problem.path == prefix or problem.path.startswith(prefix + ".")


def refusals(answers: Answers, *prefixes: str, **changes: Any) -> list[Problem]:
    """The spec's problems with the answers (with `changes` applied: attribute=value) at any of `prefixes`.
    Answers still missing are filled with placeholders."""
    trial = copy.deepcopy(answers)
    for key, value in changes.items():
        setattr(trial, key, value)
    try:
        raw = trial.to_raw(placeholders=True)
    except SpecError as e:
        return e.problems
    return [p for p in problems_of(raw) if any(_under(p, pre) for pre in prefixes)]


def refusal(answers: Answers, *prefixes: str, **changes: Any) -> str | None:
    """Why the spec refuses the answers at `prefixes` (see `refusals`), in one line; None when it accepts them."""
    return "; ".join(f"{p.path}: {p.message}" for p in refusals(answers, *prefixes, **changes)) or None


def setting_refusal(answers: Answers, path: str, value: Any) -> str | None:
    """Why `path: value` is refused (the message only), or None."""
    trial = copy.deepcopy(answers)
    trial.settings[path] = value
    raw = trial.to_raw(placeholders=True)
    found = [p for p in problems_of(raw) if _under(p, path)]
    return "; ".join(p.message for p in found) or None


@dataclass
class Checked:
    """The answers validated: the run file's data and the spec as training will see it."""

    raw: dict[str, Any]
    spec: RunSpec


def check(answers: Answers, placeholders: bool = False) -> Checked:
    """Validate everything; raises SpecError for any mistake."""
    raw = answers.to_raw(placeholders=placeholders)
    found = problems_of(raw)
    if found:
        raise SpecError(found, "the run file")
    trial = shorthand.expand(raw)
    if get_path(trial, "method.type") != "lora":
        del_path(trial, "method.quantization.bits")
    spec = build_spec(trial, source="the run file")
    dumped = spec.model_dump(mode="json")
    for path, value in shorthand.flatten(raw).items():  # `--set training.learning_rate=2e-4` is a string in YAML 1.1
        typed = get_path(dumped, path, value)
        if isinstance(value, str) and isinstance(typed, (int, float)) and not isinstance(typed, bool):
            set_path(raw, path, typed)
    return Checked(raw, spec)


# --------------------------------------------------------------------------- memory
def method_of(spec: RunSpec, key: str | None = None) -> str:
    m = spec.method
    return key or memory_estimate.method_key(m.type, m.quantization.bits, m.lora.use_dora, spec.training.precision)


def estimate_for(info: ModelInfo | None, spec: RunSpec, gpus: list[memory_estimate.Gpu], method: str | None = None):
    """(Estimate, Verdict) for the model and the spec's batch and length, or None when the size is unknown."""
    if info is None or not info.params_b:
        return None
    return memory_estimate.check(info.params_b, method_of(spec, method), gpus, seq_len=spec.data.max_length,
                        batch=spec.training.per_device_train_batch_size,
                        gradient_checkpointing=spec.training.gradient_checkpointing,
                        precision=spec.training.precision, **memory_estimate.sharding(spec, len(gpus)),
                        **info.shape_for(spec))


def planned_steps(spec: RunSpec, valid_rows: int) -> tuple[int, int, int]:
    """(training rows, rows held out, optimizer steps) the run will take: max_samples and val_size applied as the
    data split applies them."""
    d, t = spec.data, spec.training
    rows = min(valid_rows, d.max_samples) if d.max_samples else valid_rows
    held = 0 if d.validation else int(round(rows * d.val_size))
    held = held if 1 <= held < rows else 0
    rows -= held
    if t.max_steps:
        return rows, held, t.max_steps
    per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps
    return rows, held, max(1, math.ceil(t.num_train_epochs * math.ceil(rows / per_step)))


def pace_here(root: Path, model: str | None) -> tuple[str, float] | None:
    """(run name, rows per second) of the newest finished run of the same model on this machine, from its step
    events: what a time estimate can honestly rest on."""
    from ftune.runtime.events import read_all
    from ftune.runtime.rundir import list_run_names

    if not model:
        return None
    found = []
    for name in list_run_names(root):
        run = RunDir(root, name)
        if run.state() != "finished":
            continue
        try:
            if (yaml.safe_load(run.spec_path.read_text(encoding="utf-8")) or {}).get("model", {}).get(
                    "name_or_path") != model:
                continue
        except (yaml.YAMLError, AttributeError, OSError):
            continue
        rates = sorted(e["samples_per_s"] for e in read_all(run.events_path)
                       if e.get("type") == "step" and e.get("samples_per_s"))
        if rates:
            found.append((run.events_path.stat().st_mtime, name, rates[len(rates) // 2]))
    return max(found)[1:] if found else None


def plan_line(spec: RunSpec, valid_rows: int, root: Path, model: str | None, gpus: list[memory_estimate.Gpu]) -> str:
    """'58 training rows (+6 to evaluate) → 24 steps on the CPU (no NVIDIA GPU found): about 3 minutes at the pace
    of run-02 here (4.0 rows/s)'."""
    rows, held, steps = planned_steps(spec, valid_rows)
    where = "on the GPU" if gpus else "on the CPU (no NVIDIA GPU found)"
    line = f"{rows} training rows{f' (+{held} to evaluate)' if held else ''} → {steps} steps {where}"
    pace = pace_here(root, model)
    if pace is None:
        return line + "; no time estimate yet (no earlier run of this model here)"
    per_step = spec.training.per_device_train_batch_size * spec.training.gradient_accumulation_steps
    minutes = steps * per_step / pace[1] / 60
    took = f"about {minutes:.0f} minutes" if minutes >= 1.5 else f"about {max(1, round(minutes * 60))} s"
    return line + f": {took} at the pace of {pace[0]} here ({pace[1]:.1f} rows/s)"


def matched_template(a: "Answers", info: ModelInfo | None) -> str:
    """The template the model was trained with, where this ftune names it; else 'auto' (the tokenizer's own).
    The wizard's default and `ftune new --yes`'s alike."""
    matched = info.template if info else None
    if matched and matched != "auto" and refusal(a, "model.template", template=matched) is None:
        return matched
    return "auto"


def lora_trainable_for(info: ModelInfo | None, spec: RunSpec) -> int | None:
    """The parameters the run's new LoRA adapter trains (peft's count), where the model's config.json is here."""
    lora = spec.method.lora
    if info is None or info.config is None or spec.method.type != "lora" or (lora.adapter and not
                                                                            lora.create_new_adapter):
        return None
    reward = not spec.stage.definition.causal_lm  # a score head, not the LM head
    return memory_estimate.lora_trainable(info.config, lora.rank, lora.target_modules, dora=lora.use_dora,
                                          modules_to_save=lora.modules_to_save, reward=reward)


def estimate_line(info: ModelInfo | None, spec: RunSpec, gpus: list[memory_estimate.Gpu],
                  method: str | None = None) -> str:
    result = estimate_for(info, spec, gpus, method)
    if result is None:
        return "memory: model size unknown, no estimate"
    est, verdict = result
    gc = ", gradient checkpointing" if spec.training.gradient_checkpointing else ""
    return (f"memory: ~{gb(est.total_gb)} ({memory_estimate.LABELS[est.method]} on "
            f"a {params_text(info.params_b)}-parameter model, "
            f"{spec.data.max_length} tokens × batch {spec.training.per_device_train_batch_size}{gc}"
            f"{f', vision tower and one image a row: {est.image_tokens} tokens each' if est.image_tokens else ''}): "
            f"{verdict.text}")


# --------------------------------------------------------------------------- presets
_SHORT = {
    "training.learning_rate": "lr", "training.num_train_epochs": "epochs",
    "training.per_device_train_batch_size": "batch", "method.lora.rank": "LoRA r", "method.lora.alpha": "α",
    "method.lora.dropout": "dropout",
}


def params_text(params_b: float) -> str:
    """7.62B, 135M, 110K parameters."""
    if params_b >= 1:
        return f"{params_b:.3g}B"
    if params_b >= 0.001:
        return f"{params_b * 1000:.3g}M"
    return f"{params_b * 1e6:.3g}K"


def preset_values(name: str) -> dict[str, Any]:
    return shorthand.flatten(load_preset(name))


def preset_summary(name: str, skip: set[str] | frozenset[str] = frozenset()) -> str:
    """'lr 1e-4 · epochs 2 · batch 8 · LoRA r 4 · α 16 · dropout 0.05' (without the keys in `skip`)."""
    return " · ".join(f"{_SHORT.get(k, k)} {value_text(v)}" for k, v in preset_values(name).items() if k not in skip)


# --------------------------------------------------------------------------- writing
def as_written(path: str | Path, project: Path, cwd: Path | None = None) -> str:
    """A path as the run file should say it: relative to the project folder when inside it, else absolute."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = (cwd or Path.cwd()) / p
    p = p.resolve()
    try:
        return p.relative_to(project.resolve()).as_posix()
    except ValueError:
        return str(p)


def model_as_written(path: str | Path, project: Path, cwd: Path | None = None) -> str:
    """A model folder as the run file should say it: like `as_written`, with './' in front where the relative
    path would otherwise read as a hub id (`mymodel`, `models/tiny`), so every reader takes it as a folder."""
    written = as_written(path, project, cwd)
    return written if Path(written).is_absolute() or looks_local(written) else f"./{written}"


def run_file_text(checked: Checked, when: float | None = None) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(when))
    lines = [f"ftune run file, written by `ftune new` on {stamp}.",
             "Values not set here come from the preset and the defaults (docs/run-file.md)."]
    return spec_io.run_file_text(checked.raw, lines)


def write_run(root: Path, checked: Checked) -> RunDir:
    run = RunDir(root, checked.raw["name"])
    spec_io.write_run_file(run.spec_path, run_file_text(checked))
    return run
