"""Turn a failure into one sentence and a hint a user can act on (the traceback stays in train.log)."""

from __future__ import annotations

from typing import Any

from ftune.runtime.data.formats import DataError
from ftune.runtime.rundir import RunError
from ftune.runtime.spec import SpecError


def explain(exc: BaseException, spec: Any = None) -> tuple[str, str]:
    text = str(exc).strip() or type(exc).__name__
    low = text.lower()
    if isinstance(exc, SpecError):
        return text, "Fix run.yaml (ftune train validates it before starting)."
    if isinstance(exc, DataError):
        return text, exc.hint or "Check the data with the first error above."
    if isinstance(exc, RunError):
        return text, ""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", "Use `ftune stop RUN` for a graceful stop with a checkpoint."
    if "out of memory" in low or type(exc).__name__ == "OutOfMemoryError":
        return ("the GPU ran out of memory: " + text.splitlines()[0],
                "Lower training.per_device_train_batch_size (raise gradient_accumulation_steps to keep the "
                "global batch), lower data.max_length, set training.gradient_checkpointing: true, or use LoRA.")
    if isinstance(exc, OSError) and ("config.json" in low or "huggingface.co" in low or "offline" in low
                                     or "repository" in low or "not a valid model identifier" in low):
        name = spec.model.name_or_path if spec else "the model"
        return (f"could not load {name}: {text.splitlines()[0]}",
                "Give model.name_or_path as a local folder with config.json, or a hub id on a machine that "
                "can reach the hub (HF_HUB_OFFLINE=1 needs the model in the cache).")
    if isinstance(exc, ImportError):
        return text, "Install the missing package into the environment ftune runs from."
    if "flash_attn" in low or "flash attention" in low:
        return text, "Install flash-attn, or set model.attn_implementation: auto."
    return f"{type(exc).__name__}: {text.splitlines()[0]}", "The full traceback is in train.log (`ftune logs RUN`)."
