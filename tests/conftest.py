"""Shared fixtures: one tiny real model per test session, small data files the tests write themselves."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Tests run in parallel workers (addopts in pyproject.toml): one compute thread per process, the workers' training
    # subprocesses included, or torch's per-process thread pools oversubscribe the cores and every step slows down.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

QA = [
    ("How do I reset my password?", "Open Settings, choose Account, then Reset password. A link arrives by email."),
    ("Where is my order?", "Open Orders and pick the order: the tracking link shows where it is."),
    ("Can I return a lamp?", "Yes, within 30 days. Start the return from Orders and print the label."),
    ("Do you ship abroad?", "We ship to 30 countries. The checkout page lists them with their prices."),
    ("如何修改收货地址？", "进入订单详情，点击修改地址，输入新地址后保存即可。"),
    ("退款多久到账？", "退款会在三到五个工作日内原路返回。"),
]


def pytest_collection_modifyitems(config, items):
    """The real-model tier first: its shared run takes minutes, so it starts while the other workers take the
    rest instead of ending the session alone."""
    items.sort(key=lambda item: item.get_closest_marker("real") is None)


def write_messages(path: Path, n: int = 64, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            q, a = rng.choice(QA)
            msgs = [{"role": "system", "content": "You are Lumen's support assistant."}] if i % 2 else []
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            if i % 5 == 0:
                q2, a2 = rng.choice(QA)
                msgs += [{"role": "user", "content": q2}, {"role": "assistant", "content": a2}]
            f.write(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n")
    return path


def shared_root(tmp_path_factory) -> Path:
    """A folder every test process of this session shares (pytest-xdist gives each worker its own base temp
    folder; their parent is the session's)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(root: Path, name: str, build) -> Path:
    """root/name, built by `build(folder)` in the first process that asks; the others wait for it (a file lock)
    and reuse it. Only a build that finished is reused."""
    import fcntl
    import shutil

    out = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / ".built").is_file():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            build(out)
            (out / ".built").touch()
    return out


@pytest.fixture(scope="session", autouse=True)
def _cache_of_the_session(tmp_path_factory):
    """The suite never writes into the user's own ~/.cache/ftune: converted GGUF files, demo models and the rest go
    to a cache every test process of this session shares (workers and `ftune` subprocesses inherit it)."""
    os.environ["FTUNE_CACHE"] = str(shared_root(tmp_path_factory) / "ftune-cache")
    # training.precision auto stays fp32 even on a CPU with bf16 units (auto's bf16 has its own tests): the suite's
    # equalities and fixed figures are fp32's, and CI's machine may or may not have AMX. FTUNE_CPU_BF16=1 overrides.
    os.environ.setdefault("FTUNE_CPU_BF16", "0")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer, 64-wide Qwen2 with a BPE tokenizer trained on the test data (built once per session)."""
    from ftune.runtime.tinymodel import build_tiny_model

    def build(root: Path) -> None:
        data = write_messages(root / "texts.jsonl", 200)
        texts = [m["content"] for line in data.read_text().splitlines() for m in json.loads(line)["messages"]]
        build_tiny_model(root / "tiny-qwen2", texts)

    return built_once(shared_root(tmp_path_factory), "tiny-model", build) / "tiny-qwen2"


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """An empty project folder with runs/ and train.jsonl; FTUNE_RUNS_DIR points at it."""
    write_messages(tmp_path / "train.jsonl")
    (tmp_path / "runs").mkdir()
    monkeypatch.setenv("FTUNE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True)
def _workers_from_the_zygote(request, monkeypatch):
    """Workers started by launch.start are forked from a process that has imported the training stack once
    (tests/zygote.py: ~5 s of imports saved per worker); `@pytest.mark.real_spawn` keeps the real start, and
    FTUNE_TEST_REAL_SPAWN=1 keeps it for every test."""
    if request.node.get_closest_marker("real_spawn") or os.environ.get("FTUNE_TEST_REAL_SPAWN") == "1":
        return
    from ftune.runtime import launch
    from tests import zygote

    monkeypatch.setattr(launch, "spawn", zygote.spawn)


def python_exe() -> str:
    return sys.executable


def ftune_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


def mounted_tmpfs(folder: Path, size: str) -> Path:
    """A small tmpfs at `folder` for full-disk tests, unmounted at exit; skips where mounting needs root."""
    import atexit
    import subprocess

    folder.mkdir(parents=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                           capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root (and a mount command): the full-disk tests run in CI as root")
    atexit.register(subprocess.run, ["umount", "-l", str(folder)], check=False)
    return folder


SHARED_MLLM = SHARED_DATA / "llamafactory"


def shared_mllm_demo() -> Path:
    """LLaMA-Factory's multimodal sample beside the checkout (../shared), or a skip that says why."""
    if not (SHARED_MLLM / "mllm_demo.json").is_file():
        pytest.skip(f"the shared sample {SHARED_MLLM / 'mllm_demo.json'} is not here (../shared beside the checkout)")
    return SHARED_MLLM


def write_colour_images(folder: Path, n: int = 8) -> Path:
    """A chat data set of images the test writes itself: squares of a colour, the answer names it. JSON lines
    in OpenAI content parts (local paths), beside the images."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}
    with open(folder / "colours.jsonl", "w", encoding="utf-8") as f:
        for i in range(n):
            name = list(colours)[i % len(colours)]
            Image.new("RGB", (56 + 28 * (i % 2), 56), colours[name]).save(folder / f"{i}.png")
            f.write(json.dumps({"messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"{i}.png"}},
                                             {"type": "text", "text": "What colour is this?"}]},
                {"role": "assistant", "content": f"It is {name}."}]}) + "\n")
    return folder / "colours.jsonl"


@pytest.fixture(scope="session")
def tiny_vl_model(tmp_path_factory) -> Path:
    """A tiny random Qwen2-VL (two vision blocks 32 wide, a two-layer language model 64 wide) with its processor
    (built once per session)."""
    from ftune.runtime.tinymodel import build_tiny_vl_model

    def build(root: Path) -> None:
        texts = [a for _, a in QA] + ["Who are they? They're Kane and Gretzka from Bayern Munich.",
                                      "What colour is this? It is red, blue or green."]
        build_tiny_vl_model(root / "tiny-qwen2-vl", texts * 4)

    return built_once(shared_root(tmp_path_factory), "tiny-vl-model", build) / "tiny-qwen2-vl"
