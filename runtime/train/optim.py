"""Optimisers: by transformers' name (GaLore and APOLLO with their settings), or built here for what transformers
cannot name: LoRA+ (peft), Adam-mini and BAdam (their own packages)."""

from __future__ import annotations

from typing import Any

from ftune.runtime.spec import RunSpec


def optimizer_args(spec: RunSpec) -> dict[str, Any]:
    """The optimiser by transformers' name; GaLore and APOLLO with their settings and target modules."""
    # adam_mini is built by custom_optimizer and handed to the trainer; its arguments name the AdamW it replaces
    names = {"adamw_8bit": "adamw_bnb_8bit", "adam_mini": "adamw_torch"}  # paged_*: the same names
    m = spec.method
    for kind, settings in (("galore", m.galore), ("apollo", m.apollo)):
        if settings is not None:
            s = dict(settings)
            layerwise = "_layerwise" if s.pop("layerwise", False) else ""
            target = s.pop("target", "all")
            return {"optim": f"{kind}_adamw{layerwise}", "optim_target_modules": "all-linear" if target == "all"
                    else target, "optim_args": ",".join(f"{k}={v}" for k, v in s.items()) or None}
    return {"optim": names.get(spec.training.optim, spec.training.optim)}


def custom_optimizer(spec: RunSpec, model, common: dict[str, Any]):
    """Optimisers transformers cannot name: LoRA+ (peft), Adam-mini and BAdam (their packages). None otherwise."""
    t, m = spec.training, spec.method
    if m.type == "lora" and m.lora.loraplus_lr_ratio:  # B matrices get loraplus_lr_ratio × the learning rate
        from peft.optimizers import create_loraplus_optimizer
        from transformers import Trainer, TrainingArguments

        # the optimiser training.optim names, with transformers' own settings for it (betas, eps, ...)
        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(TrainingArguments(**common), model)
        kwargs.pop("lr", None)
        if m.lora.loraplus_lr_embedding:
            kwargs["loraplus_lr_embedding"] = m.lora.loraplus_lr_embedding
        return create_loraplus_optimizer(model, cls, lr=t.learning_rate, loraplus_lr_ratio=m.lora.loraplus_lr_ratio,
                                         loraplus_weight_decay=t.weight_decay, **kwargs)
    if t.optim == "adam_mini":  # one learning rate per attention head / output neuron instead of per weight
        from adam_mini import Adam_mini

        c = model.config
        return Adam_mini(named_parameters=model.named_parameters(), lr=t.learning_rate, weight_decay=t.weight_decay,
                         dim=c.hidden_size, n_heads=c.num_attention_heads,
                         n_kv_heads=getattr(c, "num_key_value_heads", None), verbose=False)
    if m.badam is not None:
        return badam_optimizer(spec, model)
    return None


def badam_optimizer(spec: RunSpec, model):
    """BAdam: AdamW over one block of layers at a time (layer mode), or over a sparse share of every matrix
    (ratio mode); weight decay kept off biases and norms, as transformers does."""
    import torch
    from transformers.trainer_pt_utils import get_parameter_names

    t, b = spec.training, dict(spec.method.badam or {})
    decay = set(get_parameter_names(model, [torch.nn.LayerNorm], ["bias", "layernorm", "rmsnorm", "norm"]))
    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if n in decay], "weight_decay": t.weight_decay},
              {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
    mode = b.get("mode", "layer")
    if mode == "ratio":
        from badam import BlockOptimizerRatio

        tied = not any("lm_head" in n for n, _ in named)  # the head is the embedding: nothing of its own to freeze
        return BlockOptimizerRatio(param_groups=groups, named_parameters_list=named, lr=t.learning_rate,
                                   update_ratio=b.get("update_ratio", 0.05), switch_every=b.get("switch_every", 50),
                                   mask_mode=b.get("mask_mode", "adjacent"), include_lm_head=tied, verbose=0)
    from badam import BlockOptimizer

    return BlockOptimizer(base_optimizer=torch.optim.AdamW(groups, lr=t.learning_rate), named_parameters_list=named,
                          switch_block_every=b.get("switch_every", 50), switch_mode=b.get("switch_mode", "descending"),
                          start_block=b.get("start_block"), verbose=0)


def adapt_to_badam(trainer) -> None:
    """BAdam's own gradient clipping (ratio mode leaves sparse gradients, which torch's clipping refuses) and its
    callback (gradient checkpointing over blocks that switch, ZeRO-3)."""
    from types import MethodType

    from badam import BAdamCallback, clip_grad_norm_old_version

    trainer.accelerator.clip_grad_norm_ = MethodType(clip_grad_norm_old_version, trainer.accelerator)
    trainer.add_callback(BAdamCallback)
