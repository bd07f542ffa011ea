"""`ftune data check`: what a data file is, what is wrong with it, and — with a model — how it tokenises.

Without a model this needs no heavy imports. With one, it loads only the tokenizer and measures
token lengths, what the cutoff would cut, and shows samples with the loss mask (axolotl's
`preprocess --debug` idea).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ftune.runtime import gguf, hub
from ftune.runtime.data.formats import DataError, Source, load_source, registry_sources
from ftune.runtime.data.load import FileSummary, summarize_file
from ftune.runtime.data.tokenize import (
    VisionTokens,
    tokenize_conversation,
    tokenize_examples,
    tokenize_vision_examples,
    with_tools,
)


@dataclass
class TokenReport:
    """How a file tokenises with a model's tokenizer and template."""

    tokenizer: str
    max_length: int
    tokens: dict[str, int]  # min, p50, p90, p99, max tokens per row
    over_max_length: int  # rows longer than max_length
    answer_cut_away: int  # of those, rows whose whole answer lies beyond the cutoff
    samples: list[list[dict[str, Any]]] = field(default_factory=list)  # runs of {"text", "learnt"}


@dataclass
class DataReport:
    """`ftune data check`'s findings: the file summary, and the token report when a model was given."""

    summary: FileSummary
    tokens: TokenReport | None = None

    @property
    def fatal(self) -> str | None:
        return self.summary.fatal

    @property
    def invalid(self) -> int:
        return self.summary.invalid

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data: what --json prints."""
        out = {**asdict(self.summary), "invalid": self.invalid}
        if self.tokens is not None:
            out["tokens"] = asdict(self.tokens)
        return out


def _percentile(sorted_vals: list[int], q: float) -> int:
    if not sorted_vals:
        return 0
    return sorted_vals[min(len(sorted_vals) - 1, int(round(q / 100 * (len(sorted_vals) - 1))))]


def token_report(source: Source, model: str, max_length: int, show: int, trust_remote_code: bool = False) -> TokenReport:
    from transformers import AutoTokenizer

    from ftune.runtime.models import is_vision, load_processor, model_source, prepare_tokenizer
    from ftune.runtime.spec.schema import DataSpec

    where = model_source(model, Path.cwd())
    vision = None
    if is_vision(where, trust_remote_code=trust_remote_code):  # images count as the tokens they become
        limits = DataSpec.model_fields
        vision = VisionTokens(load_processor(where, trust_remote_code=trust_remote_code),
                              limits["image_min_pixels"].default, limits["image_max_pixels"].default)
        tok = vision.tokenizer
    else:
        tok = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    prepare_tokenizer(tok, "auto")  # as training would: its own template, ChatML where it has none
    lengths, over, cut_away, samples = [], 0, 0, []
    for ex in load_source(source).examples:
        if ex.text is not None:
            ids = tok(ex.text, add_special_tokens=False)["input_ids"]
            lengths.append(len(ids))
            over += len(ids) > max_length
            continue
        if vision is not None and ex.chosen is None:
            cols, _ = tokenize_vision_examples(vision, [ex], 10**9)
            full = {"input_ids": cols["input_ids"][0], "labels": cols["labels"][0]} if cols["input_ids"] else None
        elif ex.chosen is None:  # tools and reasoning as the model's own template shows them (as training does)
            cols, _ = tokenize_examples(tok, [ex], 10**9)
            full = {"input_ids": cols["input_ids"][0], "labels": cols["labels"][0]} if cols["input_ids"] else None
        else:
            full = tokenize_conversation(tok, with_tools(ex) + [{"role": "assistant", "content": ex.chosen}], 10**9)
        if full is None:
            continue
        n = len(full["input_ids"])
        lengths.append(n)
        if n > max_length:
            over += 1
            if all(label == -100 for label in full["labels"][:max_length]):
                cut_away += 1
        if len(samples) < show:
            samples.append(_segments(tok, full, vision.image_token_id if vision else None))
    lengths.sort()
    return TokenReport(model, max_length,
                       {"min": lengths[0] if lengths else 0, "p50": _percentile(lengths, 50),
                        "p90": _percentile(lengths, 90), "p99": _percentile(lengths, 99),
                        "max": lengths[-1] if lengths else 0},
                       over, cut_away, samples)


def _segments(tok, out: dict[str, list[int]], image_token_id: int | None = None) -> list[dict[str, Any]]:
    """Runs of tokens with the same mask: [{"text": ..., "learnt": bool}, ...]. An image's run of tokens is
    shown as one mark with its count."""
    segs: list[dict[str, Any]] = []
    run: list[int] = []
    learnt = None

    def text(ids: list[int]) -> str:
        if image_token_id is None or image_token_id not in ids:
            return tok.decode(ids)
        pieces, i = [], 0
        while i < len(ids):
            j = i
            while j < len(ids) and (ids[j] == image_token_id) == (ids[i] == image_token_id):
                j += 1
            pieces.append(f"{tok.convert_ids_to_tokens(image_token_id)}×{j - i}" if ids[i] == image_token_id
                          else tok.decode(ids[i:j]))
            i = j
        return "".join(pieces)

    for tid, label in zip(out["input_ids"], out["labels"]):
        flag = label != -100
        if flag != learnt and run:
            segs.append({"text": text(run), "learnt": learnt})
            run = []
        learnt = flag
        run.append(tid)
    if run:
        segs.append({"text": text(run), "learnt": learnt})
    return [part for seg in segs for part in _kinds(seg)]


LEARNT_KINDS = re.compile(r"(<think>.*?</think>)|(<tool_call>.*?</tool_call>|\{\s*\"name\":.*?\}(?=\s*(?:<|$)))", re.S)


def _kinds(seg: dict[str, Any]) -> list[dict[str, Any]]:
    """A learnt run split where it holds a thinking block or a tool call, each marked with its `kind` (thinking,
    tool_call or text) so `data check --show` can tell them apart."""
    if not seg["learnt"]:
        return [seg]
    out, pos = [], 0
    for m in LEARNT_KINDS.finditer(seg["text"]):
        if m.start() > pos:
            out.append({"text": seg["text"][pos:m.start()], "learnt": True, "kind": "text"})
        out.append({"text": m.group(0), "learnt": True, "kind": "thinking" if m.group(1) else "tool_call"})
        pos = m.end()
    if pos < len(seg["text"]):
        out.append({"text": seg["text"][pos:], "learnt": True, "kind": "text"})
    return out


def check(path: str, model: str | None = None, max_length: int = 1024, dataset_dir: str | None = None,
          show: int = 0, max_errors: int = 10) -> DataReport:
    """The whole report: every row checked, and with a model, how the valid rows tokenise."""
    if dataset_dir:
        (source,) = registry_sources(Path(dataset_dir), [path])
    elif hub.is_hub_data(path):
        source = Source(hub_file(path))
    else:
        source = Source(Path(path))
    summary = summarize_file(source.path, max_errors, source=source)
    report = DataReport(summary)
    if model and summary.fatal is None and summary.valid:
        from ftune.runtime.models import check_folder, is_hub_id, local_path

        folder = local_path(model, Path.cwd())
        if not gguf.is_gguf(model) and (folder.exists() or not is_hub_id(model)):
            check_folder(folder)  # a cut-short config.json is one sentence, not the tokenizer's traceback
        report.tokens = token_report(source, model, max_length, show)
    return report


def hub_file(name: str) -> Path:
    """`ftune data check hf://datasets/ORG/NAME`: the set's file from the local cache (a check reads; it does not
    download). Not cached, or several files: one sentence saying what to do instead."""
    files = hub.cached_files(hub.parse(name))
    if not files:
        raise DataError(f"{name} is not in the local cache, and `ftune data check` does not download: `ftune train` "
                        f"downloads it and checks its rows before training (or check a local copy of the file)")
    if len(files) > 1:
        shown = "\n  ".join(str(f) for f in files[:5]) + ("\n  …" if len(files) > 5 else "")
        raise DataError(f"{name} has {len(files)} files in the cache; check them one at a time:\n  {shown}")
    return files[0]


def registry_exit_code(entries: list[tuple[str, DataReport | None, str]]) -> int:
    """`ftune data check dataset_info.json`'s exit code: 2 when a data set cannot be read, 1 when one has invalid
    rows, else 0."""
    reports = [r for _, r, _ in entries if r is not None]
    return 2 if any(r.fatal for r in reports) else 1 if any(r.invalid for r in reports) else 0


def check_registry(info_path: Path, max_errors: int = 3) -> list[tuple[str, DataReport | None, str]]:
    """Every entry of a LLaMA-Factory dataset_info.json, each file checked as `ftune data check` checks one:
    (name, report, note). Hub and script entries have no report: they cannot be read offline."""
    import json


    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{info_path}: not valid JSON ({e})") from None
    if not isinstance(info, dict):
        raise DataError(f"{info_path}: a dataset_info.json maps data set names to their files")
    out = []
    for name, entry in info.items():
        if not isinstance(entry, dict) or "file_name" not in entry:
            where = next((entry[k] for k in ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url")
                          if isinstance(entry, dict) and k in entry), None)
            out.append((name, None, f"on a hub ({where}): not checked offline" if where else "no file_name"))
            continue
        (source,) = registry_sources(info_path.parent, [name])
        out.append((name, DataReport(summarize_file(source.path, max_errors, source=source)), ""))
    return out
