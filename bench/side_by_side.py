"""Side by side: one LoRA SFT job through ftune, through plain TRL and through LLaMA-Factory.

    python bench/side_by_side.py                              # 3 rounds of ftune, TRL, LLaMA-Factory; prints the table
    python bench/side_by_side.py --rounds 5 --steps 60 --write-doc    # and writes its section of docs/benchmarks.md
    python bench/side_by_side.py --tools ftune,trl --rounds 1         # without LLaMA-Factory
    python bench/side_by_side.py --tools trl,trl-defaults,trl-logprobs,trl-plain-loss   # what TRL's defaults cost
    python bench/side_by_side.py --model SmolLM2.gguf --epochs 1 --rows 500 --eval-rows 100 --cutoff 1024 \
        --tools ftune,ftune-padded,ftune-packing,lf,lf-packing,lf-neat,trl,trl-padding-free,trl-packing
                                # once over the same 500 rows, every tool's batching, eval loss on 100 held-out rows

The job: a tiny Qwen2 built here (random weights, hidden 256, 4 layers, a byte-level BPE of 4,096 tokens trained
in-process on the data, ChatML), alpaca_en_demo from ../shared/data/llamafactory (read in place), ChatML, cutoff 256,
batch 4 x gradient accumulation 2, a fixed number of optimiser steps, AdamW (adamw_torch) at 2e-4 with a cosine
schedule and no warm-up, seed 42, fp32, no gradient checkpointing, LoRA r 8 / alpha 16 / dropout 0 on every linear
layer, the loss on the answers only, a log line every 10 steps. The tools run one after another, A B C A B C ...,
so that drift on the machine hits all of them alike; each run starts from cold data caches.

  ftune       `ftune train bench --foreground` on a run file written here, in a fresh runs folder
  trl         a plain script: TRL's SFTTrainer with SFTConfig and peft's LoraConfig (the floor for any wrapper)
  lf          `llamafactory-cli train job.yaml` (the llamafactory package from PyPI, in its own virtual environment,
              built on first use under ~/.cache/ftune-bench/lf-venv with torch 2.11.0 pinned: the plain install
              pulls a CUDA torch and a torchaudio built for another CUDA, and fails at import on a CPU machine)
  ftune-padded, ftune-packing
              ftune with `data.padding_free: false` (padded batches) / `data.packing: true` (ftune's default is
              padding-free: a batch's rows laid end to end)
  ftune-auto  ftune with `training.precision: auto`, its default: bf16 autocast on a CPU with bf16 units (AMX,
              AVX512-BF16), fp32 elsewhere; the other ftune variants keep the job's fp32
  lf-packing, lf-neat, lf-bf16
              LLaMA-Factory with `packing: true` / `neat_packing: true` / `bf16: true` and `use_cpu: true` (its
              switch for the same autocast, which transformers takes on a CPU only with use_cpu; its default is fp32)
  trl-padding-free, trl-packing
              the plain TRL script with `padding_free=True` (the script cuts the tokenised rows at the cutoff: TRL
              refuses max_length with padding_free alone) / `packing=True` (bfd)
  trl-defaults, trl-logprobs, trl-plain-loss
              the plain TRL script with TRL's own defaults (bf16 autocast, gradient checkpointing); with the fused
              LM head reduced to the log-probabilities (no entropy, no token accuracy); with the model's own loss
              (full logits and cross-entropy, as transformers' Trainer and LLaMA-Factory compute it)

--matrix: instead of one job, a small matrix of shapes in one go, each over --rows rows (default 32), once through
every tool per round, the rounds alternating the tools: batch 2 and 8 (gradient accumulation 1), short and long rows
(the shorter and the longer half of a data file's rows by characters), English and Chinese (alpaca_en_demo and
alpaca_zh_demo beside --data). It prints, per shape, each tool's wall to the adapter and first step and each peer's
wall over the first tool's, as a median with its range over the rounds.

--model PATH: a model folder, or a .gguf file converted once by ftune.runtime.gguf.ensure, for every tool instead
of the tiny Qwen2; the model's own chat template for all (LLaMA-Factory: its template of that name, smollm2 for
SmolLM2, told the template's own default system prompt; TRL on prompt/completion rows, since its assistant_only_loss
refuses SmolLM2's template as "not training-compatible"). --epochs E --rows N: E passes over the first N rows of the
data file instead of --steps, and every tool evaluates at the end of the epoch on the --eval-rows rows after them
(default 50), so packed and padded runs do the same work in different numbers of steps.

How each figure is measured (the same way for every tool): a probe (a sitecustomize.py put first on PYTHONPATH of
the tool's processes) timestamps, with time.time(), the end of every optimiser step (a TrainerCallback it adds to
every transformers Trainer) and the duration of each tool's data-preparation functions. The clock starts at the
fork of the tool's first process.

  wall        fork -> the final adapter file (adapter_model.safetensors) written; "exit" -> the process ended
  first step  fork -> end of optimiser step 1
  steps/s     (N - k) / (t_N - t_k): the last step against step k = --skip (5), so start-up and warm-up are out
  prep        seconds inside the data functions: ftune's load_data + tokenize_examples; TRL's dataset build and
              SFTTrainer._prepare_dataset; LLaMA-Factory's get_dataset (reading, converting, tokenising)
  examples/s  the rows trained (N x E, or steps x batch x accumulation) / (last step's end - on_train_begin)
  non-padding tokens/s
              tokens not padding (the attention mask's, less a row's tail of unlearnt pad tokens, which
              LLaMA-Factory's packing leaves unmasked) through Trainer.training_step / the same time
  train loss  the last training loss the Trainer logged; eval loss: its last eval_loss (on the held-out rows)
  RSS         peak of the summed resident memory of the process tree (psutil, sampled every 0.1 s)

ftune's own events.jsonl is read too: its `started`/`step` times are shown next to the probe's as a cross-check.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "llamafactory" / "alpaca_en_demo.json"
CACHE = Path(os.environ.get("FTUNE_BENCH_CACHE") or Path.home() / ".cache" / "ftune-bench")
LF_VENV = CACHE / "lf-venv"
LF_PINS = ["torch==2.11.0", "torchaudio==2.11.0", "torchvision==0.26.0"]
DOC = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench/side_by_side.py: begin -->", "<!-- bench/side_by_side.py: end -->"
MODEL_RECIPE = {"arch": "qwen2", "hidden_size": 256, "num_layers": 4, "vocab_size": 4096}


@dataclass
class Job:
    """The one job every tool runs."""

    steps: int = 30
    batch: int = 4
    grad_accum: int = 2
    cutoff: int = 256
    lr: float = 2e-4
    seed: int = 42
    rank: int = 8
    alpha: int = 16
    logging_steps: int = 10
    scheduler: str = "cosine"
    epochs: float | None = None  # set: once (or N times) over the rows instead of `steps` optimiser steps
    eval_data: str | None = None  # held-out rows every tool evaluates on at the end of each epoch
    lf_template: str = "chatml"  # LLaMA-Factory's name for the model's template
    default_system: str | None = None  # the system prompt the model's template adds when a row has none
    prompt_completion: bool = False  # TRL: prompt/completion rows (for templates it refuses assistant masks on)
    precision: str = "fp32"  # ftune's training.precision in the fixed job; the variant ftune-auto leaves it to ftune


# --------------------------------------------------------------------------- the probe
PROBE = r'''
"""ftune bench probe: step-end times of every transformers Trainer and the time spent in named functions."""
import json as _json, os as _os, sys as _sys, time as _time

_OUT = _os.environ.get("FTUNE_BENCH_PROBE_OUT")
_fd = _os.open(_OUT, _os.O_WRONLY | _os.O_APPEND | _os.O_CREAT, 0o644) if _OUT else None


def record(**event):
    if _fd is not None:
        _os.write(_fd, (_json.dumps({"t": _time.time(), "pid": _os.getpid(), **event}) + "\n").encode())


def _timed(fn, name):
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = _time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            record(ev="call", fn=name, t0=t0, t1=_time.time())
    return wrapper


def _add_callback(init):
    import functools

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        init(self, *args, **kwargs)
        from transformers.trainer_callback import TrainerCallback

        class _Probe(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                if state.is_world_process_zero:
                    record(ev="train_begin", step=state.global_step)

            def on_step_end(self, args, state, control, **kw):
                if state.is_world_process_zero:
                    record(ev="step", step=state.global_step, tokens=_TOKENS[0], real_tokens=_TOKENS[1])

            def on_log(self, args, state, control, logs=None, **kw):
                if state.is_world_process_zero and logs:
                    losses = {k: v for k, v in logs.items() if k in ("loss", "train_loss", "eval_loss")}
                    if losses:
                        record(ev="log", step=state.global_step, **losses)

            def on_save(self, args, state, control, **kw):
                if state.is_world_process_zero:
                    record(ev="save", step=state.global_step)

        self.add_callback(_Probe())
    return wrapper


_TOKENS = [0, 0]  # tokens through training_step so far: padded (the compute), not padding


def _real_tokens(ids, mask, labels=None, pad=None):
    """Tokens that are not padding: the attention mask's (!= 0: packed masks may number their rows 1, 2, 3), less
    a row's tail of unlearnt pad tokens, which LLaMA-Factory's packing leaves unmasked (and its neat_packing
    hides in a 4-D mask)."""
    keep = (mask != 0) if mask is not None and mask.dim() == 2 else ids.new_ones(ids.shape, dtype=bool)
    if labels is not None and pad is not None and labels.shape == ids.shape:
        tail = ((ids == pad) & (labels == -100)).flip(-1).int().cumprod(-1).flip(-1).bool()
        keep &= ~tail
    return int(keep.sum())


def _count_tokens(step):
    import functools

    @functools.wraps(step)
    def wrapper(self, model, inputs, *args, **kwargs):
        ids, mask = inputs.get("input_ids"), inputs.get("attention_mask")
        if ids is not None:
            _TOKENS[0] += ids.numel()
            _TOKENS[1] += _real_tokens(ids, mask, inputs.get("labels"),
                                       getattr(getattr(self, "processing_class", None), "pad_token_id", None))
        return step(self, model, inputs, *args, **kwargs)
    return wrapper


_SPECIAL = {"Trainer.__init__": _add_callback, "Trainer.training_step": _count_tokens}
_WRAP = {}  # module -> [dotted attribute]
for _item in filter(None, _os.environ.get("FTUNE_BENCH_PROBE_WRAP", "").split(",")):
    _mod, _attr = _item.split(":")
    _WRAP.setdefault(_mod, []).append(_attr)
if _fd is not None:
    _WRAP.setdefault("transformers.trainer", []).extend(["Trainer.__init__", "Trainer.training_step"])


def _patch(module):
    for dotted in _WRAP.pop(module.__name__, []):
        owner, *path, last = [module, *dotted.split(".")]
        for part in path:
            owner = getattr(owner, part)
        fn = getattr(owner, last)
        setattr(owner, last, _SPECIAL[dotted](fn) if dotted in _SPECIAL else _timed(fn, dotted))


if _WRAP:
    import importlib.abc as _abc
    import importlib.util as _util

    class _Finder(_abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name not in _WRAP:
                return None
            _sys.meta_path.remove(self)
            try:
                spec = _util.find_spec(name)
            finally:
                _sys.meta_path.insert(0, self)
            if spec is None or spec.loader is None:
                return spec
            exec_module = spec.loader.exec_module

            def run(module):
                exec_module(module)
                _patch(module)
            spec.loader.exec_module = run
            return spec

    _sys.meta_path.insert(0, _Finder())
'''

# --------------------------------------------------------------------------- plain TRL
TRL_SCRIPT = r'''
"""A plain TRL LoRA SFT script: what a user writes from TRL's documentation."""
import json, sys, time

