"""The run spec's schema: one pydantic model per section of `runs/<name>/run.yaml`, and how to walk it.

The wizard builds it, `ftune train` validates it, the worker reads it and the docs are generated from it
(spec/docgen.py). Reading, merging and reporting mistakes live beside it: spec/io.py, spec/overrides.py,
spec/problems.py.
"""

from __future__ import annotations

import difflib
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, create_model, field_validator, model_validator

from ftune.runtime.names import NAME_RULE, check_run_name  # noqa: F401 - the spec's API names them
from ftune.runtime.infer import formats
from ftune.runtime.train import stages



def _takes_bool(annotation: Any) -> bool:
    return annotation is bool or any(_takes_bool(a) for a in typing.get_args(annotation)) or annotation is Any


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, v: Any, info) -> Any:
        """pydantic's lax mode reads `save_steps: true` as 1; YAML's true is never a number in a run file."""
        if isinstance(v, bool) and info.field_name and not _takes_bool(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"must be {_kind(cls.model_fields[info.field_name].annotation)}, not {str(v).lower()}")
        return v


def _kind(annotation: Any) -> str:
    """What a field takes, in words ('a whole number', 'one of lora, full'), for the mistake above."""
    args = [a for a in (annotation, *typing.get_args(annotation)) if a is not type(None)]
    if int in args:
        return "a whole number"
    if float in args:
        return "a number"
    if str in args:
        return "text"
    values = [v for a in args if typing.get_origin(a) is Literal for v in typing.get_args(a)]
    if values:
        return "one of " + ", ".join(map(str, values))
    if any(typing.get_origin(a) is list for a in args):
        return "a list"
    return "a section of settings" if any(section_class(a) for a in args) else "a value of another kind"


# --------------------------------------------------------------------------- model
class ModelSpec(Section):
    """The base model to fine-tune."""

    @field_validator("template")
    @classmethod
    def _known_template(cls, v: str) -> str:
        from ftune.runtime.templates import NAMES

        if v != "auto" and v not in NAMES:
            close = difflib.get_close_matches(v, NAMES, n=1)
            hint = f" — did you mean '{close[0]}'?" if close else f"; use auto or one of: {', '.join(NAMES)}"
            raise ValueError(f"unknown template '{v}'{hint}")
        return v

    name_or_path: str = Field(
        description="Hugging Face hub id (e.g. Qwen/Qwen2.5-7B-Instruct) or a local folder with config.json."
    )
    revision: str | None = Field(None, description="Branch, tag or commit of a hub model.")
    template: str = Field(
        "auto",
        description="Chat template: 'auto' keeps the tokenizer's own (ChatML when it has none), or a name: "
        "chatml, qwen, llama2, llama3, mistral, gemma, glm4, yi, deepseek, deepseekr1, phi, phi4, baichuan2, "
        "intern2, falcon, alpaca, vicuna, default. Instruct/chat models need their own.",
    )
    trust_remote_code: bool = Field(False, description="Allow model code shipped with the checkpoint to run.")
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = Field(
        "auto", description="Attention kernel; 'auto' lets transformers choose (sdpa where it can)."
    )
    rope_scaling: Literal["linear", "dynamic", "yarn"] | None = Field(
        None, description="RoPE interpolation to stretch the context length beyond what the model was trained on."
    )
    rope_factor: float = Field(2.0, gt=1, description="How many times longer the context gets (with rope_scaling).")
    acceleration: Literal["none", "auto", "liger", "unsloth"] = Field(
        "none", description="Kernel acceleration on a CUDA GPU: liger (Liger kernels, liger-kernel package); "
        "unsloth (unsloth's patched model and LoRA, unsloth package; method lora); auto: Liger kernels and "
        "FlashAttention-2 where their packages are installed (with attn_implementation auto and 16-bit weights), "
        "nothing on a CPU."
    )


# --------------------------------------------------------------------------- data
class HubDataSpec(Section):
    """Which files of a data set on a hub (`hf://datasets/ORG/NAME`, `ms://ORG/NAME` in data.train) are read."""

    subset: str | None = Field(
        None, description="The subset (configuration) to read: one its README's `configs:` names, else a folder of "
        "that name in the data set."
    )
    split: str = Field(
        "train", description="The split to read: files or folders named for it (train.jsonl, data/train-00000-of-"
        "00002.parquet); a data set with no split names is all train."
    )
    revision: str | None = Field(None, description="Branch, tag or commit of the data set (default: main).")
    files: str | None = Field(
        None, description="A glob of the files to read, inside the data set (e.g. data/*.jsonl): instead of subset "
        "and split."
    )


