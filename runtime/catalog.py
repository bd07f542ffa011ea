"""The model catalog (catalog.yaml) and what ftune can tell about any model before loading it.

Light on purpose: no torch, no transformers, no network. A local folder is read from its
config.json and the safetensors headers; a hub id is known from the catalog or its name.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ftune.runtime.models import local_path, looks_local

_FAMILY_KEYS = ("template", "lora_targets", "context", "trust_remote_code", "kind", "vocab", "vision")


@dataclass(frozen=True)
class CatalogModel:
    id: str
    family: str
    size: str
    params_b: float
    template: str
    lora_targets: tuple[str, ...]
    context: int
    trust_remote_code: bool
    kind: str
    vocab: int | None = None
    hidden: int | None = None
    layers: int | None = None
    vision: tuple[float, int, int] | None = None  # a vision-language model's tower: (params_b, width, blocks)


@dataclass(frozen=True)
class Family:
    name: str
    template: str
    match: str
    model_types: tuple[str, ...]
    vocab: int | None
    models: tuple[CatalogModel, ...]
    group: str = ""

    @property
    def sizes(self) -> str:
        """'0.5B-72B' for the choice list."""
        by_size = sorted(self.models, key=lambda m: m.params_b)
        first, last = by_size[0].size.split()[0], by_size[-1].size.split()[0]
        return first if first == last else f"{first}-{last}"


@lru_cache(maxsize=1)
def families() -> tuple[Family, ...]:
    text = resources.files("ftune.runtime").joinpath("catalog.yaml").read_text(encoding="utf-8")
    out = []
    for fam in yaml.safe_load(text)["families"]:
        models = []
        for m in fam["models"]:
            merged = {k: fam.get(k) for k in _FAMILY_KEYS} | m
            models.append(CatalogModel(
                id=merged["id"], family=fam["family"], size=str(merged["size"]), params_b=float(merged["params"]),
                template=merged["template"], lora_targets=tuple(merged["lora_targets"]),
                context=int(merged["context"]), trust_remote_code=bool(merged["trust_remote_code"]),
                kind=merged["kind"], vocab=merged.get("vocab"), hidden=merged.get("hidden"),
                layers=merged.get("layers"),
                vision=tuple(merged["vision"]) if merged.get("vision") else None,
            ))
        out.append(Family(fam["family"], fam["template"], fam["match"], tuple(fam.get("model_types", ())),
                          fam.get("vocab"), tuple(models), fam.get("group") or fam["family"]))
    return tuple(out)


def groups() -> dict[str, list[Family]]:
    """Families by maker, in catalog order: {'Qwen': [Qwen1.5, Qwen2, ...], 'GLM-4': [GLM-4], ...}."""
    out: dict[str, list[Family]] = {}
    for fam in families():
        out.setdefault(fam.group, []).append(fam)
    return out


def family(name: str) -> Family | None:
    return next((f for f in families() if f.name == name), None)


def find_model(hub_id: str) -> CatalogModel | None:
    key = hub_id.strip().lower()
    for fam in families():
        for m in fam.models:
            if m.id.lower() == key:
                return m
    return None


def templates() -> list[str]:
    """Every template name the catalog knows, sorted."""
    return sorted({m.template for f in families() for m in f.models})


def family_by_name(text: str) -> Family | None:
    """The family whose `match` expression matches the most of the name in `text` (a hub id's part after
    the owner, or a folder name)."""
    text = text.rstrip("/").rsplit("/", 1)[-1]
    best, best_len = None, 0
    for fam in families():
        m = re.search(fam.match, text, re.IGNORECASE)
        if m and len(m.group(0)) > best_len:
            best, best_len = fam, len(m.group(0))
    return best


def family_by_config(model_type: str | None, vocab: int | None) -> Family | None:
    """The family of a local folder from config.json's model_type (the vocabulary size tells shared types apart)."""
    if not model_type:
        return None
    candidates = [f for f in families() if model_type in f.model_types]
    exact = [f for f in candidates if vocab and f.vocab == vocab]
    return (exact or candidates or [None])[0]


