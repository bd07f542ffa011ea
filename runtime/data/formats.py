"""Data formats: read files, detect the format, check every row and convert it to one shape.

Formats: OpenAI-style `messages` (SiliconFlow's rules), Alpaca, ShareGPT (from/value or
role/content, tools, function calls), preference (chosen/rejected) and KTO (label) variants of
each, and pre-training text; chat rows may carry images (data/images.py). Files: JSON lines, JSON arrays, .txt; CSV and parquet through
pyarrow. LLaMA-Factory's `dataset_info.json` describes a file the same way (`Source`).

Pure Python: no torch, no tokenizer. Row errors name the file, the line (and the item index in a
JSON array) and the rule broken, in plain words. In JSON lines each line stands alone: one that does not
parse is one more row error, and the other rows are still checked.
"""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from ftune.runtime import hub
from ftune.runtime.data import agent, images
from ftune.runtime.errors import UserError
from ftune.runtime.train import stages

KINDS = stages.data_kinds()  # data kind -> the stages that train on it
ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "system": "system",
                  "history": "history", "chosen": "chosen", "rejected": "rejected", "kto_tag": "kto_tag"}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system", "tools": "tools", "chosen": "chosen",
                    "rejected": "rejected", "kto_tag": "kto_tag", "images": "images"}


class DataError(UserError):
    """Bad training data: the message names the file and line and says what to fix."""


@dataclass
class Example:
    """One row in the shape training uses. `messages` roles: system, user, assistant, tool; an assistant turn may
    carry `tool_calls` and `reasoning_content`, a tool turn `tool_call_id` and `name` (data/agent.py)."""

    messages: list[dict[str, str]] = field(default_factory=list)
    chosen: str | None = None  # preference: the better final answer
    rejected: str | None = None  # preference: the worse one
    label: bool | None = None  # KTO: is the final answer desirable
    text: str | None = None  # pre-training text
    tools: list[dict[str, Any]] | None = None  # the functions the assistant may call, in OpenAI's shape
    images: list[str] = field(default_factory=list)  # absolute paths or data: URLs, one per <image> placeholder
    image_sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) of each, as stored


@dataclass
class Source:
    """How to read one file: its format (alpaca, sharegpt, messages, text), kind and column names."""

    path: Path
    formatting: str | None = None  # None: detect from the first row
    kind: str | None = None  # chat, preference, kto, text; None: detect
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    image_dir: Path | None = None  # where relative image paths are looked for after the file's own folder

    @property
    def image_folders(self) -> list[Path]:
        own = self.path.parent.absolute()
        return [own] + ([self.image_dir.absolute()] if self.image_dir and self.image_dir.absolute() != own else [])


@dataclass
class RowProblem:
    file: str
    line: int
    index: int | None  # item index in a JSON array, None for JSON lines
    message: str

    def __str__(self) -> str:
        item = f" item {self.index}:" if self.index is not None else ""
        return f"{self.file}:{self.line}:{item} {self.message}"


# --------------------------------------------------------------------------- reading files
def _caret(path: Path, text: str, lineno: int, col: int, msg: str, shown_lineno: int | None = None) -> DataError:
    """`text` holds the offending line at `lineno`; `shown_lineno` is its number in the file when `text`
    is that single line."""
    line = text.splitlines()[lineno - 1] if 0 < lineno <= len(text.splitlines()) else ""
    lineno = shown_lineno or lineno
    start = max(0, col - 60) if len(line) > 120 else 0
    shown, caret = line[start: start + 120], " " * (col - 1 - start) + "^"
    return DataError(f"{path}:{lineno}:{col}: not valid JSON: {msg}\n    {shown}\n    {caret}",
                     hint="A missing comma between items or a trailing comma is the usual cause.")


