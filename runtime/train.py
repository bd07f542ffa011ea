"""The training worker: `python -m ftune.runtime.train RUN_DIR [--resume] [--lock-fd N]`.

Reads top to bottom like a recipe:
    load spec -> tokenizer -> data -> model -> trainer -> train -> export
Every outcome ends the event stream with `finished`, `stopped` or `error`;
tracebacks go to train.log (stderr) only, the error event carries a message
and a hint for the user.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from ftune.runtime import hints, stages, templates
from ftune.runtime.callbacks import EventsCallback, Stopper, StopRequested
from ftune.runtime.data import CHATML_TEMPLATE, DataError, load_data, sources_for, split, tokenize_examples
from ftune.runtime.events import EventWriter
from ftune.runtime.launch import project_dir
from ftune.runtime.rundir import RunDir, RunError
from ftune.runtime.spec import RunSpec, load_spec
from ftune.runtime.sysmon import Sampler


def model_source(spec: RunSpec, base: Path) -> str:
    """A local model folder (relative to the project) when there is one, else the hub id."""
    p = Path(spec.model.name_or_path).expanduser()
    p = p if p.is_absolute() else base / p
    return str(p) if p.exists() else spec.model.name_or_path


# --------------------------------------------------------------------------- steps of the recipe
def load_tokenizer(spec: RunSpec, source: str, events: EventWriter):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(
        source, revision=spec.model.revision, trust_remote_code=spec.model.trust_remote_code
    )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if spec.model.template != "auto":  # saved with the export, so chat and serve render the same way
        tok.chat_template = templates.get(spec.model.template)
    elif not tok.chat_template:
        tok.chat_template = CHATML_TEMPLATE
        events.emit("warning", message="the tokenizer has no chat template; using ChatML",
                    hint="Fine for a base model. For an instruct model, name its template in model.template.")
    return tok


def data_cache_key(spec: RunSpec, tokenizer, sources: list, base: Path) -> str:
    """Everything that changes the tokenised data: files (size, mtime), tokenizer, template, options."""
    import hashlib
    import json

    d = spec.data
    paths = [s.path for s in sources] + ([s.path for s in sources_for([d.validation], base)] if d.validation else [])
    files = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    payload = {
        "v": 1, "files": files, "data": d.model_dump(mode="json", exclude={"cache", "num_proc", "test"}),
        "stage": spec.stage.type, "seed": spec.training.seed, "model": spec.model.name_or_path,
        "revision": spec.model.revision, "template": tokenizer.chat_template, "vocab": len(tokenizer),
        "eos": tokenizer.eos_token,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_data(spec: RunSpec, tokenizer, base: Path, events: EventWriter, run: RunDir,
                 lead: bool = True) -> dict[str, Any]:
    """Load, check, split and tokenise; reuse the run's cache of it when nothing changed.
    Every rank tokenises for itself; only the lead writes the cache."""
    import json

    import datasets

    d = spec.data
    sources = sources_for(d.train, base, d.format, d.dataset_dir)
    if d.streaming:
        return stream_data(spec, tokenizer, sources, base, events)
    cache = run.path / "tokenized" / data_cache_key(spec, tokenizer, sources, base) if d.cache else None
    if cache is not None and (cache / "meta.json").is_file():
        meta = json.loads((cache / "meta.json").read_text())
        return {**meta, "train": datasets.load_from_disk(str(cache / "train")),
                "eval": datasets.load_from_disk(str(cache / "eval")) if (cache / "eval").is_dir() else None,
                "cached": True}
    loaded = load_data(sources, spec.stage.type, d.on_invalid, d.max_samples, d.mix_strategy, d.interleave_probs,
                       spec.training.seed)
    if loaded.problems:  # on_invalid: skip; say so, never silently
        events.emit("warning", message=f"skipped {loaded.invalid} invalid rows of {loaded.total}",
                    hint=f"First: {loaded.problems[0]}")
    if d.validation:
        train_rows = split(loaded.examples, 0.0, spec.training.seed, d.shuffle)[0]
        eval_rows = load_data(sources_for([d.validation], base, d.format), spec.stage.type, d.on_invalid).examples
    else:
        train_rows, eval_rows = split(loaded.examples, d.val_size, spec.training.seed, d.shuffle)
    stage = spec.stage.type
    if stage == "sft":
        opts = dict(max_length=d.max_length, train_on_prompt=d.train_on_prompt, mask_history=d.mask_history,
                    combine=d.combine, max_input_length=d.max_input_length, max_output_length=d.max_output_length,
                    num_proc=d.num_proc)
        train_cols, truncated = tokenize_examples(tokenizer, train_rows, **opts)
        eval_cols, _ = tokenize_examples(tokenizer, eval_rows, **opts)
    elif stage == "pt":
        train_cols, truncated = stages.text_columns(tokenizer, train_rows, d.max_length)
        eval_cols, _ = stages.text_columns(tokenizer, eval_rows, d.max_length)
    else:  # preference, KTO and RL rows: the TRL trainer tokenises them with the run's template
        train_cols, truncated = stages.columns_for(stage, train_rows), 0
        eval_cols = stages.columns_for(stage, eval_rows)
    first = next(iter(train_cols))
    if truncated:
        events.emit("warning", message=f"{truncated} examples had no answer left after truncation to "
                                       f"{d.max_length} tokens and were dropped",
                    hint="Raise data.max_length.")
    if not train_cols[first]:
        raise DataError("no training rows left after tokenisation", hint="Raise data.max_length.")
    meta = {"total_rows": loaded.total, "skipped_rows": loaded.invalid + truncated,
            "num_train_rows": len(train_cols[first]), "num_eval_rows": len(eval_cols[first]),
            "format": loaded.formatting}
    out = {**meta, "train": datasets.Dataset.from_dict(train_cols),
           "eval": datasets.Dataset.from_dict(eval_cols) if eval_cols[first] else None, "cached": False}
    if cache is not None and lead:
        import shutil

        shutil.rmtree(cache.parent, ignore_errors=True)  # one cache per run: the newest
        tmp = cache.with_name(cache.name + ".partial")
        out["train"].save_to_disk(str(tmp / "train"))
        if out["eval"] is not None:
            out["eval"].save_to_disk(str(tmp / "eval"))
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.replace(tmp, cache)
    return out


def stream_data(spec: RunSpec, tokenizer, sources: list, base: Path, events: EventWriter) -> dict[str, Any]:
    """Data larger than memory: one checking pass (counts, on_invalid), then an iterable data set that reads,
    shuffles in a buffer and tokenises as training goes. Evaluation uses data.validation only."""
    import datasets

    from ftune.runtime.formats import RowProblem, iter_source

    d, stage = spec.data, spec.stage.type
    total, problems = 0, []
    for src in sources:  # the checking pass keeps nothing but the problems
        for item in iter_source(src):
            total += 1
            if isinstance(item, RowProblem):
                problems.append(item)
    if problems and d.on_invalid == "error":
        shown = "\n".join(f"  {p}" for p in problems[:10])
        raise DataError(f"{len(problems)} of {total} rows are invalid:\n{shown}",
                        hint="Fix the rows, or set data.on_invalid: skip to train on the valid rows only.")
    if problems:
        events.emit("warning", message=f"skipping {len(problems)} invalid rows of {total}", hint=f"First: {problems[0]}")

    opts = {"max_length": d.max_length, "train_on_prompt": d.train_on_prompt, "mask_history": d.mask_history,
            "combine": d.combine, "max_input_length": d.max_input_length, "max_output_length": d.max_output_length}
    kwargs = {"sources": [(str(s.path), s.formatting, s.kind, s.columns, s.tags) for s in sources],
              "tokenizer_dir": tokenizer.name_or_path, "chat_template": tokenizer.chat_template, "stage": stage,
              "opts": opts}
    # an importable function with plain arguments: datasets fingerprints both (the worker runs as __main__)
    train = datasets.IterableDataset.from_generator(stages.stream_rows, gen_kwargs=kwargs)
    if d.shuffle:
        train = train.shuffle(seed=spec.training.seed, buffer_size=d.buffer_size)
    eval_ds = None
    if d.validation:
        v = load_data(sources_for([d.validation], base, d.format), stage, d.on_invalid).examples
        cols, _ = (stages.text_columns(tokenizer, v, d.max_length) if stage == "pt" else
                   tokenize_examples(tokenizer, v, d.max_length, d.train_on_prompt, d.mask_history, d.combine))
        eval_ds = datasets.Dataset.from_dict(cols)
    return {"train": train, "eval": eval_ds, "total_rows": total, "skipped_rows": len(problems),
            "num_train_rows": total - len(problems), "num_eval_rows": len(eval_ds) if eval_ds else 0,
            "format": "+".join(s.formatting or "auto" for s in sources), "cached": False}


def precision_plan(precision: str, method: str) -> dict[str, Any]:
    """Weights dtype and mixed-precision flags for a compute type (auto picks from the hardware)."""
    import torch

    cuda = torch.cuda.is_available()
    if precision == "auto":
        if cuda:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "fp32"
    if precision == "pure_bf16":
        return {"name": precision, "dtype": torch.bfloat16, "bf16": False, "fp16": False, "cuda": cuda}
    if precision == "fp32":
        return {"name": precision, "dtype": torch.float32, "bf16": False, "fp16": False, "cuda": cuda}
    half = torch.bfloat16 if precision == "bf16" else torch.float16
    # Frozen base weights can sit in half precision; weights being trained stay fp32 under autocast.
    dtype = half if method == "lora" else torch.float32
    return {"name": precision, "dtype": dtype, "bf16": precision == "bf16", "fp16": precision == "fp16", "cuda": cuda}


def kernels(spec: RunSpec, plan: dict[str, Any]) -> dict[str, Any]:
    """The attention kernel and whether Liger's kernels run: as the run file says, or, with acceleration auto,
    whatever is installed that the GPU and the weights' dtype can use."""
    import importlib.util

    import torch

    m = spec.model
    attn = None if m.attn_implementation == "auto" else m.attn_implementation
    liger = m.acceleration == "liger"
    if m.acceleration == "auto" and plan["cuda"]:
        liger = importlib.util.find_spec("liger_kernel") is not None
        half = plan["dtype"] in (torch.float16, torch.bfloat16)  # FlashAttention-2 refuses fp32 weights
        if attn is None and half and importlib.util.find_spec("flash_attn") is not None:
            attn = "flash_attention_2"
    return {"attn_implementation": attn, "liger": liger}