_SIZE_RE = re.compile(r"(?<![A-Za-z0-9.])(?:(\d+)x)?(\d+(?:[._]\d+)?)([bm])(?![a-z0-9])", re.IGNORECASE)


def guess_params_b(name: str) -> float | None:
    """Billions of parameters from a name: 'Qwen2.5-7B' 7, 'internlm2_5-1_8b' 1.8, '8x7B' 56, 'SmolLM-135M' 0.135."""
    m = _SIZE_RE.search(Path(name).name if "/" not in name or Path(name).exists() else name.split("/", 1)[1])
    if not m:
        return None
    value = float(m.group(2).replace("_", "."))
    if m.group(1):
        value *= int(m.group(1))
    return value / 1000 if m.group(3).lower() == "m" else value


def kind_from_name(name: str) -> str | None:
    if re.search(r"(instruct|chat|-it(?![a-z])|distill)", name, re.IGNORECASE):
        return "instruct"
    if re.search(r"base", name, re.IGNORECASE):
        return "base"
    return None


# --------------------------------------------------------------------------- local folders
def _safetensors_params(path: Path) -> int:
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        if size > 100_000_000:
            raise ValueError("implausible safetensors header")
        header = json.loads(f.read(size))
    total = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        n = 1
        for dim in info.get("shape", []):
            n *= int(dim)
        total += n
    return total


def count_params_b(folder: Path) -> float | None:
    """Parameters (billions) from the safetensors headers (exact), else from .bin sizes (16-bit assumed)."""
    shards = sorted(folder.glob("*.safetensors"))
    try:
        if shards:
            return sum(_safetensors_params(p) for p in shards) / 1e9
    except (OSError, ValueError, struct.error):
        pass
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if bins:
        return sum(p.stat().st_size for p in bins) / 2 / 1e9
    return None


def local_problem(path: Path) -> str | None:
    """Why `path` is not a model folder (or a .gguf model file), or None."""
    if not path.exists():
        return f"{path} does not exist"
    if path.is_file() and path.suffix.lower() == ".gguf":
        return None  # its own checks (runtime/gguf.py) run when it is converted
    if not path.is_dir():
        return f"{path} is a file: give the model's folder (the one with config.json) or a .gguf file"
    if not (path / "config.json").is_file():
        return f"{path} has no config.json: a model folder holds config.json and the weights"
    return None


# --------------------------------------------------------------------------- what we know about a model
@dataclass
class ModelInfo:
    name_or_path: str
    source: str  # catalog, local or hub
    family: str | None = None
    template: str | None = None  # the matched template's name; None when unknown
    params_b: float | None = None
    trust_remote_code: bool = False  # the checkpoint ships model code that must run
    kind: str | None = None  # instruct, base or None
    context: int | None = None
    lora_targets: tuple[str, ...] = ()
    hidden: int | None = None
    layers: int | None = None
    vocab: int | None = None
    notes: list[str] = field(default_factory=list)
    config: dict[str, Any] | None = None  # a local folder's config.json: what LoRA's exact count is made from
    vision: tuple[float, int, int] | None = None  # a vision-language model's tower: (params_b, width, blocks)

    @property
    def shape(self) -> dict[str, Any]:
        """Keyword arguments for memory_estimate.estimate."""
        return {"hidden": self.hidden, "layers": self.layers, "vocab": self.vocab}

    def shape_for(self, spec: Any) -> dict[str, Any]:
        """memory_estimate.estimate's keyword arguments for this model and a run spec: a vision-language model's tower
        and the images of a step (one per row, at data.image_max_pixels) too."""
        from ftune.runtime.memory_estimate import Vision

        if self.vision is None:
            return self.shape
        params, width, blocks = self.vision
        trains = spec.method.vision_tower != "frozen"
        return {**self.shape, "vision": Vision(params, width, blocks, spec.data.image_max_pixels, trains)}


