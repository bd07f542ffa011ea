"""Load a run's model for inference: its export or one of its checkpoints, with the run's tokenizer.

What a run leaves behind, and how each loads:

    export/ (lora)            the adapter       -> base model + peft adapter
    export/ (merged, full)    a whole model     -> transformers alone
    checkpoints/checkpoint-N  adapter or model  -> the same rules

The tokenizer comes from the same folder (the worker saves it, chat template included, with every
checkpoint and the export), so chat, serve and eval render prompts exactly as training did. Only
when a folder has no tokenizer is the base model's taken, with the run's `model.template` applied. A
vision-language model's processor (image processor, template) is saved and found the same way.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftune.runtime import models
from ftune.runtime.infer.generate import Vision
from ftune.runtime.rundir import RunDir, RunError
from ftune.runtime.spec import RunSpec, load_spec


@dataclass
class Target:
    """Which weights of a run: a folder, and what it holds."""

    path: Path
    label: str  # "export" or "checkpoint-<step>"
    step: int | None  # the checkpoint's step (None for the export)
    adapter: bool  # a peft adapter (else a whole model)


@dataclass
class RunModel:
    """A run's model ready to generate: the model, its tokenizer and where they came from."""

    model: Any
    tokenizer: Any
    spec: RunSpec
    target: Target
    base_source: str  # the base model folder or hub id
    name: str  # the run's name, as clients address it
    vision: Vision | None = None  # a vision-language model's processor and pixel limits

    @property
    def adapter(self) -> bool:
        return self.target.adapter


def resolve_target(run: RunDir, checkpoint: int | None = None) -> Target:
    """The export by default (the newest checkpoint when there is no export yet); or checkpoint N."""
    found = dict(run.checkpoints())
    steps = ", ".join(str(s) for s in found) or "none"
    if checkpoint is not None:
        if checkpoint not in found:
            raise RunError(f"run '{run.name}' has no complete checkpoint at step {checkpoint} (checkpoints: {steps})")
        path = found[checkpoint]
        return Target(path, f"checkpoint-{checkpoint}", checkpoint, (path / "adapter_config.json").is_file())
    export = run.export_dir()
    if (export / "config.json").is_file() or (export / "adapter_config.json").is_file():
        return Target(export, "export", None, (export / "adapter_config.json").is_file())
    latest = run.latest_checkpoint()
    if latest is None:
        raise RunError(f"run '{run.name}' has no export and no checkpoint yet: train it first "
                       f"(`ftune train {run.name}`)")
    step, path = latest
    return Target(path, f"checkpoint-{step}", step, (path / "adapter_config.json").is_file())


@contextlib.contextmanager
def quiet():
    """Load progress bars and library deprecation warnings are noise in a chat, a server log or an export; so is
    bitsandbytes' warning, when peft imports it, that its CPU 4-bit kernels need the `kernels` package."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    bnb = logging.getLogger("bitsandbytes")
    bnb_level = bnb.level
    bnb.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
        bnb.setLevel(bnb_level)


def inference_dtype():
    """bf16 on GPUs that have it, fp16 on other GPUs, fp32 on a CPU (half precision is slow and lossy there)."""
    import torch

    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def placement() -> dict[str, Any]:
    """Where weights go: spread over the GPUs by accelerate when there are any, else the CPU."""
    import torch

    return {"device_map": "auto"} if torch.cuda.is_available() else {}


def load_tokenizer(spec: RunSpec, target: Target, run: RunDir, base: str):
    """The tokenizer saved with the weights (template included); else the base's with the run's template."""
    from transformers import AutoTokenizer

    for folder in (target.path, run.export_dir()):
        if (folder / "tokenizer_config.json").is_file():
            tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=spec.model.trust_remote_code)
            models.prepare_tokenizer(tok, "auto")  # keeps the saved template; a pad token where it has none
            return tok
    return models.load_tokenizer(spec, base)  # what the worker trained with


def load_vision(spec: RunSpec, target: Target, run: RunDir, base: str) -> Vision | None:
    """A vision-language run's processor (saved with the weights, else the base model's), or None."""
    if not models.is_vision(base, spec.model.revision, spec.model.trust_remote_code):
        return None
    folder = next((f for f in (target.path, run.export_dir()) if (f / "preprocessor_config.json").is_file()), None)
    processor = models.load_processor(str(folder) if folder else base, None if folder else spec.model.revision,
                                      spec.model.trust_remote_code, model=base)
    models.prepare_tokenizer(processor.tokenizer, "auto")
    return Vision(processor, spec.data.image_min_pixels, spec.data.image_max_pixels)


def load_base_model(spec: RunSpec, run: RunDir, dtype=None, where: dict[str, Any] | None = None):
    """The base model as training loaded it (RoPE scaling and reward head included), without the adapter."""
    source = models.model_source(spec.model.name_or_path, run.project)
    return models.load_base(spec, source, models.is_vision(source, spec.model.revision, spec.model.trust_remote_code),
                            dtype=dtype or inference_dtype(), **(placement() if where is None else where))


def load_weights(spec: RunSpec, run: RunDir, target: Target, dtype=None, where: dict[str, Any] | None = None):
    """The model at `target`: base + adapter (a PeftModel) or a whole model."""
    if target.adapter:
        from peft import PeftModel

        base = load_base_model(spec, run, dtype, where)
        return PeftModel.from_pretrained(base, target.path)
    kwargs: dict[str, Any] = {"dtype": dtype or inference_dtype(), **(placement() if where is None else where)}
    causal_lm = spec.stage.definition.causal_lm
    if not causal_lm:
        kwargs["num_labels"] = 1
    vision = models.is_vision(str(target.path))
    return models.model_class(causal_lm, vision).from_pretrained(target.path,
                                                               trust_remote_code=spec.model.trust_remote_code,
                                                               **kwargs)


def load_run_model(run: RunDir, checkpoint: int | None = None, dtype=None, for_generation: bool = True) -> RunModel:
    """A run's model and tokenizer, in eval mode, at its export or checkpoint N."""
    spec = load_spec(run.spec_path)
    if for_generation and not spec.stage.definition.causal_lm:
        raise RunError(f"run '{run.name}' trained a reward model (stage rm): it scores answers and cannot "
                       f"generate them; chat, serve and eval need a run of another stage")
    target = resolve_target(run, checkpoint)
    base = models.model_source(spec.model.name_or_path, run.project)
    with quiet():
        vision = load_vision(spec, target, run, base)
        tokenizer = vision.processor.tokenizer if vision else load_tokenizer(spec, target, run, base)
        model = load_weights(spec, run, target, dtype)
    model.eval()
    return RunModel(model, tokenizer, spec, target, base, run.name, vision)


def load_base_for_comparison(rm: RunModel, run: RunDir):
    """The base model next to a run's model: the same object with its adapter switched off when it has
    one (no second copy in memory), else the base loaded once more."""
    if rm.adapter:
        return rm.model, True
    with quiet():
        model = load_base_model(rm.spec, run, next(rm.model.parameters()).dtype)
    model.eval()
    return model, False