def _json_array(path: Path, text: str) -> Iterator[tuple[int, int | None, Any]]:
    """Items of a JSON array with their line numbers; a syntax error shows the line and a caret."""
    decoder = json.JSONDecoder()
    newlines = [i for i, ch in enumerate(text) if ch == "\n"]

    def line_of(pos: int) -> int:
        return bisect.bisect_right(newlines, pos - 1) + 1

    def fail(pos: int, msg: str):
        line = line_of(pos)
        col = pos - (newlines[line - 2] + 1 if line > 1 else 0) + 1
        raise _caret(path, text, line, col, msg)

    pos = len(text) - len(text.lstrip())
    if not text[pos:].startswith("["):
        fail(pos, "expected a JSON array '[' or one JSON object per line")
    pos += 1
    index = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos < len(text) and text[pos] == "]" and index == 0:
            return
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            fail(e.pos, e.msg)
        yield line_of(pos), index, item
        index += 1
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos < len(text) and text[pos] == ",":
            pos += 1
            continue
        if pos < len(text) and text[pos] == "]":
            return
        fail(pos, "Expecting ',' delimiter between items" if pos < len(text) else "the array is not closed with ']'")


@dataclass
class BadLine:
    """A JSON-lines row that is not valid JSON: one more row error, not the end of the file."""

    column: int
    message: str


def _json_lines(path: Path, lines: Iterable[str]) -> Iterator[tuple[int, int | None, Any]]:
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield lineno, None, json.loads(line)
        except json.JSONDecodeError as e:
            yield lineno, None, BadLine(e.colno, f"not valid JSON at column {e.colno}: {e.msg}")
        except RecursionError:
            yield lineno, None, BadLine(1, "not valid here: nested too deeply (over ~1000 levels)")


def _table_rows(path: Path) -> Iterator[tuple[int, int | None, Any]]:
    """CSV and parquet rows through pyarrow, in batches (a file larger than memory is fine)."""
    import pyarrow as pa

    kind = path.suffix.lower().lstrip(".")
    try:
        if kind == "csv":
            import pyarrow.csv as pcsv

            batches, first = pcsv.open_csv(path), 2  # line 1 is the header
        else:
            import pyarrow.parquet as pq

            batches, first = pq.ParquetFile(path).iter_batches(), 1
        n = 0
        for batch in batches:
            for row in batch.to_pylist():
                yield first + n, None, row
                n += 1
    except (pa.ArrowException, OSError) as e:
        message = re.sub(r"^CSV parse error: (Row #\d+: )?", "", str(e).strip().splitlines()[0])
        if kind == "csv":  # pyarrow names the row only sometimes (threads): the line is found from the text
            bad = message.rpartition(": ")[2]
            with open(path, encoding="utf-8", errors="replace") as f:
                line = next((n for n, text in enumerate(f, 1) if text.rstrip("\r\n") == bad), None)
            raise DataError(f"{path}{f':{line}' if line else ''}: not a readable CSV file: {message}",
                            hint="Every line needs as many comma-separated values as the header; quote values "
                                 "that hold commas or line breaks.") from None
        raise DataError(f"{path}: not a readable parquet file: {message}",
                        hint="Write it again with pandas.DataFrame.to_parquet or datasets.Dataset.to_parquet, or "
                             "use JSON lines.") from None


def read_rows(path: str | Path) -> Iterator[tuple[int, int | None, Any]]:
    """(line, array index or None, object) for every row of a data file. A JSON-lines row that does not parse
    is a `BadLine`; any other unreadable file raises DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}", hint="Check data.train in the run file.")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".parquet"):
        yield from _table_rows(path)
        return
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(4096).lstrip()
            f.seek(0)
            if suffix == ".txt":
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        yield lineno, None, {"text": line.rstrip("\n")}
            elif head.startswith("["):  # a JSON array is one document: read whole
                try:
                    yield from _json_array(path, f.read())
                except RecursionError:
                    raise DataError(f"{path}: not valid here: the JSON is nested too deeply (over ~1000 levels)",
                                    hint="Rows are objects of messages or fields, a few levels deep.") from None
            else:
                yield from _json_lines(path, f)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{_not_utf8(path, e)}", hint="Save the file as UTF-8.") from None


def _not_utf8(path: Path, error: UnicodeDecodeError) -> str:
    """"3: not UTF-8 text (invalid start byte at column 12)": the decoder's own offset counts from its buffer."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return f"{lineno}: not UTF-8 text ({e.reason} at column {e.start + 1})"
    return f" not UTF-8 text ({error.reason})"