cfg = json.load(open(sys.argv[1]))
try:
    from sitecustomize import record  # the benchmark's probe, when it is there
except ImportError:
    def record(**event): pass

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

t0 = time.time()
rows = json.load(open(cfg["data"], encoding="utf-8"))


def messages(row):
    prompt = row["instruction"] + ("\n" + row["input"] if row.get("input") else "")
    user, answer = {"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}
    # prompt/completion rows: the loss on the completion, for templates TRL will not build assistant masks from
    return {"prompt": [user], "completion": [answer]} if cfg["prompt_completion"] else {"messages": [user, answer]}


dataset = Dataset.from_list([messages(r) for r in rows])
eval_dataset = (Dataset.from_list([messages(r) for r in json.load(open(cfg["eval_data"], encoding="utf-8"))])
                if cfg["eval_data"] else None)
record(ev="call", fn="read and convert", t0=t0, t1=time.time())

tokenizer = AutoTokenizer.from_pretrained(cfg["model"])
model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32)
variant = cfg["variant"]
args = SFTConfig(  # cfg["sft_args"]: the variant's own settings and the job's length (side_by_side.py's trl_args)
    output_dir=cfg["out"], per_device_train_batch_size=cfg["batch"], **{"max_length": cfg["cutoff"], **cfg["sft_args"]},
    gradient_accumulation_steps=cfg["grad_accum"], learning_rate=cfg["lr"], lr_scheduler_type=cfg["scheduler"],
    warmup_steps=0, seed=cfg["seed"], optim="adamw_torch", assistant_only_loss=not cfg["prompt_completion"],
    logging_steps=cfg["logging_steps"], logging_first_step=True, save_steps=500, report_to="none",
    disable_tqdm=True,
)
peft_config = LoraConfig(r=cfg["rank"], lora_alpha=cfg["alpha"], lora_dropout=0.0, target_modules="all-linear",
                         task_type="CAUSAL_LM")
