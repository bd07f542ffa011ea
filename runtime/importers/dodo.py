"""A hosted platform's parameter set with numeric codes (DoDo's Yi conversation template, an Unsloth LoRA recipe),
as JSON or YAML, onto a run file. The codes are the ones the platform's page lists; the names themselves are
taken too. Values may come as strings ("2048"), as such forms send them."""

from __future__ import annotations

from typing import Any

from ftune.runtime.importers.record import NO_HOME, NO_MEANING, Context, Record
from ftune.runtime.spec.edit import parse_value

MARKERS = {"model_save_type", "lora_r", "random_state", "load_in_4bit", "use_rslora", "max_seq_length",
           "dataset_num_proc"}
CODES = {
    "optim": ("training.optim", {0: "adamw_8bit", 1: "adamw_torch"}),
    "lr_scheduler_type": ("training.lr_scheduler_type", {0: "linear", 1: "cosine", 2: "cosine_with_restarts",
                                                         3: "polynomial"}),
    "model_save_type": ("output.save_format", {0: "lora", 1: "merged_16bit", 2: "merged_4bit"}),
    "save_strategy": ("training.save_strategy", {0: "no", 1: "epoch", 2: "steps"}),
}
SIMPLE = {"max_seq_length": "data.max_length", "lora_alpha": "method.lora.alpha", "lora_dropout": "method.lora.dropout",
          "lora_r": "method.lora.rank", "per_device_train_batch_size": "training.per_device_train_batch_size",
          "gradient_accumulation_steps": "training.gradient_accumulation_steps",
          "warmup_steps": "training.warmup_steps", "num_train_epochs": "training.num_train_epochs",
          "learning_rate": "training.learning_rate", "logging_steps": "training.logging_steps",
          "weight_decay": "training.weight_decay", "seed": "training.seed", "save_total_limit":
          "training.save_total_limit", "save_steps": "training.save_steps", "dataset_num_proc": "data.num_proc"}
FLAGS = {"use_rslora": "method.lora.use_rslora", "overwrite_output_dir": "training.auto_resume"}


def _value(v: Any) -> Any:
    """ "2048" -> 2048, "2e-4" -> 0.0002: forms send numbers as text."""
    parsed = parse_value(v) if isinstance(v, str) else v
    return parsed if isinstance(parsed, (int, float)) and not isinstance(parsed, bool) else v


def _flag(v: Any) -> bool | None:
    v = _value(v)
    if isinstance(v, bool):
        return v
    return {0: False, 1: True}.get(v) if isinstance(v, int) else None


def map_config(src: dict[str, Any], ctx: Context) -> Record:
    rec = Record("dodo")
    rec.put("(the template)", "method.type", "lora", "the platform's template trains a LoRA adapter")
    values = {k: _value(v) for k, v in src.items()}
    for key, value in values.items():
        if key in CODES:
            target, codes = CODES[key]
            if value in codes:
                rec.put(key, target, codes[value], f"code {value}", gpu=codes[value] in ("adamw_8bit", "merged_4bit"))
            elif value in codes.values():
                rec.put(key, target, value, gpu=value in ("adamw_8bit", "merged_4bit"))
            else:
                rec.leave(key, value, NO_HOME, f"the codes are {', '.join(f'{c}: {n}' for c, n in codes.items())}")
        elif key == "load_in_4bit":
            flag = _flag(value)
            if flag:
                rec.put(key, "method.quantization.bits", 4, "1: 4-bit (QLoRA)", gpu=True)
            elif flag is False:
                rec.leave(key, value, NO_MEANING, "0: the base model is not quantised, as in ftune by default")
            else:
                rec.leave(key, value, NO_HOME, "takes 0 or 1")
        elif key in FLAGS:
            flag = _flag(value)
            if flag is None:
                rec.leave(key, value, NO_HOME, "takes 0 or 1")
            else:
                rec.put(key, FLAGS[key], flag, f"{int(flag)}: {'on' if flag else 'off'}")
        elif key == "max_steps":
            if isinstance(value, int) and value > 0:
                rec.put(key, "training.max_steps", value)
            else:
                rec.leave(key, value, NO_MEANING, "no step limit: num_train_epochs decides")
        elif key == "random_state":  # Unsloth seeds the LoRA weights with it; ftune seeds everything with one seed
            seed = values.get("seed")
            if seed is None or seed == value:
                rec.put(key, "training.seed", value, "ftune's one seed also initialises the LoRA weights")
            else:
                rec.leave(key, value, NO_HOME, f"ftune has one seed (training.seed: {seed}, from seed) for "
                                               "everything, the LoRA weights included")
        elif key in SIMPLE:
            rec.put(key, SIMPLE[key], value)
        else:
            rec.leave(key, value, NO_HOME, "ftune has no such setting")
    return rec
