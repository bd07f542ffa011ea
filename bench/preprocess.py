"""Preprocessing throughput: templating + tokenising + masking, in rows per second.

    python bench/preprocess.py [--rows 50000] [--data ../shared/data/llamafactory/alpaca_en_demo.json]

alpaca_en_demo repeated to --rows rows, the demo's tiny tokenizer (byte-level BPE, ChatML),
cutoff 1024. Measures ftune with num_proc 1 and 2, and the same rows prepared the way TRL's
SFTTrainer does by default (conversational dataset, full-sequence loss) and with
assistant_only_loss (the masking ftune does), timing the trainer's dataset preparation alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "llamafactory" / "alpaca_en_demo.json"


def rows_from(path: Path, n: int):
    from ftune.runtime.data.formats import Source, load_source

    base = load_source(Source(path)).examples
    return [base[i % len(base)] for i in range(n)]


def time_ftune(tok, examples, num_proc: int | None) -> float:
    from ftune.runtime.data.tokenize import tokenize_examples

    t0 = time.perf_counter()
    cols, _ = tokenize_examples(tok, examples, max_length=1024, num_proc=num_proc)
    assert len(cols["input_ids"]) == len(examples)
    return time.perf_counter() - t0


def time_trl(model_dir: Path, examples, assistant_only: bool) -> float:
    import datasets
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    model = AutoModelForCausalLM.from_pretrained(model_dir)

    def build(rows):
        ds = datasets.Dataset.from_dict({"messages": [ex.messages for ex in rows]})
        args = SFTConfig(output_dir=tempfile.mkdtemp(), max_length=1024, report_to="none",
                         assistant_only_loss=assistant_only, activation_checkpointing=False, bf16=False)
        t0 = time.perf_counter()
        SFTTrainer(model=model, args=args, train_dataset=ds)
        return time.perf_counter() - t0

    overhead = build(examples[:8])  # trainer set-up without meaningful data
    return build(examples) - overhead


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    if not args.data.is_file():
        sys.exit(f"data not found: {args.data}")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    from transformers import AutoTokenizer

    from ftune.runtime.demo import ensure_demo_model

    model_dir = ensure_demo_model()
    tok = AutoTokenizer.from_pretrained(model_dir)
    examples = rows_from(args.data, args.rows)
    results = {}
    for label, fn in [
        ("ftune, num_proc 1", lambda: time_ftune(tok, examples, None)),
        ("ftune, num_proc 2", lambda: time_ftune(tok, examples, 2)),
        ("TRL SFTTrainer default (full-sequence loss)", lambda: time_trl(model_dir, examples, False)),
        ("TRL SFTTrainer assistant_only_loss", lambda: time_trl(model_dir, examples, True)),
    ]:
        seconds = fn()
        results[label] = {"seconds": round(seconds, 2), "rows_per_s": round(len(examples) / seconds)}
        print(f"{label:<46} {seconds:8.2f} s {len(examples) / seconds:10.0f} rows/s", flush=True)
    print(json.dumps({"rows": len(examples), "cpus": os.cpu_count(), "results": results}))


if __name__ == "__main__":
    main()
