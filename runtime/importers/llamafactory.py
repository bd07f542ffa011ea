"""LLaMA-Factory training YAML (`llamafactory-cli train FILE key=value ...`) onto a run file.

The keys are those of LLaMA-Factory's own examples (train_lora, train_qlora, train_full, extras) and its
argument classes. Where LLaMA-Factory's default differs from ftune's and changes what is trained (lora_alpha is
2 × rank there, the learning rate is transformers' 5e-5, gradient checkpointing is on), the default is written
too, marked as such, so the run trains as it did there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftune.runtime import templates
from ftune.runtime.data.formats import registry_sources
from ftune.runtime.errors import UserError
from ftune.runtime.importers.common import as_written, deepspeed, fsdp, training_arg
from ftune.runtime.importers.record import GPU_ONLY, NO_HOME, NO_MEANING, Context, Record

# Keys that say which tool wrote a file (for detecting the kind).
MARKERS = {"model_name_or_path", "stage", "finetuning_type", "dataset", "template", "cutoff_len", "lora_rank",
           "lora_target", "dataset_dir", "quantization_bit", "pref_beta", "do_train"}

SIMPLE = {  # key -> ftune key, same value
    "model_revision": "model.revision", "trust_remote_code": "model.trust_remote_code",
    "cutoff_len": "data.max_length", "train_on_prompt": "data.train_on_prompt", "mask_history": "data.mask_history",
    "streaming": "data.streaming", "buffer_size": "data.buffer_size", "max_samples": "data.max_samples",
    "preprocessing_num_workers": "data.num_proc", "lora_rank": "method.lora.rank", "lora_alpha": "method.lora.alpha",
    "lora_dropout": "method.lora.dropout", "use_rslora": "method.lora.use_rslora", "use_dora": "method.lora.use_dora",
    "pissa_init": "method.lora.pissa_init", "loraplus_lr_ratio": "method.lora.loraplus_lr_ratio",
    "loraplus_lr_embedding": "method.lora.loraplus_lr_embedding", "create_new_adapter": "method.lora.create_new_adapter",
    "adapter_name_or_path": "method.lora.adapter", "freeze_trainable_layers": "method.freeze.trainable_layers",
    "quantization_type": "method.quantization.quant_type", "double_quantization": "method.quantization.double_quant",
    "pref_beta": "stage.pref_beta", "pref_ftx": "stage.pref_ftx", "dpo_label_smoothing": "stage.label_smoothing",
    "simpo_gamma": "stage.simpo_gamma", "kto_chosen_weight": "stage.kto_desirable_weight",
    "kto_rejected_weight": "stage.kto_undesirable_weight", "ref_model": "stage.ref_model",
    "reward_model": "stage.reward_model", "compute_accuracy": "training.compute_accuracy",
    "image_max_pixels": "data.image_max_pixels", "image_min_pixels": "data.image_min_pixels",
}
GPU_SIMPLE = {"ref_model_quantization_bit": "stage.ref_model_quantization_bits",
              "reward_model_quantization_bit": "stage.reward_model_quantization_bits"}
TEXT_ONLY = "ftune reads images (docs/vision.md); video and audio are not read"
LEFT = {  # key -> (reason, why)
    "use_muon": (NO_HOME, "ftune has no Muon optimiser"),
    "use_dft_loss": (NO_HOME, "ftune trains SFT with the plain cross-entropy (no DFT loss)"),
    "use_asft_loss": (NO_HOME, "ftune trains SFT with the plain cross-entropy (no ASFT loss)"),
    "asft_alpha": (NO_HOME, "belongs to the ASFT loss, which ftune has not"),
    "use_eaft_loss": (NO_HOME, "ftune trains SFT with the plain cross-entropy (no EAFT loss)"),
    "eaft_alpha": (NO_HOME, "belongs to the EAFT loss, which ftune has not"),
    "mixture_of_depths": (NO_HOME, "ftune has no mixture-of-depths conversion"),
    "shift_attn": (NO_HOME, "ftune has no shift short attention (LongLoRA)"),
    "use_unsloth_gc": (NO_HOME, "ftune's gradient checkpointing is the plain one (training.gradient_checkpointing)"),
    "pissa_iter": (NO_HOME, "ftune's PiSSA (method.lora.pissa_init) runs the exact SVD, not a fast one"),
    "pissa_convert": (NO_HOME, "ftune saves the PiSSA adapter as trained; it does not convert it to plain LoRA"),
    "pref_bco_weight": (NO_HOME, "ftune's DPO has no BCO term"),
    "ld_alpha": (NO_HOME, "ftune's DPO has no LD-DPO length weighting"),
    "ref_model_adapters": (NO_HOME, "stage.ref_model takes a run's name or a model folder"),
    "reward_model_adapters": (NO_HOME, "stage.reward_model takes an rm run's name or a model folder"),
    "reward_model_type": (NO_HOME, "stage.reward_model takes an rm run's name or a model folder"),
    "tokenized_path": (NO_HOME, "ftune keeps the tokenised data in runs/<name>/tokenized/ (data.cache)"),
    "eval_num_beams": (NO_HOME, "ftune's predictions are greedy"),
    "eval_on_each_dataset": (NO_HOME, "ftune evaluates on one validation set"),
    "default_system": (NO_HOME, "put the system prompt in the data's system turns"),
    "early_stopping_steps": (NO_HOME, "ftune has no early stopping; `ftune stop RUN` saves and stops"),
    "include_effective_tokens_per_second": (NO_MEANING, "every step event carries tokens_per_s"),
    "disable_gradient_checkpointing": (NO_MEANING, "read with gradient checkpointing: see training.gradient_checkpointing"),
    "use_reentrant_gc": (NO_HOME, "ftune chooses the checkpointing variant itself"),
    "upcast_layernorm": (NO_HOME, "ftune keeps the norms as the model loads them"),
    "upcast_lmhead_output": (NO_HOME, "ftune keeps the head's output as the model computes it"),
    "resize_vocab": (NO_HOME, "ftune keeps the tokenizer's vocabulary"),
    "add_tokens": (NO_HOME, "ftune keeps the tokenizer's vocabulary"),
    "add_special_tokens": (NO_HOME, "ftune keeps the tokenizer's vocabulary"),
    "train_from_scratch": (NO_HOME, "ftune fine-tunes a model's weights; it does not start from random ones"),
    "low_cpu_mem_usage": (NO_MEANING, "ftune loads the weights as transformers does by default"),
    "use_fast_tokenizer": (NO_MEANING, "ftune uses the tokenizer the model ships"),
    "split_special_tokens": (NO_MEANING, "ftune tokenises special tokens as the tokenizer does"),
    "cache_dir": (NO_MEANING, "ftune uses the Hugging Face cache"),
    "print_param_status": (NO_MEANING, "the started event reports the trainable parameters"),
    "ray_num_workers": (NO_HOME, "ftune starts its processes with torchrun (resources.gpus_per_node), not Ray"),
    "ray_init_kwargs": (NO_HOME, "ftune starts its processes with torchrun, not Ray"),
    "fsdp_transformer_layer_cls_to_wrap": (NO_HOME, "ftune wraps each decoder layer of the model itself"),
    "data_shared_file_system": (NO_MEANING, "each node prepares the data in its own run folder"),
    "media_dir": (NO_MEANING, "ftune looks for images beside the data file, then in data.dataset_dir"),
    "moe_aux_loss_coef": (NO_HOME, "ftune trains MoE models with their own router loss settings"),
    "freeze_language_model": (NO_HOME, "ftune always trains a vision-language model's language model"),
}
REPORTS = "ftune reports to runs/<name>/events.jsonl only"
HUBS = "ftune reads models from local folders or the Hugging Face hub"
PREFIX_LEFT = {  # key prefix -> (reason, why)
    "image_": (NO_HOME, "ftune scales images by image_max_pixels / image_min_pixels only"),
    "video_": (NO_MEANING, TEXT_ONLY), "audio_": (NO_MEANING, TEXT_ONLY),
    "use_audio": (NO_MEANING, TEXT_ONLY), "crop_to": (NO_MEANING, TEXT_ONLY),
    "oft_": (NO_HOME, "ftune has no OFT (orthogonal fine-tuning)"),
    "ppo_": (NO_HOME, "ftune's rl stage runs GRPO or RLOO (TRL 1.x has no PPO)"),
    "fp8": (GPU_ONLY, "FP8 training needs an FP8 GPU (H100 class), and ftune has no FP8 setting yet"),
    "swanlab": (NO_HOME, REPORTS), "use_swanlab": (NO_HOME, REPORTS),
    "export_": (NO_MEANING, "exporting is its own step: `ftune export RUN --format ...`"),
    "vllm_": (NO_MEANING, "`ftune serve` chooses vLLM's settings"),
    "sglang_": (NO_MEANING, "ftune serves with transformers or vLLM"),
    "infer_": (NO_MEANING, "inference is its own step: `ftune chat`, `ftune serve`"),
    "kt_": (NO_HOME, "ftune has no KTransformers backend"), "use_kt": (NO_HOME, "ftune has no KTransformers backend"),
    "use_mca": (NO_HOME, "ftune has no Megatron backend"), "megatron": (NO_HOME, "ftune has no Megatron backend"),
    "use_megatron": (NO_HOME, "ftune has no Megatron backend"),
    "hyper_parallel": (NO_HOME, "ftune has no such parallelism"),
    "use_hyper_parallel": (NO_HOME, "ftune has no such parallelism"),
    "hf_hub_token": (NO_MEANING, "ftune reads tokens from the Hugging Face login, never from a run file"),
    "ms_hub_token": (NO_MEANING, HUBS), "om_hub_token": (NO_MEANING, HUBS),
}
MULTIMODAL_WORDS = ("vl", "omni", "audio", "llava", "paligemma", "mllama", "minicpm_v", "minicpm_o", "pixtral", "video",
                    "ocr")
FLASH_ATTN = {"auto": "auto", "disabled": "eager", "sdpa": "sdpa", "fa2": "flash_attention_2"}
GROUPS = {  # use_X: (ftune key, {X_name: key in ftune's dict})
    "galore": ("method.galore", {"galore_rank": "rank", "galore_update_interval": "update_proj_gap",
                                 "galore_scale": "scale", "galore_proj_type": "proj_type", "galore_target": "target",
                                 "galore_layerwise": "layerwise"}),
    "apollo": ("method.apollo", {"apollo_rank": "rank", "apollo_update_interval": "update_proj_gap",
                                 "apollo_scale": "scale", "apollo_proj": "proj", "apollo_proj_type": "proj_type",
                                 "apollo_scale_type": "scale_type", "apollo_scale_front": "scale_front",
                                 "apollo_target": "target", "apollo_layerwise": "layerwise"}),
    "badam": ("method.badam", {"badam_mode": "mode", "badam_start_block": "start_block",
                               "badam_switch_mode": "switch_mode", "badam_switch_interval": "switch_every",
                               "badam_update_ratio": "update_ratio", "badam_mask_mode": "mask_mode"}),
}


def template_for(name: str) -> tuple[str | None, str]:
    """(ftune template or None, what to say about it)."""
    if name in templates.NAMES:
        if name == "qwen3":
            return name, ("LLaMA-Factory's qwen3 adds an empty <think></think> block to answers without one; "
                          "ftune's qwen3 keeps the answers as written (like qwen3_nothink)")
        return name, ""
    if name in MULTIMODAL_WORDS or any(w in MULTIMODAL_WORDS for w in name.split("_")):
        return None, f"'{name}' is a multimodal template ftune has no name for: the model's own template is used (auto)"
    if name.endswith("_nothink") and name[: -len("_nothink")] in templates.NAMES:
        return name[: -len("_nothink")], "the same turns without thought blocks: ftune's templates add none"
    if name == "empty":
        return None, "no template: plain text, which is what stage pt reads anyway (auto)"
    return None, f"ftune has no template '{name}': the tokenizer's own chat template is used (auto)"


CHATML_NAMES = {n for n in templates.NAMES if templates.get(n) == templates.CHATML}


def agent_settings(src: dict[str, Any], rec: Record) -> None:
    """tool_format, enable_thinking and preserve_thinking onto the model's template and data.reasoning. Rows with
    tools are rendered by the chat template itself: LLaMA-Factory's qwen tool format is ftune's chatml template;
    its default (ReAct-style Action / Action Input) and glm4 formats give way to the model's own template, the
    format the model meets at inference."""
    fmt = src.get("tool_format")
    if fmt is not None:
        template = src.get("template")
        if fmt == "qwen" and (template is None or str(template) in CHATML_NAMES):
            rec.put("tool_format", "model.template", "chatml",
                    "ChatML with Qwen2.5's tool format (tools in the system turn, <tool_call> JSON)")
        elif fmt in ("default", "glm4", "qwen", "llama3", "mistral"):
            rec.leave("tool_format", fmt, NO_HOME,
                      "ftune renders tools and tool calls with the chat template (data/agent rows): the model's own "
                      "template has its own tool format, the one it is served with; model.template chatml is "
                      "Qwen2.5's")
        else:
            rec.leave("tool_format", fmt, NO_HOME, "not a tool format LLaMA-Factory has")
    thinking = src.get("enable_thinking")
    if thinking is False:
        rec.put("enable_thinking", "data.reasoning", "drop", "no thinking is learnt")
    elif thinking is not None:
        rec.leave("enable_thinking", thinking, NO_MEANING, "data.reasoning auto learns what the template shows")
    if src.get("preserve_thinking"):
        rec.put("preserve_thinking", "data.reasoning", "keep", "every answer's thinking is learnt")
    elif "preserve_thinking" in src:
        rec.leave("preserve_thinking", src["preserve_thinking"], NO_MEANING,
                  "data.reasoning auto learns the thinking the template shows")


def find_dataset_dir(src: dict[str, Any], ctx: Context, rec: Record) -> Path | None:
    """LLaMA-Factory's dataset_dir: --dataset-dir, the file's dataset_dir, or `data/` beside the file (its
    default, from where llamafactory-cli runs)."""
    if ctx.dataset_dir is not None:
        return ctx.dataset_dir
    given = src.get("dataset_dir")
    if isinstance(given, str) and given.startswith("REMOTE:"):
        rec.leave("dataset_dir", given, NO_MEANING, "ftune reads data sets from local folders: pass --dataset-dir")
        return None
    name = Path(given or "data").expanduser()
    for base in ([Path()] if name.is_absolute() else ctx.look_in):
        if (base / name / "dataset_info.json").is_file():
            return (base / name).resolve()
    return None


def map_config(src: dict[str, Any], ctx: Context) -> Record:
    rec = Record("lf")
    done: set[str] = set()

    def take(*keys: str):
        done.update(keys)

    # ------------------------------------------------------------------ model
    if "model_name_or_path" in src:
        rec.put("model_name_or_path", "model.name_or_path", str(src["model_name_or_path"]))
        take("model_name_or_path")
    if src.get("template") is not None:
        name, note = template_for(str(src["template"]))
        if name:
            rec.put("template", "model.template", name, note)
        else:
            rec.leave("template", src["template"], NO_HOME, note)
        take("template")
    agent_settings(src, rec)
    take("tool_format", "enable_thinking", "preserve_thinking")
    if "rope_scaling" in src:
        value = src["rope_scaling"]
        if value in ("linear", "dynamic", "yarn"):
            rec.put("rope_scaling", "model.rope_scaling", value, "LLaMA-Factory sizes the factor from cutoff_len; "
                                                                 "ftune uses model.rope_factor (2)")
        elif value is None:
            rec.leave("rope_scaling", value, NO_MEANING, "empty: no RoPE scaling")
        else:
            rec.leave("rope_scaling", value, NO_HOME, "model.rope_scaling takes linear, dynamic or yarn")
        take("rope_scaling")
    if "flash_attn" in src:
        value = src["flash_attn"]
        if value in FLASH_ATTN:
            rec.put("flash_attn", "model.attn_implementation", FLASH_ATTN[value], gpu=value == "fa2")
        else:
            rec.leave("flash_attn", value, GPU_ONLY, "FlashAttention-3 needs a Hopper GPU and ftune has no setting "
                                                     "for it (model.attn_implementation: flash_attention_2 is FA2)")
        take("flash_attn")
    for key, accel in (("enable_liger_kernel", "liger"), ("use_unsloth", "unsloth")):
        if key in src:
            if src[key]:
                rec.put(key, "model.acceleration", accel, gpu=True)
            else:
                rec.leave(key, src[key], NO_MEANING, "off, as in ftune by default")
            take(key)

    # ------------------------------------------------------------------ stage
    stage = src.get("stage", "sft")
    if "stage" in src:
        if stage == "ppo":
            rec.put("stage", "stage.type", "rl", "TRL 1.x has no PPO trainer: ftune's rl stage runs GRPO")
        else:
            rec.put("stage", "stage.type", stage)
        take("stage")
    if "pref_loss" in src:
        loss = src["pref_loss"]
        if loss in ("orpo", "simpo") and stage == "dpo":
            rec.put("pref_loss", "stage.type", loss, f"ftune names {loss} as a stage of its own")
        elif loss == "kto_pair":
            rec.leave("pref_loss", loss, NO_HOME, "ftune's KTO is stage kto, on data labelled good or bad")
        else:
            rec.put("pref_loss", "stage.pref_loss", loss)
        take("pref_loss")

    # ------------------------------------------------------------------ method
    ftype = src.get("finetuning_type", "lora")
    if "finetuning_type" in src:
        if ftype == "oft":
            rec.leave("finetuning_type", ftype, NO_HOME, "ftune has no OFT: this run trains a LoRA adapter instead "
                                                         "(method.type lora)")
            ftype = "lora"
        else:
            rec.put("finetuning_type", "method.type", ftype)
        take("finetuning_type")
    if "lora_target" in src:
        rec.put("lora_target", "method.lora.target_modules", _names(src["lora_target"]))
        take("lora_target")
    for key, part in (("freeze_vision_tower", "method.vision_tower"), ("freeze_multi_modal_projector", "method.projector")):
        if key in src:  # unfrozen: LoRA on its linear layers under finetuning_type lora, else trained whole
            unfrozen = "lora" if ftype == "lora" else "full"
            rec.put(key, part, "frozen" if src[key] else unfrozen,
                    "" if src[key] else f"trained as finetuning_type {ftype} trains: {unfrozen}")
            take(key)
    if "additional_target" in src:
        if src["additional_target"]:
            rec.put("additional_target", "method.lora.modules_to_save", _names(src["additional_target"], keep_all=False))
        else:
            rec.leave("additional_target", src["additional_target"], NO_MEANING, "empty")
        take("additional_target")
    for key in ("freeze_trainable_modules", "freeze_extra_modules"):
        if key in src:
            target = "method.freeze.trainable_modules" if key == "freeze_trainable_modules" else \
                "method.freeze.extra_modules"
            value = _names(src[key], keep_all=key == "freeze_trainable_modules") if src[key] else []
            rec.put(key, target, value)
            take(key)
    if "quantization_bit" in src:
        bits, qmethod = src["quantization_bit"], src.get("quantization_method", "bnb")
        if bits is None:
            rec.leave("quantization_bit", bits, NO_MEANING, "empty: not quantised")
        elif bits in (4, 8):
            rec.put("quantization_bit", "method.quantization.bits", bits, gpu=qmethod in ("bnb", "eetq"))
        else:
            rec.leave("quantization_bit", bits, NO_HOME, "method.quantization.bits takes 4 or 8")
        take("quantization_bit")
    if "quantization_method" in src:
        qmethod = src["quantization_method"]
        if qmethod in ("bnb", "hqq", "eetq"):
            rec.put("quantization_method", "method.quantization.method", qmethod, gpu=qmethod in ("bnb", "eetq"))
        else:
            rec.leave("quantization_method", qmethod, NO_MEANING, f"a {qmethod} model is quantised already: "
                                                                  "transformers reads that from its config")
        take("quantization_method")
    if src.get("use_llama_pro"):
        blocks = src.get("freeze_trainable_layers", 1)
        rec.put("use_llama_pro, freeze_trainable_layers", "method.llama_pro_blocks", blocks,
                "LLaMA-Factory trains the blocks scripts/llama_pro.py inserted; ftune inserts them itself")
        rec.warn("use_llama_pro: LLaMA-Factory's model_name_or_path is the model scripts/llama_pro.py already "
                 f"expanded; ftune inserts the {blocks} blocks itself, so point model.name_or_path at the model "
                 "before expansion (ftune import --model)")
        take("use_llama_pro", "freeze_trainable_layers")
    elif "use_llama_pro" in src:
        rec.leave("use_llama_pro", src["use_llama_pro"], NO_MEANING, "off")
        take("use_llama_pro")
    for name, (target, keys) in GROUPS.items():
        present = [k for k in (*keys, f"{name}_verbose") if k in src]
        take(f"use_{name}", *present)
        if src.get(f"use_{name}"):
            rec.put(", ".join([f"use_{name}", *(k for k in present if k in keys)]), target,
                    {keys[k]: src[k] for k in present if k in keys})
            if f"{name}_verbose" in src:
                rec.leave(f"{name}_verbose", src[f"{name}_verbose"], NO_MEANING, "ftune's BAdam prints nothing; "
                                                                                 "progress is in events.jsonl")
        else:
            for k in present + ([f"use_{name}"] if f"use_{name}" in src else []):
                rec.leave(k, src[k], NO_MEANING, f"use_{name} is off")
    if "use_adam_mini" in src:
        if src["use_adam_mini"]:
            rec.put("use_adam_mini", "training.optim", "adam_mini")
        else:
            rec.leave("use_adam_mini", False, NO_MEANING, "off")
        take("use_adam_mini")
    if "disable_shuffling" in src:
        rec.put("disable_shuffling", "data.shuffle", not src["disable_shuffling"])
        take("disable_shuffling")

    # ------------------------------------------------------------------ data
    dataset_dir = None
    if src.get("dataset") or src.get("eval_dataset"):
        dataset_dir = find_dataset_dir(src, ctx, rec)
        if dataset_dir is None:
            raise UserError(f"{ctx.path}: dataset names data sets of LLaMA-Factory's dataset_info.json, and none was "
                            f"found ({src.get('dataset_dir') or 'data/'} beside the file or in the current folder)",
                            hint="Pass --dataset-dir DIR: the folder that holds dataset_info.json.")
    if src.get("dataset"):
        names = _names(src["dataset"], keep_all=False)
        sources = registry_sources(dataset_dir, names)  # unknown names and hub-only entries: a DataError here
        rec.put("dataset_dir", "data.dataset_dir", as_written(dataset_dir, ctx.project),
                "from --dataset-dir" if ctx.dataset_dir else "")
        rec.put("dataset", "data.train", names, f"keys of {dataset_dir / 'dataset_info.json'}")
        _media_warnings(rec, dataset_dir, names)
        del sources
    take("dataset", "dataset_dir")
    if src.get("eval_dataset"):
        names = _names(src["eval_dataset"], keep_all=False)
        target = "data.test" if src.get("do_predict") and not src.get("do_train") else "data.validation"
        if len(names) == 1:
            (source,) = registry_sources(dataset_dir, names)
            rec.put("eval_dataset", target, as_written(source.path, ctx.project),
                    f"the file of '{names[0]}' in dataset_info.json")
        else:
            rec.leave("eval_dataset", src["eval_dataset"], NO_HOME, f"{target} takes one file")
    take("eval_dataset")
    if "do_predict" in src:
        if src["do_predict"] and not src.get("do_train"):
            rec.warn("do_predict without do_train: this file only predicts in LLaMA-Factory; `ftune train` trains "
                     "first. To score a trained run, use `ftune eval RUN --test FILE`")
        rec.leave("do_predict", src["do_predict"], NO_MEANING, "training.predict_with_generate decides whether "
                                                               "data.test is answered after training")
        take("do_predict")
    if "val_size" in src:
        value = src["val_size"]
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            rec.leave("val_size", value, NO_HOME, "data.val_size is a share of the rows (0 to 1), not a count")
        else:
            rec.put("val_size", "data.val_size", value)
        take("val_size")
    if "mix_strategy" in src:
        rec.put("mix_strategy", "data.mix_strategy", src["mix_strategy"])
        take("mix_strategy")
    if "interleave_probs" in src:
        probs = src["interleave_probs"]
        rec.put("interleave_probs", "data.interleave_probs",
                [float(p) for p in str(probs).split(",")] if isinstance(probs, (str, float)) else probs)
        take("interleave_probs")
    for key in ("packing", "neat_packing"):
        if key in src:
            if src[key]:
                rec.put(key, "data.packing", True, "attention stays within each example (as neat_packing)"
                        if key == "packing" else "")
            elif key == "packing":
                rec.put(key, "data.packing", False)
            else:
                rec.leave(key, src[key], NO_MEANING, "off")
            take(key)
    if "deepspeed" in src:
        if src["deepspeed"]:
            deepspeed(rec, "deepspeed", src["deepspeed"], ctx.look_in)
        else:
            rec.leave("deepspeed", src["deepspeed"], NO_MEANING, "empty: no DeepSpeed")
        take("deepspeed")
    if "fsdp" in src:
        fsdp(rec, "fsdp", src["fsdp"])
        take("fsdp")
    if "overwrite_output_dir" in src:  # transformers: false resumes from the newest checkpoint in output_dir
        rec.put("overwrite_output_dir", "training.auto_resume", not src["overwrite_output_dir"],
                "true starts over (auto_resume false); false resumes from the newest checkpoint")
        take("overwrite_output_dir")

    # ------------------------------------------------------------------ the rest, key by key
    for key, value in src.items():
        if key in done:
            continue
        if key in SIMPLE:
            if value is None:
                rec.leave(key, value, NO_MEANING, "empty: the default applies")
            else:
                rec.put(key, SIMPLE[key], value)
        elif key in GPU_SIMPLE:
            rec.put(key, GPU_SIMPLE[key], value, gpu=True)
        elif training_arg(rec, key, key, value):
            pass
        elif key in LEFT:
            rec.leave(key, value, *LEFT[key])
        elif any(key.startswith(p) for p in PREFIX_LEFT):
            rec.leave(key, value, *next(v for p, v in PREFIX_LEFT.items() if key.startswith(p)))
        else:
            rec.leave(key, value, NO_HOME, "ftune has no such setting")

    defaults(src, rec, stage, ftype)
    return rec


def defaults(src: dict[str, Any], rec: Record, stage: str, ftype: str) -> None:
    """LLaMA-Factory's defaults where ftune's differ and the training would change."""
    said = "LLaMA-Factory's default"
    if ftype == "lora":
        rank = src.get("lora_rank", 8)
        if src.get("lora_alpha") is None:
            rec.put("lora_alpha (default)", "method.lora.alpha", rank * 2, f"{said}: 2 × lora_rank")
        if "lora_dropout" not in src:
            rec.put("lora_dropout (default)", "method.lora.dropout", 0.0, said)
    if "learning_rate" not in src:
        rec.put("learning_rate (default)", "training.learning_rate", 5e-5, f"{said} (transformers')")
    if "lr_scheduler_type" not in src:
        rec.put("lr_scheduler_type (default)", "training.lr_scheduler_type", "linear", f"{said} (transformers')")
    if "cutoff_len" not in src:
        rec.put("cutoff_len (default)", "data.max_length", 2048, said)
    if "val_size" not in src and not rec.has("data.validation"):
        rec.put("val_size (default)", "data.val_size", 0.0, f"{said}: no rows held out")
    if not src.get("disable_gradient_checkpointing") and "gradient_checkpointing" not in src:
        rec.put("disable_gradient_checkpointing (default)", "training.gradient_checkpointing", True,
                f"{said}: on for training")
    if stage == "pt" and "packing" not in src and "neat_packing" not in src:
        rec.put("packing (default)", "data.packing", True, f"{said}: on for stage pt")


def _names(value: Any, keep_all: bool = True) -> str | list[str]:
    """`a,b` or [a, b] as a list; `all` stays `all` where the field takes it."""
    names = [str(x).strip() for x in (value if isinstance(value, list) else str(value).split(",")) if str(x).strip()]
    return "all" if keep_all and names == ["all"] else names


def _media_warnings(rec: Record, dataset_dir: Path, names: list[str]) -> None:
    import json

    info = json.loads((dataset_dir / "dataset_info.json").read_text(encoding="utf-8"))
    for name in names:
        media = [c for c in ("videos", "audios") if c in (info.get(name, {}).get("columns") or {})]
        if media:  # its images are read (a vision-language model trains on them); these are not
            rec.warn(f"data set '{name}' has {', '.join(media)}: {TEXT_ONLY}, so they are not trained on")
