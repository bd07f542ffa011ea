"""GPU memory estimate for a run, before it starts. Pure arithmetic: no torch, no NVML here.

Weights, gradients and optimiser states follow the seeds' table (LLaMA-Factory's README), in GB per
billion parameters: full fine-tuning with AMP 18, pure bf16 8, LoRA/freeze 2, QLoRA 8-bit 1,
4-bit 0.5. On top come the activations of one forward pass, which grow with the sequence length
and the batch:

* per token and layer, about 34 x hidden bytes in 16-bit (Korthikanti et al., "Reducing Activation
  Recomputation in Large Transformer Models", with a fused attention kernel so no seq^2 term);
  with gradient checkpointing only each layer's input (2 x hidden bytes) is kept, plus one layer's
  full activations while it is recomputed;
* the logits in fp32 and their gradient: 8 bytes per token per vocabulary entry;
* about 1 GB for the CUDA context and the allocator's slack.

A vision-language model adds its vision tower: its weights at the frozen rate (2 GB per billion, 16-bit
weights alone) unless the tower trains, and the tower's activations for the batch's images, one image per row
at data.image_max_pixels: a 14x14-pixel patch is one tower token (34 x tower width bytes per tower layer), and
four patches merge into one language-model token, which the sequence length already counts.

The verdict compares the estimate with the free memory of the GPUs found (the unsloth Studio's
labels): it fits up to 75 % of the free memory, is tight up to 100 %, and exceeds beyond.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from ftune.runtime.present import gb

GIB = 1024**3

# GB per billion parameters for weights + gradients + optimiser states (the seeds' table).
RATE_GB_PER_B: dict[str, float] = {
    "full": 18.0,
    "full-bf16": 8.0,
    "freeze": 2.0,
    "lora": 2.0,
    "dora": 2.0,
    "qlora-8": 1.0,
    "qlora-4": 0.5,
}

LABELS: dict[str, str] = {
    "lora": "LoRA",
    "qlora-8": "QLoRA 8-bit",
    "qlora-4": "QLoRA 4-bit",
    "dora": "DoRA",
    "full": "Full (AMP)",
    "full-bf16": "Full (pure bf16)",
    "freeze": "Freeze",
}

ACT_BYTES_PER_TOKEN_LAYER_HIDDEN = 34  # 16-bit activations of one layer, per token, per hidden unit
CKPT_BYTES_PER_TOKEN_LAYER_HIDDEN = 2  # a checkpointed layer keeps only its 16-bit input
LOGIT_BYTES_PER_TOKEN_VOCAB = 8  # fp32 logits and their gradient
OVERHEAD_GB = 1.0  # CUDA context, allocator slack
DEFAULT_VOCAB = 32000

FITS, TIGHT, EXCEEDS, NO_GPU = "fits", "tight", "exceeds", "no-gpu"
FIT_SHARE = 0.75


def method_key(method_type: str = "lora", bits: int | None = None, use_dora: bool = False,
               precision: str = "auto") -> str:
    """The row of the table a run falls in: lora, dora, qlora-4, qlora-8, full, full-bf16 or freeze."""
    if method_type == "full":
        return "full-bf16" if precision == "pure_bf16" else "full"
    if method_type == "freeze":
        return "freeze"
    if bits in (4, 8):
        return f"qlora-{bits}"
    return "dora" if use_dora else "lora"


def shape_from_params(params_b: float) -> tuple[int, int]:
    """(hidden size, layers) of a typical decoder with this many parameters (for when nothing better is
    known): hidden grows as params^0.4, and a layer holds about 12 x hidden^2 parameters."""
    hidden = max(256, int(round(1600 * params_b**0.4 / 128)) * 128)
    layers = max(1, int(round(params_b * 1e9 / (12 * hidden * hidden))))
    return hidden, layers


PATCH_PIXELS = 14 * 14  # Qwen2-VL's (and most ViTs') patch; 2x2 patches merge into one language-model token
MERGE = 4


@dataclass(frozen=True)
class Vision:
    """A vision-language model's tower and the images of one step, for `estimate`."""

    params_b: float  # the tower's (and projector's) parameters, in billions
    hidden: int  # the tower's width
    layers: int  # the tower's blocks
    image_pixels: int  # pixels per image (data.image_max_pixels)
    trains: bool = False  # the tower trains (method.vision_tower lora or full)

    @property
    def patches(self) -> int:
        return max(1, self.image_pixels // PATCH_PIXELS)

    @property
    def image_tokens(self) -> int:
        """Language-model tokens one image takes."""
        return max(1, self.patches // MERGE)


@dataclass(frozen=True)
class Estimate:
    method: str
    params_b: float
    weights_gb: float  # weights, gradients and optimiser states
    activations_gb: float  # activations and logits of one step
    overhead_gb: float = OVERHEAD_GB
    vision_gb: float = 0.0  # of weights_gb + activations_gb: the vision tower's weights and activations
    image_tokens: int = 0  # language-model tokens per image (part of the sequence length)

    @property
    def total_gb(self) -> float:
        return self.weights_gb + self.activations_gb + self.overhead_gb


# Of full fine-tuning's 18 GB per billion, the 16-bit weights are 2; the rest (fp32 master weights,
# gradients, Adam moments) is what ZeRO-2 shards.
FULL_WEIGHTS_GB_PER_B = 2.0


def sharded_states(states_gb: float, method: str, params_b: float, processes: int, strategy: str,
                   offload: bool) -> float:
    """Per-GPU share of weights + gradients + optimiser states under a multi-process strategy.

    ddp replicates everything; ZeRO-2 shards gradients and optimiser states (the trainable part);
    ZeRO-3 and FSDP shard everything; with offload the sharded states live in CPU memory."""
    n = max(1, processes)
    if strategy in ("auto", "ddp") or n == 1 and not offload:
        return states_gb
    if strategy == "deepspeed-zero2":
        if method not in ("full", "full-bf16"):  # frozen base weights dominate and stay replicated
            return states_gb
        weights = FULL_WEIGHTS_GB_PER_B * params_b
        return weights + (states_gb - weights) / n
    share = states_gb / n  # zero3 / fsdp
    return 0.0 if offload else share


def sharding(spec: Any, gpus_found: int) -> dict[str, Any]:
    """processes / strategy / offload of a run spec's resources, for `estimate` (auto: the GPUs found)."""
    r = spec.resources
    per_node = max(1, gpus_found) if r.gpus_per_node == "auto" else r.gpus_per_node
    return {"processes": per_node * r.nodes, "strategy": "ddp" if r.strategy == "auto" else r.strategy,
            "offload": r.offload}


def estimate(params_b: float, method: str = "lora", *, seq_len: int = 1024, batch: int = 1,
             gradient_checkpointing: bool = False, hidden: int | None = None, layers: int | None = None,
             vocab: int | None = None, precision: str = "auto", processes: int = 1, strategy: str = "ddp",
             offload: bool = False, vision: Vision | None = None) -> Estimate:
    """GPU memory (GB) per GPU to train a `params_b`-billion-parameter model with `method`, on
    `processes` GPUs with `strategy` (ddp, deepspeed-zero2, deepspeed-zero3, fsdp). `params_b` counts a
    vision-language model's tower too; `vision` says how big it is and what it sees."""
    if method not in RATE_GB_PER_B:
        raise ValueError(f"unknown method {method!r}: one of {', '.join(RATE_GB_PER_B)}")
    if params_b <= 0:
        raise ValueError("params_b must be positive")
    if not (hidden and layers):
        guess_h, guess_l = shape_from_params(params_b)
        hidden, layers = hidden or guess_h, layers or guess_l
    tokens = max(1, seq_len) * max(1, batch)
    if gradient_checkpointing:
        per_token = layers * hidden * CKPT_BYTES_PER_TOKEN_LAYER_HIDDEN + hidden * ACT_BYTES_PER_TOKEN_LAYER_HIDDEN
    else:
        per_token = layers * hidden * ACT_BYTES_PER_TOKEN_LAYER_HIDDEN
    if precision == "fp32":
        per_token *= 2
    logits = tokens * (vocab or DEFAULT_VOCAB) * LOGIT_BYTES_PER_TOKEN_VOCAB
    activations = (tokens * per_token + logits) / 1e9
    rate = RATE_GB_PER_B[method]
    total_b = params_b
    tower_gb = tower_act = 0.0
    if vision is not None:
        tower_b = min(vision.params_b, params_b)
        tower_gb = (rate if vision.trains else RATE_GB_PER_B["lora"]) * tower_b  # frozen: its 16-bit weights
        patches = vision.patches * max(1, batch)  # one image per row
        # a frozen tower keeps no activations for backward: one block's working set at a time
        kept = vision.layers if vision.trains else 1
        tower_act = patches * kept * vision.hidden * ACT_BYTES_PER_TOKEN_LAYER_HIDDEN * (2 if precision == "fp32" else 1) / 1e9
        params_b -= tower_b
    states = sharded_states(rate * params_b + tower_gb, method, params_b, processes, strategy, offload)
    return Estimate(method, total_b, states, activations + tower_act,
                    vision_gb=tower_gb + tower_act, image_tokens=vision.image_tokens if vision else 0)


# --------------------------------------------------------------------------- GPUs and the verdict
@dataclass(frozen=True)
class Gpu:
    name: str
    total_gb: float
    free_gb: float


def gpus_from_samples(samples: Iterable[dict[str, Any]]) -> list[Gpu]:
    """GPUs from `sysmon.gpu_samples()` (bytes) in GB (GiB, as the boards are sold)."""
    out = []
    for s in samples:
        total, used = s.get("mem_total"), s.get("mem_used")
        if not total:
            continue
        name = str(s.get("name") or "GPU").removeprefix("NVIDIA ").strip()
        out.append(Gpu(name, total / GIB, max(0.0, (total - (used or 0)) / GIB)))
    return out


@dataclass(frozen=True)
class Verdict:
    label: str  # fits, tight, exceeds, no-gpu
    text: str  # one sentence for the screen


def _where(gpus: list[Gpu]) -> str:
    names = sorted({g.name for g in gpus})
    name = names[0] if len(names) == 1 else "GPU"
    return f"1× {name}" if len(gpus) == 1 else f"each of {len(gpus)}× {name}"


def verdict(need_gb: float, gpus: list[Gpu], cheaper: dict[str, float] | None = None) -> Verdict:
    """Compare an estimate with the GPUs found; each GPU holds a whole copy (data parallel).

    `cheaper` maps other methods (by key, cheapest last) to their estimates, to name one that fits
    when this one does not.
    """
    need = f"~{gb(need_gb)}"
    if not gpus:
        return Verdict(NO_GPU, "no NVIDIA GPU on this machine to compare with")
    free = min(g.free_gb for g in gpus)
    where = _where(gpus)
    if need_gb <= FIT_SHARE * free:
        return Verdict(FITS, f"fits on {where} with {gb(free - need_gb)} to spare")
    if need_gb <= free:
        return Verdict(TIGHT, f"tight on {where}: {need} of {gb(free)} free; a smaller batch or "
                              f"gradient checkpointing gives room")
    text = f"needs {need}, more than the {gb(free)} free on {where}"
    options = sorted((cheaper or {}).items(), key=lambda kv: -kv[1])
    fitting = [(k, v) for k, v in options if v <= FIT_SHARE * free]
    if fitting:
        key, value = fitting[0]
        text += f": {LABELS.get(key, key)} would need ~{gb(value)}"
    elif options:
        key, value = options[-1]
        text += f"; even {LABELS.get(key, key)} needs ~{gb(value)}"
    return Verdict(EXCEEDS, text)


CHEAPER_ORDER = ("full", "full-bf16", "lora", "dora", "freeze", "qlora-8", "qlora-4")


def check(params_b: float, method: str, gpus: list[Gpu], **shape: Any) -> tuple[Estimate, Verdict]:
    """The estimate for `method` and its verdict, naming a cheaper method that fits when it does not."""
    est = estimate(params_b, method, **shape)
    cheaper = {}
    for other in ("lora", "qlora-8", "qlora-4"):
        if other != method and RATE_GB_PER_B[other] < RATE_GB_PER_B[method]:
            cheaper[other] = estimate(params_b, other, **shape).total_gb
    return est, verdict(est.total_gb, gpus, cheaper)


# --------------------------------------------------------------------------- LoRA's trainable parameters
# Decoders whose layers are self_attn.{q,k,v,o}_proj and mlp.{gate,up,down}_proj of the sizes config.json gives
# (the Llama layout). Others (fused qkv, Conv1D, mixtures of experts) get no count rather than a wrong one.
LLAMA_LAYOUT = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "granite",
                          "olmo", "olmo2", "smollm3"})


