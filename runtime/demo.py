"""`ftune demo`: a tiny real model fine-tuned on bundled data, offline, in well under a minute."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from ftune.runtime.rundir import RunDir
from ftune.runtime.spec import build_spec, save_spec
from ftune.runtime.tinymodel import RECIPE_VERSION, build_tiny_model, cache_root

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