# --------------------------------------------------------------------------- detecting
def _kind_of(row: dict) -> str | None:
    keys = set(row)
    return "preference" if {"chosen", "rejected"} <= keys else "kto" if keys & {"label", "kto_tag"} else None


def detect(row: Any) -> tuple[str, str, str]:
    """(formatting, kind, why) from one row."""
    if not isinstance(row, dict):
        raise DataError("rows must be JSON objects")
    keys = set(row)
    kind = _kind_of(row)
    if "messages" in keys:
        first = row["messages"][0] if isinstance(row["messages"], list) and row["messages"] else {}
        if isinstance(first, dict) and "from" in first:
            return "sharegpt", kind or "chat", "rows have 'messages' with from/value turns (ShareGPT)"
        return "messages", kind or "chat", "rows have a 'messages' array of role/content turns"
    if "conversations" in keys:
        return "sharegpt", kind or "chat", "rows have a 'conversations' array (ShareGPT)"
    if "instruction" in keys:
        return "alpaca", kind or "chat", "rows have instruction/input/output (Alpaca)"
    if "text" in keys:
        return "text", "text", "rows have a 'text' field (pre-training text)"
    raise DataError(f"cannot tell the format from the keys {', '.join(sorted(keys)) or '(none)'}",
                    hint="Use messages, conversations (ShareGPT), instruction/output (Alpaca) or text; "
                         "or name the columns in a dataset_info.json.")


# --------------------------------------------------------------------------- converting one row
def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {type(value).__name__}")
    return value


def _nonempty(value: Any, what: str) -> str:
    if not _text(value, what).strip():
        raise ValueError(f"{what} is empty")
    return value


def _alternation(turns: list[dict[str, str]], final: str) -> None:
    """system first only; then user (or tool) and assistant alternate, starting with user."""
    offset = 1 if turns and turns[0]["role"] == "system" else 0
    for i, t in enumerate(turns):
        if t["role"] == "system" and i != 0:
            raise ValueError(f"turn {i + 1} is a system message; it may only come first")
    body = turns[offset:]
    if not body:
        raise ValueError("no conversation: add at least one user/assistant pair")
    for i, t in enumerate(body):  # an empty question or answer teaches nothing, or teaches silence
        if t["role"] in ("user", "assistant") and not t["content"].strip() and not t.get("tool_calls"):
            raise ValueError(f"turn {i + offset + 1} ({t['role']}) is empty")
    k = 0  # position in the alternation: a run of tool results (answers to parallel calls) is one turn
    for i, t in enumerate(body):
        if i and t["role"] == "tool" and body[i - 1]["role"] == "tool":
            continue
        want = ("user", "tool") if k % 2 == 0 else ("assistant",)
        if t["role"] not in want:
            where = "the first turn after system" if i == 0 and offset else f"turn {i + offset + 1}"
            raise ValueError(f"{where} should be {want[0]} (user and assistant must alternate, starting with user)")
        k += 1
    if body[0]["role"] != "user":
        raise ValueError("the conversation must start with a user turn")
    if final == "assistant" and body[-1]["role"] != "assistant":
        raise ValueError("the conversation ends with a user turn: it needs the assistant's answer")
    if final == "user" and body[-1]["role"] == "assistant":
        raise ValueError("for preference data the conversation must end with the user's turn; "
                         "the answers go in chosen and rejected")


