"""The model the worker trains: precision, kernels, quantisation, block expansion, freezing and LoRA.

The base model is opened through runtime/models.py (the rule every command shares); what is done to it for
training is here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftune.runtime import models
from ftune.runtime.rundir import RunDir
from ftune.runtime.spec import RunSpec
from ftune.runtime.sysmon import cpu_native_bf16
from ftune.runtime.train import vision


@dataclass(frozen=True)
class Precision:
    """Weights dtype and mixed-precision flags for the run's compute type."""

    name: str  # fp32, bf16, fp16, pure_bf16 (auto resolved)
    dtype: Any  # torch dtype the weights are loaded in
    bf16: bool  # autocast flags for TrainingArguments
    fp16: bool
    cuda: bool


@dataclass(frozen=True)
class Kernels:
    """The attention kernel (None: transformers chooses) and whether Liger's kernels run."""

    attn_implementation: str | None
    liger: bool


# bf16 autocast on a CPU pays a cast per op: at hidden size 64 (the demo's model) a run took 11.4 s against 7.4 s in
# fp32, at 576 (SmolLM2-135M) a step 6.8 s against 11.2 s (docs/benchmarks.md). auto takes it from this width up.
CPU_BF16_MIN_HIDDEN = 512


def precision_plan(precision: str, method: str, hidden: int | None = None) -> Precision:
    """Weights dtype and mixed-precision flags for a compute type (auto picks from the hardware and, on a CPU, the
    model's hidden size)."""
    import torch

    cuda = torch.cuda.is_available()
    if precision == "auto":
        if cuda:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:  # bf16 autocast where the CPU has bf16 matrix units and the matmuls are wide enough to repay the casts
            wide = hidden is None or hidden >= CPU_BF16_MIN_HIDDEN
            precision = "bf16" if wide and cpu_native_bf16() else "fp32"
    if precision == "pure_bf16":
        return Precision(precision, torch.bfloat16, False, False, cuda)
    if precision == "fp32":
        return Precision(precision, torch.float32, False, False, cuda)
    half = torch.bfloat16 if precision == "bf16" else torch.float16
    # Frozen base weights can sit in half precision; weights being trained stay fp32 under autocast.
    dtype = half if method == "lora" else torch.float32
    return Precision(precision, dtype, precision == "bf16", precision == "fp16", cuda)


def hidden_size(spec: RunSpec, source: str) -> int | None:
    """The model's hidden size from its config (the language model's in a vision-language one); None if unread."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, revision=spec.model.revision,
                                            trust_remote_code=spec.model.trust_remote_code)
    except (OSError, ValueError):
        return None
    return getattr(config.get_text_config(), "hidden_size", None)  # transformers' own rule for nested configs


def kernels(spec: RunSpec, plan: Precision) -> Kernels:
    """The attention kernel and whether Liger's kernels run: as the run file says, or, with acceleration auto,
    whatever is installed that the GPU and the weights' dtype can use."""
    import importlib.util

    import torch

    m = spec.model
    attn = None if m.attn_implementation == "auto" else m.attn_implementation
    liger = m.acceleration == "liger"
    if m.acceleration == "auto" and plan.cuda:
        liger = importlib.util.find_spec("liger_kernel") is not None
        half = plan.dtype in (torch.float16, torch.bfloat16)  # FlashAttention-2 refuses fp32 weights
        if attn is None and half and importlib.util.find_spec("flash_attn") is not None:
            attn = "flash_attention_2"
    return Kernels(attn, liger)


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


def decoder_layers(model):
    """The model's stack of decoder layers (the ModuleList as long as num_hidden_layers) and its owner; in a
    vision-language model, the language model's (its vision tower has blocks of its own)."""
    n_layers = model.config.get_text_config().num_hidden_layers
    for prefix, owner in model.named_modules():
        if vision.part_of(prefix) != "language":
            continue
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


