"""The SFT/pre-training trainer: TRL's SFTTrainer (data handling, packing, collator) with the model's own loss.

TRL 1.x's SFTTrainer always installs a fused LM head that scores tokens in tiles and logs entropy and top-1
accuracy every step. On a CPU that path costs 1.42x the model's own loss per micro-batch (full logits and
cross-entropy, as transformers' Trainer and LLaMA-Factory compute it), which made ftune ~1.5x slower per step
than LLaMA-Factory (docs/benchmarks.md, `bench/compare.py --micro`). The same loss, computed the plain way, is
what ftune trains with; the logits' memory is what runtime/memory.py already counts. Imported by the worker only.
"""

from __future__ import annotations

from transformers import Trainer
from trl import SFTTrainer


class PlainLossSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss is the model's own; `compute_accuracy` adds token accuracy to evaluation
    (`eval_mean_token_accuracy`: the share of learnt tokens the model ranks first)."""

    def __init__(self, *args, compute_accuracy: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.compute_accuracy = compute_accuracy

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs["use_cache"] = False  # as TRL does: a KV cache is of no use to a loss
        measure = self.compute_accuracy and not model.training
        loss, outputs = Trainer.compute_loss(self, model, inputs, return_outputs=True,
                                             num_items_in_batch=num_items_in_batch)
        if measure:
            labels = inputs["labels"][..., 1:]
            learnt = labels != -100
            top1 = outputs.logits[..., :-1, :].argmax(-1) == labels
            correct = self.accelerator.gather_for_metrics((top1 & learnt).sum()).sum()
            total = self.accelerator.gather_for_metrics(learnt.sum()).sum()
            self._metrics["eval"]["mean_token_accuracy"].append((correct / total).item() if total > 0 else 0.0)
        return (loss, outputs) if return_outputs else loss
