"""A run's data made ready for its trainer: loaded, checked, split and tokenised, or streamed.

The tokenised result is cached in the run directory (runs/<name>/tokenized/<key>), keyed by everything that
changes it, so a resume or a second run with the same data starts at once.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ftune.runtime.data import agent, columns
from ftune.runtime.data.formats import DataError
from ftune.runtime.data.load import check_data, load_data, sources_for, split
from ftune.runtime.data.tokenize import (
    VisionTokens,
    has_tools,
    template_abilities,
    tokenize_examples,
    tokenize_vision_examples,
)
from ftune.runtime.events import EventWriter
from ftune.runtime.files import publish_dir
from ftune.runtime.rundir import RunDir
from ftune.runtime.spec import RunSpec


@dataclass
class PreparedData:
    """What the trainer gets, and the counts the `started` event reports."""

    train: Any  # a datasets.Dataset (an IterableDataset when streaming)
    eval: Any  # a datasets.Dataset, or None
    total_rows: int
    skipped_rows: int  # invalid rows skipped plus rows that truncation or the trainer dropped
    num_train_rows: int
    num_eval_rows: int
    format: str
    cached: bool = False

    def counts(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("train", "eval", "cached")}


def cache_key(spec: RunSpec, tokenizer, sources: list, base: Path) -> str:
    """Everything that changes the tokenised data: files (size, mtime), tokenizer, template, options."""
    import hashlib

    d = spec.data
    paths = [s.path for s in sources] + ([s.path for s in sources_for([d.validation], base, hub_opts=d.hub)] if d.validation else [])
    files = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    payload = {
        "v": 1, "files": files, "data": d.model_dump(mode="json", exclude={"cache", "num_proc", "test"}),
        "stage": spec.stage.type, "seed": spec.training.seed, "model": spec.model.name_or_path,
        "revision": spec.model.revision, "template": tokenizer.chat_template, "vocab": len(tokenizer),
        "eos": tokenizer.eos_token,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_images(spec: RunSpec, loaded_examples: list, processor) -> None:
    """Rows with images need a vision-language model, and (here) stage sft."""
    with_images = sum(1 for ex in loaded_examples if ex.images)
    if with_images and processor is None:
        raise DataError(f"{with_images} rows have images, but {spec.model.name_or_path} is a text model",
                        hint="Choose a vision-language model (e.g. Qwen/Qwen2-VL-2B-Instruct), or data without images.")
    if processor is not None and not spec.stage.definition.vision:
        raise DataError(f"{spec.model.name_or_path} is a vision-language model: ftune trains those with stage sft",
                        hint="Set stage: sft.")


def check_tool_rows(spec: RunSpec, tokenizer, rows: list) -> None:
    """Rows with tools or tool calls need a template that renders them: refused, naming the template."""
    n = sum(1 for ex in rows if has_tools(ex))
    if n:
        ab = template_abilities(tokenizer)
        if not ab.tools:
            label = (f"model.template {spec.model.template}" if spec.model.template != "auto"
                     else f"the chat template of {spec.model.name_or_path}")
            raise DataError(agent.tools_refusal(label, ab, n), hint=agent.TOOLS_HINT)


def prepare_data(spec: RunSpec, tokenizer, base: Path, events: EventWriter, run: RunDir,
                 lead: bool = True, processor=None) -> PreparedData:
    """Load, check, split and tokenise; reuse the run's cache of it when nothing changed.
    Every rank tokenises for itself; only the lead writes the cache. With a processor (a vision-language
    model) rows keep their images, and the image tokens are counted into them."""
    import datasets

    d = spec.data
    sources = sources_for(d.train, base, d.format, d.dataset_dir, d.hub)
    if d.streaming:
        return stream_data(spec, tokenizer, sources, base, events)
    cache = run.path / "tokenized" / cache_key(spec, tokenizer, sources, base) if d.cache else None
    if cache is not None and (cache / "meta.json").is_file():
        meta = json.loads((cache / "meta.json").read_text())
        return PreparedData(train=datasets.load_from_disk(str(cache / "train")),
                            eval=datasets.load_from_disk(str(cache / "eval")) if (cache / "eval").is_dir() else None,
                            cached=True, **meta)
    loaded = load_data(sources, spec.stage.type, d.on_invalid, d.max_samples, d.mix_strategy, d.interleave_probs,
                       spec.training.seed)
    check_images(spec, loaded.examples, processor)
    if loaded.problems:  # on_invalid: skip; say so, never silently
        events.emit("warning", message=f"skipped {loaded.invalid} invalid rows of {loaded.total}",
                    hint=f"First: {loaded.problems[0]}")
    if d.validation:
        train_rows = split(loaded.examples, 0.0, spec.training.seed, d.shuffle)[0]
        eval_rows = load_data(sources_for([d.validation], base, d.format, hub_opts=d.hub), spec.stage.type, d.on_invalid).examples
    else:
        train_rows, eval_rows = split(loaded.examples, d.val_size, spec.training.seed, d.shuffle)
    layout = spec.stage.definition.columns
    if processor is not None:
        vision = VisionTokens(processor, d.image_min_pixels, d.image_max_pixels)
        opts = {"max_length": d.max_length, "train_on_prompt": d.train_on_prompt, "mask_history": d.mask_history,
                "combine": d.combine, "max_input_length": d.max_input_length,
                "max_output_length": d.max_output_length}
        train_cols, truncated = tokenize_vision_examples(vision, train_rows, **opts, progress=Progress(events))
        eval_cols, _ = tokenize_vision_examples(vision, eval_rows, **opts)
    elif layout == "conversation":
        check_tool_rows(spec, tokenizer, train_rows + eval_rows)
        opts = dict(max_length=d.max_length, train_on_prompt=d.train_on_prompt, mask_history=d.mask_history,
                    combine=d.combine, max_input_length=d.max_input_length, max_output_length=d.max_output_length,
                    num_proc=processes(d.num_proc, events), reasoning=d.reasoning)
        train_cols, truncated = tokenize_examples(tokenizer, train_rows, **opts, progress=Progress(events))
        eval_cols, _ = tokenize_examples(tokenizer, eval_rows, **opts)
    elif layout == "text":
        train_cols, truncated = columns.text_columns(tokenizer, train_rows, d.max_length)
        eval_cols, _ = columns.text_columns(tokenizer, eval_rows, d.max_length)
    elif layout == "reward_pairs":  # tokenised here: cut to max_length like preference rows, where TRL would drop them
        train_cols, cut = columns.reward_columns(tokenizer, train_rows, d.max_length)
        eval_cols, _ = columns.reward_columns(tokenizer, eval_rows, d.max_length)
        truncated = 0
        if cut:
            events.emit("warning", message=f"{cut} answers of {2 * len(train_rows)} were longer than data.max_length "
                                           f"({d.max_length} tokens) and were cut to fit",
                        hint="Raise data.max_length to keep them whole.")
    else:  # preference, KTO and RL rows: the TRL trainer tokenises them with the run's template
        make = columns.UNTOKENISED[layout]
        train_cols, truncated = make(train_rows), 0
        eval_cols = make(eval_rows)
    first = next(iter(train_cols))
    if truncated:
        cut = "had no answer left after truncation to" if processor is None else \
            "had no answer left, or would have been cut through an image, at"
        events.emit("warning", message=f"{truncated} examples {cut} {d.max_length} tokens and were dropped",
                    hint="Raise data.max_length" + (", or lower data.image_max_pixels." if processor else "."))
    if not train_cols[first]:
        raise DataError("no training rows left after tokenisation", hint="Raise data.max_length.")
    out = PreparedData(train=datasets.Dataset.from_dict(train_cols),
                       eval=datasets.Dataset.from_dict(eval_cols) if eval_cols[first] else None,
                       total_rows=loaded.total, skipped_rows=loaded.invalid + truncated,
                       num_train_rows=len(train_cols[first]), num_eval_rows=len(eval_cols[first]),
                       format=loaded.formatting)
    if cache is not None and lead:
        import shutil

        for old in cache.parent.glob("*") if cache.parent.is_dir() else ():  # one cache per run: the newest
            if old.name != cache.name:
                shutil.rmtree(old, ignore_errors=True)
        with publish_dir(cache) as tmp:
            out.train.save_to_disk(str(tmp / "train"))
            if out.eval is not None:
                out.eval.save_to_disk(str(tmp / "eval"))
            (tmp / "meta.json").write_text(json.dumps(out.counts()))
    return out


def processes(wanted: int | None, events: EventWriter) -> int | None:
    """data.num_proc, capped at the CPUs this process may use: 16 tokenising processes on 2 cores only queue up
    (each holds its own tokenizer, ~360 MB here), and the run sits at 'starting'."""
    import os

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if wanted and wanted > cpus:
        events.emit("warning", message=f"data.num_proc {wanted} is more than the {cpus} CPUs here: tokenising in "
                                       f"{cpus} processes", hint=f"Set data.num_proc: {cpus} (or leave it out).")
        return cpus
    return wanted


class Progress:
    """Tokenising progress every few seconds: a `phase` event for the monitor and a line in train.log."""

    def __init__(self, events: EventWriter, every_s: float = 3.0):
        import time

        self.events, self.every_s, self.clock = events, every_s, time.monotonic
        self.start = self.last = self.clock()

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if now - self.last < self.every_s and done < total:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-6)
        self.events.emit("phase", phase="tokenising", done=done, total=total, rows_per_s=round(rate, 1))
        print(f"tokenising: {done:,} of {total:,} rows ({rate:,.0f} rows/s)", flush=True)


def stream_data(spec: RunSpec, tokenizer, sources: list, base: Path, events: EventWriter) -> PreparedData:
    """Data larger than memory: one checking pass (counts, on_invalid), then an iterable data set that reads,
    shuffles in a buffer and tokenises as training goes. Evaluation uses data.validation only."""
    import datasets

    d, stage = spec.data, spec.stage.type
    total, valid, problems = check_data(sources, stage, d.on_invalid)  # a pass that keeps only the problems
    if problems:
        events.emit("warning", message=f"skipping {total - valid} invalid rows of {total}", hint=f"First: {problems[0]}")

    opts = {"max_length": d.max_length, "train_on_prompt": d.train_on_prompt, "mask_history": d.mask_history,
            "combine": d.combine, "max_input_length": d.max_input_length, "max_output_length": d.max_output_length}
    layout = spec.stage.definition.columns
    if layout == "conversation":
        opts["reasoning"] = d.reasoning
    kwargs = {"sources": [(str(s.path), s.formatting, s.kind, s.columns, s.tags) for s in sources],
              "tokenizer_dir": tokenizer.name_or_path, "chat_template": tokenizer.chat_template, "layout": layout,
              "opts": opts}
    # an importable function with plain arguments: datasets fingerprints both (the worker runs as __main__)
    train = datasets.IterableDataset.from_generator(columns.stream_rows, gen_kwargs=kwargs)
    if d.shuffle:
        train = train.shuffle(seed=spec.training.seed, buffer_size=d.buffer_size)
    eval_ds = None
    if d.validation:
        v = load_data(sources_for([d.validation], base, d.format, hub_opts=d.hub), stage, d.on_invalid).examples
        cols, _ = (columns.text_columns(tokenizer, v, d.max_length) if layout == "text" else
                   tokenize_examples(tokenizer, v, d.max_length, d.train_on_prompt, d.mask_history, d.combine))
        eval_ds = datasets.Dataset.from_dict(cols)
    return PreparedData(train=train, eval=eval_ds, total_rows=total, skipped_rows=total - valid,
                        num_train_rows=valid, num_eval_rows=len(eval_ds) if eval_ds else 0,
                        format="+".join(s.formatting or "auto" for s in sources))
