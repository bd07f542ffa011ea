"""Training a vision-language model: which of its parts train, and the batches that carry images.

A vision-language model is three parts: the vision tower (the image encoder), the projector (image features
into the language model's width: Qwen-VL's `merger`, LLaVA's `multi_modal_projector`) and the language model.
By default only the language model trains (LoRA on its linear layers, or all of it); `method.vision_tower`
and `method.projector` say frozen, lora or full for the other two (LLaMA-Factory's freeze_vision_tower and
freeze_multi_modal_projector).
"""

from __future__ import annotations

from typing import Any

from ftune.runtime.data.images import open_image

TOWERS = ("visual", "vision_tower", "vision_model")
PROJECTORS = ("merger", "multi_modal_projector", "mm_projector")


def part_of(name: str) -> str:
    """'projector', 'tower' or 'language' for a module or parameter name."""
    parts = name.split(".")
    if any(p in PROJECTORS for p in parts):
        return "projector"
    if any(p in TOWERS for p in parts):
        return "tower"
    return "language"


def freeze_parts(model, spec) -> None:
    """Full and freeze tuning: the tower and projector train only where the run file says full."""
    wanted = {"tower": spec.method.vision_tower, "projector": spec.method.projector}
    for name, p in model.named_parameters():
        part = part_of(name)
        if part != "language":
            p.requires_grad = wanted[part] == "full"


def lora_targets(model, spec) -> tuple[list[str] | str, list[str]]:
    """(target_modules, modules_to_save) for LoRA on a vision-language model: the language model's linear
    layers (or the run file's names), plus the tower's and projector's linear layers where they are lora, and
    the modules of those that are full, trained whole and saved with the adapter."""
    import torch

    lora = spec.method.lora
    wanted = {"language": "lora", "tower": spec.method.vision_tower, "projector": spec.method.projector}
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.split(".")[-1] != "lm_head"]
    if lora.target_modules == "all":
        targets = [n for n in names if wanted[part_of(n)] == "lora"]
    else:
        own = set(lora.target_modules)
        targets = [n for n in names if (part_of(n) == "language" and n.split(".")[-1] in own)
                   or (part_of(n) != "language" and wanted[part_of(n)] == "lora")]
    whole = list(lora.modules_to_save)
    for n, m in model.named_modules():
        last = n.rpartition(".")[2]
        if last in TOWERS and wanted["tower"] == "full":  # its blocks and patch embedding, not a projector inside
            whole += [f"{n}.{c}" for c, _ in m.named_children() if c not in PROJECTORS]
        elif last in PROJECTORS and wanted["projector"] == "full":
            whole.append(n)
    return targets, list(dict.fromkeys(whole))


class VisionCollator:
    """Batches of tokenised rows with their images: ids and labels padded, each row's images opened (within
    the run's pixel limits) and turned into the model's pixel inputs by the processor's image processor."""

    def __init__(self, processor: Any, min_pixels: int, max_pixels: int):
        self.processor, self.min_pixels, self.max_pixels = processor, min_pixels, max_pixels
        tok = processor.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), longest), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), longest), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        refs = [ref for r in rows for ref in r.get("images") or []]
        if refs:
            pictures = [open_image(ref, self.min_pixels, self.max_pixels) for ref in refs]
            batch.update(self.processor.image_processor(images=pictures, return_tensors="pt"))
        if "mm_token_type_ids" in getattr(self.processor, "model_input_names", ()):
            batch["mm_token_type_ids"] = torch.as_tensor(self.processor.create_mm_token_type_ids(ids.tolist()))
        return batch
