"""The columns each stage's trainer reads, made from `formats.Example` rows.

    pt                       input_ids / labels: each text then EOS, every token learnt
    dpo, orpo, simpo, rm     conversational prompt / chosen / rejected
    kto                      prompt / completion / label
    rl                       prompt: the conversation up to the last user turn

and the training stream (`stream_rows`) for data larger than memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftune.runtime.data.formats import Example
from ftune.runtime.data.tokenize import tokenize_examples, with_tools

ASSISTANT = "assistant"

# --------------------------------------------------------------------------- rows per stage
def text_columns(tokenizer: Any, examples: list[Example], max_length: int) -> tuple[dict[str, list], int]:
    """Pre-training: each text followed by EOS, every token learnt, cut at max_length."""
    if not examples:
        return {"input_ids": [], "labels": []}, 0
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    enc = tokenizer([ex.text for ex in examples], add_special_tokens=False)["input_ids"]
    ids = [(row + eos)[:max_length] for row in enc]
    return {"input_ids": ids, "labels": [list(r) for r in ids]}, 0


def preference_columns(examples: list[Example]) -> dict[str, list]:
    return {
        "prompt": [with_tools(ex) for ex in examples],
        "chosen": [[{"role": ASSISTANT, "content": ex.chosen}] for ex in examples],
        "rejected": [[{"role": ASSISTANT, "content": ex.rejected}] for ex in examples],
    }


def kto_columns(examples: list[Example]) -> dict[str, list]:
    msgs = [with_tools(ex) for ex in examples]
    return {
        "prompt": [m[:-1] for m in msgs],
        "completion": [m[-1:] for m in msgs],
        "label": [bool(ex.label) for ex in examples],
    }


def prompt_columns(examples: list[Example]) -> dict[str, list]:
    """RL: the conversation up to the last user turn; the model writes the answer itself."""
    out = []
    for ex in examples:
        msgs = with_tools(ex)
        last_user = max(i for i, m in enumerate(msgs) if m["role"] == "user")
        out.append(msgs[: last_user + 1])
    return {"prompt": out}


def columns_for(stage: str, examples: list[Example]) -> dict[str, list]:
    if stage in ("dpo", "orpo", "simpo", "rm"):
        return preference_columns(examples)
    if stage == "kto":
        return kto_columns(examples)
    if stage == "rl":
        return prompt_columns(examples)
    raise ValueError(stage)


# --------------------------------------------------------------------------- streaming
def stream_rows(sources: list, tokenizer_dir: str, chat_template: str, stage: str, opts: dict[str, Any]):
    """The training stream: valid rows of each source, tokenised one by one (a top-level function with plain
    arguments, so datasets can fingerprint and re-run it each epoch)."""
    from transformers import AutoTokenizer

    from ftune.runtime.data.formats import RowProblem, Source, iter_source

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.chat_template = chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    for path, formatting, kind, columns, tags in sources:
        for item in iter_source(Source(Path(path), formatting, kind, columns, tags)):
            if isinstance(item, RowProblem):
                continue
            cols, _ = (text_columns(tokenizer, [item], opts["max_length"]) if stage == "pt"
                       else tokenize_examples(tokenizer, [item], **opts))
            for ids, labels in zip(cols["input_ids"], cols["labels"]):
                yield {"input_ids": ids, "labels": labels}
