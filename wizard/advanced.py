"""The advanced settings: every knob that training uses, grouped, with its current value and where it
comes from (default, preset, or yours). Each value is checked by the run spec as it is entered."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


from ftune.runtime.spec import RunSpec
from ftune.wizard.prompts import BACK, Option, Prompter
from ftune.runtime.spec.edit import field_info, get_path, literal_values, parse_value
from ftune.runtime.present import value_text
from ftune.runtime.spec.schema import STAGE_SPECS, iter_fields
from ftune.wizard.runfile import Answers, preset_values, setting_refusal

DONE, DEFAULT = "__done__", "__default__"


@dataclass
class Context:
    """What the menu needs from the wizard: the answers it edits, the prompter it asks with, and the run spec
    the answers make now."""

    answers: Answers
    prompter: Prompter
    spec_now: Callable[[], RunSpec]

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
    "Stage": (),  # the chosen stage's own settings, from its StageDef (knobs)
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


def knobs(group: str, stage: str | None = None) -> list[str]:
    """The group's settings, as the advanced menu lists them. "Stage" holds `stage`'s own (every stage's when none is
    given), less its type and the reward model, which the stage question asks."""
    if group != "Stage":
        return list(GROUPS[group])
    paths = [p for p, _, _ in iter_fields() if p.startswith("stage.")] if stage not in STAGE_SPECS else \
        [f"stage.{name}" for name in STAGE_SPECS[stage].model_fields]
    return [p for p in paths if p not in ("stage.type", "stage.reward_model")]


def current(c: Context, path: str) -> tuple[Any, str]:
    """The value the run would use and where it comes from: yours, preset or default."""
    value = get_path(c.spec_now().model_dump(mode="json"), path)
    if path in c.answers.settings:
        return value, "yours"
    if c.answers.preset and path in preset_values(c.answers.preset):
        return value, "preset"
    return value, "default"


_FOR = {"LoRA": "LoRA methods", "Freeze": "the freeze method", "Full-weight": "full and freeze"}


def _short_lora(path: str) -> str:
    for prefix in ("method.lora.", "method.freeze.", "method.", "training.", "stage."):
        path = path.removeprefix(prefix)
    return path


def edit(c: Context) -> Any:
    """The group list; returns BACK to leave for the preset question, None when done."""
    group = None
    while True:
        options = []
        for name in GROUPS:
            paths = knobs(name, c.answers.stage)
            changed = sum(1 for p in paths if p in c.answers.settings)
            off = {"LoRA": not c.answers.method.startswith(("lora", "qlora", "dora")), "Freeze": c.answers.method != "freeze",
                   "Full-weight": not c.answers.method.startswith(("full", "freeze"))}.get(name, False)
            note = f"  (for {_FOR[name]})" if off else (f"  {changed} changed" if changed else "")
            if not paths:  # the Stage group of a stage without settings of its own (sft, pt, rm): said, not hidden
                note = f"  (none for stage {c.answers.stage})"
            what = "Settings: " + ", ".join(_short_lora(p) for p in paths) + "." if paths else \
                f"Stage {c.answers.stage} has no settings of its own."
            options.append(Option(f"{name:<11}{note}", name, what))
        options.append(Option("Done: review the run", DONE))
        group = c.prompter.select(f"Advanced settings (from preset {c.answers.preset})", options, default=group or "Training")
        if group is BACK:
            return BACK
        if group == DONE:
            return None
        edit_group(c, group)


def edit_group(c: Context, group: str) -> None:
    knob = None
    while True:
        options = []
        room = max(14, c.prompter.ui.width - 4 - 29 - 9)  # pointer, name, source: the value has the rest
        for path in knobs(group, c.answers.stage):
            value, source = current(c, path)
            mark = "*" if source == "yours" else " "
            shown, whole = _fit(value_text(value), room), value_text(value)
            description = field_info(path).description + ("" if shown == whole else f"\nNow: {whole}")
            options.append(Option(f"{mark}{_short_lora(path):<28} {source:<8} {shown}", path, description))
        options.append(Option("Back to the groups", DONE))
        knob = c.prompter.select(f"{group} (* changed by you)", options, default=knob)
        if knob is BACK or knob == DONE:
            return
        edit_knob(c, knob)


def _fit(text: str, room: int) -> str:
    """A value in `room` columns, cut between list items and said so ("[a, b] +3 more"), never mid-word; the
    description shows it whole."""
    if len(text) <= room:
        return text
    items = text.strip("[]").split(", ")
    for n in range(len(items) - 1, 0, -1):
        cut = f"[{', '.join(items[:n])}] +{len(items) - n} more"
        if len(cut) <= room:
            return cut
    return f"{len(items)} items" if len(items) > 1 else text[:room]


def _short_reason(why: str | None) -> str | None:
    """Why a choice is greyed out, short enough to sit beside it in an 80-column terminal: the fix, which the
    spec's messages put after their last colon ("...: use method.type full or freeze")."""
    if not why:
        return None
    why = why.rsplit(": ", 1)[-1]
    return why if len(why) <= 60 else why[:59].rstrip() + "…"


def edit_knob(c: Context, path: str) -> Any:
    info = field_info(path)
    value, source = current(c, path)
    values = literal_values(info.annotation)
    if values is None and info.annotation is bool:
        values = [True, False]
    if values is not None:
        options = []
        for v in values:
            why = setting_refusal(c.answers, path, v)
            options.append(Option(value_text(v) + ("  (current)" if v == value else ""), v, info.description,
                                  disabled=_short_reason(why)))
        if path in c.answers.settings:
            options.append(Option("back to the default", DEFAULT))
        choice = c.prompter.select(_short_lora(path), options, default=value)
        if choice is BACK:
            return BACK
    else:
        def validate(text: str) -> bool | str:
            if not text.strip():
                return True
            return setting_refusal(c.answers, path, parse_value(text)) or True

        answer = c.prompter.text(f"{_short_lora(path)} ({info.description})",
                                 "" if value is None else value_text(value), validate,
                                 instruction="(empty: back to the default; Ctrl+B back)", validate_while_typing=False)
        if answer is BACK:
            return BACK
        choice = DEFAULT if not answer.strip() else parse_value(answer)
    c.answers.settings.pop(path, None)
    if choice != DEFAULT and choice != current(c, path)[0]:  # the same as without it: nothing to write
        c.answers.settings[path] = choice
    return None
