"""What the importers share: transformers' TrainingArguments names (LLaMA-Factory and GLM-4 both pass them
through), DeepSpeed config files, paths as a run file writes them, and a model's module names."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

from ftune.runtime.importers.record import NO_HOME, NO_MEANING, Record
from ftune.runtime.tracker_registry import PACKAGES

# TrainingArguments names that mean the same in the run file's training section.
SAME_IN_TRAINING = ("learning_rate", "num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size",
                    "gradient_accumulation_steps", "warmup_steps", "warmup_ratio", "lr_scheduler_type",
                    "weight_decay", "max_grad_norm", "seed", "logging_strategy", "logging_steps", "save_strategy",
                    "save_steps", "save_total_limit", "eval_strategy", "eval_steps", "dataloader_num_workers",
                    "gradient_checkpointing", "neftune_noise_alpha", "predict_with_generate")
OPTIM = {"adamw_torch": "adamw_torch", "adamw_hf": "adamw_torch", "adamw_torch_fused": "adamw_torch",
         "adamw": "adamw_torch", "adafactor": "adafactor", "sgd": "sgd", "adamw_8bit": "adamw_8bit",
         "adamw_bnb_8bit": "adamw_8bit", "paged_adamw_8bit": "paged_adamw_8bit",
         "paged_adamw_32bit": "paged_adamw_32bit"}
NOT_HERE = {  # TrainingArguments that a detached ftune run decides for itself
    "do_train": "ftune import writes a training run; `ftune train` trains it",
    "do_eval": "evaluation follows training.eval_strategy and the validation data",
    "log_level": "the worker's log is runs/<name>/train.log; its progress is events.jsonl",
    "logging_dir": "ftune writes its events to runs/<name>/events.jsonl",
    "remove_unused_columns": "ftune builds the columns each stage reads itself",
    "overwrite_cache": "ftune re-tokenises whenever the data or the settings that shape tokens change",
    "plot_loss": "ftune records every loss; `ftune plot RUN` draws it",
    "hub_token": "ftune reads tokens from the Hugging Face login, never from a run file",
    "push_to_hub": "share an export with `huggingface-cli upload` after `ftune export`",
    "label_names": "ftune's trainers name their labels",
}


def training_arg(rec: Record, source: str, key: str, value: Any) -> bool:
    """Carry one TrainingArguments key; False when it is not one."""
    if key in SAME_IN_TRAINING:
        if key == "save_total_limit" and value is None:
            rec.put(source, "training.save_total_limit", None, "keep every checkpoint")
        else:
            rec.put(source, f"training.{key}", value)
        return True
    if key == "evaluation_strategy":  # the older name
        rec.put(source, "training.eval_strategy", value)
    elif key == "max_steps":
        if value is None or (isinstance(value, int) and value <= 0):
            rec.leave(source, value, NO_MEANING, "no step limit: num_train_epochs decides, as here")
        else:
            rec.put(source, "training.max_steps", value)
    elif key == "optim":
        if value in OPTIM:
            rec.put(source, "training.optim", OPTIM[value])  # bitsandbytes' optimisers run on a CPU too
        else:
            rec.leave(source, value, NO_HOME, f"ftune's training.optim takes {', '.join(sorted(set(OPTIM.values())))}"
                      " (and adam_mini)")
    elif key == "output_dir":
        rec.put(source, "output.dir", str(value))
    elif key in ("bf16", "fp16", "pure_bf16"):
        if value:
            rec.put(source, "training.precision", key)
        else:
            rec.leave(source, value, NO_MEANING, "off: training.precision stays auto (on a CPU: bf16 where it has bf16 units, else fp32)")
    elif key == "report_to":
        names = value if isinstance(value, list) else str(value).split(",")
        names = [str(n).strip().lower() for n in names if str(n).strip().lower() not in ("none", "")]
        known = [n for n in names if n in PACKAGES]
        if not names:
            rec.leave(source, value, NO_MEANING, "ftune writes its own events (runs/<name>/events.jsonl) either way")
        elif known:
            rec.put(source, "training.report_to", known)
        others = [n for n in names if n not in PACKAGES]
        if others:
            rec.leave(source, ", ".join(others), NO_HOME, f"training.report_to takes {', '.join(PACKAGES)}; ftune "
                                                          "writes runs/<name>/events.jsonl either way")
    elif key == "run_name":
        rec.leave(source, value, NO_MEANING, "the run's name is its folder (ftune import --name)")
    elif key == "resume_from_checkpoint":
        if value is None or value is False:
            rec.leave(source, value, NO_MEANING, "empty: nothing to resume from")
        elif value is True:
            rec.put(source, "training.auto_resume", True)
        else:
            rec.leave(source, value, NO_HOME, "ftune resumes from its own run's checkpoints (`ftune train RUN "
                                              "--resume`); another folder's checkpoint has no key")
    elif key in ("ddp_timeout", "ddp_backend", "ddp_find_unused_parameters"):
        rec.leave(source, value, NO_HOME, "ftune's launcher sets up the processes itself (resources section)")
    elif key == "save_only_model":
        rec.leave(source, value, NO_HOME, "ftune's checkpoints keep the optimiser state so that --resume continues "
                                          "exactly")
    elif key == "gradient_checkpointing_kwargs":
        rec.leave(source, value, NO_HOME, "ftune chooses the checkpointing variant itself")
    elif key in NOT_HERE:
        rec.leave(source, value, NO_MEANING, NOT_HERE[key])
    else:
        return False
    return True


# --------------------------------------------------------------------------- DeepSpeed and FSDP
def deepspeed(rec: Record, source: str, value: Any, look_in: list[Path]) -> None:
    """A DeepSpeed config (a path, or the config inline) as resources.strategy and offload: its ZeRO stage and
    whether it offloads to the CPU."""
    config, found = value if isinstance(value, dict) else None, None
    if config is None:
        candidates = [Path(value).expanduser()] if Path(value).expanduser().is_absolute() else \
            [base / value for base in look_in]
        found = next((p for p in candidates if p.is_file()), None)
        if found is not None:
            try:
                config = json.loads(found.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                rec.leave(source, value, NO_HOME, f"{found} is not a JSON DeepSpeed config ({e})")
                return
    if config is not None:
        zero = config.get("zero_optimization") or {}
        stage = int(zero.get("stage", 0))
        offload = any((zero.get(k) or {}).get("device") == "cpu" for k in ("offload_param", "offload_optimizer"))
        how = f"read from {found}" if found else "inline"
        if config.get("tensor_parallel"):
            rec.leave(f"{source} tensor_parallel", config["tensor_parallel"], NO_HOME, "ftune has no tensor parallelism")
    else:
        match = re.search(r"z(?:ero)?_?([0-3])", Path(str(value)).name)
        if not match:
            rec.leave(source, value, NO_HOME, f"{value} was not found (looked beside the file and in the current "
                                              "folder), and its name does not say the ZeRO stage")
            return
        stage, offload = int(match.group(1)), "offload" in Path(str(value)).name
        how = "file not found here: stage and offload read from its name"
    if stage <= 1:  # ZeRO-1 shards only the optimiser state; ftune's nearest is plain data parallel
        rec.put(source, "resources.strategy", "ddp", f"ZeRO-{stage}: plain data parallel ({how})")
        return
    strategy = f"deepspeed-zero{stage}"
    rec.put(source, "resources.strategy", strategy, f"ZeRO-{stage} ({how})")  # DeepSpeed trains on a CPU too
    if offload:
        if stage == 3:
            rec.put(f"{source} offload", "resources.offload", True, "offload to the CPU")
        else:
            rec.leave(f"{source} offload", "cpu", NO_HOME, "ftune offloads with ZeRO-3 or FSDP only "
                                                           "(resources.offload)")


def fsdp(rec: Record, source: str, value: Any) -> None:
    words = value.split() if isinstance(value, str) else list(value or [])
    if not words or words == [""]:
        rec.leave(source, value, NO_MEANING, "empty: no FSDP")
        return
    rec.put(source, "resources.strategy", "fsdp", " ".join(words), gpu=True)
    if "offload" in words:
        rec.put(f"{source} offload", "resources.offload", True, gpu=True)


# --------------------------------------------------------------------------- paths and models
def as_written(path: str | Path, project: Path) -> str:
    """A path as a run file says it: relative to the project folder when inside it, else absolute."""
    p = Path(path).expanduser().resolve()
    try:
        return p.relative_to(project.resolve()).as_posix()
    except ValueError:
        return str(p)


def module_names(folder: Path) -> set[str] | None:
    """The module names in a local model's weights (q_proj, query_key_value, ...), read from the safetensors
    headers or a weights index without loading anything; None when they cannot be read."""
    names: set[str] = set()
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        try:
            names |= set(json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"])
        except (OSError, ValueError, KeyError):
            pass
    for file in sorted(folder.glob("*.safetensors"))[:1] if not names else []:
        try:
            with open(file, "rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                names |= {k for k in json.loads(f.read(size)) if k != "__metadata__"}
        except (OSError, ValueError, struct.error):
            pass
    modules = {part for name in names for part in name.split(".")[:-1] if not part.isdigit()}
    return modules or None
