"""The frozen models a stage names beside the one it trains: the dpo/kto reference and the rl reward model, from
another run or a folder (the stages themselves are in train/stages/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def device() -> str:
    """The device this process trains on: its rank's GPU (LOCAL_RANK), or the CPU."""
    import os

    import torch

    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"


def quantized_bits(model) -> int | None:
    """4 or 8 for a model loaded through bitsandbytes, else None (for the started event)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return 4 if getattr(base, "is_loaded_in_4bit", False) else 8 if getattr(base, "is_loaded_in_8bit", False) else None


def _frozen(path: Path | str, auto_class: str, dtype, trust_remote_code: bool, bits: int | None, **extra):
    """A frozen model of `auto_class` from a folder or hub id. An adapter export is merged into its base, a
    quantised one (bits: 4 or 8, bitsandbytes) too: peft dequantises each layer, adds the adapter and quantises it
    again (it warns of the rounding), which is what a quantised frozen model is asked to be. Merged, it is a plain
    transformers model, which TRL needs of a reward model (a PeftModel it would take for a reward function)."""
    import peft
    import transformers

    kwargs: dict[str, Any] = {"dtype": dtype, **extra}
    if bits:
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=bits == 4, load_in_8bit=bits == 8, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = {"": device()}  # the device this process trains on
    if Path(path, "adapter_config.json").is_file():
        model = getattr(peft, f"AutoPeft{auto_class}").from_pretrained(path, **kwargs)
        return model.merge_and_unload()
    return getattr(transformers, f"Auto{auto_class}").from_pretrained(path, trust_remote_code=trust_remote_code,
                                                                     **kwargs)


def load_reference(path: Path | str, dtype, trust_remote_code: bool, bits: int | None = None):
    """The dpo/kto reference: a frozen causal LM."""
    return _frozen(path, "ModelForCausalLM", dtype, trust_remote_code, bits)


def load_reward_model(path: Path | str, dtype, trust_remote_code: bool, bits: int | None = None):
    """The rm run's model for rl: a sequence-classification head giving one score."""
    return _frozen(path, "ModelForSequenceClassification", dtype, trust_remote_code, bits, num_labels=1)
