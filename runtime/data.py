"""Training data: read, validate and tokenise chat data with an exact loss mask.

Today this reads OpenAI-style `messages` JSONL (SiliconFlow's rules); the data
issue adds Alpaca, ShareGPT, preference and text data behind the same calls.
Nothing here imports torch; tokenisation takes any HF tokenizer object.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftune.runtime.errors import UserError

ROLES = ("system", "user", "assistant")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class DataError(UserError):
    """Bad training data: the message names the file and line and says what to fix."""


@dataclass
class RowError:
    file: str
    line: int  # 1-based line of the JSONL file (or index in a JSON array)
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass
class LoadedData:
    rows: list[list[dict[str, str]]]
    total: int
    errors: list[RowError] = field(default_factory=list)
    format: str = "messages"

    @property
    def invalid(self) -> int:
        return len(self.errors)


# --------------------------------------------------------------------------- reading
def _syntax_error(path: Path, lineno: int, line: str, err: json.JSONDecodeError) -> DataError:
    col = err.colno
    caret = " " * (col - 1) + "^"
    shown = line.rstrip("\n")
    if len(shown) > 120:  # keep the caret on screen for long lines
        start = max(0, col - 60)
        shown, caret = shown[start : start + 120], " " * (col - 1 - start) + "^"
    return DataError(
        f"{path}:{lineno}:{col}: not valid JSON: {err.msg}\n    {shown}\n    {caret}",
        hint="Each line of a .jsonl file must be one complete JSON object.",
    )


def read_jsonl(path: str | Path) -> list[tuple[int, Any]]:
    """(line number, parsed object) for every non-blank line; a syntax error raises DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}", hint="Check data.train in the run file.")
    out = []
    with open(path, encoding="utf-8") as f:
        try:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    out.append((lineno, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise _syntax_error(path, lineno, line, e) from None
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e.reason})", hint="Save the file as UTF-8.") from None
    return out


def check_messages(row: Any) -> str | None:
    """Why a row breaks the messages rules, in plain words; None when it is valid."""
    if not isinstance(row, dict):
        return "each line must be a JSON object with a 'messages' array"
    msgs = row.get("messages")
    if msgs is None:
        return "missing the 'messages' key"
    if not isinstance(msgs, list) or not msgs:
        return "'messages' must be a non-empty array"
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            return f"message {i + 1} must be an object with 'role' and 'content'"
        if m["role"] not in ROLES:
            return f"message {i + 1} has role {m['role']!r}; use system, user or assistant"
        if not isinstance(m["content"], str):
            return f"message {i + 1} has content that is not a string"
        if m["role"] == "system" and i != 0:
            return f"message {i + 1} is a system message; it may only come first"
    turns = msgs[1:] if msgs[0]["role"] == "system" else msgs
    if not turns:
        return "only a system message: add at least one user/assistant pair"
    offset = len(msgs) - len(turns)
    for i, m in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            where = "the first message after system" if i == 0 and offset else f"message {i + offset + 1}"
            return f"{where} should be {expected} (user and assistant must alternate, starting with user)"
    if len(turns) % 2:
        return "the conversation ends with a user message: it needs the assistant's answer"
    return None


def load_messages(paths: list[str], base: Path, on_invalid: str, max_samples: int | None) -> LoadedData:
    rows, errors, total = [], [], 0
    for name in paths:
        path = (base / name).expanduser() if not Path(name).expanduser().is_absolute() else Path(name).expanduser()
        if path.suffix not in (".jsonl", ".json"):
            raise DataError(f"{path}: only .jsonl messages files are read today", hint="Convert the file to JSONL.")
        for lineno, obj in read_jsonl(path):
            total += 1
            problem = check_messages(obj)
            if problem is None and isinstance(obj, dict) and "messages" in obj:
                rows.append([{"role": m["role"], "content": m["content"]} for m in obj["messages"]])
            else:
                errors.append(RowError(str(path), lineno, problem or "not a messages row"))
    data = LoadedData(rows=rows, total=total, errors=errors)
    if errors and on_invalid == "error":
        shown = "\n".join(f"  {e}" for e in errors[:10])
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise DataError(
            f"{len(errors)} of {total} rows are invalid:\n{shown}{more}",
            hint="Fix the rows, or set data.on_invalid: skip to train on the valid rows only.",
        )
    if not rows:
        raise DataError(f"no valid rows in {', '.join(paths)}", hint="The file is empty or every row is invalid.")
    if max_samples:
        data.rows = data.rows[:max_samples]
    return data


