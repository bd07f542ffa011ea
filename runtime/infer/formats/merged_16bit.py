"""merged_16bit: the adapter merged into the base, saved in bf16 (`merged_dtype`) on every machine, so the worker's
export and `ftune export` write the same model on a CPU and on any GPU."""

from pathlib import Path
from typing import Any

from ftune.runtime.infer.formats.format import ExportFormat


def merged_dtype():
    """bf16 keeps fp32's range (no overflow, unlike fp16); a GPU without bf16 loads it as fp16."""
    import torch

    return torch.bfloat16


def write_merged(model, path: Path, tokenizer: Any, adapter: bool):
    """The model, its adapter merged in, saved in `merged_dtype`; returns the merged model."""
    from ftune.runtime.templates import stop_token_ids

    if adapter:
        model = model.merge_and_unload()
    model = model.to(merged_dtype())
    if getattr(model, "generation_config", None) is not None:  # plain `generate` stops at the turn marker too
        model.generation_config.eos_token_id = stop_token_ids(tokenizer, model)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    return model


def write(model, path: Path, tokenizer: Any, adapter: bool, vision: bool, trust_remote_code: bool) -> str:
    write_merged(model, path, tokenizer, adapter)
    return str(merged_dtype()).replace("torch.", "")


# weights rounded to 16 bits: small differences, and far smaller than what the adapter itself changes
FORMAT = ExportFormat(name="merged_16bit", summary="merged into the base, bf16: plain transformers, vLLM, ...",
                      write=write, merged=True, max_rel_diff=0.05)
