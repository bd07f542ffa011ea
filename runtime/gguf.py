"""GGUF files (llama.cpp, Ollama) as a model source: turned once into a plain transformers folder in the user
cache, which training, chat, serve, export, eval and the wizard then use like any local model folder.

    ensure(path)   the folder for a .gguf file: converted on first use, in a child process (so the wizard and
                   the launcher never import torch), reused afterwards
    inspect(path)  what the file says about itself, read without torch: architecture, quantisation, size;
                   a clear GGUFError for a file that is not GGUF, is cut short or is damaged

The folder is keyed by the file's contents (its sha256, read once per path, size and modification time) and
written atomically: a conversion that fails or is interrupted leaves nothing in the cache. A quantised file
(Q4_1, Q8_0, ...) gives dequantised weights: float32 approximations of the original model, which the conversion
says.

`python -m ftune.runtime.gguf FILE` converts FILE and prints the folder (exit 2 with one sentence on failure).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ftune.runtime.errors import UserError
from ftune.runtime.files import cache_root, publish_dir, write_atomic

MARKER = "ftune_gguf.json"  # written last: a folder with it is a complete conversion
RECIPE = 1  # bump when the conversion changes, so old folders are not reused
UNQUANTISED = {"ALL_F32": "F32", "MOSTLY_F16": "F16", "MOSTLY_BF16": "BF16"}


class GGUFError(UserError):
    """A .gguf file that cannot be used: one sentence naming the file."""


@dataclass
class GGUFInfo:
    path: str
    architecture: str  # general.architecture, e.g. llama, qwen2
    quantisation: str  # Q4_1, Q8_0, F16, ... (from general.file_type; "unknown" when the file does not say)
    params: int  # parameters, from the tensor shapes
    name: str | None = None  # general.name

    @property
    def quantised(self) -> bool:
        return self.quantisation not in UNQUANTISED.values()

    def describe(self) -> str:
        q = (f"quantised to {self.quantisation}, so its weights load as dequantised approximations of the "
             f"original model" if self.quantised else f"{self.quantisation} weights")
        return f"{Path(self.path).name} ({self.architecture}, {self.params / 1e6:.0f}M parameters, {q})"


def is_gguf(name: str | Path) -> bool:
    return str(name).lower().endswith(".gguf")


def cache_dir(path: Path) -> Path:
    """Where the converted folder of this file lives: keyed by its contents alone, so a copy of the file under any
    name, or the same file in another checkout's environment, finds the folder that is already there."""
    key = hashlib.sha256(f"{RECIPE}|{_digest(path.resolve())}".encode()).hexdigest()[:16]
    return cache_root() / "gguf" / key


_digests: dict[str, str] = {}  # (path, size, mtime) -> sha256 of the file, in this process
_indexed: set[str] = set()  # the stamps the cache's index already holds


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def _index() -> Path:
    return cache_root() / "gguf" / "files.json"


def _read_index() -> dict[str, str]:
    try:
        return json.loads(_index().read_text())
    except (OSError, ValueError):
        return {}


def _digest(path: Path) -> str:
    """sha256 of the file's bytes (about 1 s a GB), read once per path, size and modification time: remembered in
    this process and, once the file has a complete conversion, in the cache's index."""
    stamp = _stamp(path)
    if stamp not in _digests:
        known = _read_index().get(stamp)
        if known is None:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
            known = h.hexdigest()
        else:
            _indexed.add(stamp)
        _digests[stamp] = known
    return _digests[stamp]


def _remember(path: Path) -> None:
    """Add the file to the index, dropping files that are gone. Not under a lock: two processes writing at once
    lose one entry at worst, which costs one more read of the file later."""
    stamp = _stamp(path)
    if stamp in _indexed:
        return
    known = {k: v for k, v in _read_index().items() if Path(k.rsplit("|", 2)[0]).exists()}
    known[stamp] = _digest(path)
    write_atomic(_index(), json.dumps(known, indent=1) + "\n")
    _indexed.add(stamp)


def _field(reader, key: str):
    """A scalar or string field of the header, or None."""
    from gguf import GGUFValueType

    f = reader.fields.get(key)
    if f is None or not f.data:
        return None
    value = f.parts[f.data[0]]
    if f.types and f.types[0] == GGUFValueType.STRING:
        return bytes(value).decode("utf-8", "replace")
    return value.tolist()[0]


