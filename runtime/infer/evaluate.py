"""Predict with generate: answer every prompt of a test file, score the answers, write both down.

`ftune eval RUN [--checkpoint STEP]` runs it on demand; with `training.predict_with_generate: true`
and `data.test` the worker runs it at the end of training. Answers are greedy (deterministic) and
at most `training.max_new_tokens` tokens long (GLM-4's `generation_config.max_new_tokens`).

Writes, in `runs/<name>/eval/<export|checkpoint-N>/`:
    predictions.jsonl   one line per test row: messages (the prompt), reference, prediction
    metrics.json        predict_bleu, predict_rouge1/2/L (0-100), how they were computed, and timing

Test rows: chat data (the last assistant answer is the reference, the turns before it the prompt),
or preference data (the chosen answer is the reference). Invalid rows follow `data.on_invalid`. A run without
`data.test` is evaluated on its validation rows: data.validation, or the share training held out.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ftune.runtime.data.formats import DataError, Source, load_source
from ftune.runtime.data.images import attach_images
from ftune.runtime.data.tokenize import with_tools
from ftune.runtime.files import write_atomic
from ftune.runtime.rundir import RunDir, RunError
from ftune.runtime.spec import RunSpec, load_spec


@dataclass
class Row:
    prompt: list[dict[str, str]]
    reference: str


@dataclass
class EvalResult:
    folder: Path
    predictions: Path
    metrics_path: Path
    metrics: dict[str, Any]


def test_file(spec: RunSpec, run: RunDir, override: str | None = None) -> Path:

    name = override or spec.data.test
    if not name:
        raise RunError(f"run '{run.name}' has no test file: set data.test in {run.spec_path} or pass --test FILE")
    p = Path(name).expanduser()
    p = p if p.is_absolute() or override else run.project / p
    if not p.is_file():
        raise RunError(f"test file not found: {p}" + ("" if override else f" (data.test in {run.spec_path}; "
                                                      f"relative paths are relative to {run.project})"))
    return p


def load_rows(path: Path, formatting: str, on_invalid: str) -> tuple[list[Row], int]:
    """Prompts and references of a test file, and how many rows were skipped as invalid."""
    loaded = load_source(Source(path, None if formatting == "auto" else formatting,
                                "text" if formatting == "text" else None))
    if loaded.kind == "text":
        raise DataError(f"{path} holds plain text ({loaded.reason}): prediction needs prompts with answers "
                        f"(chat or preference data)", hint="Use chat data for data.test.")
    if loaded.problems and on_invalid == "error":
        shown = "\n".join(f"  {p}" for p in loaded.problems[:10])
        raise DataError(f"{len(loaded.problems)} of {loaded.total} test rows are invalid:\n{shown}",
                        hint="Fix the rows, or set data.on_invalid: skip.")
    rows = rows_of(loaded.examples)
    if not rows:
        raise DataError(f"no usable test rows in {path}", hint="Each row needs a prompt and an answer.")
    return rows, len(loaded.problems)


def rows_of(examples: list) -> list[Row]:
    """Prompt and reference of each example: the chosen answer, or the last assistant turn."""
    rows = []
    for ex in examples:
        msgs = attach_images(with_tools(ex), ex.images)  # each prompt turn with the images it shows
        if ex.chosen is not None:
            rows.append(Row(msgs, ex.chosen))
        elif msgs and msgs[-1]["role"] == "assistant":
            rows.append(Row(msgs[:-1], msgs[-1]["content"]))
    return rows


def held_out_rows(spec: RunSpec, run: RunDir) -> tuple[list[Row], str]:
    """Without a test file: the rows training held out for validation, split exactly as the worker split them
    (same seed, max_samples and val_size), and where they came from, in words."""
    from ftune.runtime.data.load import load_data, sources_for, split
    from ftune.runtime.models import local_path

    d = spec.data
    if d.validation:
        path = local_path(d.validation, run.project)
        rows, _ = load_rows(path, d.format, d.on_invalid)
        return rows, f"{path} (data.validation)"
    if not d.val_size:
        raise RunError(f"run '{run.name}' has no test file and holds no rows out (data.val_size: 0): set data.test "
                       f"in {run.spec_path} or pass --test FILE")
    loaded = load_data(sources_for(d.train, run.project, d.format, d.dataset_dir, d.hub), spec.stage.type, "skip",
                       d.max_samples, d.mix_strategy, d.interleave_probs, spec.training.seed)
    _, held = split(loaded.examples, d.val_size, spec.training.seed, d.shuffle)
    rows = rows_of(held)
    if not rows:
        raise RunError(f"run '{run.name}' has no test file, and its held-out share is empty: set data.test or "
                       f"pass --test FILE")
    return rows, f"the {len(rows)} rows held out for validation (data.val_size {d.val_size:g}; no data.test)"


def predict_and_score(model, tokenizer, rows: list[Row], max_new_tokens: int, batch_size: int,
                      on_batch: Callable[[int, int], None] | None = None,
                      vision=None) -> tuple[list[str], dict[str, Any]]:
    from ftune.runtime.infer import metrics
    from ftune.runtime.infer.generate import generate_batch

    t0 = time.time()
    model.eval()
    predictions = generate_batch(model, tokenizer, [r.prompt for r in rows], max_new_tokens, batch_size, on_batch,
                                 vision)
    runtime = time.time() - t0
    scores = metrics.score(predictions, [r.reference for r in rows])
    scores.update(predict_runtime=round(runtime, 3), predict_samples_per_second=round(len(rows) / runtime, 3),
                  max_new_tokens=max_new_tokens)
    return predictions, scores


def write_results(folder: Path, rows: list[Row], predictions: list[str], scores: dict[str, Any]) -> EvalResult:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"messages": r.prompt, "reference": r.reference, "prediction": p}, ensure_ascii=False)
             for r, p in zip(rows, predictions)]
    pred_path, metrics_path = folder / "predictions.jsonl", folder / "metrics.json"
    write_atomic(pred_path, "\n".join(lines) + "\n")
    write_atomic(metrics_path, json.dumps(scores, indent=2, ensure_ascii=False) + "\n")
    return EvalResult(folder, pred_path, metrics_path, scores)


def evaluate_run(run: RunDir, checkpoint: int | None = None, test: str | None = None,
                 max_new_tokens: int | None = None, batch_size: int | None = None, model=None, tokenizer=None,
                 label: str | None = None, say: Callable[[str], None] = lambda s: None,
                 on_batch: Callable[[int, int], None] | None = None, vision=None) -> EvalResult:
    """Predict on the run's test file (or `test`) with its export or checkpoint N (or a model in memory, with
    its `vision` for a vision-language model)."""
    spec = load_spec(run.spec_path)
    if test or spec.data.test:
        path = test_file(spec, run, test)
        rows, skipped = load_rows(path, spec.data.format, spec.data.on_invalid)
        where = str(path)
    else:
        rows, where = held_out_rows(spec, run)
        skipped = 0
    if model is None:
        from ftune.runtime.infer.loading import load_run_model

        say(f"Loading {run.name}" + (f" at checkpoint {checkpoint}" if checkpoint is not None else ""))
        rm = load_run_model(run, checkpoint)
        model, tokenizer, label, vision = rm.model, rm.tokenizer, rm.target.label, rm.vision
    label = label or "export"
    n_new = max_new_tokens or spec.training.max_new_tokens
    say(f"Answering {len(rows)} prompts of {where} (greedy, up to {n_new} new tokens)")
    predictions, scores = predict_and_score(model, tokenizer, rows, n_new,
                                            batch_size or spec.training.per_device_eval_batch_size, on_batch, vision)
    scores.update(model=label, test_file=where, skipped_rows=skipped)
    return write_results(run.path / "eval" / label, rows, predictions, scores)
