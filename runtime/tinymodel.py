"""A tiny model of a real architecture, built offline: the demo's model and the tests'.

Random weights, a byte-level BPE tokenizer trained in-process on the given
texts, and a ChatML chat template. Built once into a cache folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from ftune.runtime.files import publish_dir
from ftune.runtime.templates import CHATML_TEMPLATE, QWEN2_VL_TEMPLATE

RECIPE_VERSION = 1
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tokenizer(texts: Iterable[str], vocab_size: int = 2048):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(
    out_dir: str | Path,
    texts: Iterable[str],
    arch: str = "qwen2",
    hidden_size: int = 64,
    num_layers: int = 2,
    vocab_size: int = 2048,
    seed: int = 0,
) -> Path:
    """Write a loadable model folder (config.json, weights, tokenizer) to out_dir, atomically."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(texts, vocab_size)
    heads = max(1, hidden_size // 16)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    config = {"qwen2": Qwen2Config, "llama": LlamaConfig}[arch](**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with publish_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "ftune_recipe.json").write_text(json.dumps({"recipe": RECIPE_VERSION, "arch": arch}))
    return out_dir


# --------------------------------------------------------------------------- a tiny vision-language model
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]



def build_tiny_vl_model(out_dir: str | Path, texts: Iterable[str], arch: str = "qwen2_vl", hidden_size: int = 64,
                        num_layers: int = 2, vocab_size: int = 1024, seed: int = 0) -> Path:
    """A tiny Qwen2-VL (or Qwen2.5-VL) with random weights: a two-block vision tower 32 wide, a two-layer
    language model, a BPE tokenizer with the vision tokens, Qwen2-VL's image processor (Pillow backend: no
    torchvision) and chat template. Written as a model folder AutoProcessor and AutoModelForImageTextToText open."""
    import torch
    from transformers import AutoModelForImageTextToText, Qwen2_5_VLConfig, Qwen2VLConfig
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(texts, vocab_size)
    tokenizer.add_special_tokens({"additional_special_tokens": VISION_TOKENS})
    tokenizer.chat_template = QWEN2_VL_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS}
    heads = max(1, hidden_size // 16)
    half = hidden_size // heads // 2  # rotary frequencies per head, split over (time, height, width)
    text = {"vocab_size": len(tokenizer), "hidden_size": hidden_size, "intermediate_size": hidden_size * 2,
            "num_hidden_layers": num_layers, "num_attention_heads": heads, "num_key_value_heads": max(1, heads // 2),
            "max_position_embeddings": 4096, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id, "bos_token_id": None,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                "mrope_section": [half - 2 * (half // 4), half // 4, half // 4]}}
    vision = {"depth": 2, "embed_dim": 32, "hidden_size": hidden_size, "num_heads": 2, "mlp_ratio": 2}
    if arch == "qwen2_5_vl":  # its tower: hidden_size is the tower's width, out_hidden_size the language model's
        vision = {"depth": 2, "hidden_size": 32, "out_hidden_size": hidden_size, "intermediate_size": 64,
                  "num_heads": 2, "fullatt_block_indexes": [1], "window_size": 56}
    config = {"qwen2_vl": Qwen2VLConfig, "qwen2_5_vl": Qwen2_5_VLConfig}[arch](
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    with publish_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        Qwen2VLImageProcessorPil().save_pretrained(tmp)
        (tmp / "ftune_recipe.json").write_text(json.dumps({"recipe": RECIPE_VERSION, "arch": arch}))
    return out_dir
