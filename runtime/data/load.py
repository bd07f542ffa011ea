"""A run's data sets: the files (or dataset_info.json keys) the run file names, loaded, checked against the
stage, mixed and split. Formats and row rules live in data/formats.py, tokenising in data/tokenize.py.
Nothing here imports torch.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftune.runtime.data.formats import (
    KINDS,
    DataError,
    Example,
    Loaded,
    RowProblem,
    Source,
    convert_messages,
    iter_source,
    load_source,
    registry_sources,
)
from ftune.runtime.models import local_path

PLACEHOLDER = re.compile(r"\{\{\s*[A-Za-z_]\w*\s*\}\}")  # {{name}}: a template's blank, left unfilled
STAGE_KIND = {stage: kind for kind, stages in KINDS.items() for stage in stages}


def check_messages(row: Any) -> str | None:
    """Why a row breaks the messages rules (SiliconFlow's), in plain words; None when it is valid."""
    if not isinstance(row, dict):
        return "each line must be a JSON object with a 'messages' array"
    try:
        convert_messages(row, Source(Path("-"), "messages", "chat"))
    except ValueError as e:
        return str(e)
    return None


# --------------------------------------------------------------------------- loading a run's data
def sources_for(names: list[str], base: Path, formatting: str = "auto", dataset_dir: str | None = None) -> list[Source]:
    """Files named in the run file (relative to the project folder), or keys of a dataset_info.json."""
    if dataset_dir:
        return registry_sources(local_path(dataset_dir, base), names)
    return [Source(local_path(n, base), None if formatting == "auto" else formatting,
                   "text" if formatting == "text" else None) for n in names]


def interleave(groups: list[list], probs: list[float] | None, seed: int, until: str) -> list:
    """Sample rows from several data sets by probability: until='first' stops when one runs out,
    'all' goes on (repeating the exhausted ones) until every one has been used up once."""
    rng = random.Random(seed)
    probs = probs or [1 / len(groups)] * len(groups)
    pos, done, out = [0] * len(groups), set(), []
    live = [i for i, g in enumerate(groups) if g and probs[i] > 0]
    while live and len(done) < len(live):
        i = rng.choices(live, weights=[probs[j] for j in live])[0]
        out.append(groups[i][pos[i] % len(groups[i])])
        pos[i] += 1
        if pos[i] % len(groups[i]) == 0:
            done.add(i)
            if until == "first":
                break
    return out


def _wrong_kind(src: Source, kind: str, reason: str, stage: str) -> DataError | None:
    want = STAGE_KIND.get(stage, "chat")
    if kind in ("unknown", None) or kind == want:
        return None
    fits = ", ".join(KINDS.get(kind, []))
    return DataError(f"{src.path} holds {kind} data ({reason}), which suits {fits}; stage {stage} needs {want} data",
                     hint="Choose the stage that fits the data, or other data for this stage.")


def _invalid(problems: list[RowProblem], total: int, count: int | None = None) -> DataError:
    count = len(problems) if count is None else count
    shown = "\n".join(f"  {p}" for p in problems[:10])
    more = f"\n  ... and {count - 10} more" if count > 10 else ""
    return DataError(f"{count} of {total} rows are invalid:\n{shown}{more}",
                     hint="Fix the rows, or set data.on_invalid: skip to train on the valid rows only.")


def _no_rows(sources: list[Source]) -> DataError:
    return DataError(f"no valid rows in {', '.join(str(s.path) for s in sources)}",
                     hint="The file is empty or every row is invalid.")


def check_data(sources: list[Source], stage: str, on_invalid: str,
               limit: int | None = None, counts: dict[str, int] | None = None) -> tuple[int, int, list[RowProblem]]:
    """One streaming pass that keeps only the first problems: what `ftune train` checks before it detaches, and
    the worker's pass over data larger than memory. Raises what load_data would raise; returns (rows, valid rows,
    the first problems). `limit`: rows per source, for a look at the head of a stream. `counts` gets
    image_rows: the valid rows with images, and tool_rows: those with tools or tool calls."""
    total, problems, valid = 0, [], 0
    for src in sources:
        checked = False
        for n, item in enumerate(iter_source(src)):
            if limit is not None and n >= limit:
                break
            total += 1
            if isinstance(item, RowProblem):
                if len(problems) < 100:  # enough to report; the count is total - valid
                    problems.append(item)
                continue
            valid += 1
            if counts is not None and item.images:
                counts["image_rows"] = counts.get("image_rows", 0) + 1
            if counts is not None and (item.tools or any(m.get("tool_calls") for m in item.messages)):
                counts["tool_rows"] = counts.get("tool_rows", 0) + 1
            if not checked:  # the kind is known from the first valid row
                checked = True
                wrong = _wrong_kind(src, src.kind, src.reason, stage)
                if wrong:
                    raise wrong
    if total > valid and on_invalid == "error":
        raise _invalid(problems, total, total - valid)
    if not valid:
        raise _no_rows(sources)
    return total, valid, problems


def load_data(sources: list[Source], stage: str, on_invalid: str, max_samples: int | None = None,
              mix: str = "concat", probs: list[float] | None = None, seed: int = 0) -> Loaded:
    """Every source loaded and checked; refuses data of the wrong kind for the stage and, with
    on_invalid=error, any invalid row (listing the first ten and the count). Several sources are
    concatenated or interleaved (mix)."""
    want = STAGE_KIND.get(stage, "chat")
    groups: list[list[Example]] = []
    problems: list[RowProblem] = []
    total, formats, reasons = 0, [], []
    for src in sources:
        loaded = load_source(src)
        wrong = _wrong_kind(src, loaded.kind, loaded.reason, stage)
        if wrong:
            raise wrong
        groups.append(loaded.examples)
        problems += loaded.problems
        total += loaded.total
        formats.append(loaded.formatting)
        reasons.append(loaded.reason)
    if problems and on_invalid == "error":
        raise _invalid(problems, total)
    if mix == "concat" or len(groups) == 1:
        examples = [ex for g in groups for ex in g]
    else:
        examples = interleave(groups, probs, seed, "first" if mix == "interleave_under" else "all")
    if not examples:
        raise _no_rows(sources)
    if max_samples:
        examples = examples[:max_samples]
    return Loaded(examples, total, problems, "+".join(dict.fromkeys(formats)), want, "; ".join(reasons))


def split(rows: list, val_size: float, seed: int, shuffle: bool = True) -> tuple[list, list]:
    """Shuffle with the run's seed (unless told not to) and hold out val_size of the rows."""
    order = list(range(len(rows)))
    if shuffle:
        random.Random(seed).shuffle(order)
    n_val = int(round(len(rows) * val_size))
    if n_val < 1 or n_val >= len(rows):
        return [rows[i] for i in order], []
    return [rows[i] for i in order[n_val:]], [rows[i] for i in order[:n_val]]


# --------------------------------------------------------------------------- checking a file
@dataclass
class FileSummary:
    """What a look at a data file found; `ftune data check` and the wizard show it."""

    path: str
    format: str | None  # alpaca, sharegpt, messages, text; None when it could not be read or told
    reason: str  # why this format was detected, in plain words
    stages: list[str]  # training stages this data suits (e.g. ["sft"])
    kind: str | None = None  # chat, preference, kto, text
    total: int = 0
    valid: int = 0
    errors: list[str] = field(default_factory=list)  # the first few, "file:line: message"
    fatal: str | None = None  # a syntax error or unreadable file: nothing else is known
    turns: dict[int, int] = field(default_factory=dict)  # user/assistant pairs per conversation -> rows
    roles: dict[str, int] = field(default_factory=dict)  # role -> messages
    image_rows: int = 0  # rows with at least one image
    images: int = 0  # images in the valid rows (each found and opening)
    resolutions: dict[str, str] = field(default_factory=dict)  # smallest, median, largest by area: "300x168"
    placeholders: dict[str, int] = field(default_factory=dict)  # "{{name}}" -> rows holding it, left unfilled

    @property
    def invalid(self) -> int:
        return self.total - self.valid

    def placeholder_note(self) -> str | None:
        """One sentence when rows still hold template placeholders: LLaMA-Factory's identity.json ships with
        {{name}} and {{author}} for the user to fill in, and a model trained on them answers "I am {{name}}"."""
        if not self.placeholders:
            return None
        found = ", ".join(f"{p} ({n} {'row' if n == 1 else 'rows'})" for p, n in self.placeholders.items())
        first = next(iter(self.placeholders))
        return (f"placeholders left unfilled: {found}. Replace them before training, e.g. "
                f"sed -i 's/{first}/YourName/g' {self.path}")


def summarize_file(path: str | Path, max_errors: int = 5, source: Source | None = None) -> FileSummary:
    """Detect the format of a data file and validate every row, without tokenising (no torch)."""
    src = source or Source(Path(path))
    try:
        loaded = load_source(src)
    except DataError as e:
        return FileSummary(str(src.path), None, "", [], fatal=str(e))
    if not loaded.total:
        return FileSummary(str(src.path), None, "", [], fatal=f"{src.path} has no rows: it is empty, or holds only "
                                                                f"blank lines")
    known = loaded.formatting != "unknown"
    summary = FileSummary(str(src.path), loaded.formatting if known else None,
                          loaded.reason or (str(loaded.problems[0]).split(": ", 1)[-1] if loaded.problems else ""),
                          KINDS.get(loaded.kind, []), loaded.kind if known else None, loaded.total,
                          len(loaded.examples), [str(p) for p in loaded.problems[:max_errors]])
    for ex in loaded.examples:
        texts = [ex.text, ex.chosen, ex.rejected] + [m.get("content") for m in ex.messages]
        for found in sorted({p for t in texts if isinstance(t, str) for p in PLACEHOLDER.findall(t)}):
            summary.placeholders[found] = summary.placeholders.get(found, 0) + 1
        if ex.text is not None:
            continue
        pairs = sum(1 for m in ex.messages if m["role"] == "assistant") + (1 if ex.chosen is not None else 0)
        summary.turns[pairs] = summary.turns.get(pairs, 0) + 1
        for m in ex.messages:
            summary.roles[m["role"]] = summary.roles.get(m["role"], 0) + 1
    sizes = sorted((s for ex in loaded.examples for s in ex.image_sizes), key=lambda s: s[0] * s[1])
    if sizes:
        summary.image_rows = sum(1 for ex in loaded.examples if ex.images)
        summary.images = len(sizes)
        summary.resolutions = {k: f"{w}x{h}" for k, (w, h) in
                               (("smallest", sizes[0]), ("median", sizes[len(sizes) // 2]), ("largest", sizes[-1]))}
    return summary
