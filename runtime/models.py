"""Where a run's base model comes from and how it is opened: one rule for the wizard, the launcher, the worker
and every command that loads a trained run.

Light at import time (no torch): the loaders import transformers when called.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftune.runtime import gguf
from ftune.runtime.errors import UserError
from ftune.runtime.infer import formats

# A hub id: owner/name, or a legacy name without an owner (gpt2, bert-base-uncased).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def looks_local(name: str) -> bool:
    """A name that can only be a path: it starts with '.', '/' or '~', has more than one '/', or names a .gguf
    file. 'gpt2' and 'Qwen/Qwen2.5-0.5B' are hub ids (unless a folder of that name exists: see `model_source`)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or gguf.is_gguf(name)


def is_hub_id(name: str) -> bool:
    """A name a hub could serve: not path-like, and shaped like owner/name (or a legacy bare name)."""
    return not looks_local(name) and HUB_ID.match(name) is not None


def local_path(name: str, base: Path) -> Path:
    """`name` as a path: absolute, or relative to `base` (the project folder, the one that holds runs/)."""
    p = Path(name).expanduser()
    return p if p.is_absolute() else base / p


def model_source(name: str, base: Path, say: Callable[[str], None] | None = None) -> str:
    """What from_pretrained gets: the local folder when one exists, a .gguf file's converted folder (converted on
    first use: runtime/gguf.py), else the name as a hub id."""
    p = local_path(name, base)
    if gguf.is_gguf(name):
        return str(gguf.ensure(p, say))
    return str(p) if p.exists() else name


def check_folder(folder: Path) -> None:
    """A model folder transformers can open: its config.json is there, parses and names a model_type. Read
    before anything detaches, so a cut-short copy is one sentence, not a worker's traceback."""
    if not folder.is_dir():
        raise UserError(f"model folder not found: {folder}")
    config = folder / "config.json"
    if not config.is_file():
        raise UserError(f"{folder} has no config.json: model.name_or_path must be a model folder, a .gguf file "
                        f"or a hub id")
    fix = "Copy or download the model folder again (a download that was cut short leaves such files)."
    try:
        text = config.read_text(encoding="utf-8")
        data = json.loads(text) if text.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise UserError(f"{config} is not valid JSON ({e})", hint=fix) from None
    if data is None:
        raise UserError(f"{config} is empty ({config.stat().st_size} bytes)", hint=fix)
    if not isinstance(data, dict) or "model_type" not in data:
        raise UserError(f"{config} has no model_type: it is not a transformers model config", hint=fix)


WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.pth")


def check_weights(folder: Path) -> None:
    """A model folder to train from holds its weights: a config.json and a tokenizer alone (a download that
    fetched the small files only) would pass `check_folder` and fail in the worker, after it detached."""
    for index in folder.glob("*.index.json"):  # sharded: every shard its index names is there
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError):
            continue
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise UserError(f"{folder} is missing {len(missing)} of the {len(shards)} weight files {index.name} "
                            f"names (first: {missing[0]})",
                            hint="Copy or download the model folder again (a download that was cut short leaves "
                                 "such folders).")
    if not any(p.is_file() for g in WEIGHTS for p in folder.glob(g)):
        raise UserError(f"{folder} has a config.json but no weights (no *.safetensors or pytorch_model*.bin file): "
                        f"model.name_or_path must be a whole model folder",
                        hint="Download the weights into it too (`hf download ORG/NAME --local-dir FOLDER`), or "
                             "name the hub id and let ftune download it.")


def check_hub(name: str, revision: str | None = None) -> None:
    """A hub id that can be had: in the local cache, or on a hub this machine reaches. Costs one request
    (about 0.2 s) when the model is not cached; a typo, a gated model or no network is one sentence."""
    import huggingface_hub as hub

    from ftune.runtime.hub import offline, problem

    if isinstance(hub.try_to_load_from_cache(name, "config.json", revision=revision), str):
        return
    where = f"model.name_or_path {name!r}"
    if offline():
        raise UserError(f"{where} is not in the local Hugging Face cache, and HF_HUB_OFFLINE is set",
                        hint="Download it on a machine with network (`hf download NAME`), or point "
                             "model.name_or_path at a local folder or .gguf file.")
    try:
        hub.model_info(name, revision=revision, timeout=10)
    except Exception as e:  # noqa: BLE001 - the hub's errors and the network's, as one sentence each
        raise problem(e, where, revision) from None