def _answer(value: Any, what: str, content_tag: str = "value") -> str:
    """A preference answer: a string, or one message object."""
    if isinstance(value, dict):
        value = value.get(content_tag, value.get("content"))
    return _nonempty(value, what)


def _label(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"the KTO label must be true or false, not {value!r}")


def convert_messages(row: dict, src: Source) -> Example:
    """OpenAI-style messages. SiliconFlow's rules: non-empty array, role and content on each, roles
    system/user/assistant (plus tool), system only first, user first, alternating in pairs."""
    msgs = row.get(src.columns.get("messages", "messages"))
    if msgs is None:
        raise ValueError("missing the 'messages' key")
    if not isinstance(msgs, list) or not msgs:
        raise ValueError("'messages' must be a non-empty array")
    turns, refs = [], []
    for i, m in enumerate(msgs):
        calls = m.get("tool_calls") if isinstance(m, dict) else None
        if not isinstance(m, dict) or "role" not in m or ("content" not in m and not calls):
            raise ValueError(f"message {i + 1} must be an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise ValueError(f"message {i + 1} has role {m['role']!r}; use system, user, assistant or tool")
        content = m.get("content")
        turn = {"role": m["role"], "content": "" if content is None and calls else
                _content(content, f"message {i + 1}'s content", src, refs)}
        if calls:
            if m["role"] != "assistant":
                raise ValueError(f"message {i + 1} has tool_calls, which only an assistant message can make")
            if not isinstance(calls, list):
                raise ValueError(f"message {i + 1}: tool_calls must be a list")
            turn["tool_calls"] = [agent.parse_call(c, f"message {i + 1}", k) for k, c in enumerate(calls)]
        if m["role"] == "tool":
            for key in ("tool_call_id", "name"):
                if m.get(key):
                    turn[key] = str(m[key])
        reasoning = m.get("reasoning_content", m.get("reasoning"))
        if m["role"] == "assistant" and reasoning is not None:
            turn["reasoning_content"] = _text(reasoning, f"message {i + 1}'s reasoning_content")
        turns.append(turn)
    return _finish(row, src, turns, part_images=refs)


def _content(value: Any, what: str, src: Source, refs: list[str]) -> str:
    """A turn's text; OpenAI content parts become text with <image> placeholders, their images added to refs."""
    if isinstance(value, list):
        text, found = images.from_parts(value, what, src.image_folders)
        refs += found
        return text
    return _text(value, what)


def convert_sharegpt(row: dict, src: Source) -> Example:
    tags = {**SHAREGPT_TAGS, **src.tags}
    cols = {**SHAREGPT_COLUMNS, **src.columns}
    msgs = row.get(cols["messages"])
    if not isinstance(msgs, list) or not msgs:
        raise ValueError(f"'{cols['messages']}' must be a non-empty array")
    role_tag, content_tag = tags["role_tag"], tags["content_tag"]
    refs: list[str] = []
    if isinstance(msgs[0], dict) and "role" in msgs[0] and role_tag not in msgs[0]:
        role_tag, content_tag = "role", "content"  # role/content spelling without a dataset_info
    names = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", tags["observation_tag"]: "tool",
             tags["function_tag"]: "assistant", tags["system_tag"]: "system", "user": "user",
             "assistant": "assistant", "system": "system", "tool": "tool"}
    turns: list[dict[str, Any]] = []
    calls = 0
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or role_tag not in m or content_tag not in m:
            raise ValueError(f"turn {i + 1} must be an object with '{role_tag}' and '{content_tag}'")
        if m[role_tag] not in names:
            raise ValueError(f"turn {i + 1} has {role_tag} {m[role_tag]!r}; use "
                             f"{', '.join(repr(t) for t in (tags['user_tag'], tags['assistant_tag'], tags['system_tag'], tags['function_tag'], tags['observation_tag']))}")
        if m[role_tag] == tags["function_tag"]:  # the assistant's tool call(s), as JSON {"name", "arguments"}
            new = agent.parse_calls(m[content_tag], f"turn {i + 1} ({tags['function_tag']})", calls)
            calls += len(new)
            if turns and turns[-1]["role"] == "assistant" and not turns[-1].get("tool_calls"):
                turns[-1]["tool_calls"] = new  # text then a call: one assistant turn (LLaMA-Factory's reading)
            else:
                turns.append({"role": "assistant", "content": "", "tool_calls": new})
            continue
        turns.append({"role": names[m[role_tag]],
                      "content": _content(m[content_tag], f"turn {i + 1}'s {content_tag}", src, refs)})
    system = row.get(cols["system"])
    if system and (not turns or turns[0]["role"] != "system"):
        turns.insert(0, {"role": "system", "content": _text(system, "system")})
    return _finish(row, src, turns, cols, content_tag, refs)


