"""What an export format is, as data: `ExportFormat`. One file per format beside this one holds its entry; the
registry (`__init__.py`) lists them. Nothing heavy at module level (the schema and the CLI read the names): a
format's writer imports torch and transformers inside itself."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

# write(model, folder, tokenizer, adapter, vision, trust_remote_code) -> the saved weights' dtype, in words.
# `adapter`: the model is a PeftModel (merge it); `vision`: a vision-language model.
Writer = Callable[[Any, Path, Any, bool, bool, bool], str]


def free_memory() -> None:
    """Let go of a model between writing and loading back (the GPU's cache too)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class ExportFormat:
    """Everything about one export format: the worker's end-of-run export and `ftune export` both ask this."""

    name: str  # output.save_format and `ftune export --format`
    summary: str  # one line for help texts
    # how the run's model is written; None: a pipeline of its own in infer/export.py (gguf: llama.cpp's converter)
    write: Writer | None
    worker_saves: str | None = None  # what the worker writes into export/ instead (gguf: the adapter); None: itself
    adapter: bool = False  # the export is the adapter alone, loaded with peft on the base model
    merged: bool = False  # the adapter merged in: needs a 16-bit base (QLoRA is unquantised first), and the
    #                       check makes sure the adapter survived (its effect against the logit difference)
    quantized: bool = False  # brings its own quantisation config: loaded back without a dtype
    max_rel_diff: float | None = None  # the largest logit difference allowed, as a share of their range; None:
    #                                    closeness is reported, not judged (4-bit rounding)
    text_only: str | None = None  # why a vision-language model cannot be written so; None: it can
    problem: Callable[[], str | None] | None = None  # why it cannot be written on this machine (a missing library)
    requires: str | None = None  # the module a run saving in this format needs (`ftune train` checks it is there)

    @property
    def own_pipeline(self) -> bool:
        """Written by a pipeline of its own in infer/export.py (gguf: llama.cpp's converter), not by `write`."""
        return self.write is None

    @property
    def saved_by_worker(self) -> str:
        return self.worker_saves or self.name

    def refusal(self, stage, vision: bool) -> str | None:
        """Why a model of `stage` (a StageDef), a vision-language one or not, cannot be exported so, or None. What a
        stage may export is the stage's rule (StageDef.export_refusal); what a vision model may, this format's."""
        return stage.export_refusal(self.name) or (self.text_only if vision else None)