def from_catalog(entry: CatalogModel) -> ModelInfo:
    return ModelInfo(entry.id, "catalog", entry.family, entry.template, entry.params_b, entry.trust_remote_code,
                     entry.kind, entry.context, entry.lora_targets, entry.hidden, entry.layers, entry.vocab,
                     vision=entry.vision)


def _apply_family(info: ModelInfo, fam: Family | None) -> None:
    if fam is None:
        return
    info.family = fam.name
    info.template = fam.template
    info.lora_targets = fam.models[0].lora_targets
    info.vocab = info.vocab or fam.vocab
    info.vision = info.vision or fam.models[0].vision
    info.context = info.context or fam.models[0].context


def inspect_local(path: Path, as_written: str | None = None) -> ModelInfo:
    """What config.json, the tokenizer config and the weights' headers say about a model folder."""
    info = ModelInfo(as_written or str(path), "local")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    info.config = config if isinstance(config, dict) and config else None
    text_cfg = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    get = lambda key: config.get(key, text_cfg.get(key))  # noqa: E731 - multimodal configs nest the LM
    info.hidden, info.layers, info.vocab = get("hidden_size"), get("num_hidden_layers"), get("vocab_size")
    info.context = get("max_position_embeddings")
    info.vision = vision_tower(config)
    info.trust_remote_code = bool(config.get("auto_map"))
    fam = family_by_name(path.name) or family_by_config(config.get("model_type"), info.vocab)
    _apply_family(info, fam)
    info.context = get("max_position_embeddings") or info.context
    info.params_b = count_params_b(path)
    if info.params_b is None and fam is not None:
        info.params_b = guess_params_b(path.name)
    info.kind = kind_from_name(path.name)
    if info.kind is None and ((path / "chat_template.jinja").is_file() or _has_chat_template(path)):
        info.kind = "instruct"
    if config.get("model_type") and fam is None:
        info.notes.append(f"model_type {config['model_type']!r} is not in the catalog")
    return info


def vision_tower(config: dict[str, Any]) -> tuple[float, int, int] | None:
    """(params_b, width, blocks) of a vision-language config's tower: a ViT block holds about 12 x width^2
    parameters (attention 4, an MLP of ratio 4: 8)."""
    v = config.get("vision_config")
    if not isinstance(v, dict):
        return None
    width = v.get("embed_dim") or v.get("hidden_size") or 1024  # Qwen2-VL: embed_dim; Qwen2.5-VL: hidden_size
    blocks = v.get("depth") or v.get("num_hidden_layers") or 24
    mlp = v.get("intermediate_size") or width * (v.get("mlp_ratio") or 4)
    return (blocks * (4 * width * width + 2 * width * mlp) / 1e9, int(width), int(blocks))


def _has_chat_template(path: Path) -> bool:
    try:
        return bool(json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError):
        return False


def resolve(name_or_path: str, base: Path | None = None) -> ModelInfo:
    """Everything known about `name_or_path` (a catalog id, another hub id or a local folder)
    without network. Relative folders are looked up under `base` (the project folder)."""
    name = name_or_path.strip()
    local = local_path(name, base) if base is not None else Path(name).expanduser()
    if local.suffix.lower() == ".gguf" and local.is_file():  # the converted folder, with what the file said
        from ftune.runtime import gguf

        folder = gguf.ensure(local)
        info = inspect_local(folder, name)
        info.notes.append(gguf.converted_info(folder).describe())  # recorded at conversion: no second read
        return info
    if local.is_dir() or looks_local(name):
        return inspect_local(local, name)
    entry = find_model(name)
    if entry is not None:
        return from_catalog(entry)
    info = ModelInfo(name, "hub", params_b=guess_params_b(name), kind=kind_from_name(name))
    _apply_family(info, family_by_name(name))
    if info.family and info.kind is None:
        info.kind = "base"  # the catalog lists a family's chat models; a name without chat/instruct is the base
    if info.family and info.family in {f.name for f in families() if all(m.trust_remote_code for m in f.models)}:
        info.trust_remote_code = True
    return info