def split(rows: list, val_size: float, seed: int) -> tuple[list, list]:
    """Shuffle with the run's seed and hold out val_size of the rows (none when that rounds to 0)."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = int(round(len(rows) * val_size))
    if n_val < 1 or n_val >= len(rows):
        return [rows[i] for i in order], []
    return [rows[i] for i in order[n_val:]], [rows[i] for i in order[:n_val]]


# --------------------------------------------------------------------------- tokenising
def _render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans the model should learn (each assistant turn,
    with its end-of-turn marker). Spans come from rendering prefixes, so they are exact for any template
    that renders history unchanged; otherwise the answer text is located in the rendering."""
    full = _render(tokenizer, messages)
    spans, cursor = [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = _render(tokenizer, messages[: i + 1])
        if upto.startswith(before) and full.startswith(upto):
            spans.append((len(before), len(upto)))
        else:
            start = full.find(m["content"], cursor)
            if start < 0:
                raise DataError("the chat template drops an assistant answer; choose another template")
            spans.append((start, start + len(m["content"])))
        cursor = spans[-1][1]
    return full, spans


def tokenize_conversation(
    tokenizer: Any, messages: list[dict[str, str]], max_length: int, train_on_prompt: bool = False
) -> dict[str, list[int]] | None:
    """input_ids and labels (-100 where no loss); None when truncation leaves nothing to learn."""
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = []
    for tok, (start, _end) in zip(ids, offsets):
        learn = train_on_prompt or any(a <= start < b for a, b in spans)
        labels.append(tok if learn else -100)
    ids, labels = ids[:max_length], labels[:max_length]
    if all(label == -100 for label in labels):
        return None
    return {"input_ids": ids, "labels": labels}


def tokenize_rows(tokenizer: Any, rows: list, max_length: int, train_on_prompt: bool) -> tuple[dict[str, list], int]:
    """Columns for a datasets.Dataset, and how many rows truncation emptied."""
    columns: dict[str, list] = {"input_ids": [], "labels": []}
    dropped = 0
    for messages in rows:
        out = tokenize_conversation(tokenizer, messages, max_length, train_on_prompt)
        if out is None:
            dropped += 1
            continue
        columns["input_ids"].append(out["input_ids"])
        columns["labels"].append(out["labels"])
    return columns, dropped


# --------------------------------------------------------------------------- checking a file (ftune data check, the wizard)
@dataclass
class FileSummary:
    """What a quick look at a data file found; the wizard and `ftune data check` show it."""

    path: str
    format: str | None  # messages, ... ; None when nothing could be detected
    reason: str  # why this format was detected, in plain words
    stages: list[str]  # training stages this data suits (e.g. ["sft"])
    total: int = 0
    valid: int = 0
    errors: list[str] = field(default_factory=list)  # the first few, "file:line: message"
    fatal: str | None = None  # a syntax error or unreadable file: nothing else is known

    @property
    def invalid(self) -> int:
        return self.total - self.valid


def summarize_file(path: str | Path, max_errors: int = 5) -> FileSummary:
    """Detect the format of a data file and validate every row, without tokenising (no torch)."""
    path = Path(path)
    try:
        rows = read_jsonl(path)
    except DataError as e:
        return FileSummary(str(path), None, "", [], fatal=str(e))
    summary = FileSummary(str(path), "messages", "rows have a 'messages' array", ["sft"], total=len(rows))
    if rows and not (isinstance(rows[0][1], dict) and "messages" in rows[0][1]):
        keys = ", ".join(sorted(rows[0][1])) if isinstance(rows[0][1], dict) else type(rows[0][1]).__name__
        return FileSummary(str(path), None, f"first row has {keys}; only messages JSONL is read today", [],
                           total=len(rows))
    for lineno, obj in rows:
        problem = check_messages(obj)
        if problem is None:
            summary.valid += 1
        elif len(summary.errors) < max_errors:
            summary.errors.append(f"{path}:{lineno}: {problem}")
    return summary