def quantization_config(spec: RunSpec, dtype):
    """QLoRA: load the base quantised (bitsandbytes, HQQ or EETQ; launch checks for CUDA first)."""
    q = spec.method.quantization
    if not q.bits:
        return None
    import transformers

    if q.method == "hqq":
        return transformers.HqqConfig(nbits=q.bits)
    if q.method == "eetq":
        if q.bits != 8:
            raise ValueError("EETQ quantises to 8 bits only: set method.quantization.bits: 8")
        return transformers.EetqConfig("int8")
    if q.bits == 8:
        return transformers.BitsAndBytesConfig(load_in_8bit=True)
    return transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.quant_type,
                                           bnb_4bit_use_double_quant=q.double_quant, bnb_4bit_compute_dtype=dtype)


def rope_scaled_config(spec: RunSpec, source: str):
    """The model's config with RoPE interpolation (transformers 5 keeps it in rope_parameters)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source, revision=spec.model.revision,
                                        trust_remote_code=spec.model.trust_remote_code)
    params = dict(getattr(config, "rope_parameters", None) or {})
    params.update(rope_type=spec.model.rope_scaling, factor=spec.model.rope_factor)
    if spec.model.rope_scaling == "yarn":
        params.setdefault("original_max_position_embeddings", config.max_position_embeddings)
    config.rope_parameters = params
    return config


def decoder_layers(model):
    """The model's stack of decoder layers (the ModuleList as long as num_hidden_layers) and its owner."""
    n_layers = model.config.num_hidden_layers
    for owner in model.modules():
        for name, child in owner.named_children():
            if child.__class__.__name__ == "ModuleList" and len(child) == n_layers:
                return owner, name, child
    raise ValueError("could not find the model's decoder layers (a ModuleList of num_hidden_layers blocks)")