class DataSpec(Section):
    """The training data and how it becomes tokens."""

    train: list[str] = Field(
        description="Training file(s): one path or a list (JSON lines, JSON array, .txt, .csv, .parquet); "
        "a data set on the Hugging Face Hub, hf://datasets/ORG/NAME (ModelScope: ms://ORG/NAME), downloaded into "
        "the hub's cache (which files: data.hub); with dataset_dir, keys of its dataset_info.json."
    )
    hub: HubDataSpec = Field(default_factory=HubDataSpec, description="Which files of a hub data set are read.")
    format: Literal["auto", "messages", "alpaca", "sharegpt", "text"] = Field(
        "auto", description="Data format; 'auto' detects it (and preference/KTO variants) from the first row."
    )
    dataset_dir: str | None = Field(
        None, description="Folder with a LLaMA-Factory dataset_info.json: data.train then names its keys."
    )
    validation: str | None = Field(None, description="A separate validation file (instead of val_size).")
    val_size: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of the training rows held out for evaluation (ignored with validation)."
    )
    test: str | None = Field(
        None, description="Test file (chat or preference data) for training.predict_with_generate and `ftune eval`: "
        "its prompts are answered and the answers scored against its own."
    )
    on_invalid: Literal["error", "skip"] = Field(
        "error", description="What to do with rows that fail validation: refuse to train, or skip them (counted)."
    )
    max_samples: int | None = Field(None, gt=0, description="Use at most this many rows (debugging).")
    max_length: int = Field(1024, gt=8, description="Tokens per example (cutoff length); longer rows are truncated.")
    train_on_prompt: bool = Field(False, description="Also compute the loss on system and user tokens.")
    mask_history: bool = Field(False, description="Learn only the last assistant turn of each conversation.")
    reasoning: Literal["auto", "keep", "drop", "last_turn_only"] = Field(
        "auto", description="Thinking in answers (reasoning_content, or a <think>…</think> prefix): auto learns what "
        "the model's own template shows of it (Qwen3: the thinking after the last user turn); keep learns every "
        "answer's thinking (an answer whose thinking the template would hide becomes its own example); drop learns "
        "none; last_turn_only learns the final answer's only."
    )
    combine: bool = Field(
        True, description="true: a conversation is one sequence, every answer learnt; false: each assistant "
        "turn becomes its own example with the turns before it as the prompt."
    )
    shuffle: bool = Field(True, description="Shuffle rows (by training.seed) before the split and each epoch.")
    packing: bool = Field(
        False, description="Pack several short examples into one max_length sequence (best-fit, boundaries kept)."
    )
    padding_free: bool = Field(
        True, description="sft and pt: lay a batch's rows end to end, with no padding and no attention across rows "
        "(the same loss as padded rows, less work). Falls back to padding where the model's attention cannot; the "
        "started event says which ran (docs/data.md)."
    )
    max_input_length: int | None = Field(
        None, gt=0, description="GLM-style cutoff of the prompt before the final answer: keeps its last N tokens."
    )
    max_output_length: int | None = Field(
        None, gt=0, description="GLM-style cutoff of the final answer: keeps its first N tokens."
    )
    num_proc: int | None = Field(None, ge=1, description="Processes for tokenising (worth it from ~10k rows).")
    mix_strategy: Literal["concat", "interleave_under", "interleave_over"] = Field(
        "concat",
        description="Several data sets: concat; interleave_under (sample by interleave_probs until the first "
        "runs out); interleave_over (until the last runs out, repeating the others).",
    )
    interleave_probs: list[float] | None = Field(
        None, description="Sampling probabilities per data set for interleaving (default: equal)."
    )
    cache: bool = Field(
        True, description="Keep the tokenised data in the run directory so a restart or resume skips tokenising."
    )
    streaming: bool = Field(
        False, description="Stream JSON-lines or text data larger than memory: rows are checked in one pass, then "
        "read, shuffled in a buffer and tokenised as training goes. Needs training.max_steps (sft, pt)."
    )
    buffer_size: int = Field(16384, ge=1, description="Rows in the shuffle buffer when streaming.")
    image_max_pixels: int = Field(
        768 * 768, ge=28 * 28, description="Images larger than this many pixels are scaled down (aspect kept), so "
        "memory per image is bounded (vision-language models; LLaMA-Factory's image_max_pixels)."
    )
    image_min_pixels: int = Field(
        32 * 32, ge=1, description="Images smaller than this many pixels are scaled up (vision-language models)."
    )

    @field_validator("train", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("train")
    @classmethod
    def _not_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("name at least one training file")
        return v

    @model_validator(mode="after")
    def _probs_match(self) -> "DataSpec":
        p = self.interleave_probs
        if p is not None:
            if len(p) != len(self.train):
                raise ValueError(f"interleave_probs has {len(p)} values for {len(self.train)} data sets")
            if any(x < 0 for x in p) or abs(sum(p) - 1) > 1e-6:
                raise ValueError("interleave_probs must be non-negative and sum to 1")
        return self


# --------------------------------------------------------------------------- stage
class StageBase(Section):
    """What is being learnt. `stage: sft` is short for `stage: {type: sft}`. Each stage has its own settings beside
    its type (the rows below name the stages a setting belongs to); another stage's setting is a mistake."""

    type: Literal[stages.NAMES] = Field(  # type: ignore[valid-type] - the registry's names
        "sft",
        description="sft supervised fine-tuning; pt continued pre-training; rm reward model; dpo/kto/orpo/simpo "
        "preference optimisation; rl reinforcement learning from a reward model.",
    )

    @property
    def definition(self) -> stages.StageDef:
        """Everything about this stage (train/stages/): what it trains on, what it may export, its trainer."""
        return stages.stage(self.type)

    @property
    def quantizes_a_frozen_model(self) -> bool:
        """A reference or reward model loaded in 4 or 8 bits (bitsandbytes)."""
        return any(v for k, v in self if k.endswith("_quantization_bits"))

    @model_validator(mode="after")
    def _needs_reward_model(self) -> "StageBase":
        if self.definition.needs_reward_model and not self.reward_model:
            raise ValueError(f"stage {self.type} needs reward_model: the name of a finished rm run or a model folder")
        return self


def _stage_settings_class(d: stages.StageDef) -> type[StageBase]:
    """One stage's section of the run file: its type and its own settings (train/stages/<name>.py), as TRL has a
    config class per trainer."""
    type_field = (Literal[d.name], Field(d.name, description=StageBase.model_fields["type"].description))
    return create_model(f"{d.name.title()}Stage", __base__=StageBase, __doc__=StageBase.__doc__,
                        type=type_field, **d.settings)


STAGE_SPECS: dict[str, type[StageBase]] = {name: _stage_settings_class(d) for name, d in stages.STAGES.items()}
# the run file's `stage:` section: the class of its stage.type (pydantic picks it by the tag)
# (a callable discriminator: Section's before-validators run on every field, and pydantic refuses one on a tag field)
StageSpec = Annotated[typing.Union[tuple(Annotated[c, Tag(n)] for n, c in STAGE_SPECS.items())],  # type: ignore
                      Discriminator(lambda v: v.get("type") if isinstance(v, dict) else getattr(v, "type", None))]


def stage_section(value: Any) -> Any:
    """`stage:` as the union reads it: `stage: dpo` or a section without a type (sft, the default) gets its tag."""
    if isinstance(value, str):
        return {"type": value}
    if isinstance(value, dict) and "type" not in value:
        return {"type": "sft", **value}
    return value


# --------------------------------------------------------------------------- method
class LoraSpec(Section):
    """LoRA adapter settings (method.type: lora)."""

    rank: int = Field(8, ge=1, le=1024, description="LoRA rank r: larger learns more, costs more.")
    alpha: float = Field(32, gt=0, description="LoRA scaling alpha (often 2-4x the rank).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA path.")
    target_modules: str | list[str] = Field(
        "all", description="'all' for every linear layer, or a list of module names (e.g. [q_proj, v_proj])."
    )
    modules_to_save: list[str] = Field(
        default_factory=list, description="Extra modules trained in full and saved with the adapter (e.g. lm_head)."
    )
    use_rslora: bool = Field(False, description="Rank-stabilised LoRA scaling (alpha / sqrt(r)).")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")
    pissa_init: bool = Field(False, description="Initialise the adapter from the weights' principal directions (PiSSA).")
    loraplus_lr_ratio: float | None = Field(
        None, gt=0, description="LoRA+: the B matrices learn this many times faster than A (e.g. 16)."
    )
    loraplus_lr_embedding: float | None = Field(None, gt=0, description="LoRA+ learning rate of embedding adapters.")
    adapter: str | None = Field(
        None, description="Start from an existing adapter: a run's name (its export) or an adapter folder."
    )
    create_new_adapter: bool = Field(
        False, description="With adapter: merge it into the base and train a fresh adapter on top."
    )


class FreezeSpec(Section):
    """Freeze tuning settings (method.type: freeze)."""

    trainable_layers: int = Field(2, description="Train the last N layers (negative: the first N).")
    trainable_modules: str | list[str] = Field(
        "all", description="'all', or names of the modules inside those layers to train (e.g. [mlp])."
    )
    extra_modules: list[str] = Field(
        default_factory=list, description="Modules outside the layers to train too (e.g. embed_tokens, norm)."
    )


class QuantizationSpec(Section):
    """Load the base model quantised (QLoRA)."""

    bits: Literal[4, 8] | None = Field(
        None, description="4 or 8 to load the base model quantised (QLoRA); bitsandbytes and HQQ run on a CPU too, EETQ needs a "
        "CUDA GPU."
    )
    method: Literal["bnb", "hqq", "eetq"] = Field("bnb", description="Quantisation library: bitsandbytes, HQQ or EETQ.")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type (bitsandbytes).")
    double_quant: bool = Field(True, description="Quantise the quantisation constants too (bitsandbytes 4-bit).")


class MethodSpec(Section):
    """How the weights are updated. `method: lora` is short for `method: {type: lora}`."""

    type: Literal["lora", "full", "freeze"] = Field(
        "lora", description="lora trains a small adapter; full trains every weight; freeze trains some layers."
    )
    lora: LoraSpec = Field(default_factory=LoraSpec)
    freeze: FreezeSpec = Field(default_factory=FreezeSpec)
    quantization: QuantizationSpec = Field(default_factory=QuantizationSpec)
    galore: dict[str, Any] | None = Field(
        None, description="GaLore low-rank gradient projection (galore-torch): {rank, update_proj_gap, scale, "
        "proj_type, target: all or names, layerwise}."
    )
    apollo: dict[str, Any] | None = Field(
        None, description="APOLLO optimiser (apollo-torch): {rank, update_proj_gap, scale, proj, target, layerwise}."
    )
    badam: dict[str, Any] | None = Field(
        None, description="BAdam (badam package): full fine-tuning that updates one block of layers at a time. "
        "{mode: layer or ratio, switch_every: steps per block (50), switch_mode: descending, ascending, random or "
        "fixed, start_block, update_ratio: share of each matrix updated in ratio mode (0.05)}."
    )
    vision_tower: Literal["frozen", "lora", "full"] = Field(
        "frozen", description="Vision-language models: the image encoder stays frozen, gets LoRA adapters (method "
        "lora) or is trained whole (LLaMA-Factory's freeze_vision_tower)."
    )
    projector: Literal["frozen", "lora", "full"] = Field(
        "frozen", description="Vision-language models: the projector from image features to the language model "
        "(Qwen-VL's merger): frozen, LoRA (method lora) or trained whole (freeze_multi_modal_projector)."
    )
    llama_pro_blocks: int | None = Field(
        None, ge=1, description="LLaMA Pro: insert N copies of evenly spaced decoder layers, initialised to pass "
        "their input through unchanged, and train only those (method.type: freeze; the export is the grown model)."
    )


# --------------------------------------------------------------------------- training
class TrainingSpec(Section):
    """The optimisation loop (names follow transformers' TrainingArguments)."""

    num_train_epochs: float = Field(3, gt=0, description="Passes over the training data.")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimiser steps (overrides epochs).")
    learning_rate: float = Field(1e-4, gt=0, lt=1, description="Peak learning rate.")
    per_device_train_batch_size: int = Field(8, ge=1, description="Examples per device per forward pass.")
    tokens_per_batch: int | None = Field(
        None, ge=16, description="sft and pt: fill each forward pass with rows up to this many tokens, instead of "
        "per_device_train_batch_size rows, so every step carries comparable work (at least data.max_length)."
    )
    gradient_accumulation_steps: int = Field(1, ge=1, description="Forward passes per optimiser step.")
    per_device_eval_batch_size: int = Field(8, ge=1, description="Examples per device when evaluating.")
    warmup_steps: int = Field(0, ge=0, description="Steps of linear learning-rate warm-up.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Warm-up as a share of all steps (if warmup_steps is 0).")
    lr_scheduler_type: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
    ] = Field("cosine", description="How the learning rate changes over training.")
    optim: Literal["adamw_torch", "adafactor", "sgd", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit",
                   "adam_mini"] = Field(
        "adamw_torch", description="Optimiser. adamw_8bit keeps AdamW's state in 8 bits (bitsandbytes); the paged "
        "ones keep it in memory that CUDA pages out to the host under pressure (on a CPU they are plain AdamW)."
    )
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm (0 disables).")
    seed: int = Field(42, description="Random seed for reproducible runs.")
    precision: Literal["auto", "fp32", "fp16", "bf16", "pure_bf16"] = Field(
        "auto",
        description="Compute type. auto: bf16 on GPUs that support it, else fp16 on GPU; on a CPU, bf16 for a "
        "model 512 wide or more where the CPU has bf16 units (AMX or AVX512-BF16; FTUNE_CPU_BF16=0 or 1 overrides), "
        "else fp32. pure_bf16 loads the weights in bf16 without mixed precision.",
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory by recomputing activations.")
    neftune_noise_alpha: float | None = Field(None, gt=0, description="NEFTune embedding noise (5 is common).")
    logging_strategy: Literal["steps", "epoch"] = Field(
        "steps", description="When to write a step event (loss, learning rate, speed): every logging_steps steps, "
        "or at the end of each epoch. The first step is always written."
    )
    logging_steps: int = Field(10, ge=1, description="Write a step event every N steps (logging_strategy: steps).")
    save_strategy: Literal["steps", "epoch", "no"] = Field("steps", description="When to save checkpoints.")
    save_steps: int = Field(500, ge=1, description="Save a checkpoint every N steps (save_strategy: steps).")
    save_total_limit: int | None = Field(3, ge=1, description="Keep at most N checkpoints (oldest deleted).")
    eval_strategy: Literal["auto", "steps", "epoch", "no"] = Field(
        "auto", description="When to evaluate; auto: every eval_steps when there is validation data."
    )
    eval_steps: int | None = Field(
        None, ge=1, description="Evaluate every N steps (default: save_steps, or 1/5 of the run if shorter)."
    )
    compute_accuracy: bool = Field(
        False, description="sft and pt: evaluation also reports token accuracy (eval_mean_token_accuracy: the share "
        "of learnt tokens the model ranks first)."
    )
    dataloader_num_workers: int = Field(0, ge=0, description="Worker processes feeding batches.")
    auto_resume: bool = Field(
        False, description="Resume from the newest complete checkpoint when the run is started again (like --resume), "
        "so a job a scheduler requeues after a preemption or a time limit goes on by itself."
    )
    system_interval_s: float = Field(10.0, gt=0, description="Seconds between system (memory) events.")
    max_time: float | None = Field(
        None, gt=0, description="Seconds this attempt may run, from the worker's start (loading included): at the "
        "first step end past it, it saves a checkpoint and ends `stopped` (reason max_time). Set it under a "
        "scheduler's time limit, leaving room to save; `ftune train RUN --resume` (or auto_resume) goes on from there."
    )
    hang_after: float | None = Field(
        None, gt=0, description="Seconds without an optimiser step (or an evaluation batch) before the watchdog writes "
        "a warning with every rank's Python stack (in train.log; the event carries the innermost frames) and the run "
        "shows as stalled. Default: the larger of 10 minutes and 20 times the median step. Before the first step "
        "(loading the data and the model) the limit is the larger of this and 30 minutes."
    )
    on_hang: Literal["warn", "stop"] = Field(
        "warn", description="warn: the warning only. stop: also end the process after a second hang_after, with an "
        "error event, so a scheduler can requeue it (`ftune train RUN --resume`)."
    )
    on_blowup: Literal["warn", "rollback"] = Field(
        "warn", description="When the loss turns NaN or infinite, or stays above 3 times its recent maximum for 3 "
        "logged steps: warn (a warning event), or rollback: restore the newest checkpoint saved before it, skip the "
        "batches trained since, scale the learning rate by rollback_lr_scale, and go on (a rollback event each time)."
    )
    max_rollbacks: int = Field(
        3, ge=1, description="on_blowup rollback: how many rollbacks one attempt may make; the next blow-up ends it "
        "with an error."
    )
    rollback_lr_scale: float = Field(
        1.0, gt=0, le=1, description="on_blowup rollback: multiply the learning rate by this at each rollback (e.g. "
        "0.5)."
    )
    report_to: list[Literal["tensorboard", "wandb", "swanlab", "mlflow", "trackio"]] = Field(
        default_factory=list, description="Experiment trackers that get the same figures as events.jsonl, through "
        "transformers' own integrations (each an extra: pip install 'ftune[wandb]' ...). Offline modes are honoured "
        "(WANDB_MODE=offline, SWANLAB_MODE=local, MLFLOW_TRACKING_URI=file:...); keys stay in the environment, never "
        "in the run file. A tracker that fails is a warning event and training goes on (docs/trackers.md)."
    )
    predict_with_generate: bool = Field(
        False, description="After training, answer the prompts of data.test (greedy) and score the answers: "
        "BLEU and ROUGE-1/2/L in runs/<name>/eval/export/ (predictions.jsonl, metrics.json)."
    )
    max_new_tokens: int = Field(
        512, ge=1, description="Longest generated answer, in tokens, for predict_with_generate and `ftune eval` "
        "(GLM-4's generation_config.max_new_tokens)."
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_tracker_or_none(cls, v: Any) -> Any:
        """`report_to: wandb` is one tracker and `none` (transformers' word) is none; a list is kept once each."""
        if isinstance(v, str):
            v = [] if v.strip().lower() in ("none", "") else [x.strip() for x in v.split(",")]
        if isinstance(v, list):
            v = list(dict.fromkeys(x for x in v if not (isinstance(x, str) and x.lower() == "none")))
        return v

    @model_validator(mode="after")
    def _precision_is_coherent(self) -> "TrainingSpec":
        if self.optim == "adam_mini" and self.precision == "fp16":
            raise ValueError("adam_mini does not support fp16; use bf16 or fp32")
        return self


# --------------------------------------------------------------------------- output & resources
class OutputSpec(Section):
    """Where checkpoints and the final model go."""

    dir: str | None = Field(
        None,
        description="Folder for checkpoints/ and export/ (e.g. a big mounted disk), one run's own: a folder another "
        "run owns is refused, and `ftune rm` deletes only what belongs to its run. Default: the run directory.",
    )
    save_format: Literal[formats.NAMES] = Field(  # type: ignore[valid-type] - the export-format registry's names
        "lora",
        description="Final model: lora (the adapter alone), merged_16bit (adapter merged into the base), "
        "merged_4bit, or gguf: export/ keeps the adapter (or the whole model) and a checked GGUF file for llama.cpp "
        "and Ollama, with a Modelfile, is written to exports/gguf-QUANT/ (needs `pip install 'ftune[gguf]'`). "
        "Full fine-tuning always saves the whole model.",
    )
    gguf_quant: Literal["f16", "bf16", "q8_0", "q4_k_m", "q5_k_m", "q6_k"] = Field(
        "q8_0",
        description="The GGUF file's weights (save_format gguf, and `ftune export --format gguf` without --quant): "
        "f16, bf16, q8_0 (half of f16's size, logits within a few percent) from llama.cpp's converter; q4_k_m, "
        "q5_k_m, q6_k also need llama.cpp's llama-quantize on PATH.",
    )


class ResourcesSpec(Section):
    """Machines and GPUs."""

    gpus_per_node: int | Literal["auto"] = Field(
        "auto", description="Processes (GPUs) per machine; auto: every GPU nvidia-ml-py sees, or 1 on a CPU. "
        "On a machine without GPUs, N > 1 with ddp runs N CPU processes over gloo."
    )
    nodes: int = Field(1, ge=1, description="Machines taking part (the most, for an elastic run): run the same "
                       "`ftune train RUN` on each, or `ftune submit RUN --slurm`; they meet on torchrun's c10d "
                       "rendezvous, which numbers them. See docs/multi-gpu.md.")
    min_nodes: int | None = Field(None, ge=1, description="Elastic: training starts (and goes on after a node is lost, "
                                  "with max_restarts) once this many machines have joined. Default: nodes.")
    max_restarts: int = Field(0, ge=0, description="Times torchrun restarts every process after one fails or a node "
                              "is lost (each restart resumes from the newest checkpoint); 0: the run ends with an "
                              "error event naming the node.")
    strategy: Literal["auto", "ddp", "deepspeed-zero2", "deepspeed-zero3", "fsdp"] = Field(
        "auto", description="Multi-process strategy: ddp replicates the model; ZeRO-2 shards optimiser state and "
        "gradients; ZeRO-3 and FSDP also shard the parameters. auto: ddp."
    )
    offload: bool = Field(False, description="Offload parameters and optimiser state to CPU (ZeRO-3 / FSDP).")
    master_addr: str | None = Field(None, description="Several nodes: the rendezvous host, one of the machines. "
                                    "Default: $MASTER_ADDR, else the first node of the Slurm job.")
    master_port: int | None = Field(None, ge=1, le=65535, description="The rendezvous port (default: $MASTER_PORT, "
                                    "else 29500; a free one on a single machine).")

    @field_validator("gpus_per_node")
    @classmethod
    def _at_least_one(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("gpus_per_node must be at least 1 (or auto)")
        return v

    @model_validator(mode="after")
    def _coherent(self) -> "ResourcesSpec":
        if self.offload and self.strategy not in ("deepspeed-zero3", "fsdp"):
            raise ValueError("offload works with strategy deepspeed-zero3 or fsdp")
        if self.min_nodes is not None and self.min_nodes > self.nodes:
            raise ValueError(f"min_nodes ({self.min_nodes}) is more than nodes ({self.nodes}): nodes is the most")
        return self


# --------------------------------------------------------------------------- the run
class RunSpec(Section):
    """A fine-tuning run: everything `ftune train` needs."""

    name: str = Field(description=f"Run name: {NAME_RULE}.")
    preset: Literal["standard", "quality", "fast"] | None = Field(
        None, description="Scenario preset merged under this file's values."
    )
    model: ModelSpec
    data: DataSpec
    stage: StageSpec = Field(default_factory=STAGE_SPECS["sft"])
    method: MethodSpec = Field(default_factory=MethodSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)

    @field_validator("stage", mode="before")
    @classmethod
    def _stage_tag(cls, v: Any) -> Any:
        return stage_section(v)

    @field_validator("name")
    @classmethod
    def _name_rule(cls, v: str) -> str:
        problem = check_run_name(v)
        if problem:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> "RunSpec":
        t, stage = self.training, self.stage.definition
        problem = stage.check_run(self) if stage.check_run else None
        if problem:
            raise ValueError(problem)
        if self.data.streaming and (not t.max_steps or not stage.trains_on_tokens):
            raise ValueError("data.streaming works for stage sft or pt and needs training.max_steps (a stream has "
                             "no length to count epochs by)")
        if t.tokens_per_batch is not None:
            if not stage.trains_on_tokens or self.data.streaming:
                raise ValueError("training.tokens_per_batch works for stage sft or pt on data that is not streamed; "
                                 "remove it and use per_device_train_batch_size")
            if t.tokens_per_batch < self.data.max_length:
                raise ValueError(f"training.tokens_per_batch ({t.tokens_per_batch}) is below data.max_length "
                                 f"({self.data.max_length}): a full-length row would not fit; raise it or lower "
                                 "data.max_length")
        if t.predict_with_generate and not self.data.test:
            raise ValueError("training.predict_with_generate needs data.test: the file whose prompts are answered")
        if self.method.type == "full" and formats.get(self.output.save_format).merged:  # there is no adapter to merge
            raise ValueError("output.save_format applies to adapters; full fine-tuning always saves the whole model")
        return self

    @model_validator(mode="after")
    def _method_checks(self) -> "RunSpec":
        m = self.method
        if m.quantization.bits and m.type != "lora":
            raise ValueError("method.quantization (QLoRA) trains a LoRA adapter: set method.type: lora")
        if m.lora.create_new_adapter and not m.lora.adapter:
            raise ValueError("method.lora.create_new_adapter needs method.lora.adapter")
        galore, apollo, badam = (x is not None for x in (m.galore, m.apollo, m.badam))  # `galore: {}` is on
        if galore and apollo:
            raise ValueError("choose one of method.galore and method.apollo")
        if (galore or apollo) and m.type == "lora":
            raise ValueError("GaLore and APOLLO train full weights: set method.type: full or freeze")
        if badam and (m.type != "full" or galore or apollo or self.training.optim != "adamw_torch"):
            raise ValueError("method.badam is its own optimiser over full weights: set method.type: full, "
                             "training.optim: adamw_torch, and no galore or apollo")
        if self.training.optim == "adam_mini" and (m.type == "lora" or galore or apollo):
            raise ValueError("training.optim adam_mini splits whole weight matrices by attention head: use "
                             "method.type full or freeze, without galore or apollo")
        if "lora" in (m.vision_tower, m.projector) and m.type != "lora":
            raise ValueError("method.vision_tower / method.projector lora adds LoRA adapters: set method.type: lora, "
                             "or train them full")
        if self.data.image_min_pixels > self.data.image_max_pixels:
            raise ValueError("data.image_min_pixels must not be larger than data.image_max_pixels")
        if m.llama_pro_blocks and m.type != "freeze":
            raise ValueError("method.llama_pro_blocks trains only the inserted blocks: set method.type: freeze")
        if self.model.acceleration == "unsloth" and m.type != "lora":
            raise ValueError("model.acceleration unsloth patches LoRA training: set method.type: lora")
        refusal = self.stage.definition.export_refusal(self.output.save_format)
        if refusal:
            raise ValueError(f"output.save_format {refusal}")
        return self

    @property
    def method_label(self) -> str:
        """Short label for tables: lora, dora, full, qlora-4bit..."""
        m = self.method
        if m.type != "lora":
            return m.type
        label = "dora" if m.lora.use_dora else "lora"
        return f"q{label}-{m.quantization.bits}bit" if m.quantization.bits else label


# --------------------------------------------------------------------------- schema walking
def union_members(annotation: Any) -> dict[str, type[BaseModel]]:
    """A tagged union's sections by tag (StageSpec: {"sft": SftStage, "dpo": DpoStage, ...}); {} for any other
    annotation. pydantic keeps the bare Union as a field's annotation and the tag's name apart."""
    args = [typing.get_args(a)[0] if typing.get_origin(a) is Annotated else a for a in typing.get_args(annotation)]
    models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
    if len(models) < 2:
        return {}
    return {m.model_fields["type"].default: m for m in models}


def section_class(annotation: Any, value: Any = None) -> type[BaseModel] | None:
    """The section model an annotation holds (`ModelSpec`, or `LoraSpec` inside `LoraSpec | None`), or None. For a
    tagged union, the member a value's type picks, else the base they share (StageBase: the type alone)."""
    members = union_members(annotation)
    if members:
        tag = value.get("type") if isinstance(value, dict) else None
        return members.get(tag) or next(iter(members.values())).__base__
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def class_at(path: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The section model at a path of keys (("method", "lora") -> LoraSpec), or None when there is none. A tag
    names a union's member, as in pydantic's error locations: ("stage", "dpo") -> DpoStage."""
    cls: type[BaseModel] | None = RunSpec
    members: dict[str, type[BaseModel]] = {}
    for key in path:
        if isinstance(key, str) and key in members:
            cls, members = members[key], {}
            continue
        if cls is None or not isinstance(key, str) or key not in cls.model_fields:
            return None
        annotation = cls.model_fields[key].annotation
        cls, members = section_class(annotation), union_members(annotation)
    return cls


def untagged(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """A pydantic error location as the run file's path: the union's tag dropped (stage.dpo.pref_beta ->
    stage.pref_beta)."""
    out: list[str | int] = []
    for key in loc:
        cls = class_at(tuple(out))
        if cls is not None and isinstance(key, str) and key not in cls.model_fields and class_at((*out, key)):
            continue  # a tag
        out.append(key)
    return tuple(out)


def iter_fields(cls: type[BaseModel] = RunSpec, prefix: str = ""):
    """Yield (dotted path, FieldInfo, section class) for every leaf field of the schema; a tagged union's fields
    once each (stage.type, then every stage's own settings, in the registry's order)."""
    for name, info in cls.model_fields.items():
        path = f"{prefix}{name}"
        members = union_members(info.annotation)
        if members:
            seen: set[str] = set()
            for member in (section_class(info.annotation), *members.values()):  # the base's stage.type first
                for item in iter_fields(member, path + "."):
                    if item[0] not in seen:
                        seen.add(item[0])
                        yield item
            continue
        sub = section_class(info.annotation)
        if sub is not None and sub is not cls:
            yield from iter_fields(sub, path + ".")
        else:
            yield path, info, cls


def stages_with(setting: str) -> list[str]:
    """The stages that have `setting` among their own (stage.pref_beta: dpo, kto, orpo, simpo)."""
    return [name for name, cls in STAGE_SPECS.items() if setting in cls.model_fields]


def not_of_stage(stage: str, settings) -> list[str]:
    """Those of `settings` (names under `stage:`) that another stage has and `stage` has not: what a change of
    stage leaves behind."""
    own = STAGE_SPECS[stage].model_fields
    return [k for k in settings if k not in own and stages_with(k)]


def stages_text(names: list[str]) -> str:
    """Stage names in a sentence: "dpo, kto, orpo and simpo"."""
    return " and ".join(filter(None, (", ".join(names[:-1]), names[-1]))) if names else ""
