"""Training data: load the run's data sets, check them against the stage, tokenise with an exact mask.

Formats and row rules live in runtime/formats.py. Nothing here imports torch; tokenisation takes
any HF tokenizer object.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftune.runtime.formats import (
    KINDS, DataError, Example, Loaded, RowProblem, Source, convert_messages, load_source, registry_sources,
)

__all__ = ["DataError", "CHATML_TEMPLATE", "load_data", "split", "tokenize_conversation", "tokenize_examples",
           "summarize_file", "check_messages"]  # DataError is re-exported from formats for callers here

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
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
    def local(p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else base / q

    if dataset_dir:
        return registry_sources(local(dataset_dir), names)
    return [Source(local(n), None if formatting == "auto" else formatting,
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


def load_data(sources: list[Source], stage: str, on_invalid: str, max_samples: int | None = None,
              mix: str = "concat", probs: list[float] | None = None, seed: int = 0) -> Loaded:
    """Every source loaded and checked; refuses data of the wrong kind for the stage and, with
    on_invalid=error, any invalid row (listing the first ten and the count). Several sources are
    concatenated or interleaved (mix)."""
    want = STAGE_KIND.get(stage, "chat")
    groups: list[list[Example]] = []
    examples: list[Example] = []
    problems: list[RowProblem] = []
    total, formats, reasons = 0, [], []
    for src in sources:
        loaded = load_source(src)
        if loaded.kind != "unknown" and loaded.kind != want:
            fits = ", ".join(KINDS.get(loaded.kind, []))
            raise DataError(f"{src.path} holds {loaded.kind} data ({loaded.reason}), which suits {fits}; "
                            f"stage {stage} needs {want} data",
                            hint="Choose the stage that fits the data, or other data for this stage.")
        groups.append(loaded.examples)
        problems += loaded.problems
        total += loaded.total
        formats.append(loaded.formatting)
        reasons.append(loaded.reason)
    if problems and on_invalid == "error":
        shown = "\n".join(f"  {p}" for p in problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise DataError(f"{len(problems)} of {total} rows are invalid:\n{shown}{more}",
                        hint="Fix the rows, or set data.on_invalid: skip to train on the valid rows only.")
    if mix == "concat" or len(groups) == 1:
        examples = [ex for g in groups for ex in g]
    else:
        examples = interleave(groups, probs, seed, "first" if mix == "interleave_under" else "all")
    if not examples:
        raise DataError(f"no valid rows in {', '.join(str(s.path) for s in sources)}",
                        hint="The file is empty or every row is invalid.")
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


# --------------------------------------------------------------------------- tokenising chat examples
def _render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def with_tools(ex: Example) -> list[dict[str, str]]:
    """Tools are described in the system prompt, the same way for every template."""
    if not ex.tools:
        return ex.messages
    note = f"You can call these tools (answer with a JSON function call):\n{ex.tools}"
    msgs = [dict(m) for m in ex.messages]
    if msgs and msgs[0]["role"] == "system":
        msgs[0]["content"] = f"{msgs[0]['content']}\n\n{note}"
    else:
        msgs.insert(0, {"role": "system", "content": note})
    return msgs


def assistant_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant turn (with its end-of-turn
    marker). Spans come from rendering prefixes, so they are exact for any template that renders
    history unchanged; otherwise the answer text is located in the rendering."""
    full = _render(tokenizer, messages)
    spans, cursor = [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], add_generation_prompt=True)
        # the rendering up to the last message is the whole text: one render saved per row
        upto = full if i == len(messages) - 1 else _render(tokenizer, messages[: i + 1])
        if upto.startswith(before) and full.startswith(upto):
            spans.append((len(before), len(upto)))
        else:
            start = full.find(m["content"], cursor)
            if start < 0:
                raise DataError("the chat template drops an assistant answer; choose another template")
            spans.append((start, start + len(m["content"])))
        cursor = spans[-1][1]
    return full, spans


def _mask_and_cut(ids: list[int], offsets: list, spans: list[tuple[int, int]], max_length: int,
                  train_on_prompt: bool, max_input_length: int | None,
                  max_output_length: int | None) -> dict[str, list[int]] | None:
    """Labels from character spans (one sweep: token starts and spans both increase), then the cuts."""
    labels, k = [], 0
    for tok, (start, _end) in zip(ids, offsets):
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        learn = train_on_prompt or (k < len(spans) and start >= spans[k][0])
        labels.append(tok if learn else -100)
    if (max_input_length or max_output_length) and spans:
        a, b = spans[-1]
        first = next((i for i, (start, _) in enumerate(offsets) if start >= a), len(ids))
        after = next((i for i, (start, _) in enumerate(offsets) if start >= b), len(ids))
        keep = list(range(first))
        if max_input_length:
            keep = keep[-max_input_length:]
        answer, tail = list(range(first, after)), list(range(after, len(ids)))
        if max_output_length and len(answer) > max_output_length:
            answer, tail = answer[:max_output_length], []
        keep += answer + tail
        ids, labels = [ids[i] for i in keep], [labels[i] for i in keep]
    ids, labels = ids[:max_length], labels[:max_length]
    if all(label == -100 for label in labels):
        return None
    return {"input_ids": list(ids), "labels": labels}