def expand_blocks(model, n_new: int) -> list[int]:
    """LLaMA Pro: after every (layers / n_new)-th decoder layer insert a copy whose output projections (o_proj,
    down_proj) are zero, so the grown model computes exactly what the original did. Returns the new layers'
    indices."""
    import copy

    import torch

    owner, attr, layers = decoder_layers(model)
    if len(layers) % n_new:
        raise ValueError(f"method.llama_pro_blocks ({n_new}) must divide the model's {len(layers)} layers evenly")
    every = len(layers) // n_new
    grown, added = [], []
    for i, layer in enumerate(layers):
        grown.append(layer)
        if (i + 1) % every == 0:
            block = copy.deepcopy(layer)
            outputs = [m for name, m in block.named_modules() if name.split(".")[-1] in ("o_proj", "down_proj")]
            if len(outputs) != 2:
                raise ValueError("LLaMA Pro needs Llama-style decoder layers (self_attn.o_proj and mlp.down_proj)")
            with torch.no_grad():
                for m in outputs:
                    m.weight.zero_()
                    if getattr(m, "bias", None) is not None:
                        m.bias.zero_()
            added.append(len(grown))
            grown.append(block)
    for index, layer in enumerate(grown):  # the KV cache and the attention masks are looked up by layer index
        for m in layer.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = index
    setattr(owner, attr, torch.nn.ModuleList(grown))
    config = model.config
    if getattr(config, "layer_types", None):
        types = list(config.layer_types)
        config.layer_types = [types[i] for i in range(len(types)) for _ in range(2 if (i + 1) % every == 0 else 1)]
    config.num_hidden_layers = len(grown)
    return added