def prepare_tokenizer(tokenizer, template: str) -> bool:
    """Give the tokenizer the run's chat template and a pad token. Returns True when it had no template of its
    own and ChatML was used (the caller says so where that is news)."""
    from ftune.runtime import templates

    fell_back = False
    if template != "auto":  # saved with the export, so chat and serve render the same way
        tokenizer.chat_template = templates.get(template)
    elif not tokenizer.chat_template:
        tokenizer.chat_template = templates.CHATML_TEMPLATE
        fell_back = True
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return fell_back


def run_template(spec, base: Path) -> tuple[str, str, dict[str, str]] | None:
    """(label, Jinja text, special tokens) of the chat template a run trains with, read without loading anything:
    a named template, or a local model folder's own (chat_template.jinja or tokenizer_config.json; ChatML when it
    has none). None when it cannot be known yet (a hub model not downloaded)."""
    from ftune.runtime import templates

    if spec.model.template != "auto":
        return f"model.template {spec.model.template}", templates.get(spec.model.template), {}
    folder = local_path(spec.model.name_or_path, base)
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return None
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    tokens = {k: v if isinstance(v, str) else (v or {}).get("content", "") for k, v in cfg.items()
              if k in ("bos_token", "eos_token") and v}
    text = cfg.get("chat_template")
    if isinstance(text, list):  # named templates: the default one
        text = next((t.get("template") for t in text if t.get("name") == "default"), None)
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        text = jinja.read_text(encoding="utf-8")
    if not text:
        return f"ChatML (used because {spec.model.name_or_path} has no chat template)", templates.CHATML_TEMPLATE, tokens
    return f"the chat template of {spec.model.name_or_path}", text, tokens


