"""merged_4bit: merged in 16 bits into a staging folder, then quantised to 4 bits by bitsandbytes (NF4, double
quantisation) from there. Merging into 4 bits loses accuracy: keep the 16-bit export as the reference."""

import shutil
from pathlib import Path
from typing import Any

from ftune.runtime.infer.formats.format import ExportFormat, free_memory
from ftune.runtime.infer.formats.merged_16bit import merged_dtype, write_merged


def problem() -> str | None:
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        return "merged_4bit needs bitsandbytes: pip install bitsandbytes"
    return None


def quantize_4bit(merged: Path, path: Path, vision: bool, trust_remote_code: bool) -> None:
    """Load a merged 16-bit model quantised by bitsandbytes and save that: transformers serialises 4-bit weights."""
    import transformers

    quant = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                            bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=merged_dtype())
    cls = transformers.AutoModelForImageTextToText if vision else transformers.AutoModelForCausalLM
    q = cls.from_pretrained(merged, quantization_config=quant, device_map="auto", trust_remote_code=trust_remote_code)
    q.save_pretrained(path)


def write(model, path: Path, tokenizer: Any, adapter: bool, vision: bool, trust_remote_code: bool) -> str:
    staging = path.with_name(path.name + ".16bit")
    shutil.rmtree(staging, ignore_errors=True)
    write_merged(model, staging, tokenizer, adapter)
    del model
    free_memory()
    try:
        quantize_4bit(staging, path, vision, trust_remote_code)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return "4-bit nf4 (bitsandbytes)"


# quantised: loads, gives finite logits and generates; closeness is reported, not required (no max_rel_diff)
FORMAT = ExportFormat(name="merged_4bit", summary="merged, quantised to 4 bits (bitsandbytes, CUDA GPU only)",
                      write=write, merged=True, quantized=True, problem=problem,
                      requires="bitsandbytes")