def freeze_layers(model, spec: RunSpec, chosen: list[int] | None = None) -> None:
    """Freeze tuning: train the last (or first) N decoder layers, or the `chosen` ones, optionally only some
    modules in them."""
    f = spec.method.freeze
    _, _, layers = decoder_layers(model)
    n_layers = len(layers)
    if chosen is None:
        chosen = list(range(n_layers - f.trainable_layers, n_layers) if f.trainable_layers > 0
                      else range(-f.trainable_layers))
    for p in model.parameters():
        p.requires_grad = False
    wanted = None if f.trainable_modules == "all" else list(f.trainable_modules)
    for i in chosen:
        for name, p in layers[i].named_parameters():
            if wanted is None or any(w in name.split(".") for w in wanted):
                p.requires_grad = True
    for name, p in model.named_parameters():
        if any(x in name.split(".") for x in f.extra_modules):
            p.requires_grad = True
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("freeze tuning selected no parameters: check method.freeze.trainable_modules")


LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def load_unsloth_model(spec: RunSpec, source: str, plan: dict[str, Any], base: Path):
    """unsloth's patched model and LoRA (launch has checked for a CUDA GPU, the package and method lora).
    unsloth wants module names: 'all' becomes the model family's linear layers from the catalog."""
    from unsloth import FastLanguageModel

    from ftune.runtime.catalog import resolve

    q, lora = spec.method.quantization, spec.method.lora
    targets = list(resolve(spec.model.name_or_path, base).lora_targets or LLAMA_LINEARS) \
        if lora.target_modules == "all" else list(lora.target_modules)
    model, _ = FastLanguageModel.from_pretrained(
        model_name=source, max_seq_length=spec.data.max_length, dtype=plan["dtype"], load_in_4bit=q.bits == 4,
        load_in_8bit=q.bits == 8, trust_remote_code=spec.model.trust_remote_code, revision=spec.model.revision)
    return FastLanguageModel.get_peft_model(
        model, r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=targets,
        modules_to_save=lora.modules_to_save or None, use_rslora=lora.use_rslora, random_state=spec.training.seed,
        use_gradient_checkpointing="unsloth" if spec.training.gradient_checkpointing else False)