def convert_alpaca(row: dict, src: Source) -> Example:
    cols = {**ALPACA_COLUMNS, **src.columns}
    for key in ("tools", "tool_calls", "function_call"):
        if row.get(src.columns.get(key, key)):
            raise ValueError(f"an Alpaca row cannot carry tools or tool calls ('{key}'): an instruction and one "
                             f"output have no place for a call and its result. Write the row as OpenAI messages "
                             f"(tools, tool_calls, role tool) or ShareGPT (function_call and observation turns)")
    instruction = _nonempty(row.get(cols["prompt"]), f"'{cols['prompt']}'") if cols["prompt"] in row else None
    if instruction is None:
        raise ValueError(f"missing '{cols['prompt']}'")
    query = row.get(cols["query"]) or ""
    prompt = f"{instruction}\n{_text(query, repr(cols['query']))}" if query else instruction
    turns: list[dict[str, str]] = []
    if row.get(cols["system"]):
        turns.append({"role": "system", "content": _text(row[cols["system"]], "system")})
    history = row.get(cols["history"]) or []
    if not isinstance(history, list):
        raise ValueError("'history' must be a list of [instruction, answer] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise ValueError(f"history entry {i + 1} must be a pair of strings [instruction, answer]")
        turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    turns.append({"role": "user", "content": prompt})
    kind = src.kind or "chat"
    if kind == "chat" or kind == "kto":
        if cols["response"] not in row:
            raise ValueError(f"missing '{cols['response']}' (the answer to learn)")
        turns.append({"role": "assistant", "content": _nonempty(row[cols["response"]], f"'{cols['response']}'")})
    return _finish(row, src, turns, cols)


def convert_text(row: dict, src: Source) -> Example:
    column = src.columns.get("prompt", "text")
    if column not in row:
        raise ValueError(f"missing the '{column}' field")
    return Example(text=_nonempty(row[column], f"'{column}'"))


CONVERTERS = {"messages": convert_messages, "sharegpt": convert_sharegpt, "alpaca": convert_alpaca,
              "text": convert_text}


def _row_images(row: dict, src: Source, cols: dict, turns: list[dict[str, str]], part_images: list[str],
                ex: Example) -> None:
    """The row's images (an `images` list, or content parts), checked: one per <image> placeholder, each found
    and opening. Problems name the image by its index in the row."""
    column = src.columns.get("images", cols.get("images", "images"))
    listed = row.get(column)
    if listed is None and not part_images:
        return
    if listed is not None and not isinstance(listed, list):
        raise ValueError(f"'{column}' must be a list of image paths")
    refs: list[str] = list(part_images)
    for j, ref in enumerate(listed or [], len(part_images) + 1):
        try:
            refs.append(images.resolve(ref, src.image_folders))
        except ValueError as e:
            raise ValueError(f"image {j}: {e}") from None
    marks = sum(images.placeholders(t["content"]) for t in turns)
    if marks != len(refs):
        raise ValueError(f"{marks} {images.PLACEHOLDER} placeholder{'s' * (marks != 1)} but {len(refs)} "
                         f"image{'s' * (len(refs) != 1)}: put one {images.PLACEHOLDER} in the text where each "
                         f"image goes")
    for j, ref in enumerate(refs, 1):
        try:
            ex.image_sizes.append(images.image_size(ref))
        except ValueError as e:
            raise ValueError(f"image {j}: {e}") from None
    ex.images = refs


def _finish(row: dict, src: Source, turns: list[dict[str, str]], cols: dict | None = None,
            content_tag: str = "value", part_images: list[str] | None = None) -> Example:
    cols = cols or {"chosen": "chosen", "rejected": "rejected", "kto_tag": "label", "tools": "tools",
                    "images": "images"}
    kind = src.kind or "chat"
    ex = Example(messages=turns)
    _row_images(row, src, cols, turns, part_images or [], ex)
    tools = agent.parse_tools(row.get(cols.get("tools", "tools")), cols.get("tools", "tools"))
    ex.tools = tools or None
    if tools or any(t.get("tool_calls") or t["role"] == "tool" for t in turns):
        agent.check_calls(turns, tools)  # before the turn order: an orphan tool result is named as such
    if kind == "preference":
        _alternation(turns, final="user")
        ex.chosen = _answer(row.get(cols["chosen"]), "'chosen'", content_tag)
        ex.rejected = _answer(row.get(cols["rejected"]), "'rejected'", content_tag)
    else:
        _alternation(turns, final="assistant")
        if kind == "kto":
            tag = cols.get("kto_tag", "label")
            ex.label = _label(row.get(tag, row.get("label")))
    for t in turns:  # reasoning as a <think>…</think> prefix of the answer, or its own field
        if t["role"] == "assistant" and "reasoning_content" not in t and "<think>" in t["content"]:
            reasoning, answer = agent.split_think(t["content"])
            if reasoning is not None:
                t["reasoning_content"], t["content"] = reasoning, answer
    return ex


# --------------------------------------------------------------------------- a whole source
@dataclass
class Loaded:
    examples: list[Example]
    total: int
    problems: list[RowProblem]
    formatting: str
    kind: str
    reason: str

    @property
    def invalid(self) -> int:
        return len(self.problems)


def iter_source(src: Source) -> Iterator[Example | RowProblem]:
    """Each row of a source as an Example, or the RowProblem that says why it is not one.
    Detects the format from the first row when it is not given. Lazy: JSON lines and .txt files
    are read line by line, so a pass over a file larger than memory is fine."""
    for line, index, row in read_rows(src.path):
        if isinstance(row, BadLine):
            yield RowProblem(str(src.path), line, index, row.message)
            continue
        if src.formatting is None:
            try:
                src.formatting, kind, src.reason = detect(row)
            except DataError as e:
                yield RowProblem(str(src.path), line, index, str(e))
                continue
            src.kind = src.kind or kind
        elif src.kind is None:  # format named (run file or dataset_info.json): the kind from the row's keys
            src.kind = "text" if src.formatting == "text" else (_kind_of(row) if isinstance(row, dict) else None) or "chat"
            src.reason = src.reason or f"format {src.formatting} named in the run file"
        try:
            if not isinstance(row, dict):
                raise ValueError("each row must be a JSON object")
            yield CONVERTERS[src.formatting](row, src)
        except ValueError as e:
            yield RowProblem(str(src.path), line, index, str(e))


def load_source(src: Source) -> Loaded:
    """Read every row of a source, detect its format when not given, convert and check each row."""
    examples, problems = [], []
    for item in iter_source(src):
        (problems if isinstance(item, RowProblem) else examples).append(item)
    return Loaded(examples, len(examples) + len(problems), problems, src.formatting or "unknown",
                  src.kind or "unknown", src.reason)


# --------------------------------------------------------------------------- dataset_info.json
HUB_KEYS = {"hf_hub_url": "hf", "ms_hub_url": "ms"}  # LLaMA-Factory's hub entries, read through runtime/hub.py


def _registry(dataset_dir: Path) -> tuple[Path, dict]:
    info_path = dataset_dir / "dataset_info.json"
    if not info_path.is_file():
        raise DataError(f"no dataset_info.json in {dataset_dir}", hint="Point data.dataset_dir at the folder that has it.")
    return info_path, json.loads(info_path.read_text(encoding="utf-8"))


def _entry(info_path: Path, info: dict, name: str) -> dict:
    if name not in info:
        import difflib

        close = difflib.get_close_matches(name, list(info), n=1)
        raise DataError(f"'{name}' is not in {info_path}" + (f" — did you mean '{close[0]}'?" if close else ""))
    return info[name]


def entry_hub_set(entry: dict, name: str, info_path: Path) -> hub.HubSet | None:
    """A dataset_info.json entry's hub data set: hf_hub_url first (ms_hub_url where it is the only one, or with
    USE_MODELSCOPE_HUB=1 as in LLaMA-Factory), with its subset, split, folder and revision; None for a file."""
    import os

    keys = [k for k in HUB_KEYS if entry.get(k)]
    if "file_name" in entry or not keys:
        return None
    if os.environ.get("USE_MODELSCOPE_HUB", "").lower() in ("1", "true") and "ms_hub_url" in keys:
        keys = ["ms_hub_url"]
    key = keys[0]
    try:
        return hub.parse(hub.PREFIXES[HUB_KEYS[key]] + str(entry[key]), entry.get("subset"),
                         entry.get("split") or "train", entry.get("revision"), folder=entry.get("folder"))
    except hub.HubError as e:
        raise DataError(f"'{name}' in {info_path}: {key} {entry[key]!r}: {e}") from None


def registry_hub_sets(dataset_dir: Path, names: list[str]) -> list[hub.HubSet]:
    info_path, info = _registry(dataset_dir)
    sets = [entry_hub_set(_entry(info_path, info, n), n, info_path) for n in names]
    return [s for s in sets if s is not None]


def registry_sources(dataset_dir: Path, names: list[str], uncached: str = "raise") -> list[Source]:
    """Sources for data sets named by their key in LLaMA-Factory's dataset_info.json: a file_name in the folder, or
    a hub data set (hf_hub_url, ms_hub_url) read from the hub's cache (hub.NotCached when it is not there, or left
    out with uncached="skip")."""
    info_path, info = _registry(dataset_dir)
    out = []
    for name in names:
        entry = _entry(info_path, info, name)
        ref = entry_hub_set(entry, name, info_path)
        if "file_name" not in entry and ref is None:
            raise DataError(f"'{name}' in {info_path} is a script data set (script_url); ftune reads files "
                            "(file_name) and hub data sets (hf_hub_url, ms_hub_url)")
        formatting = entry.get("formatting", "alpaca")
        columns = dict(entry.get("columns", {}))
        kind = "preference" if entry.get("ranking") else "kto" if "kto_tag" in columns else None
        if formatting == "alpaca" and set(columns) == {"prompt"}:  # LLaMA-Factory's way to name pre-training text
            formatting, kind = "text", "text"
        if formatting == "sharegpt" and entry.get("tags", {}).get("role_tag") == "role" and "messages" in columns:
            formatting = "sharegpt"  # role/content tags: the OpenAI shape, read with ShareGPT's rules
        if kind is None and formatting == "alpaca":
            kind = "chat"
        paths = hub.cached_or_raise(ref, uncached) if ref is not None else [dataset_dir / entry["file_name"]]
        out += [Source(path, formatting, kind, columns, dict(entry.get("tags", {})),
                       reason=f"'{name}' in {info_path.name}: formatting {formatting}"
                              + (", ranking" if entry.get("ranking") else ""), image_dir=dataset_dir)
                for path in paths]
    return out
