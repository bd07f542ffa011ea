"""Where one optimiser step's time goes in ftune's own trainer, by the torch profiler.

    python bench/profile_step.py --model SmolLM2-135M-Instruct.Q4_1.gguf --data alpaca_zh_demo.json \
        --rows 64 --cutoff 384 --batch 2 --grad-accum 4 --warm 1 --steps 2 [--json out.json]

The trainer is the one the worker builds (recipe.setup on a run file written as bench/side_by_side.py writes
ftune's), so every ftune default is in: padding-free batches, the loss on learnt positions only, the allocator
setting. --precision sets training.precision (fp32 unless given); --no-profile only times the steps (to compare
settings on and off, e.g. OMP_* variables); --compile first compiles each decoder layer with torch.compile. After
--warm optimiser steps, --steps more run under torch.profiler (CPU activities, input shapes recorded). Each op's own
time (self time: its children's left out) goes to one part:

  LoRA matmuls        a matmul with a dimension equal to the LoRA rank (lora_A/lora_B, forward and backward)
  LM head             a matmul with a dimension equal to the vocabulary (the logits, forward and backward)
  other matmuls       the rest of mm/addmm/bmm: the frozen projections and the MLP, forward and backward
  attention           scaled-dot-product attention, forward and backward
  loss                log-softmax and NLL (cross-entropy), forward and backward
  optimiser           every op inside Optimizer.step and zero_grad
  elementwise & rest  norms, rotary, activations, adds, copies, views, the other ATen ops
  Python & framework  the steps' wall time not inside any ATen op: the interpreter, the Trainer, autograd's engine

The parts add up to the profiled steps' wall time on the training thread. Run it on an idle machine: the profiler adds
a few per cent of its own, mostly to the last part.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# the same model conversion, row split and run file as the side-by-side bench
import side_by_side as compare  # noqa: E402

MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
PARTS = ["LoRA matmuls", "LM head", "other matmuls", "attention", "loss", "optimiser", "elementwise & rest",
         "Python & framework"]


def part_of(event, rank: int, vocab: int) -> str:
    """The part an ATen op's self time belongs to (see the module's docstring)."""
    up = event.cpu_parent
    while up is not None:
        if up.name.startswith(("Optimizer.step", "Optimizer.zero_grad")):
            return "optimiser"
        up = up.cpu_parent
    name = event.name
    if name in MATMULS:
        dims = {d for shape in event.input_shapes for d in shape}
        return "LoRA matmuls" if rank in dims else "LM head" if vocab in dims else "other matmuls"
    if "scaled_dot_product" in name or "flash_attention" in name:
        return "attention"
    if "log_softmax" in name or "nll_loss" in name or "cross_entropy" in name:
        return "loss"
    return "elementwise & rest"


def breakdown(prof, wall: float, rank: int, vocab: int) -> dict[str, float]:
    """Seconds per part over the profiled steps, on the training thread (the one with the most ATen time: on a CPU
    autograd's backward runs on the thread that called it)."""
    per_thread: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for event in prof.events():
        if event.name.startswith("aten::"):
            per_thread[event.thread][part_of(event, rank, vocab)] += event.self_cpu_time_total / 1e6
    seconds = max(per_thread.values(), key=lambda parts: sum(parts.values()))
    # the ATen ops nest (aten::linear -> aten::mm): self times add up to the time inside any ATen op
    seconds["Python & framework"] = max(0.0, wall - sum(seconds.values()))
    return {p: seconds.get(p, 0.0) for p in PARTS}


def profile(model: Path, data: Path, rows: int, cutoff: int, batch: int, grad_accum: int, warm: int,
            steps: int, rank: int = 8, precision: str = "fp32", profiled: bool = True,
            compiled: bool = False) -> dict:
    import torch
    from torch.profiler import ProfilerActivity
    from transformers import TrainerCallback

    from ftune.runtime.events import EventWriter
    from ftune.runtime.rundir import RunDir
    from ftune.runtime.spec import load_spec
    from ftune.runtime.train import recipe
    from ftune.runtime.train.stopper import Stopper

    work = Path(tempfile.mkdtemp(prefix="ftune-profile-"))
    train, _ = compare.split_rows(data, rows, 0, work / "data")
    job = compare.Job(steps=warm + steps, batch=batch, grad_accum=grad_accum, cutoff=cutoff, rank=rank,
                      logging_steps=1, precision=precision)
    folder = compare.write_ftune_run(work / "runs", model, train, job)
    run = RunDir(folder.parent, folder.name)
    r = recipe.setup(load_spec(run.spec_path), run, EventWriter(run.events_path), Stopper())
    vocab = r.trainer.model.get_output_embeddings().weight.shape[0]
    if compiled:  # regional: each decoder layer by torch.compile (inductor); the warm-up steps pay the compiling
        for module in r.trainer.model.modules():
            if type(module).__name__.endswith("DecoderLayer"):
                module.compile(dynamic=True)
    prof = torch.profiler.profile(activities=[ProfilerActivity.CPU], record_shapes=True)
    clock: dict[str, float] = {}

    class Window(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == warm:
                if profiled:
                    prof.start()
                clock["t0"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warm + steps:
                clock["t1"] = time.perf_counter()
                if profiled:
                    prof.stop()

    r.trainer.add_callback(Window())
    clock["start"] = time.perf_counter()
    r.trainer.train()
    wall = clock["t1"] - clock["t0"]
    parts = breakdown(prof, wall, rank, vocab) if profiled else {}
    step_events = [json.loads(line) for line in run.events_path.read_text().splitlines()
                   if json.loads(line).get("type") == "step"]
    return {"wall": wall, "steps": steps, "parts": parts, "threads": torch.get_num_threads(), "precision": precision,
            "warm_wall": clock["t0"] - clock["start"], "compiled": compiled,
            "step_events": step_events[warm:warm + steps]}


def markdown(result: dict, argv: list[str]) -> str:
    wall = result["wall"]
    lines = [f"`python bench/profile_step.py {' '.join(argv)}`: {result['steps']} optimiser steps profiled, "
             f"{wall:.1f} s ({wall / result['steps']:.1f} s a step), {result['threads']} intra-op threads.", "",
             "| part | s a step | share |", "|---|---:|---:|"]
    for part, s in result["parts"].items():
        lines.append(f"| {part} | {s / result['steps']:.2f} | {100 * s / wall:.1f}% |")
    losses = ", ".join(f"{e['step']}: {e['loss']:.4f}" for e in result["step_events"] if "loss" in e)
    return "\n".join(lines) + (f"\n\nprecision {result['precision']}, compiled {result['compiled']}; the "
                                f"{result['warm_wall']:.1f} s before them (warm-up steps, and compiling); the "
                                f"profiled steps' losses: {losses}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, required=True, help="a model folder or a .gguf file")
    p.add_argument("--data", type=Path, default=compare.DEFAULT_DATA)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--cutoff", type=int, default=384)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--grad-accum", type=int, default=4)
    p.add_argument("--warm", type=int, default=1, help="optimiser steps before the profiled ones")
    p.add_argument("--steps", type=int, default=2, help="optimiser steps profiled")
    p.add_argument("--precision", default="fp32", help="training.precision (auto: ftune's choice for this machine)")
    p.add_argument("--no-profile", action="store_true", help="time the steps only, without the profiler")
    p.add_argument("--compile", action="store_true", help="torch.compile each decoder layer (inductor) first")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    model = compare.given_model(args.model)
    data = compare.find_data(args.data)
    result = profile(model, data, args.rows, args.cutoff, args.batch, args.grad_accum, args.warm, args.steps,
                     precision=args.precision, profiled=not args.no_profile, compiled=args.compile)
    print(markdown(result, sys.argv[1:] if argv is None else argv))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