def layer_linears(config: dict[str, Any]) -> dict[str, tuple[int, int]] | None:
    """(in, out) features of each linear layer in one decoder layer, by its name inside the layer. A multimodal
    config (the language model under text_config) gets None: all-linear adapts its vision tower too."""
    c = config
    if c.get("model_type") not in LLAMA_LAYOUT:
        return None
    try:
        hidden, inter, heads = int(c["hidden_size"]), int(c["intermediate_size"]), int(c["num_attention_heads"])
        kv_heads = int(c.get("num_key_value_heads") or heads)
        head_dim = int(c.get("head_dim") or hidden // heads)
    except (KeyError, TypeError, ValueError):
        return None
    return {"self_attn.q_proj": (hidden, heads * head_dim), "self_attn.k_proj": (hidden, kv_heads * head_dim),
            "self_attn.v_proj": (hidden, kv_heads * head_dim), "self_attn.o_proj": (heads * head_dim, hidden),
            "mlp.gate_proj": (hidden, inter), "mlp.up_proj": (hidden, inter), "mlp.down_proj": (inter, hidden)}


def _matches(name: str, target: str) -> bool:  # peft's rule for a target given by name: the name or its end
    return name == target or name.endswith("." + target)


def lora_trainable(config: dict[str, Any], rank: int, targets: str | list[str] = "all", *, dora: bool = False,
                   modules_to_save: Iterable[str] = (), reward: bool = False) -> int | None:
    """The parameters a fresh LoRA adapter trains, as peft counts them (`get_nb_trainable_parameters`), from the
    model's config.json; None where the layout is not one this knows.

    Each adapted linear layer (in -> out) adds A (rank x in) and B (out x rank), and with DoRA a magnitude of
    `out`; 'all' is peft's all-linear: every linear layer but the output head. An embedding given as a target
    gets A and B too; modules_to_save are trained whole; a reward model's score head (hidden x 1) always is."""
    linears = layer_linears(config)
    if linears is None:
        return None
    c = config
    layers, hidden, vocab = int(c.get("num_hidden_layers") or 0), int(c["hidden_size"]), int(c.get("vocab_size") or 0)
    if not layers or not vocab:
        return None
    whole = {"lm_head": vocab * hidden, "embed_tokens": vocab * hidden, "norm": hidden, "score": hidden}
    wanted = list(linears) if targets == "all" else list(targets)
    total, used = 0, set()
    for name, (fan_in, fan_out) in linears.items():
        if any(_matches(name, t) for t in wanted):
            used.update(t for t in wanted if _matches(name, t))
            total += layers * (rank * (fan_in + fan_out) + (fan_out if dora else 0))
    for outer in ("embed_tokens", "lm_head"):  # named outright: an adapter on the embedding or the head too
        if targets != "all" and outer in wanted:
            if dora:
                return None
            used.add(outer)
            total += rank * (vocab + hidden)
    if set(wanted) - used:
        return None  # a target this layout does not have: peft would match something else, or refuse
    saved = set(modules_to_save) | ({"score"} if reward else set())
    if saved - set(whole):
        return None
    return total + sum(whole[m] for m in saved)