def load_unsloth_model(spec: RunSpec, source: str, plan: Precision, base: Path):
    """unsloth's patched model and LoRA (launch has checked for a CUDA GPU, the package and method lora).
    unsloth wants module names: 'all' becomes the model family's linear layers from the catalog."""
    from unsloth import FastLanguageModel

    from ftune.runtime.catalog import resolve

    q, lora = spec.method.quantization, spec.method.lora
    targets = list(resolve(spec.model.name_or_path, base).lora_targets or LLAMA_LINEARS) \
        if lora.target_modules == "all" else list(lora.target_modules)
    model, _ = FastLanguageModel.from_pretrained(
        model_name=source, max_seq_length=spec.data.max_length, dtype=plan.dtype, load_in_4bit=q.bits == 4,
        load_in_8bit=q.bits == 8, trust_remote_code=spec.model.trust_remote_code, revision=spec.model.revision)
    return FastLanguageModel.get_peft_model(
        model, r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=targets,
        modules_to_save=lora.modules_to_save or None, use_rslora=lora.use_rslora, random_state=spec.training.seed,
        use_gradient_checkpointing="unsloth" if spec.training.gradient_checkpointing else False)


def keep_4bit_weights_trainable(model) -> None:
    """bitsandbytes (0.50) repacks a 4-bit weight for its CPU kernel at the first forward without grad (an
    evaluation) on a CPU with AVX512-BF16, and never back: the next training step then fails inside matmul_4bit ("a
    view of a leaf Variable that requires grad is being used in an in-place operation"). A model being trained
    keeps the trainable layout; inference after export still gets the fast one."""
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False


def load_model(spec: RunSpec, source: str, plan: Precision, kern: Kernels, tokenizer, run: RunDir, base: Path,
               is_vision: bool = False):
    """The model to train: the base (quantised for QLoRA), grown or frozen as the method says, with its
    LoRA adapter (a new one, or the run file's adapter continued or merged under a new one). A vision-language
    model trains its language model; its tower and projector as method.vision_tower / method.projector say."""
    if spec.model.acceleration == "unsloth":
        return load_unsloth_model(spec, source, plan, base)

    kwargs: dict[str, Any] = {"dtype": plan.dtype}
    if kern.attn_implementation:
        kwargs["attn_implementation"] = kern.attn_implementation
    quant = quantization_config(spec, plan.dtype)
    if quant is not None:
        kwargs["quantization_config"] = quant
    reward = not spec.stage.definition.causal_lm  # a reward model: one score per sequence
    if reward:
        kwargs["pad_token_id"] = tokenizer.pad_token_id
    model = models.load_base(spec, source, is_vision, **kwargs)
    if spec.method.llama_pro_blocks:
        freeze_layers(model, spec, expand_blocks(model, spec.method.llama_pro_blocks))
    elif spec.method.type == "freeze":
        freeze_layers(model, spec)
    if spec.method.type != "lora":
        if is_vision:
            vision.freeze_parts(model, spec)
        return model
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    lora = spec.method.lora
    if quant is not None:
        keep_4bit_weights_trainable(model)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.training.gradient_checkpointing)
    elif spec.training.gradient_checkpointing:
        model.enable_input_require_grads()
    if lora.adapter:
        path = models.resolve_model_ref(lora.adapter, run.root, base)
        if not lora.create_new_adapter:  # continue training the given adapter
            return PeftModel.from_pretrained(model, path, is_trainable=True)
        model = PeftModel.from_pretrained(model, path).merge_and_unload()  # then a fresh adapter on top
    target = "all-linear" if lora.target_modules == "all" else lora.target_modules
    whole = list(lora.modules_to_save)
    if is_vision:  # all-linear would adapt the vision tower too
        target, whole = vision.lora_targets(model, spec)
    config = LoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=target,
        modules_to_save=whole or None, use_rslora=lora.use_rslora, use_dora=lora.use_dora,
        init_lora_weights="pissa" if lora.pissa_init else True,
        task_type="SEQ_CLS" if reward else "CAUSAL_LM",  # SEQ_CLS also trains and saves the score head
    )
    return get_peft_model(model, config)