def load_model(spec: RunSpec, source: str, plan: dict[str, Any], tokenizer, run: RunDir, base: Path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if spec.model.acceleration == "unsloth":
        return load_unsloth_model(spec, source, plan, base)

    kwargs: dict[str, Any] = {"dtype": plan["dtype"]}
    attn = kernels(spec, plan)["attn_implementation"]
    if attn:
        kwargs["attn_implementation"] = attn
    quant = quantization_config(spec, plan["dtype"])
    if quant is not None:
        kwargs["quantization_config"] = quant
    reward = spec.stage.type == "rm"  # a reward model: one score per sequence
    if reward:
        kwargs.update(num_labels=1, pad_token_id=tokenizer.pad_token_id)
    if spec.model.rope_scaling:
        kwargs["config"] = rope_scaled_config(spec, source)
    model = (AutoModelForSequenceClassification if reward else AutoModelForCausalLM).from_pretrained(
        source, revision=spec.model.revision, trust_remote_code=spec.model.trust_remote_code, **kwargs
    )
    if spec.method.llama_pro_blocks:
        freeze_layers(model, spec, expand_blocks(model, spec.method.llama_pro_blocks))
    elif spec.method.type == "freeze":
        freeze_layers(model, spec)
    if spec.method.type != "lora":
        return model
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    lora = spec.method.lora
    if quant is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.training.gradient_checkpointing)
    elif spec.training.gradient_checkpointing:
        model.enable_input_require_grads()
    if lora.adapter:
        path = stages.resolve_model_ref(lora.adapter, run.root, base)
        if not lora.create_new_adapter:  # continue training the given adapter
            return PeftModel.from_pretrained(model, path, is_trainable=True)
        model = PeftModel.from_pretrained(model, path).merge_and_unload()  # then a fresh adapter on top
    target = "all-linear" if lora.target_modules == "all" else lora.target_modules
    config = LoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=target,
        modules_to_save=lora.modules_to_save or None, use_rslora=lora.use_rslora, use_dora=lora.use_dora,
        init_lora_weights="pissa" if lora.pissa_init else True,
        task_type="SEQ_CLS" if reward else "CAUSAL_LM",  # SEQ_CLS also trains and saves the score head
    )
    return get_peft_model(model, config)


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


def load_stage_models(spec: RunSpec, run: RunDir, base: Path, plan: dict[str, Any]):
    """The reference model (dpo/kto, when named) and the reward model (rl): other runs or paths."""
    s = spec.stage
    ref = reward = None
    if s.ref_model and s.type in ("dpo", "kto"):
        ref = stages.load_reference(stages.resolve_model_ref(s.ref_model, run.root, base), plan["dtype"],
                                    spec.model.trust_remote_code, s.ref_model_quantization_bits)
    if s.type == "rl":
        reward = stages.load_reward_model(stages.resolve_model_ref(s.reward_model, run.root, base), plan["dtype"],
                                          spec.model.trust_remote_code, s.reward_model_quantization_bits)
    return ref, reward


