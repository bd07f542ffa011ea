"""Turn a failure into one sentence and a hint a user can act on (the traceback stays in train.log)."""

from __future__ import annotations

from typing import Any

import shutil

from ftune.runtime.data.formats import DataError
from ftune.runtime.errors import UserError, disk_full_message, is_disk_full
from ftune.runtime.rundir import RunDir, RunError
from ftune.runtime.spec import SpecError


def disk_full(run: RunDir | None, spec: Any = None) -> tuple[str, str]:
    """Which checkpoint the full disk cut short (removed: it is unusable and holds the space the user needs), and
    which intact one a resume starts from."""
    if run is None:
        return disk_full_message(), "Free some space, then `ftune train RUN --resume`."
    out = spec.output.dir if spec is not None else None
    folder = run.checkpoints_dir(out)
    torn = [(step, path) for step, path, problem in run.all_checkpoints() if problem is not None]
    intact = run.checkpoints()
    resume = (f"checkpoint-{intact[-1][0]} is intact: free some space, then `ftune train {run.name} --resume`"
              if intact else f"Free some space, then `ftune train {run.name}` again")
    if torn:
        step, path = torn[-1]
        shutil.rmtree(path, ignore_errors=True)
        return disk_full_message(path=folder, what=f"checkpoint-{step}") + " (the partial folder was removed)", \
            resume + "."
    return disk_full_message(path=run.output_base(out)), resume + "."


def explain(exc: BaseException, spec: Any = None, run: RunDir | None = None) -> tuple[str, str]:
    text = str(exc).strip() or type(exc).__name__
    low = text.lower()
    if is_disk_full(exc):
        return disk_full(run, spec)
    if isinstance(exc, SpecError):
        return text, "Fix run.yaml (ftune train validates it before starting)."
    if isinstance(exc, DataError):
        return text, exc.hint or "Check the data with the first error above."
    if isinstance(exc, RunError):
        return text, ""
    if isinstance(exc, UserError):  # e.g. a hub download that failed (runtime/hub.py): its own sentence and hint
        return text, exc.hint
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
