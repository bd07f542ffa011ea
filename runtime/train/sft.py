"""The SFT/pre-training trainer: TRL's SFTTrainer (data handling, packing, collator) with the model's own loss.

TRL 1.x's SFTTrainer always installs a fused LM head that scores tokens in tiles and logs entropy and top-1
accuracy every step. On a CPU that path costs 1.42x the model's own loss per micro-batch (full logits and
cross-entropy, as transformers' Trainer and LLaMA-Factory compute it), which made ftune ~1.5x slower per step
than LLaMA-Factory (docs/benchmarks.md, `bench/side_by_side.py --micro`). The same loss, computed the plain way, is
what ftune trains with, and only at the positions whose next token is learnt (learnt_logits_only). Imported by the
worker only.
"""

from __future__ import annotations

from transformers import Trainer
from trl import SFTTrainer


class PlainLossSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss is the model's own; `compute_accuracy` adds token accuracy to evaluation
    (`eval_mean_token_accuracy`: the share of learnt tokens the model ranks first)."""

    def __init__(self, *args, compute_accuracy: bool = False, tokens_per_batch: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.compute_accuracy = compute_accuracy
        self.tokens_per_batch = tokens_per_batch
        self.rows_seen = 0  # training rows on this process, for samples/s when batches vary in rows
        self._learnt_only: bool | None = None

    def get_train_dataloader(self):
        """With training.tokens_per_batch, batches of whole rows up to that many tokens (batching.py); accelerate
        then deals them out to the processes as it does any batch sampler."""
        if not self.tokens_per_batch:
            return super().get_train_dataloader()
        from torch.utils.data import DataLoader

        from ftune.runtime.train.batching import TokenBudgetBatches, row_lengths

        dataset = self._remove_unused_columns(self.train_dataset, description="Training")
        batches = TokenBudgetBatches(row_lengths(dataset), self.tokens_per_batch,
                                     shuffle=self.args.train_sampling_strategy != "sequential",
                                     seed=self.args.data_seed or self.args.seed, padded=not self.padding_free)
        a = self.args
        return self.accelerator.prepare(DataLoader(
            dataset, batch_sampler=batches, collate_fn=self.data_collator, num_workers=a.dataloader_num_workers,
            pin_memory=a.dataloader_pin_memory, persistent_workers=a.dataloader_persistent_workers))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs["use_cache"] = False  # as TRL does: a KV cache is of no use to a loss
        if model.training:  # padding-free: one sequence, its rows' bounds in cu_seq_lens (a shape: no device sync)
            bounds = inputs.get("cu_seq_lens_q")
            self.rows_seen += bounds.shape[0] - 1 if bounds is not None else inputs["input_ids"].shape[0]
        measure = self.compute_accuracy and not model.training
        # in evaluation without compute_metrics the Trainer keeps the loss alone, not the logits
        if (model.training or self.compute_metrics is None) and not measure and self._scores_learnt_tokens_only(model):
            inputs = learnt_logits_only(inputs)
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

    def _scores_learnt_tokens_only(self, model) -> bool:
        if self._learnt_only is None:  # no label smoothing or loss of its own, which need the whole logits
            # Off on a GPU: the boolean mask costs a device sync per micro-batch, and the shortcut was measured on a
            # CPU only (bench/gpu.py measures both ways on a GPU).
            self._learnt_only = (self.label_smoother is None and self.compute_loss_func is None
                                 and self.args.device.type == "cpu"
                                 and takes_logits_mask(self.accelerator.unwrap_model(model)))
        return self._learnt_only


def takes_logits_mask(model) -> bool:
    """Whether the model (under its peft wrapper) takes logits_to_keep as a mask: its forward is transformers'
    own, which slices with slice_logits_to_keep, not one patched in by Liger or unsloth; and its loss is the
    causal-LM cross-entropy, which takes shift_labels."""
    import inspect
    import sys

    from transformers.loss.loss_utils import ForCausalLMLoss

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cls = type(base)
    return (cls.forward.__module__ == cls.__module__ and "logits_to_keep" in inspect.signature(cls.forward).parameters
            and hasattr(sys.modules[cls.__module__], "slice_logits_to_keep")
            and getattr(base, "loss_function", None) is ForCausalLMLoss)


def learnt_logits_only(inputs: dict) -> dict:
    """The LM head and the cross-entropy only where a label is learnt. The prompt's positions (and padding) have
    no label, so their logits, a vocabulary-wide row each, were computed, softmaxed and thrown away. A boolean
    logits_to_keep keeps the positions that predict a learnt token, and shift_labels are those tokens in the same
    row-major order; the loss is the same sum over the same tokens, divided as before. The mask costs a device
    sync on a GPU (boolean indexing), once per micro-batch."""
    labels = inputs["labels"]
    targets = labels[..., 1:]
    learnt = targets != -100
    keep = labels.new_zeros(labels.shape, dtype=bool)
    keep[..., :-1] = learnt
    return {**inputs, "logits_to_keep": keep, "shift_labels": targets[learnt]}