def check_trainer_rows(spec: RunSpec, trainer, data: dict[str, Any], events: EventWriter) -> None:
    """TRL's preference trainers drop rows longer than max_length on their own: count them, never silently."""
    if spec.stage.type in ("sft", "pt") or not hasattr(trainer.train_dataset, "__len__"):
        return
    kept = len(trainer.train_dataset)
    dropped = data["num_train_rows"] - kept
    if kept == 0:
        raise DataError(f"all {data['num_train_rows']} training rows are longer than data.max_length "
                        f"({spec.data.max_length} tokens) and were dropped", hint="Raise data.max_length.")
    if dropped > 0:
        events.emit("warning", message=f"{dropped} of {data['num_train_rows']} rows are longer than "
                                       f"data.max_length ({spec.data.max_length}) and were dropped",
                    hint="Raise data.max_length to keep them.")
        data["num_train_rows"], data["skipped_rows"] = kept, data["skipped_rows"] + dropped


def count_params(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def eval_plan(spec: RunSpec, has_eval: bool, steps_estimate: int) -> dict[str, Any]:
    t = spec.training
    strategy = t.eval_strategy
    if strategy == "auto":
        strategy = "steps" if has_eval else "no"
    if not has_eval:
        strategy = "no"
    every = t.eval_steps or min(t.save_steps, max(1, steps_estimate // 5))
    return {"eval_strategy": strategy, "eval_steps": every if strategy == "steps" else None}


def common_args(spec: RunSpec, run: RunDir, plan, num_train_rows: int, has_eval: bool) -> dict[str, Any]:
    """TrainingArguments every stage shares, straight from the run file."""
    t = spec.training
    batches = math.ceil(num_train_rows / t.per_device_train_batch_size)
    steps_estimate = t.max_steps or math.ceil(batches / t.gradient_accumulation_steps * t.num_train_epochs)
    return dict(
        output_dir=str(run.checkpoints_dir()),
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps or -1,
        learning_rate=t.learning_rate,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        warmup_steps=t.warmup_steps or t.warmup_ratio,  # transformers 5: a float below 1 is a ratio
        lr_scheduler_type=t.lr_scheduler_type,
        **optimizer_args(spec),
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        data_seed=t.seed,
        bf16=plan["bf16"],
        fp16=plan["fp16"],
        # transformers 5 name for gradient checkpointing; setting it also overrides TRL's default of True
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        neftune_noise_alpha=t.neftune_noise_alpha,
        logging_strategy=t.logging_strategy,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN loss must reach the events, not be averaged away
        save_strategy=t.save_strategy,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        dataloader_num_workers=t.dataloader_num_workers,
        dataloader_pin_memory=plan["cuda"],
        use_cpu=not plan["cuda"],  # several CPU processes then train as DDP over gloo
        use_liger_kernel=kernels(spec, plan)["liger"],
        train_sampling_strategy="random" if spec.data.shuffle else "sequential",
        include_num_input_tokens_seen="non_padding",
        report_to="none",  # our callback is added explicitly; defaults differ between releases
        disable_tqdm=True,
        **eval_plan(spec, has_eval, steps_estimate),
    )


def optimizer_args(spec: RunSpec) -> dict[str, Any]:
    """The optimiser by transformers' name; GaLore and APOLLO with their settings and target modules."""
    # adam_mini is built by custom_optimizer and handed to the trainer; its arguments name the AdamW it replaces
    names = {"adamw_8bit": "adamw_bnb_8bit", "adam_mini": "adamw_torch"}
    m = spec.method
    for kind, settings in (("galore", m.galore), ("apollo", m.apollo)):
        if settings is not None:
            s = dict(settings)
            layerwise = "_layerwise" if s.pop("layerwise", False) else ""
            target = s.pop("target", "all")
            return {"optim": f"{kind}_adamw{layerwise}", "optim_target_modules": "all-linear" if target == "all"
                    else target, "optim_args": ",".join(f"{k}={v}" for k, v in s.items()) or None}
    return {"optim": names.get(spec.training.optim, spec.training.optim)}


def build_trainer(spec: RunSpec, model, tokenizer, data: dict[str, Any], run: RunDir, plan, callback,
                  ref_model=None, reward_model=None):
    common = common_args(spec, run, plan, data["num_train_rows"], data["eval"] is not None)
    optimizer = custom_optimizer(spec, model, common)
    if spec.stage.type not in ("sft", "pt"):
        return stages.build_trainer(spec.stage.type, spec, model, tokenizer, data["train"], data["eval"], common,
                                    callback, ref_model, reward_model, optimizer)
    from trl import SFTConfig

    from ftune.runtime.sft import PlainLossSFTTrainer

    config = SFTConfig(
        **common,
        max_length=spec.data.max_length,
        packing=spec.data.packing,  # best-fit decreasing: whole examples, attention kept within each
        packing_strategy="bfd",
    )
    return PlainLossSFTTrainer(
        model=model, args=config, train_dataset=data["train"], eval_dataset=data["eval"],
        processing_class=tokenizer, callbacks=[callback], optimizers=(optimizer, None),
        compute_accuracy=spec.training.compute_accuracy,
    )


def adapt_to_badam(trainer) -> None:
    """BAdam's own gradient clipping (ratio mode leaves sparse gradients, which torch's clipping refuses) and its
    callback (gradient checkpointing over blocks that switch, ZeRO-3)."""
    from types import MethodType

    from badam import BAdamCallback, clip_grad_norm_old_version

    trainer.accelerator.clip_grad_norm_ = MethodType(clip_grad_norm_old_version, trainer.accelerator)
    trainer.add_callback(BAdamCallback)


def export(spec: RunSpec, trainer, tokenizer, run: RunDir) -> dict[str, Any]:
    """Write the final model to export/ (via a temporary folder, so a half export never looks done)."""
    out = run.export_dir()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model = trainer.model
    fmt = "full" if spec.method.type == "full" else spec.output.save_format
    if fmt == "merged_16bit":  # the writers `ftune export` uses, so both give the same model
        from ftune.runtime.export import write_merged

        write_merged(model, tmp, tokenizer, adapter=True)
    elif fmt == "merged_4bit":  # merged in 16 bits, then quantised by bitsandbytes
        from ftune.runtime.export import quantize_4bit, write_merged

        staging = tmp.with_name(tmp.name + ".16bit")
        write_merged(model, staging, tokenizer, adapter=True)
        try:
            quantize_4bit(staging, tmp, spec)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    else:
        model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return {"export": str(out), "format": fmt}


def train(spec: RunSpec, run: RunDir, events: EventWriter, stopper: Stopper, resume: bool, lead: bool = True) -> None:
    """The recipe. Every process runs it; only the lead (global rank 0) writes status and the export."""
    from transformers import set_seed

    status = run.update_status if lead else (lambda **fields: None)

    base = project_dir(run)
    resume_from = None
    if resume or spec.training.auto_resume:
        latest = run.latest_checkpoint()
        if latest is None and resume:
            raise RunError(f"run '{run.name}' has no complete checkpoint to resume from")
        resume_from = latest
    set_seed(spec.training.seed)
    source = model_source(spec, base)
    tokenizer = load_tokenizer(spec, source, events)
    data = prepare_data(spec, tokenizer, base, events, run, lead)
    plan = precision_plan(spec.training.precision, spec.method.type)
    model = load_model(spec, source, plan, tokenizer, run, base)
    ref_model, reward_model = load_stage_models(spec, run, base, plan)
    trainable, total = count_params(model)
    callback = EventsCallback(events, run, {
        "run": spec.name, "stage": spec.stage.type, "method": spec.method_label, "model": spec.model.name_or_path,
        "num_train_rows": data["num_train_rows"], "num_eval_rows": data["num_eval_rows"], "format": data["format"], "data_cached": data["cached"],
        "skipped_rows": data["skipped_rows"], "total_rows": data["total_rows"],
        "trainable_params": trainable, "total_params": total, "precision": plan["name"],
        "attn_implementation": model.config._attn_implementation, "liger": kernels(spec, plan)["liger"],
        "resumed_from": resume_from[0] if resume_from else None,
    }, stopper)
    trainer = build_trainer(spec, model, tokenizer, data, run, plan, callback, ref_model, reward_model)
    if spec.method.badam is not None:
        adapt_to_badam(trainer)
    check_trainer_rows(spec, trainer, data, events)
    callback.started_fields.update(trainer=type(trainer).__name__,  # what runs, e.g. RLOOTrainer for stage rl
                                   num_train_rows=data["num_train_rows"], skipped_rows=data["skipped_rows"],
                                   world_size=trainer.args.world_size,
                                   global_batch=trainer.args.world_size * spec.training.per_device_train_batch_size
                                   * spec.training.gradient_accumulation_steps)
    result = trainer.train(resume_from_checkpoint=str(resume_from[1]) if resume_from else None)
    metrics = {**callback.metrics, **(result.metrics or {})}
    metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    step = trainer.state.global_step
    if stopper.requested:
        ckpt = run.checkpoints_dir() / f"checkpoint-{step}"
        events.emit("stopped", step=step, metrics=metrics, artifacts={"checkpoint": str(ckpt)})
        status(state="stopped", step=step, ended_at=time.time())
        return
    if not lead:  # the export is written once
        return
    artifacts = export(spec, trainer, tokenizer, run)
    artifacts["checkpoints"] = [str(p) for _, p in run.checkpoints()]
    from ftune.runtime.after import after_training  # predictions on data.test, model card, loss plot

    artifacts.update(after_training(spec, run, events, trainer.model, tokenizer, metrics, artifacts))
    events.emit("finished", step=step, metrics=metrics, artifacts=artifacts)
    status(state="finished", step=step, ended_at=time.time(), export=artifacts["export"])


# --------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ftune-worker")
    parser.add_argument("run_dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--lock-fd", type=int, default=None, help="inherited fd holding the run's lock")
    args = parser.parse_args(argv)

    path = Path(args.run_dir).resolve()
    run = RunDir(path.parent, path.name)
    if args.lock_fd is None:  # started by hand: take the lock ourselves
        try:
            args.lock_fd = run.acquire_lock()
        except RunError as e:
            print(f"ftune: {e}", file=sys.stderr)
            return 2
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    lead = rank == 0
    stopper = Stopper(world).install()
    events = EventWriter.for_rank(run.events_path, rank)
    if lead:  # the pid `ftune stop` signals: rank 0, which agrees the stopping step with the others
        run.update_status(state="starting", pid=os.getpid(), host=os.uname().nodename, world_size=world)
    spec: RunSpec | None = None
    try:
        spec = load_spec(run.spec_path)
        sampler = Sampler(lambda s: events.emit("system", **s), spec.training.system_interval_s)
        if lead:
            sampler.start()
        try:
            train(spec, run, events, stopper, args.resume, lead)
        finally:
            sampler.stop()
        return 0
    except StopRequested:
        step = (run.latest_checkpoint() or (0, None))[0]
        events.emit("stopped", step=step, metrics={}, artifacts={}, message="stopped before training began")
        run.update_status(state="stopped", ended_at=time.time())
        return 0
    except BaseException as exc:  # noqa: BLE001 - every failure must end the stream with an error event
        traceback.print_exc()
        message, hint = hints.explain(exc, spec)
        if not lead:  # any rank's failure ends the run with an error event naming it
            events = EventWriter(run.events_path)
            message = f"rank {rank}: {message}"
        events.emit("error", message=message, hint=hint, kind=type(exc).__name__, rank=rank)
        run.update_status(state="failed", ended_at=time.time(), error=message)
        return 1
    finally:
        sys.stderr.flush()
        events.close()


if __name__ == "__main__":
    sys.exit(main())