def load_tokenizer(spec, source: str, on_fallback: Callable[[], None] | None = None):
    """The base model's tokenizer, prepared with the run's template (see `prepare_tokenizer`)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source, revision=spec.model.revision,
                                        trust_remote_code=spec.model.trust_remote_code)
    if prepare_tokenizer(tok, spec.model.template) and on_fallback:
        on_fallback()
    return tok


def is_vision(source: str, revision: str | None = None, trust_remote_code: bool = False) -> bool:
    """A vision-language model: its config has a vision tower (Qwen2-VL, Qwen2.5-VL, LLaVA, ...). A local folder
    is read without transformers."""
    config = Path(source) / "config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return False
        return isinstance(data, dict) and "vision_config" in data
    if gguf.is_gguf(source):
        return False
    from transformers import AutoConfig

    try:
        return hasattr(AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code),
                       "vision_config")
    except (OSError, ValueError):
        return False


def vision_problem(spec) -> str | None:
    """Why a run file cannot train a vision-language model as written (None when it can): its template must
    render images, and its rows carry images, so no streaming or packing."""
    from ftune.runtime.templates import VISION_TEMPLATES

    m = spec.model
    if m.template != "auto" and m.template not in VISION_TEMPLATES:
        return (f"model.template {m.template} is a text template, and {m.name_or_path} is a vision-language model "
                f"that renders images with its processor's own: set model.template: auto")
    if spec.data.streaming or spec.data.packing:
        return ("data.streaming and data.packing are for text models: a vision-language model's rows carry "
                "images; set them to false")
    if spec.training.tokens_per_batch:
        return ("training.tokens_per_batch is for text models: a vision-language model's batches are "
                "per_device_train_batch_size rows with their images; remove it")
    if not spec.stage.definition.vision:
        return f"{m.name_or_path} is a vision-language model: ftune trains those with stage sft"
    refusal = formats.get(spec.output.save_format).text_only
    return f"output.save_format {refusal}" if refusal else None


def _images_only(cls):
    """`cls` (a processor class) without its video processor: transformers' Qwen2-VL video processor needs
    torchvision, and the image path does not (its Pillow image processor). Video input is then refused."""

    class ImagesOnly(cls):
        def check_argument_for_proper_class(self, argument_name, argument):
            return None if argument_name == "video_processor" else super().check_argument_for_proper_class(
                argument_name, argument)

        def save_pretrained(self, save_directory, **kwargs):  # what load_processor reads back
            self.tokenizer.save_pretrained(save_directory)
            self.image_processor.save_pretrained(save_directory)
            (Path(save_directory) / "processor_config.json").write_text(
                json.dumps({"processor_class": cls.__name__}, indent=2) + "\n")

    ImagesOnly.__name__ = ImagesOnly.__qualname__ = cls.__name__
    return ImagesOnly


def processor_template(source: str, revision: str | None = None) -> str | None:
    """The chat template a processor keeps beside the tokenizer (chat_template.jinja or .json), from a folder or
    the local hub cache; None when there is none."""
    import huggingface_hub as hub

    for name in ("chat_template.jinja", "chat_template.json"):
        path = Path(source) / name
        if not path.is_file() and not Path(source).is_dir():
            cached = hub.try_to_load_from_cache(source, name, revision=revision)
            path = Path(cached) if isinstance(cached, str) else path
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            return json.loads(text).get("chat_template") if name.endswith(".json") else text
    return None


def load_processor(source: str, revision: str | None = None, trust_remote_code: bool = False,
                   model: str | None = None):
    """A vision-language model's processor (image processor, tokenizer, chat template) through AutoProcessor.
    Where its video processor cannot load (no torchvision), the same processor class is built from the image
    processor and tokenizer alone: training and answering on images need nothing more. `model`: the folder or
    hub id whose config names the processor class, when `source` has none (an adapter's folder)."""
    import transformers
    from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, AutoTokenizer

    kw = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        processor = AutoProcessor.from_pretrained(source, **kw)
        if hasattr(processor, "image_processor"):
            if processor.chat_template and not processor.tokenizer.chat_template:  # one template for both
                processor.tokenizer.chat_template = processor.chat_template
            return processor
    except ImportError as e:
        if "torchvision" not in str(e).lower():
            raise
    # the class from processor_config.json (an adapter's folder has no config.json), else from the model's config
    saved = Path(source) / "processor_config.json"
    name = json.loads(saved.read_text(encoding="utf-8")).get("processor_class") if saved.is_file() else None
    if name and hasattr(transformers, name):
        cls = getattr(transformers, name)
    else:
        from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

        config_source = source if model is None or (Path(source) / "config.json").is_file() else model
        cls = PROCESSOR_MAPPING[type(AutoConfig.from_pretrained(config_source, **kw))]
    tokenizer = AutoTokenizer.from_pretrained(source, **kw)
    tokenizer.chat_template = tokenizer.chat_template or processor_template(source, revision)
    image_processor = AutoImageProcessor.from_pretrained(source, backend="pil", **kw)
    processor = _images_only(cls)(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                                  chat_template=tokenizer.chat_template)
    del processor.video_processor  # ProcessorMixin skips video input when the attribute is absent
    return processor


def model_class(causal_lm: bool = True, vision: bool = False):
    """A reward model (a stage that is no causal LM: rm) has one score per sequence; a vision-language model
    reads images and text; every other model generates text."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoModelForSequenceClassification

    if vision:
        return AutoModelForImageTextToText
    return AutoModelForCausalLM if causal_lm else AutoModelForSequenceClassification


def rope_scaled_config(spec, source: str):
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


def load_base(spec, source: str, vision: bool = False, **kwargs: Any):
    """The base model as the run file describes it: its class (a score head for rm, image-text-to-text for a
    vision-language model), RoPE scaling, revision and remote-code setting. kwargs go to from_pretrained (dtype,
    quantization_config, device_map, ...)."""
    if spec.model.rope_scaling:
        kwargs["config"] = rope_scaled_config(spec, source)
    causal_lm = spec.stage.definition.causal_lm
    if not causal_lm:
        kwargs.setdefault("num_labels", 1)
    return model_class(causal_lm, vision).from_pretrained(source, revision=spec.model.revision,
                                                        trust_remote_code=spec.model.trust_remote_code, **kwargs)


def resolve_model_ref(name: str, runs_root: Path, base: Path) -> Path | str:
    """A model the run file names besides its base (a reference, a reward model, an adapter): another run
    (its export), a local folder, or a hub id."""
    from ftune.runtime.rundir import RunError

    if (runs_root / name / "run.yaml").is_file():
        run_export = runs_root / name / "export"
        if not run_export.is_dir():
            raise RunError(f"run '{name}' has no export yet: train it to the end first")
        return run_export
    local = local_path(name, base)
    return local if local.exists() else name
