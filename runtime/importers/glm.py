"""GLM-4's finetune_demo config (`configs/lora.yaml`: data_config, training_args, peft_config) onto a run file.

finetune.py takes the data folder and the model on its command line, so they come from `--dataset-dir` (default:
the config's folder) and `--model`.
"""

from __future__ import annotations

from typing import Any

from ftune.runtime.errors import UserError
from ftune.runtime.importers.common import as_written, deepspeed, training_arg
from ftune.runtime.importers.record import NO_HOME, NO_MEANING, Context, Record

MARKERS = {"data_config", "training_args", "peft_config", "max_input_length", "max_output_length", "combine",
           "freezeV"}
DATA_FILES = {"train_file": "data.train", "val_file": "data.validation", "test_file": "data.test"}
PEFT_SIMPLE = {"r": "method.lora.rank", "lora_alpha": "method.lora.alpha", "lora_dropout": "method.lora.dropout",
               "target_modules": "method.lora.target_modules", "modules_to_save": "method.lora.modules_to_save",
               "use_rslora": "method.lora.use_rslora", "use_dora": "method.lora.use_dora"}
REFUSED_PEFT = {"PREFIX_TUNING": "prefix tuning (P-tuning v2)", "P_TUNING": "P-tuning",
                "PROMPT_TUNING": "prompt tuning"}


def map_config(src: dict[str, Any], ctx: Context) -> Record:
    rec = Record("glm")
    data_dir = ctx.dataset_dir or ctx.path.resolve().parent
    peft = src.get("peft_config") or {}
    peft_type = str(peft.get("peft_type", "LORA")).upper()
    if peft_type in REFUSED_PEFT:
        raise UserError(f"{ctx.path}: peft_config.peft_type {peft_type} is {REFUSED_PEFT[peft_type]}, which ftune "
                        "does not train: its adapters are LoRA (method.lora), full fine-tuning or freeze tuning",
                        hint="Set peft_type: LORA (with r, lora_alpha, target_modules) and import it again.")
    for key, value in src.items():
        if key == "data_config":
            _data_config(rec, value or {}, ctx, data_dir)
        elif key == "combine":
            rec.put("combine", "data.combine", bool(value))
        elif key in ("max_input_length", "max_output_length"):
            rec.put(key, f"data.{key}", value)
        elif key == "training_args":
            _training_args(rec, value or {}, ctx)
        elif key == "peft_config":
            _peft_config(rec, value or {}, peft_type)
        elif key == "freezeV":
            rec.leave(key, value, NO_MEANING, "ftune trains text models; GLM-4V's vision tower is not read")
        else:
            rec.leave(key, value, NO_HOME, "ftune has no such setting")
    lengths = [src.get("max_input_length"), src.get("max_output_length")]
    if all(isinstance(n, int) for n in lengths):  # room for both parts and the template's tokens around them
        rec.put("max_input_length + max_output_length", "data.max_length", sum(lengths) + 16,
                "room for the cut prompt, the cut answer and the template's tokens")
    args = src.get("training_args") or {}
    if "learning_rate" not in args:
        rec.put("training_args.learning_rate (default)", "training.learning_rate", 5e-5, "transformers' default")
    if "lr_scheduler_type" not in args:
        rec.put("training_args.lr_scheduler_type (default)", "training.lr_scheduler_type", "linear",
                "transformers' default")
    if not rec.has("data.validation"):
        rec.put("data_config.val_file (none)", "data.val_size", 0.0, "GLM-4 evaluates on val_file only: no rows "
                                                                     "held out")
    if "peft_config" in src:
        if "lora_alpha" not in peft:
            rec.put("peft_config.lora_alpha (default)", "method.lora.alpha", 8, "peft's default")
        if "lora_dropout" not in peft:
            rec.put("peft_config.lora_dropout (default)", "method.lora.dropout", 0.0, "peft's default")
    return rec


def _data_config(rec: Record, cfg: dict[str, Any], ctx: Context, data_dir) -> None:
    for key, value in cfg.items():
        source = f"data_config.{key}"
        if key in DATA_FILES:
            path = data_dir / str(value)
            if not path.is_file():
                rec.warn(f"{source}: {path} is not there (finetune.py reads it from its data folder: pass "
                         "--dataset-dir DIR)")
            written = as_written(path, ctx.project)
            rec.put(source, DATA_FILES[key], [written] if key == "train_file" else written, f"in {data_dir}")
        elif key == "num_proc":
            rec.put(source, "data.num_proc", value)
        else:
            rec.leave(source, value, NO_HOME, "ftune has no such data setting")


def _training_args(rec: Record, args: dict[str, Any], ctx: Context) -> None:
    for key, value in args.items():
        source = f"training_args.{key}"
        if key == "generation_config":
            for gkey, gvalue in (value or {}).items():
                if gkey == "max_new_tokens":
                    rec.put(f"{source}.max_new_tokens", "training.max_new_tokens", gvalue)
                else:
                    rec.leave(f"{source}.{gkey}", gvalue, NO_HOME, "ftune's predictions are greedy, with "
                                                                   "training.max_new_tokens")
        elif key == "predict_with_generate":
            rec.put(source, "training.predict_with_generate", bool(value),
                    "ftune answers data.test once training has finished (BLEU, ROUGE)" if value else "")
        elif key == "deepspeed":
            deepspeed(rec, source, value, [ctx.path.resolve().parent, *ctx.look_in])
        elif not training_arg(rec, source, key, value):
            rec.leave(source, value, NO_HOME, "ftune has no such training setting")


def _peft_config(rec: Record, cfg: dict[str, Any], peft_type: str) -> None:
    for key, value in cfg.items():
        source = f"peft_config.{key}"
        if key == "peft_type":
            rec.put(source, "method.type", "lora") if peft_type == "LORA" else \
                rec.leave(source, value, NO_HOME, "ftune's adapters are LoRA")
        elif key == "task_type":
            rec.leave(source, value, NO_MEANING, "ftune's stages choose the model head (a causal LM for sft)")
        elif key in PEFT_SIMPLE:
            rec.put(source, PEFT_SIMPLE[key], value)
        else:
            rec.leave(source, value, NO_HOME, "ftune's LoRA has no such setting")
