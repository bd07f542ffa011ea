"""What keeping freed host memory buys a CPU training step (runtime/train/host_memory.py), and what scoring only
the learnt tokens buys (runtime/train/sft.py's learnt_logits_only).

    python bench/host_memory.py --model FOLDER [--rounds 3] [--iters 5] [--rows 4] [--length 300]

Each arm runs in its own process (glibc's setting holds for the whole process), the arms alternating each round:
LoRA r8 on every linear layer, fp32, one fixed batch of random tokens with the loss on the last 4/5 of each row,
forward + backward `--iters` times. Printed per arm: the first pass (memory faulted in for the first time), the
median of the later ones, the sum, and the minor page faults and system CPU time of the process.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

ARMS = {  # name: (keep freed memory, logits only where learnt)
    "glibc default, whole logits": (False, False),
    "freed memory kept, whole logits": (True, False),
    "freed memory kept, learnt logits": (True, True),
}


def one_arm(model_dir: str, keep: bool, learnt: bool, iters: int, rows: int, length: int) -> dict:
    """Runs in the child process."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ftune.runtime.train.host_memory import keep_freed_memory
    from ftune.runtime.train.sft import learnt_logits_only

    kept = keep_freed_memory() if keep else False
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))
    model.train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (rows, length), generator=g)
    labels = ids.clone()
    labels[:, : length // 5] = -100  # the prompt
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    if learnt:
        batch = learnt_logits_only(batch)
    before = resource.getrusage(resource.RUSAGE_SELF)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        model(**batch, use_cache=False).loss.backward()
        times.append(time.perf_counter() - t)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"kept": kept, "times": times, "faults": after.ru_minflt - before.ru_minflt,
            "sys": after.ru_stime - before.ru_stime}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="a transformers model folder (e.g. the converted SmolLM2)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--length", type=int, default=300)
    p.add_argument("--arm", help=argparse.SUPPRESS)  # the child's side
    a = p.parse_args()
    if a.arm:
        keep, learnt = ARMS[a.arm]
        print(json.dumps(one_arm(a.model, keep, learnt, a.iters, a.rows, a.length)))
        return
    results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for r in range(a.rounds):
        for arm in ARMS:
            out = subprocess.run([sys.executable, __file__, "--model", a.model, "--arm", arm, "--iters", str(a.iters),
                                  "--rows", str(a.rows), "--length", str(a.length)],
                                 capture_output=True, text=True, check=True).stdout
            res = json.loads(out.strip().splitlines()[-1])
            results[arm].append(res)
            print(f"round {r + 1} {arm:<34} " + " ".join(f"{t:6.2f}" for t in res["times"])
                  + f"  faults {res['faults']:>9,}  sys {res['sys']:5.1f} s", flush=True)
    print(f"\n{a.rows} rows x {a.length} tokens, {a.iters} passes, {a.rounds} rounds; medians over the rounds\n")
    print("| arm | first pass (s) | later passes, median (s) | all passes (s) | minor page faults | system CPU (s) |")
    print("|---|---|---|---|---|---|")
    for arm, runs in results.items():
        def med(f, runs=runs):
            return statistics.median(f(x) for x in runs)
        print(f"| {arm} | {med(lambda x: x['times'][0]):.2f} | {med(lambda x: statistics.median(x['times'][1:])):.2f} "
              f"| {med(lambda x: sum(x['times'])):.1f} | {med(lambda x: x['faults']):,.0f} | {med(lambda x: x['sys']):.1f} |")


if __name__ == "__main__":
    main()
