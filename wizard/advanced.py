"""The advanced settings: every knob that training uses, grouped, with its current value and where it
comes from (default, preset, or yours). Each value is checked by the run spec as it is entered."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml

from ftune.wizard.prompts import BACK, Option
from ftune.wizard.runfile import field_info, fmt, get_path, literal_values, preset_values, setting_refusal

if TYPE_CHECKING:
    from ftune.wizard.flow import Wizard

DONE, DEFAULT = "__done__", "__default__"

GROUPS: dict[str, tuple[str, ...]] = {
    "Training": (
        "training.num_train_epochs", "training.max_steps", "training.learning_rate",
        "training.per_device_train_batch_size", "training.gradient_accumulation_steps", "data.max_length",
        "training.lr_scheduler_type", "training.warmup_ratio", "training.warmup_steps", "training.optim",
        "training.weight_decay", "training.max_grad_norm", "training.neftune_noise_alpha", "data.train_on_prompt",
        "training.seed",
    ),
    "LoRA": (
        "method.lora.rank", "method.lora.alpha", "method.lora.dropout", "method.lora.target_modules",
        "method.lora.use_rslora", "method.lora.use_dora", "method.lora.modules_to_save",
    ),
    "Freeze": ("method.freeze.trainable_layers", "method.freeze.trainable_modules", "method.freeze.extra_modules",
               "method.llama_pro_blocks"),
    "Full-weight": ("method.galore", "method.apollo", "method.badam"),
    "RL": ("stage.rl_algorithm", "stage.num_generations", "stage.max_completion_length", "stage.kl_beta"),
    "Precision": ("training.precision", "training.gradient_checkpointing", "model.attn_implementation",
                  "model.acceleration"),
    "Saving": (
        "training.save_strategy", "training.save_steps", "training.save_total_limit", "training.logging_strategy",
        "training.logging_steps",
        "output.save_format", "output.dir", "training.auto_resume",
    ),
    "Evaluation": ("training.eval_strategy", "training.eval_steps", "training.per_device_eval_batch_size",
                   "training.compute_accuracy"),
}


def knobs(group: str) -> list[str]:
    """The group's settings, as the advanced menu lists them."""
    return list(GROUPS[group])


def current(w: "Wizard", path: str) -> tuple[Any, str]:
    """The value the run would use and where it comes from: yours, preset or default."""
    value = get_path(w.spec_now().model_dump(mode="json"), path)
    if path in w.a.settings:
        return value, "yours"
    if w.a.preset and path in preset_values(w.a.preset):
        return value, "preset"
    return value, "default"


_FOR = {"LoRA": "LoRA methods", "Freeze": "the freeze method", "Full-weight": "full and freeze", "RL": "stage rl"}


def _short_lora(path: str) -> str:
    for prefix in ("method.lora.", "method.freeze.", "method.", "training.", "stage."):
        path = path.removeprefix(prefix)
    return path


def edit(w: "Wizard") -> Any:
    """The group list; returns BACK to leave for the preset question, None when done."""
    group = None
    while True:
        options = []
        for name in GROUPS:
            paths = knobs(name)
            if not paths:
                continue
            changed = sum(1 for p in paths if p in w.a.settings)
            off = {"LoRA": not w.a.method.startswith(("lora", "qlora", "dora")), "Freeze": w.a.method != "freeze",
                   "Full-weight": not w.a.method.startswith(("full", "freeze")), "RL": w.a.stage != "rl"}.get(name, False)
            note = f"  (for {_FOR[name]})" if off else (f"  {changed} changed" if changed else "")
            options.append(Option(f"{name:<11}{note}", name,
                                  "Settings: " + ", ".join(_short_lora(p) for p in paths) + "."))
        options.append(Option("Done: review the run", DONE))
        group = w.p.select(f"Advanced settings (from preset {w.a.preset})", options, default=group or "Training")
        if group is BACK:
            return BACK
        if group == DONE:
            return None
        edit_group(w, group)


def edit_group(w: "Wizard", group: str) -> None:
    knob = None
    while True:
        options = []
        for path in knobs(group):
            value, source = current(w, path)
            mark = "*" if source == "yours" else " "
            options.append(Option(f"{mark}{_short_lora(path):<28} {fmt(value):<14} {source}", path,
                                  field_info(path).description))
        options.append(Option("Back to the groups", DONE))
        knob = w.p.select(f"{group} (* changed by you)", options, default=knob)
        if knob is BACK or knob == DONE:
            return
        edit_knob(w, knob)


def _short_reason(why: str | None) -> str | None:
    """Why a choice is greyed out, short enough to sit beside it in an 80-column terminal: the fix, which the
    spec's messages put after their last colon ("...: use method.type full or freeze")."""
    if not why:
        return None
    why = why.rsplit(": ", 1)[-1]
    return why if len(why) <= 60 else why[:59].rstrip() + "…"


def _parse(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def edit_knob(w: "Wizard", path: str) -> Any:
    info = field_info(path)
    value, source = current(w, path)
    values = literal_values(path)
    if values is None and info.annotation is bool:
        values = [True, False]
    if values is not None:
        options = []
        for v in values:
            why = setting_refusal(w.a, path, v)
            options.append(Option(fmt(v) + ("  (current)" if v == value else ""), v, info.description,
                                  disabled=_short_reason(why)))
        if path in w.a.settings:
            options.append(Option("back to the default", DEFAULT))
        choice = w.p.select(_short_lora(path), options, default=value)
        if choice is BACK:
            return BACK
    else:
        def validate(text: str) -> bool | str:
            if not text.strip():
                return True
            return setting_refusal(w.a, path, _parse(text)) or True

        answer = w.p.text(f"{_short_lora(path)} ({info.description})", "" if value is None else fmt(value), validate,
                          instruction="(empty: back to the default; Ctrl+B back)", validate_while_typing=False)
        if answer is BACK:
            return BACK
        choice = DEFAULT if not answer.strip() else _parse(answer)
    w.a.settings.pop(path, None)
    if choice != DEFAULT and choice != current(w, path)[0]:  # the same as without it: nothing to write
        w.a.settings[path] = choice
    return None