Trainer = SFTTrainer
if variant == "trl-logprobs":  # the fused LM head without entropy and top-1 (TRL always asks for both)
    from trl.trainer.utils import add_fused_lm_head

    class Trainer(SFTTrainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            add_fused_lm_head(self.model.get_base_model(), outputs=("log_probs",))

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs["use_cache"] = False
            out = model(**inputs, fused_lm_head=True)
            n = out.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
            return -out.log_probs.sum() / torch.as_tensor(n).clamp(min=1)
elif variant == "trl-plain-loss":  # the model's own loss: full logits, cross-entropy (transformers' Trainer)
    from transformers import Trainer as HFTrainer

    class Trainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return HFTrainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

trainer = Trainer(model=model, args=args, train_dataset=dataset, eval_dataset=eval_dataset, processing_class=tokenizer,
                  peft_config=peft_config)
if args.max_length is None:  # padding_free alone: "provide already truncated inputs", as TRL's error asks
    def cut(row):
        n = len(row["input_ids"])
        return {k: v[: cfg["cutoff"]] for k, v in row.items() if isinstance(v, list) and len(v) == n}

    trainer.train_dataset = trainer.train_dataset.map(cut)
    if trainer.eval_dataset is not None:
        trainer.eval_dataset = trainer.eval_dataset.map(cut)
trainer.train()
trainer.save_model(cfg["adapter"])
'''


TRL_VARIANTS = ["trl", "trl-padding-free", "trl-packing", "trl-defaults", "trl-logprobs", "trl-plain-loss"]


# --------------------------------------------------------------------------- set-up
def find_data(path: Path) -> Path:
    if not path.is_file():
        sys.exit(f"bench/side_by_side.py: the data set is not here: {path}\n"
                 "It is LLaMA-Factory's alpaca_en_demo.json, read in place from ../shared/data/llamafactory "
                 "next to the repository; pass --data PATH to use another copy.")
    return path


def alpaca_texts(data: Path) -> list[str]:
    rows = json.loads(data.read_text(encoding="utf-8"))
    return [r.get(k, "") for r in rows for k in ("instruction", "input", "output") if r.get(k)]


def ensure_model(data: Path) -> Path:
    """The tiny Qwen2 (tinymodel.py's recipe, bigger), built once into the bench cache."""
    from ftune.runtime.tinymodel import RECIPE_VERSION, build_tiny_model

    r = MODEL_RECIPE
    out = CACHE / "models" / f"tiny-{r['arch']}-h{r['hidden_size']}-l{r['num_layers']}-v{r['vocab_size']}-r{RECIPE_VERSION}"
    if not (out / "config.json").is_file():
        build_tiny_model(out, alpaca_texts(data), **r)
    return out


def given_model(path: Path) -> Path:
    """--model: a transformers folder as it is, or a .gguf file converted once (ftune's own conversion, cached)."""
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_file() and path.suffix == ".gguf":
        from ftune.runtime.gguf import GGUFError, ensure

        try:
            return ensure(path, say=lambda line: print(line, flush=True))
        except GGUFError as e:
            sys.exit(f"bench/side_by_side.py: --model {path}: {e}")
    sys.exit(f"bench/side_by_side.py: --model {path} is neither a model folder (with config.json) nor a .gguf file")


def template_system(model: Path) -> str | None:
    """The system prompt the model's chat template adds to rows without one (SmolLM2's does), so that
    LLaMA-Factory's template, which has its own wording, is told the same text."""
    import re

    jinja = model / "chat_template.jinja"
    text = jinja.read_text(encoding="utf-8") if jinja.is_file() else \
        str(json.loads((model / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template") or "")
    found = re.search(r"<\|im_start\|>system\n(.+?)<\|im_end\|>", text)
    return found.group(1) if found else None


def split_rows(data: Path, rows: int, eval_rows: int, out: Path) -> tuple[Path, Path | None]:
    """The first `rows` rows of the data file to train on and the `eval_rows` after them, held out, as files."""
    every = json.loads(data.read_text(encoding="utf-8"))
    if rows + eval_rows > len(every):
        sys.exit(f"bench/side_by_side.py: --rows {rows} plus --eval-rows {eval_rows} is more than the {len(every)} "
                 f"rows of {data}; lower one of them")
    out.mkdir(parents=True, exist_ok=True)
    train, held_out = out / "train.json", out / "eval.json"
    train.write_text(json.dumps(every[:rows], ensure_ascii=False), encoding="utf-8")
    if not eval_rows:
        return train, None
    held_out.write_text(json.dumps(every[rows:rows + eval_rows], ensure_ascii=False), encoding="utf-8")
    return train, held_out


def ensure_lf_venv(quiet: bool = False) -> Path:
    """llamafactory in its own virtual environment (reused when it is there)."""
    cli = LF_VENV / "bin" / "llamafactory-cli"
    if cli.is_file():
        return cli
    print(f"installing llamafactory into {LF_VENV} (once; a few GB: torch {LF_PINS[0].split('==')[1]} pulls CUDA "
          "libraries from PyPI even on a CPU machine) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(LF_VENV)], check=True)
    pip = [str(LF_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    # the pins go in with llamafactory, so pip never picks the CUDA torch 2.15 + mismatched torchaudio
    done = subprocess.run([*pip, "llamafactory", *LF_PINS], check=False)
    if done.returncode != 0 or not cli.is_file():
        shutil.rmtree(LF_VENV, ignore_errors=True)
        sys.exit("bench/side_by_side.py: installing llamafactory failed (pip's message above); run with --tools "
                 "ftune,trl to compare without it")
    return cli


def versions(python: str, modules: list[str]) -> dict[str, str]:
    code = ("import importlib.metadata as m, json, sys\n"
            "out = {}\n"
            "for n in sys.argv[1:]:\n"
            "    try: out[n] = m.version(n)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(out))")
    done = subprocess.run([python, "-c", code, *modules], capture_output=True, text=True, check=False)
    return json.loads(done.stdout) if done.returncode == 0 else {}


# --------------------------------------------------------------------------- one run of one tool
@dataclass
class Result:
    tool: str
    round: int
    rc: int
    wall: float | None = None  # fork -> adapter written
    exit: float | None = None  # fork -> process ended
    first_step: float | None = None
    steps_per_s: float | None = None
    tokens_per_s: float | None = None  # steady, padded tokens (the compute done)
    mean_steps_per_s: float | None = None  # (N - k) / (t_N - t_k)
    prep: float | None = None
    examples_per_s: float | None = None  # rows trained / the training loop's time (train begin -> last step)
    real_tokens_per_s: float | None = None  # non-padding tokens / the same time
    train_loss: float | None = None  # the last logged training loss (its final logging window)
    epoch_loss: float | None = None  # the Trainer's train_loss: the mean over the whole run
    eval_loss: float | None = None  # on the held-out rows, at the end (the last evaluation)
    rss: int | None = None  # peak summed RSS of the tree, bytes
    rss_largest: int | None = None  # peak RSS of the largest single process
    steps: int = 0
    load: float = 0.0  # 1-minute load average just before the run
    other_cpu: float | None = None  # cores' worth of CPU that other processes used during the run
    cpu: dict = field(default_factory=dict)  # CPU seconds per process of the tree (last sample, 0.1 s before exit)
    idle_before: float | None = None  # cores busy just before the run (after waiting for quiet)
    disturbed: bool = False  # other processes used more than --max-other cores during it: run again, not counted
    own: dict = field(default_factory=dict)  # the tool's own figures (ftune: events.jsonl)
    log: str = ""


# each ftune variant: what it changes in the run file, by section
FTUNE_VARIANT = {"ftune": {}, "ftune-padded": {"data": {"padding_free": False}},
                 "ftune-packing": {"data": {"packing": True}}, "ftune-auto": {"training": {"precision": "auto"}}}
LF_VARIANT = {"lf": {}, "lf-packing": {"packing": True}, "lf-neat": {"neat_packing": True},
              "lf-bf16": {"bf16": True, "use_cpu": True}}
TOOLS = [*FTUNE_VARIANT, *LF_VARIANT, *TRL_VARIANTS]


MATRIX = [(2, "short", "en"), (8, "short", "en"), (2, "long", "en"), (8, "long", "en"),
          (2, "short", "zh"), (8, "short", "zh"), (2, "long", "zh"), (8, "long", "zh")]


def matrix_rows(data: Path, length: str, rows: int, out: Path) -> Path:
    """The first `rows` rows of the shorter (or longer) half of `data`'s rows by characters, in file order."""
    every = json.loads(data.read_text(encoding="utf-8"))
    size = [len("".join(str(v) for v in row.values())) for row in every]
    cut = statistics.median(size)
    chosen = [row for row, n in zip(every, size) if (n <= cut if length == "short" else n > cut)][:rows]
    if len(chosen) < rows:
        sys.exit(f"bench/side_by_side.py: --matrix: {data} has only {len(chosen)} {length} rows; lower --rows")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(chosen, ensure_ascii=False), encoding="utf-8")
    return out


def run_matrix(args, tools: list[str], model: Path, root: Path, job: Job) -> list[tuple[tuple, Result]]:
    """Every shape of MATRIX through every tool, round after round (see the module's docstring)."""
    rows = args.rows or 32
    files = {lang: find_data(args.data.parent / f"alpaca_{lang}_demo.json") for lang in ("en", "zh")}
    out: list[tuple[tuple, Result]] = []
    for rnd in range(1, args.rounds + 1):
        for shape in MATRIX:
            batch, length, lang = shape
            data = matrix_rows(files[lang], length, rows, root / "data" / f"{lang}-{length}.json")
            shaped = Job(**{**asdict(job), "batch": batch, "grad_accum": 1, "epochs": 1.0, "eval_data": None})
            for tool in tools:
                if args.wait_idle:
                    wait_idle(args.wait_idle)
                r = run_one(tool, rnd, root / f"r{rnd}-b{batch}-{length}-{lang}-{tool}", model, data, shaped, args.skip)
                report(r)
                out.append((shape, r))
    return out


def matrix_markdown(results: list[tuple[tuple, Result]], tools: list[str]) -> str:
    """Per shape: each tool's wall and first step; each peer's wall over the first tool's, per round, summarised."""
    first = tools[0]
    head = ("| batch | rows | language | " + " | ".join(f"{LABEL.get(t, t)} wall s" for t in tools) + " | "
            + " | ".join(f"{LABEL.get(t, t)} first step s" for t in tools) + " | "
            + " | ".join(f"{LABEL.get(t, t)} ÷ {LABEL.get(first, first)}, wall" for t in tools[1:]) + " |")
    lines = [head, "|" + "---|" * (3 + 2 * len(tools) + len(tools) - 1)]
    for shape in MATRIX:
        got = [(r.round, r) for s, r in results if s == shape and r.rc == 0]
        if not got:
            continue
        by = {t: {rnd: r for rnd, r in got if r.tool == t} for t in tools}
        walls = [fmt("wall", summary([r.wall for r in by[t].values()])) for t in tools]
        firsts = [fmt("first_step", summary([r.first_step for r in by[t].values()])) for t in tools]
        ratios = []
        for t in tools[1:]:
            per_round = [by[t][n].wall / by[first][n].wall for n in by[t] if n in by[first]
                         and by[t][n].wall and by[first][n].wall]
            s = summary(per_round)
            ratios.append(f"{s[0]:.2f}× ({s[1]:.2f}–{s[2]:.2f})" if s else "—")
        lines.append(f"| {shape[0]} | {shape[1]} | {shape[2]} | " + " | ".join(walls + firsts + ratios) + " |")
    return "\n".join(lines)


def length(job: Job) -> dict:
    """The Trainer arguments that end the job: epochs over the rows, or optimiser steps."""
    return {"num_train_epochs": job.epochs} if job.epochs else {"max_steps": job.steps}


def trl_args(variant: str, job: Job) -> dict:
    """The SFTConfig arguments of a TRL variant beyond the job's common ones."""
    # on a CPU, TRL's default bf16=True stops with "Your setup doesn't support bf16/gpu" unless use_cpu is set
    out = {"use_cpu": True} if variant == "trl-defaults" else {"bf16": False, "gradient_checkpointing": False}
    # padding_free without packing refuses max_length ("not enforced"): the script cuts the tokenised rows itself
    out |= {"trl-padding-free": {"padding_free": True, "max_length": None},
            "trl-packing": {"packing": True}}.get(variant, {})
    if job.eval_data:
        out |= {"eval_strategy": "epoch", "per_device_eval_batch_size": job.batch}
    return {**out, **length(job)}


def write_ftune_run(runs: Path, model: Path, data: Path, job: Job, variant: str = "ftune") -> Path:
    import yaml

    run = runs / "bench"
    run.mkdir(parents=True)
    held_out = {"validation": job.eval_data, "eval_strategy": "epoch",
                "per_device_eval_batch_size": job.batch} if job.eval_data else {}
    spec = {
        "name": "bench",
        "model": {"name_or_path": str(model)},
        "data": {"train": [str(data)], "val_size": 0.0, "max_length": job.cutoff,
                 **FTUNE_VARIANT[variant].get("data", {}),
                 **({"validation": job.eval_data} if job.eval_data else {})},
        "stage": "sft",
        "method": {"type": "lora", "lora": {"rank": job.rank, "alpha": job.alpha, "dropout": 0.0,
                                            "target_modules": "all"}},
        "training": {**length(job), "learning_rate": job.lr, "per_device_train_batch_size": job.batch,
                     "gradient_accumulation_steps": job.grad_accum, "seed": job.seed,
                     "logging_steps": job.logging_steps, "lr_scheduler_type": job.scheduler, "warmup_steps": 0,
                     "optim": "adamw_torch", "precision": job.precision, "save_steps": 500,
                     **{k: v for k, v in held_out.items() if k != "validation"},
                     **FTUNE_VARIANT[variant].get("training", {})},
    }
    (run / "run.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return run


def write_lf_job(work: Path, model: Path, data: Path, job: Job, variant: str = "lf") -> Path:
    import yaml

    dataset_dir = work / "lf-data"
    dataset_dir.mkdir()
    # an absolute file_name: LLaMA-Factory joins it onto dataset_dir, so the file is read where it lies
    info = {"alpaca_en_demo": {"file_name": str(data)}}
    held_out = {}
    if job.eval_data:
        info["held_out"] = {"file_name": job.eval_data}
        held_out = {"eval_dataset": "held_out", "eval_strategy": "epoch", "per_device_eval_batch_size": job.batch}
    (dataset_dir / "dataset_info.json").write_text(json.dumps(info))
    system = {"default_system": job.default_system} if job.default_system else {}
    cfg = {
        "model_name_or_path": str(model), "stage": "sft", "do_train": True, "finetuning_type": "lora",
        "lora_rank": job.rank, "lora_alpha": job.alpha, "lora_dropout": 0.0, "lora_target": "all",
        "dataset": "alpaca_en_demo", "dataset_dir": str(dataset_dir), "template": job.lf_template, **system, "cutoff_len": job.cutoff,
        "overwrite_cache": True, "output_dir": str(work / "out"), "logging_steps": job.logging_steps,
        "logging_first_step": True, "save_steps": 500, "plot_loss": False, "report_to": "none",
        "per_device_train_batch_size": job.batch, "gradient_accumulation_steps": job.grad_accum,
        "learning_rate": job.lr, **length(job), "lr_scheduler_type": job.scheduler, "warmup_steps": 0,
        "seed": job.seed, "optim": "adamw_torch", "disable_gradient_checkpointing": True, "disable_tqdm": True,
        **held_out, **LF_VARIANT[variant],
    }
    path = work / "job.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def command(tool: str, work: Path, model: Path, data: Path, job: Job) -> tuple[list[str], dict, Path, str]:
    """(argv, extra env, where the adapter lands, the probe's functions to time) for one tool."""
    if tool in FTUNE_VARIANT:
        runs = work / "runs"
        write_ftune_run(runs, model, data, job, tool)
        argv = [sys.executable, "-m", "ftune", "--runs-dir", str(runs), "train", "bench", "--foreground"]
        wrap = "ftune.runtime.data.load:load_data,ftune.runtime.data.tokenize:tokenize_examples"
        return argv, {}, runs / "bench" / "export" / "adapter_model.safetensors", wrap
    if tool in TRL_VARIANTS:
        cfg = {**asdict(job), "model": str(model), "data": str(data), "out": str(work / "out"),
               "adapter": str(work / "adapter"), "variant": tool, "sft_args": trl_args(tool, job)}
        (work / "job.json").write_text(json.dumps(cfg))
        (work / "trl_sft.py").write_text(TRL_SCRIPT)
        return ([sys.executable, str(work / "trl_sft.py"), str(work / "job.json")], {},
                work / "adapter" / "adapter_model.safetensors", "trl.trainer.sft_trainer:SFTTrainer._prepare_dataset")
    if tool in LF_VARIANT:
        cli = ensure_lf_venv()
        yaml_path = write_lf_job(work, model, data, job, tool)
        # llamafactory-cli picks torchrun only with several devices; these keep it in this one process, offline
        env = {"FORCE_TORCHRUN": "0", "DISABLE_VERSION_CHECK": "1", "HF_HUB_OFFLINE": "1"}
        return [str(cli), "train", str(yaml_path)], env, work / "out" / "adapter_model.safetensors", \
            "llamafactory.data:get_dataset"
    raise SystemExit(f"unknown tool {tool!r}")


def tree_rss(proc, cpu: dict[int, tuple[str, float]] | None = None) -> tuple[int, int]:
    """Summed and largest RSS of `proc` and its descendants; notes each one's CPU seconds so far in `cpu`."""
    import psutil

    total = largest = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    for p in procs:
        try:
            with p.oneshot():
                rss = p.memory_info().rss
                if cpu is not None:
                    t = p.cpu_times()
                    name = cpu[p.pid][0] if p.pid in cpu else " ".join(Path(a).name for a in p.cmdline()[:3])
                    cpu[p.pid] = (name, t.user + t.system)
        except psutil.Error:
            continue
        total += rss
        largest = max(largest, rss)
    return total, largest


def read_jsonl(path: Path) -> list[dict]:
    out = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def steady_rate(points: list[tuple[int, float]], skip: int, amounts: list[float] | None = None) -> float | None:
    """The median over the steps after `skip` of (steps, or `amounts`, per second) between consecutive points.
    A median, not (N - k) / (t_N - t_k): on a shared machine a step that another process starves (two OpenMP
    threads on two busy cores can take 10x as long) then moves the figure by one step, not by its whole delay."""
    rates = []
    for i in range(1, len(points)):
        (s0, t0), (s1, t1) = points[i - 1], points[i]
        if s0 >= skip and s1 > s0 and t1 > t0:
            rates.append(((amounts[i] - amounts[i - 1]) if amounts else (s1 - s0)) / (t1 - t0))
    return statistics.median(rates) if rates else None


def mean_rate(points: list[tuple[int, float]], skip: int) -> float | None:
    """(N - k) / (t_N - t_k): every delay counted, the starved steps too."""
    after = [(s, t) for s, t in points if s >= skip]
    if len(after) < 2 or after[-1][1] <= after[0][1]:
        return None
    return (after[-1][0] - after[0][0]) / (after[-1][1] - after[0][1])


def busy_cpu() -> float:
    import psutil

    c = psutil.cpu_times()
    return sum(c) - c.idle - getattr(c, "iowait", 0.0) - getattr(c, "guest", 0.0) - getattr(c, "guest_nice", 0.0)


def own_cpu() -> float:
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def wait_idle(limit: float, threshold: float = 0.3) -> float:
    """Wait (at most `limit` s) until other processes use under `threshold` of a core; the share last seen."""
    import psutil

    end = time.time() + limit
    while True:
        busy = psutil.cpu_percent(interval=2.0) / 100 * (os.cpu_count() or 1)
        if busy < threshold or time.time() >= end:
            return busy
        time.sleep(3)


def probe_figures(res: Result, events: list[dict], t_start: float, skip: int, rows: float | None,
                  rows_per_step: int) -> None:
    """Fill `res` from the probe's events. `rows`: how many rows the run trained on (an epoch job), else each step
    took `rows_per_step`."""
    step_events = [e for e in events if e.get("ev") == "step"]
    steps = [(e["step"], e["t"]) for e in step_events]
    if steps:
        res.first_step = steps[0][1] - t_start
        res.steps = steps[-1][0]
        res.steps_per_s = steady_rate(steps, skip)
        res.tokens_per_s = steady_rate(steps, skip, [e.get("tokens", 0) for e in step_events])
        res.mean_steps_per_s = mean_rate(steps, skip)
        begin = next((e["t"] for e in events if e.get("ev") == "train_begin"), None)
        span = steps[-1][1] - begin if begin else None
        if span and span > 0:
            res.examples_per_s = (rows if rows else res.steps * rows_per_step) / span
            res.real_tokens_per_s = step_events[-1].get("real_tokens", 0) / span
    calls = [e for e in events if e.get("ev") == "call"]
    if calls:
        res.prep = sum(e["t1"] - e["t0"] for e in calls)
    logs = [e for e in events if e.get("ev") == "log"]
    res.train_loss = next((e["loss"] for e in reversed(logs) if "loss" in e), None)
    res.epoch_loss = next((e["train_loss"] for e in reversed(logs) if "train_loss" in e), None)
    res.eval_loss = next((e["eval_loss"] for e in reversed(logs) if "eval_loss" in e), None)


def run_one(tool: str, rnd: int, work: Path, model: Path, data: Path, job: Job, skip: int) -> Result:
    import psutil

    work.mkdir(parents=True)
    argv, extra, adapter, wrap = command(tool, work, model, data, job)
    probe_dir = work / "probe"
    probe_dir.mkdir()
    (probe_dir / "sitecustomize.py").write_text(PROBE)
    probe_out = work / "probe.jsonl"
    env = {**os.environ, **extra, "PYTHONPATH": os.pathsep.join(filter(None, [str(probe_dir),
                                                                               os.environ.get("PYTHONPATH")])),
           "FTUNE_BENCH_PROBE_OUT": str(probe_out), "FTUNE_BENCH_PROBE_WRAP": wrap,
           "HF_DATASETS_CACHE": str(work / "hf-datasets"),  # cold data caches for every run
           "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
    load = os.getloadavg()[0]
    log = work / "output.log"
    with open(log, "wb") as out:
        busy0, own0 = busy_cpu(), own_cpu()
        t_start = time.time()
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=work,
                                 env=env)
        proc = psutil.Process(popen.pid)
        peak = largest = 0
        cpu: dict[int, tuple[str, float]] = {}
        while popen.poll() is None:
            total, big = tree_rss(proc, cpu)
            peak, largest = max(peak, total), max(largest, big)
            time.sleep(0.1)
        t_exit = time.time()
        other = (busy_cpu() - busy0 - (own_cpu() - own0)) / (t_exit - t_start)
    res = Result(tool=tool, round=rnd, rc=popen.returncode, exit=t_exit - t_start, rss=peak, rss_largest=largest,
                 load=load, other_cpu=max(0.0, other), log=str(log),
                 cpu={f"{pid} {name}": round(sec, 2) for pid, (name, sec) in cpu.items()})
    rows = len(json.loads(data.read_text(encoding="utf-8"))) * job.epochs if job.epochs else None
    probe_figures(res, read_jsonl(probe_out), t_start, skip, rows or None, job.batch * job.grad_accum)
    if adapter.is_file():
        res.wall = adapter.stat().st_mtime - t_start
    if tool.startswith("ftune"):  # ftune's own record of the same run
        own = read_jsonl(work / "runs" / "bench" / "events.jsonl")
        started = next((e["t"] for e in own if e.get("type") == "started"), None)
        own_steps = [(e["step"], e["t"]) for e in own if e.get("type") == "step"]
        finished = next((e["t"] for e in own if e.get("type") == "finished"), None)
        res.own = {"started": started and started - t_start,
                   "first_step": own_steps[0][1] - t_start if own_steps else None,
                   "steps_per_s": steady_rate(own_steps, skip), "finished": finished and finished - t_start}
    return res


# --------------------------------------------------------------------------- the report
LABEL = {"ftune": "ftune", "ftune-padded": "ftune, padded", "ftune-packing": "ftune, packing",
         "ftune-auto": "ftune, its default precision", "lf-bf16": "LLaMA-Factory, bf16",
         "trl": "plain TRL", "trl-padding-free": "TRL, padding_free", "trl-packing": "TRL, packing (bfd)",
         "lf": "LLaMA-Factory", "lf-packing": "LLaMA-Factory, packing", "lf-neat": "LLaMA-Factory, neat_packing",
         "trl-defaults": "TRL, its own defaults", "trl-logprobs": "TRL, log-probs only",
         "trl-plain-loss": "TRL, plain loss"}
METRICS = [("wall", "wall to adapter", "s"), ("exit", "wall to exit", "s"), ("first_step", "to first step", "s"),
           ("steps", "steps", ""), ("steps_per_s", "steady steps/s", ""), ("tokens_per_s", "steady tokens/s", ""),
           ("examples_per_s", "examples/s", ""), ("real_tokens_per_s", "non-padding tokens/s", ""),
           ("train_loss", "final train loss", ""), ("eval_loss", "eval loss", ""), ("prep", "preprocessing", "s"),
           ("rss", "peak RSS", "MB")]


def summary(values: list[float]) -> tuple[float, float, float] | None:
    vals = [v for v in values if v is not None]
    return (statistics.median(vals), min(vals), max(vals)) if vals else None


def fmt(key: str, s: tuple[float, float, float] | None) -> str:
    if s is None:
        return "—"
    scale, digits = (1e-6, 0) if key == "rss" else (1, 0) if key in ("tokens_per_s", "real_tokens_per_s", "steps") \
        else (1, 3) if key in ("steps_per_s", "train_loss", "eval_loss") else (1, 2) if key == "examples_per_s" \
        else (1, 1)
    med, lo, hi = (x * scale for x in s)
    return f"{med:,.{digits}f} ({lo:,.{digits}f}–{hi:,.{digits}f})"


def counted(results: list[Result], tool: str) -> list[Result]:
    """The tool's successful runs that nothing else disturbed (all its successful runs if every one was)."""
    ok = [r for r in results if r.tool == tool and r.rc == 0]
    return [r for r in ok if not r.disturbed] or ok


def table(results: list[Result], tools: list[str]) -> tuple[str, dict]:
    stats = {t: {k: summary([getattr(r, k) for r in counted(results, t)]) for k, _, _ in METRICS} for t in tools}
    head = "| | " + " | ".join(f"{name}{' (' + unit + ')' if unit else ''}" for _, name, unit in METRICS) + " |"
    lines = [head, "|" + "---|" * (len(METRICS) + 1)]
    for t in tools:
        lines.append(f"| {LABEL.get(t, t)} | " + " | ".join(fmt(k, stats[t][k]) for k, _, _ in METRICS) + " |")
    for other in [t for t in tools if t != "ftune"]:
        if "ftune" not in tools:
            break
        cells = []
        for k, _, _ in METRICS:
            a, b = stats["ftune"][k], stats[other][k]
            cells.append(f"{a[0] / b[0]:.2f}×" if a and b and b[0] else "—")
        lines.append(f"| ftune / {LABEL.get(other, other)} | " + " | ".join(cells) + " |")
    return "\n".join(lines), stats


def rounds_table(results: list[Result]) -> str:
    lines = [("| round | tool | rc | load | other CPU | wall s | exit s | first step s | steps | steps/s | tokens/s "
              "| examples/s | non-padding tokens/s | train loss | eval loss | prep s | RSS MB |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        def f(x, d=2):
            return "—" if x is None else f"{x:.{d}f}"
        mark = " (disturbed: run again, not counted)" if r.disturbed else ""
        lines.append(f"| {r.round} | {LABEL.get(r.tool, r.tool)}{mark} | {r.rc} | {r.load:.2f} | "
                     f"{f(r.other_cpu)} | {f(r.wall)} | "
                     f"{f(r.exit)} | {f(r.first_step)} | {r.steps} | {f(r.steps_per_s, 3)} | {f(r.tokens_per_s, 0)} | "
                     f"{f(r.examples_per_s)} | {f(r.real_tokens_per_s, 0)} | {f(r.train_loss, 3)} | "
                     f"{f(r.eval_loss, 3)} | {f(r.prep)} | "
                     f"{f(r.rss and r.rss / 1e6, 0)} |")
    return "\n".join(lines)


def machine() -> str:
    import psutil

    cpu = ""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{os.cpu_count()} CPU cores ({cpu or platform.processor()}), "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


# --------------------------------------------------------------------------- what TRL's defaults cost, in-process
MICRO_VARIANTS = [
    ("plain", "the model's own loss: full logits + cross-entropy (transformers' Trainer, LLaMA-Factory)"),
    ("fused", "TRL's fused LM head, log-probabilities only"),
    ("fused+metrics", "TRL's fused LM head with entropy and top-1 (what SFTTrainer always asks for) and their .item()"),
    ("fused+metrics+bf16", "the same under CPU bf16 autocast (SFTConfig's default bf16=True)"),
    ("fused+metrics+ckpt", "the same with gradient checkpointing (SFTConfig's default)"),
]


def micro(model_dir: Path, data: Path, job: Job, reps: int) -> dict[str, list[float]]:
    """Forward + backward of one micro-batch of the job (the same real batches for every variant, the variants
    interleaved), in this process: the per-step cost of each of TRL's loss-path choices, free of start-up."""
    import contextlib

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.utils import add_fused_lm_head

    from ftune.runtime.data.formats import Source, load_source
    from ftune.runtime.data.tokenize import tokenize_examples

    tok = AutoTokenizer.from_pretrained(model_dir)
    examples = load_source(Source(data)).examples[: job.batch * 4]
    cols, _ = tokenize_examples(tok, examples, max_length=job.cutoff)
    batches = []
    for i in range(0, len(cols["input_ids"]), job.batch):
        ids, labels = cols["input_ids"][i: i + job.batch], cols["labels"][i: i + job.batch]
        width = max(map(len, ids))
        pad = tok.pad_token_id
        batches.append({"input_ids": torch.tensor([x + [pad] * (width - len(x)) for x in ids]),
                        "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids]),
                        "labels": torch.tensor([y + [-100] * (width - len(y)) for y in labels])})

    def build(fused_outputs, ckpt):
        torch.manual_seed(0)
        m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        if fused_outputs:
            add_fused_lm_head(m, outputs=fused_outputs)
        if ckpt:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            m.enable_input_require_grads()
        m = get_peft_model(m, LoraConfig(r=job.rank, lora_alpha=job.alpha, lora_dropout=0.0,
                                         target_modules="all-linear", task_type="CAUSAL_LM"))
        m.train()
        return m

    metrics = ("log_probs", "entropy", "is_top1")
    models = {"plain": build(None, False), "fused": build(("log_probs",), False),
              "fused+metrics": build(metrics, False)}
    models["fused+metrics+bf16"] = models["fused+metrics"]
    models["fused+metrics+ckpt"] = build(metrics, True)

    def one(name, batch):
        m = models[name]
        autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if name.endswith("bf16")
                    else contextlib.nullcontext())
        t0 = time.perf_counter()
        with autocast:
            if name == "plain":
                loss = m(**batch).loss
            else:
                out = m(**batch, fused_lm_head=True, use_cache=False)
                n = out.label_mask.sum()
                loss = -out.log_probs.sum() / n.clamp(min=1)
                if out.entropy is not None:  # what SFTTrainer.compute_loss logs every micro-batch
                    (out.entropy.detach().sum() / n).item()
                    (out.is_top1.sum() / n).item()
        loss.backward()
        m.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    for name in models:  # warm every path once
        one(name, batches[0])
    times: dict[str, list[float]] = {name: [] for name, _ in MICRO_VARIANTS}
    for r in range(reps):
        for batch in batches:
            for name, _ in MICRO_VARIANTS:
                times[name].append(one(name, batch))
    return times


def micro_markdown(times: dict[str, list[float]], job: Job, reps: int) -> str:
    base = statistics.median(times["plain"])
    rows = [f"| {desc} | {statistics.median(times[name]) * 1000:.0f} ms | {min(times[name]) * 1000:.0f} ms | "
            f"{statistics.median(times[name]) / base:.2f}× |" for name, desc in MICRO_VARIANTS]
    return (f"**What TRL's loss path costs per micro-batch** (`--micro {reps}`: forward + backward of {job.batch} "
            f"real rows at cutoff {job.cutoff}, LoRA as in the job, the variants interleaved on the same batches in "
            "one process, median and best):\n\n| loss path | median | best | vs plain |\n|---|---|---|---|\n"
            + "\n".join(rows))


# --------------------------------------------------------------------------- the rest of the house, reused
def other_benchmarks(args) -> dict:
    """bench/startup.py, bench/watch.py and bench/preprocess.py, through their own functions."""
    sys.path.insert(0, str(HERE))
    import preprocess
    import startup
    import watch

    out: dict = {}
    if args.startup_runs:
        cases = {"python -c pass": [sys.executable, "-c", "pass"],
                 "ftune --help": [sys.executable, "-m", "ftune", "--help"]}
        startup.timed(cases["ftune --help"], 2)
        out["startup"] = {name: startup.timed(cmd, args.startup_runs) for name, cmd in cases.items()}
    if args.watch_steps:
        with tempfile.TemporaryDirectory(prefix="ftune-bench-watch-") as tmp:
            (Path(tmp) / "runs").mkdir()
            out["watch"] = [watch.first_paint(Path(tmp), n, (80, 24), args.watch_runs) for n in args.watch_steps]
    if args.prep_rows:
        from transformers import AutoTokenizer

        from ftune.runtime.demo import ensure_demo_model

        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        demo = ensure_demo_model()
        tok = AutoTokenizer.from_pretrained(demo)
        examples = preprocess.rows_from(args.data, args.prep_rows)
        prep = {}
        for label, fn in [("ftune, one process", lambda: preprocess.time_ftune(tok, examples, None)),
                          ("ftune, `data.num_proc: 2`", lambda: preprocess.time_ftune(tok, examples, 2)),
                          ("TRL SFTTrainer default (loss on the whole sequence)",
                           lambda: preprocess.time_trl(demo, examples, False)),
                          ("TRL SFTTrainer `assistant_only_loss=True`",
                           lambda: preprocess.time_trl(demo, examples, True))]:
            load = os.getloadavg()[0]
            prep[label] = {"seconds": fn(), "load": load}
            print(f"  {label:<52} {prep[label]['seconds']:7.2f} s  (load {load:.2f})", flush=True)
        out["prep"] = {"rows": len(examples), "results": prep}
    return out


def other_markdown(o: dict, args) -> str:
    parts = []
    if "startup" in o:
        base = statistics.median(o["startup"]["python -c pass"])
        rows = [f"| `{name}` | {statistics.median(v):.3f} s ({min(v):.3f}–{max(v):.3f}) | "
                f"{'—' if name == 'python -c pass' else f'{statistics.median(v) - base:.3f} s'} |"
                for name, v in o["startup"].items()]
        parts.append(f"**`ftune --help`** (`bench/startup.py`'s timer, median of {args.startup_runs}):\n\n"
                     "| command | median (min–max) | over `python -c pass` |\n|---|---|---|\n" + "\n".join(rows))
    if "watch" in o:
        rows = [f"| {r['steps']:,} | {r['mb']:.1f} MB | {r['load']:.2f} s | {r['paint']:.2f} s "
                f"({r['paint_min']:.2f}–{r['paint_max']:.2f}) |" for r in o["watch"]]
        parts.append(f"**`ftune watch` first full paint** at 80×24, from the fork (`bench/watch.py`'s "
                     f"`first_paint`, median of {args.watch_runs}):\n\n"
                     "| step events | events.jsonl | load | first paint |\n|---|---|---|---|\n" + "\n".join(rows))
    if "prep" in o:
        n = o["prep"]["rows"]
        rows = [f"| {label} | {r['seconds']:.2f} | {n / r['seconds']:,.0f} | {r['load']:.2f} |"
                for label, r in o["prep"]["results"].items()]
        parts.append(f"**Preprocessing throughput** (`bench/preprocess.py`'s functions: alpaca_en_demo repeated to "
                     f"{n:,} rows, the demo's tokenizer, cutoff 1024):\n\n"
                     "| what | seconds | rows/s | load before |\n|---|---|---|---|\n" + "\n".join(rows))
    return "\n\n".join(parts)


VARIANT_TEXT = {
    "ftune": "ftune's default: padding-free batches (a batch's rows laid end to end, no attention across rows)",
    "ftune-padded": "`data.padding_free: false`: rows padded to the longest of the batch",
    "ftune-packing": "`data.packing: true`: rows packed best-fit into cutoff-long sequences, boundaries kept",
    "lf": "LLaMA-Factory's default: rows padded to the longest of the batch",
    "lf-packing": "`packing: true`: rows packed into cutoff-long sequences, attending across rows",
    "lf-neat": "`neat_packing: true`: packed, with a block-diagonal mask (no attention across rows)",
    "trl": "SFTTrainer's default: padded",
    "trl-padding-free": "`padding_free=True` (TRL refuses `max_length` with it unless packing; the script cuts the "
                        "tokenised rows at the cutoff itself, as TRL's error asks)",
    "trl-packing": "`packing=True` (bfd: best-fit packing, padding-free)",
}


def job_markdown(job: Job, env: dict) -> str:
    """The paragraph that says what every tool ran."""
    r = MODEL_RECIPE
    rows = env.get("rows", "?")
    if env.get("given_model"):
        model = (f"`{env['model']}` (its own chat template for every tool: LLaMA-Factory's `{job.lf_template}` "
                 f"template with `default_system` set to the template's own system prompt; TRL on prompt/completion "
                 "rows, the loss on the completion, because its `assistant_only_loss` refuses this template: \"The "
                 "chat template is not training-compatible\")")
    else:
        model = (f"a tiny {r['arch']} with random weights (hidden {r['hidden_size']}, {r['num_layers']} layers, a "
                 f"{r['vocab_size']:,}-token byte-level BPE trained on the data, ChatML — `runtime/tinymodel.py`'s "
                 "recipe; LLaMA-Factory's `chatml` template renders the same text as ftune's ChatML)")
    data = (f"the first {env['train_rows']} rows of alpaca_en_demo" if env.get("train_rows")
            else f"alpaca_en_demo ({rows} rows, read in place from ../shared)")
    length = f"{job.epochs:g} epoch(s) over them" if job.epochs else f"{job.steps} optimiser steps"
    held_out = (f"; every tool evaluated at the end of the epoch on the same {env['eval_rows']} held-out rows (the ones "
                "after the training rows)" if job.eval_data else "")
    return (f"The job: {model}; {data}, {length}{held_out}; cutoff {job.cutoff}, batch {job.batch} × gradient "
            f"accumulation {job.grad_accum}, AdamW (`adamw_torch`) at {job.lr:g}, cosine, no warm-up, seed {job.seed}, "
            "fp32, no gradient checkpointing (LLaMA-Factory's default turns it on: `disable_gradient_checkpointing: "
            f"true` here), LoRA r {job.rank} / alpha {job.alpha} / dropout 0 on every linear layer, the loss on the "
            f"answers only, a log line every {job.logging_steps} steps, the adapter saved at the end. The rows each "
            "tool draws in which order differ (each shuffles with its own sampler).")


def variants_markdown(tools: list[str]) -> str:
    lines = [f"- *{LABEL.get(t, t)}* — {VARIANT_TEXT[t]}" for t in tools if t in VARIANT_TEXT]
    return ("How each tool batched its rows:\n\n" + "\n".join(lines) + "\n") if lines else ""


def markdown(results, tools, job, args, env_info, others, started, ended, micro_times=None, argv=None) -> str:
    main_table, _ = table(results, tools)
    loads = [r.load for r in results]
    others_cpu = [r.other_cpu or 0 for r in results]
    disturbed = sum(r.disturbed for r in results)
    cmd = "python bench/side_by_side.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    text = f"""{BEGIN}
## Side by side: ftune, plain TRL, LLaMA-Factory — `{cmd}`

Written by `bench/side_by_side.py` on {time.strftime('%Y-%m-%d', time.localtime(started))} (it took
{(ended - started) / 60:.0f} min); re-running it replaces this section. Machine: {env_info['machine']}. **No GPU was lent
for this run, so there is no GPU comparison.** ftune and plain TRL ran in the project's environment
({env_info['ftune_versions']}); LLaMA-Factory in its own ({env_info['lf_versions'] or 'not run'}).

{job_markdown(job, env_info)}

{variants_markdown(tools)}
{args.rounds} rounds, the tools alternating ({'; '.join(LABEL.get(t, t) for t in tools)}; then again), each run from \
cold data caches. The machine's two cores may be shared with other work (a test suite, say): two OpenMP threads on two \
cores make every step several times slower as soon as anything else runs. So before each run the script waited \
(up to {args.wait_idle:.0f} s) for the machine to go quiet, measured the CPU other processes used during the run \
(system busy time less the tool's own; column *other CPU*, in cores), and ran again a run during which they used \
more than {args.max_other} of a core (at most {args.retries} times; {disturbed} run(s) were, and are not counted). \
The 1-minute load average before the runs was {min(loads):.2f}–{max(loads):.2f}; other processes used \
{min(others_cpu):.2f}–{max(others_cpu):.2f} cores during them.

Median (min–max) over the counted runs:

{main_table}

How each figure is measured — the same way for every tool, by a probe in its processes (a `sitecustomize.py` put \
first on their `PYTHONPATH`; `time.time()` from the fork of the tool's first process): *wall to adapter* — until \
the final `adapter_model.safetensors` was written (its mtime); *wall to exit* — until the process ended (ftune draws \
its loss plot and writes a model card after the adapter); *to first step* — the end of optimiser step 1 (a \
`TrainerCallback` the probe adds to every transformers `Trainer`); *steady steps/s* and *tokens/s* — the median over \
steps {args.skip + 1}–N of each step's rate (tokens: padded input tokens through `Trainer.training_step`, the compute \
done), a median so that a step another process starved moves it by one step, not by its whole delay; \
*examples/s* and *non-padding tokens/s* — the rows trained on (for an epoch job, the rows × epochs, however a tool \
batched or packed them) and the tokens that were not padding (the attention mask's, or every token of a \
padding-free batch) over the training loop, from the Trainer's `on_train_begin` to the last step's end; *final \
train loss* — the last training loss the Trainer logged (the mean over the last logging window); *eval loss* — the \
Trainer's `eval_loss` on the held-out rows at the end; \
*preprocessing* — the time inside the data functions (ftune: `load_data` + `tokenize_examples`; TRL: reading and \
converting the rows in the script + `SFTTrainer._prepare_dataset`; LLaMA-Factory: `get_dataset`, which reads, \
converts and tokenises); *peak RSS* — the summed resident memory of the process tree, sampled every 0.1 s (for \
ftune: the `ftune train --foreground` process and its worker). ftune's own `events.jsonl` tells the same: \
{ftune_crosscheck(results, args.skip)}.

Every run:

{rounds_table(results)}
"""
    if micro_times:
        text += "\n" + micro_markdown(micro_times, job, args.micro) + "\n"
    if others:
        text += f"\n### The rest, measured in the same session\n\n{other_markdown(others, args)}\n"
    if args.notes and Path(args.notes).is_file():
        text += "\n" + Path(args.notes).read_text(encoding="utf-8").strip() + "\n"
    return text + f"\n{END}\n"


def ftune_crosscheck(results: list[Result], skip: int) -> str:
    own = [r for r in results if r.tool == "ftune" and r.own]
    if not own:
        return "not run"
    first = summary([r.own.get("first_step") for r in own])
    rate = summary([r.own.get("steps_per_s") for r in own])
    return (f"first step event at {first[0]:.2f} s, {rate[0]:.3f} steps/s between its step events "
            "(they come every logging step, so the rate is over fewer steps)") if first and rate else "no step events"


def write_doc(section: str, doc: Path = DOC) -> None:
    """Put `section` in place of this script's previous one (between its markers), or at the end."""
    text = doc.read_text(encoding="utf-8") if doc.is_file() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    doc.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- main
def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tools", default="ftune,trl,lf",
                   help=f"comma-separated, run in this order each round; of {', '.join(TOOLS)}")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--model", type=Path, default=None,
                   help="a model folder or .gguf file for every tool (default: the tiny Qwen2 built here)")
    p.add_argument("--lf-template", default=None,
                   help="LLaMA-Factory's template for --model (default: smollm2 for SmolLM2, else parsed from the "
                   "tokenizer's chat template)")
    p.add_argument("--steps", type=int, default=Job.steps)
    p.add_argument("--epochs", type=float, default=None,
                   help="train this many passes over the rows instead of --steps optimiser steps")
    p.add_argument("--rows", type=int, default=None,
                   help="train on the first N rows of --data (the same for every tool)")
    p.add_argument("--eval-rows", type=int, default=None,
                   help="evaluate on the rows after them (default with --rows: 50; 0: no evaluation)")
    p.add_argument("--batch", type=int, default=Job.batch)
    p.add_argument("--grad-accum", type=int, default=Job.grad_accum)
    p.add_argument("--cutoff", type=int, default=Job.cutoff)
    p.add_argument("--skip", type=int, default=5, help="steps left out of the steady rate")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--keep", type=Path, default=None, help="keep every run's folder under this path")
    p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    p.add_argument("--write-doc", action="store_true", help="write this run's section of docs/benchmarks.md")
    p.add_argument("--notes", default=None, help="a markdown file appended to the section (the analysis)")
    p.add_argument("--startup-runs", type=int, default=15, help="ftune --help timings for the doc (0: skip)")
    p.add_argument("--watch-steps", type=int, nargs="*", default=[10_000, 1_000_000])
    p.add_argument("--watch-runs", type=int, default=3)
    p.add_argument("--prep-rows", type=int, default=10_000, help="preprocessing throughput rows (0: skip)")
    p.add_argument("--no-others", action="store_true", help="only the side-by-side runs")
    p.add_argument("--matrix", action="store_true",
                   help="batch 2 and 8, short and long rows, English and Chinese, over --rows rows each (default 32)")
    p.add_argument("--micro", type=int, default=0, help="passes of the in-process loss-path comparison (0: skip)")
    p.add_argument("--wait-idle", type=float, default=300,
                   help="before each run, wait up to this many seconds for the machine to go quiet (0: don't)")
    p.add_argument("--max-other", type=float, default=0.25,
                   help="a run during which other processes used more cores than this is run again")
    p.add_argument("--retries", type=int, default=2, help="how often a disturbed run is run again")
    p.add_argument("--from-json", type=Path, default=None,
                   help="only write the doc section from an earlier run's --json (with --notes)")
    return p.parse_args(argv)


def job_from(args) -> Job:
    return Job(steps=args.steps, batch=args.batch, grad_accum=args.grad_accum, cutoff=args.cutoff,
               epochs=args.epochs)


def from_json(args) -> None:
    """Write the doc section again from a run's --json (e.g. with --notes added), measuring nothing."""
    saved = json.loads(args.from_json.read_text())
    run_args = parse(saved["argv"])
    run_args.notes = args.notes
    results = [Result(**r) for r in saved["results"]]
    tools = list(dict.fromkeys(r.tool for r in results))
    write_doc(markdown(results, tools, Job(**saved["job"]), run_args, saved["env"], saved["others"],
                       saved["started"], saved["ended"], saved.get("micro"), saved["argv"]))
    print(f"wrote {DOC.relative_to(REPO)} from {args.from_json}")


def main(argv=None) -> None:
    args = parse(argv)
    if args.from_json:
        return from_json(args)
    # the arguments first, then the data set: a typo is named even where the data is missing
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in tools if t not in TOOLS]
    if unknown:
        sys.exit(f"bench/side_by_side.py: --tools: unknown {', '.join(unknown)}; the tools are {', '.join(TOOLS)}")
    data = find_data(args.data)
    job = job_from(args)
    started = time.time()
    model = given_model(args.model) if args.model else ensure_model(data)
    if args.model:
        job.prompt_completion = True  # TRL refuses assistant-only masks on SmolLM2's template (see TRL_SCRIPT)
        job.default_system = template_system(model)
        job.lf_template = args.lf_template or ("smollm2" if "smollm2" in model.name.lower() else None)
    root = Path(tempfile.mkdtemp(prefix="ftune-bench-compare-")) if args.keep is None else args.keep
    if args.rows and not args.matrix:  # the matrix picks its own rows per shape
        eval_rows = 50 if args.eval_rows is None else args.eval_rows
        data, held_out = split_rows(data, args.rows, eval_rows, root / "data")
        job.eval_data = str(held_out) if held_out else None
    if any(t in LF_VARIANT for t in tools):
        ensure_lf_venv()
    if args.matrix:
        try:
            grid = run_matrix(args, tools, model, root, job)
        finally:
            if args.keep is None:
                shutil.rmtree(root, ignore_errors=True)
        text = matrix_markdown(grid, tools)
        print("\n" + text)
        if args.json:
            args.json.write_text(json.dumps({"matrix": [[list(s), asdict(r)] for s, r in grid], "argv": sys.argv[1:],
                                             "machine": machine()}, indent=1, default=str))
        return
    env_info = {"machine": machine(), "rows": len(json.loads(data.read_text(encoding="utf-8"))),
                "ftune_versions": ", ".join(f"{k} {v}" for k, v in versions(sys.executable, [
                    "torch", "transformers", "trl", "peft", "accelerate", "datasets"]).items()),
                "lf_versions": ", ".join(f"{k} {v}" for k, v in versions(str(LF_VENV / "bin" / "python"), [
                    "llamafactory", "torch", "transformers", "trl", "peft", "accelerate", "datasets"]).items())
                if any(t in LF_VARIANT for t in tools) else "",
                "model": str(model), "given_model": bool(args.model), "train_rows": args.rows,
                "eval_rows": job.eval_data and len(json.loads(Path(job.eval_data).read_text(encoding="utf-8")))}
    print(f"model {model}\n{env_info['machine']}\n{env_info['ftune_versions']}\n{env_info['lf_versions']}", flush=True)
    results: list[Result] = []
    try:
        for rnd in range(1, args.rounds + 1):
            for tool in tools:
                for attempt in range(args.retries + 1):
                    quiet = wait_idle(args.wait_idle) if args.wait_idle else None
                    r = run_one(tool, rnd, root / f"r{rnd}-{tool}-{attempt}", model, data, job, args.skip)
                    r.idle_before = quiet
                    r.disturbed = (r.other_cpu or 0) > args.max_other
                    results.append(r)
                    report(r)
                    if not r.disturbed or r.rc != 0 or attempt == args.retries:
                        break
                    print(f"  other processes used {r.other_cpu:.2f} cores during that run: running it again",
                          flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    micro_times = micro(model, data, job, args.micro) if args.micro else None
    others = {} if args.no_others else other_benchmarks(args)
    ended = time.time()
    print("\n" + table(results, tools)[0])
    if micro_times:
        print("\n" + micro_markdown(micro_times, job, args.micro))
    if args.json:
        args.json.write_text(json.dumps({"results": [asdict(r) for r in results], "others": others,
                                         "micro": micro_times, "env": env_info, "job": asdict(job),
                                         "argv": sys.argv[1:], "started": started, "ended": ended}, indent=1,
                                        default=str))
    if args.write_doc:
        write_doc(markdown(results, tools, job, args, env_info, others, started, ended, micro_times))
        print(f"\nwrote {DOC.relative_to(REPO)}")


def report(r: Result) -> None:
    print(f"round {r.round} {r.tool:<16} rc {r.rc} wall {r.wall or 0:6.2f} s exit {r.exit or 0:6.2f} s "
          f"first step {r.first_step or 0:6.2f} s {r.steps_per_s or 0:6.3f} steps/s {r.tokens_per_s or 0:6.0f} tok/s "
          f"{r.steps} steps {r.examples_per_s or 0:.2f} ex/s {r.real_tokens_per_s or 0:.0f} real tok/s "
          f"loss {r.train_loss or 0:.3f} eval {r.eval_loss or 0:.3f} "
          f"prep {r.prep or 0:5.2f} s RSS {(r.rss or 0) / 1e6:5.0f} MB; load {r.load:.2f}, other CPU "
          f"{r.other_cpu or 0:.2f} cores" + (f"; own: {json.dumps(r.own, default=lambda x: round(x, 2))}"
                                              if r.own else ""), flush=True)
    if r.rc != 0:
        print(f"  {r.tool} failed; the end of its output ({r.log}):\n"
              + textwrap.indent(Path(r.log).read_text(errors="replace")[-3000:], "    "), flush=True)


if __name__ == "__main__":
    main()