def tokenize_conversation(tokenizer: Any, messages: list[dict[str, str]], max_length: int,
                          train_on_prompt: bool = False, mask_history: bool = False,
                          max_input_length: int | None = None,
                          max_output_length: int | None = None) -> dict[str, list[int]] | None:
    """input_ids and labels (-100 where there is no loss); None when truncation leaves nothing to learn.

    Cutting, in this order: max_input_length keeps the LAST N tokens of everything before the final
    answer (the question nearest the answer stays); max_output_length keeps the FIRST N tokens of the
    final answer; max_length (cutoff) keeps the start of the whole sequence. A row whose answers are
    all cut away returns None and is counted by the caller."""
    text, spans = assistant_spans(tokenizer, messages)
    if mask_history:
        spans = spans[-1:]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return _mask_and_cut(enc["input_ids"], enc["offset_mapping"], spans, max_length, train_on_prompt,
                         max_input_length, max_output_length)


def per_turn(messages: list[dict[str, str]]) -> list[list[dict[str, str]]]:
    """combine: false — each assistant turn its own example, with the turns before it as the prompt."""
    return [messages[: i + 1] for i, m in enumerate(messages) if m["role"] == "assistant"]


_worker_tokenizer: Any = None


def _init_worker(tokenizer: Any) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _tokenize_chunk(args: tuple) -> tuple[dict[str, list], int]:
    examples, opts = args
    return tokenize_examples(_worker_tokenizer, examples, **opts)


def tokenize_examples(tokenizer: Any, examples: list[Example], max_length: int, train_on_prompt: bool = False,
                      mask_history: bool = False, combine: bool = True, max_input_length: int | None = None,
                      max_output_length: int | None = None, num_proc: int | None = None) -> tuple[dict[str, list], int]:
    """Columns for a datasets.Dataset, and how many rows truncation emptied (reported, not hidden).
    With num_proc > 1 the rows are split into chunks tokenised in parallel processes, order kept."""
    opts = dict(max_length=max_length, train_on_prompt=train_on_prompt, mask_history=mask_history, combine=combine,
                max_input_length=max_input_length, max_output_length=max_output_length)
    if num_proc and num_proc > 1 and len(examples) >= 2 * num_proc:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        size = -(-len(examples) // (num_proc * 4))
        chunks = [(examples[i: i + size], opts) for i in range(0, len(examples), size)]
        ctx = multiprocessing.get_context("spawn")  # fork after torch/tokenizers threads is unsafe
        with ProcessPoolExecutor(num_proc, mp_context=ctx, initializer=_init_worker, initargs=(tokenizer,)) as pool:
            parts = list(pool.map(_tokenize_chunk, chunks))
        return ({k: [x for cols, _ in parts for x in cols[k]] for k in ("input_ids", "labels")},
                sum(d for _, d in parts))
    columns: dict[str, list] = {"input_ids": [], "labels": []}
    dropped = 0
    rendered: list[tuple[str, list[tuple[int, int]]]] = []
    for ex in examples:
        msgs = with_tools(ex)
        for conversation in ([msgs] if combine else per_turn(msgs)):
            text, spans = assistant_spans(tokenizer, conversation)
            # per-turn examples learn their last answer only: the earlier ones are prompt
            rendered.append((text, spans[-1:] if mask_history or not combine else spans))
    for i in range(0, len(rendered), 1000):  # batches: the Rust tokenizer encodes them on all cores
        batch = rendered[i: i + 1000]
        enc = tokenizer([t for t, _ in batch], add_special_tokens=False, return_offsets_mapping=True)
        for (_, spans), ids, offsets in zip(batch, enc["input_ids"], enc["offset_mapping"]):
            out = _mask_and_cut(ids, offsets, spans, max_length, train_on_prompt, max_input_length,
                                max_output_length)
            if out is None:
                dropped += 1
                continue
            columns["input_ids"].append(out["input_ids"])
            columns["labels"].append(out["labels"])
    return columns, dropped


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

    @property
    def invalid(self) -> int:
        return self.total - self.valid


def summarize_file(path: str | Path, max_errors: int = 5, source: Source | None = None) -> FileSummary:
    """Detect the format of a data file and validate every row, without tokenising (no torch)."""
    src = source or Source(Path(path))
    try:
        loaded = load_source(src)
    except DataError as e:
        return FileSummary(str(src.path), None, "", [], fatal=str(e))
    known = loaded.formatting != "unknown"
    summary = FileSummary(str(src.path), loaded.formatting if known else None,
                          loaded.reason or (str(loaded.problems[0]).split(": ", 1)[-1] if loaded.problems else ""),
                          KINDS.get(loaded.kind, []), loaded.kind if known else None, loaded.total,
                          len(loaded.examples), [str(p) for p in loaded.problems[:max_errors]])
    for ex in loaded.examples:
        if ex.text is not None:
            continue
        pairs = sum(1 for m in ex.messages if m["role"] == "assistant") + (1 if ex.chosen is not None else 0)
        summary.turns[pairs] = summary.turns.get(pairs, 0) + 1
        for m in ex.messages:
            summary.roles[m["role"]] = summary.roles.get(m["role"], 0) + 1
    return summary