def inspect(path: Path) -> GGUFInfo:
    """Read the file's header and tensor table (memory-mapped; no torch). Raises GGUFError."""
    if not path.is_file():
        raise GGUFError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise GGUFError(f"{path} is not a GGUF file (it does not start with the GGUF signature): give a .gguf model "
                        f"file from llama.cpp or Ollama, a model folder, or a hub id")
    try:
        import numpy as np
        from gguf import GGUFReader, LlamaFileType

        reader = GGUFReader(path)
        end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    except ImportError:
        raise GGUFError("reading a .gguf file needs the gguf package: pip install gguf") from None
    except (ValueError, IndexError, OSError, KeyError) as e:
        raise GGUFError(f"{path} is cut short or damaged ({e}): download or copy it again") from None
    size = path.stat().st_size
    if end > size:
        raise GGUFError(f"{path} is cut short: its tensors need {end} bytes and the file has {size}: download or copy "
                        f"it again")
    arch = _field(reader, "general.architecture")
    if not arch or not reader.tensors:
        raise GGUFError(f"{path} holds no model (no architecture or no tensors): it may be a LoRA or vocabulary file")
    ftype = _field(reader, "general.file_type")
    try:
        name = LlamaFileType(int(ftype)).name if ftype is not None else None
    except ValueError:
        name = None
    quant = UNQUANTISED.get(name) or (name.removeprefix("MOSTLY_") if name else "unknown")
    params = sum(int(np.prod(t.shape)) for t in reader.tensors)
    return GGUFInfo(str(path), str(arch), quant, params, _field(reader, "general.name"))


def convert(path: Path) -> Path:
    """The transformers folder for `path`, converted here (imports torch and transformers). Raises GGUFError."""
    path = path.expanduser().resolve()
    info = inspect(path)
    out = cache_dir(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # conversions take turns; a second one of the same file then reuses it
        if (out / MARKER).is_file():
            _remember(path)
            return out
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
        from transformers.utils import logging as hf_logging

        if info.architecture not in GGUF_SUPPORTED_ARCHITECTURES:
            raise GGUFError(f"{path} holds a {info.architecture} model, which transformers cannot load from GGUF "
                            f"(it loads: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}): use the original "
                            f"model's folder or hub id instead")
        hf_logging.disable_progress_bar()
        folder, name = str(path.parent), path.name
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        except (ValueError, KeyError, OSError) as e:  # tensors or metadata transformers cannot map
            raise GGUFError(f"transformers could not load {path}: {e}") from None
        # A model loaded from GGUF keeps a quantization_config and refuses save_pretrained: copy its weights into a
        # plain model built from the same config.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
        tied = {k for k in missing if k.endswith("lm_head.weight")} if config.tie_word_embeddings else set()
        if set(missing) - tied or unexpected:
            raise GGUFError(f"{path}: the converted weights do not fit the {info.architecture} model "
                            f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})")
        model.generation_config = loaded.generation_config
        with publish_dir(out) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / MARKER).write_text(json.dumps({**asdict(info), "recipe": RECIPE}, indent=2) + "\n")
        _remember(path)
    return out


def converted_info(folder: Path) -> GGUFInfo | None:
    """What a converted folder was made from, or None for any other folder."""
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    data.pop("recipe", None)
    return GGUFInfo(**data)


def ensure(path: str | Path, say: Callable[[str], None] | None = None) -> Path:
    """The converted folder for a .gguf file: from the cache, or converted now in a child process."""
    path = Path(path).expanduser().resolve()
    if path.is_file() and (cache_dir(path) / MARKER).is_file():
        _remember(path)  # e.g. the same file in a new place: found by its contents, then by its path
        return cache_dir(path)
    info = inspect(path)  # the file's own mistakes, at once and without torch
    if say:
        say(f"Converting {info.describe()} to a transformers folder: once, kept in {cache_root() / 'gguf'}")
    proc = subprocess.run([sys.executable, "-m", "ftune.runtime.gguf", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.startswith("ftune: ")]
        raise GGUFError(lines[-1].removeprefix("ftune: ") if lines else
                        f"converting {path} failed:\n{proc.stderr.strip()[-2000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ftune.runtime.gguf FILE.gguf", file=sys.stderr)
        return 2
    try:
        print(convert(Path(args[0])))
    except UserError as e:
        print(f"ftune: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
