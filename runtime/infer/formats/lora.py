"""lora: the adapter alone (small; loads with peft on top of the base model)."""

from pathlib import Path
from typing import Any

from ftune.runtime.infer.formats.format import ExportFormat


def write(model, path: Path, tokenizer: Any, adapter: bool, vision: bool, trust_remote_code: bool) -> str:
    model.save_pretrained(path)
    lora = next((p for n, p in model.named_parameters() if "lora_" in n), None)
    return str(lora.dtype if lora is not None else model.dtype).replace("torch.", "")


FORMAT = ExportFormat(name="lora", summary="the adapter alone (small; loads on top of the base model)", write=write,
                      adapter=True, max_rel_diff=1e-3)  # the same adapter on the same base: equal up to float noise
