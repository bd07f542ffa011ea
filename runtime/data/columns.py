"""The columns each stage's trainer reads (its StageDef.columns), made from `formats.Example` rows.

    text                     input_ids / labels: each text then EOS, every token learnt (pt)
    preference               conversational prompt / chosen / rejected (TRL tokenises and truncates them)
    reward_pairs             chosen_ids / rejected_ids, tokenised here and truncated to max_length (TRL's
                             RewardTrainer would drop every longer pair instead)
    kto                      prompt / completion / label
    prompt                   prompt: the conversation up to the last user turn (rl)

and the training stream (`stream_rows`) for data larger than memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftune.runtime.data.formats import Example
from ftune.runtime.data.tokenize import tokenize_conversation, tokenize_examples, with_tools

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


def cut_pair_side(ids: list[int], answer_start: int, max_length: int) -> list[int]:
    """One side of a pair cut to max_length: the answer keeps its start and at least half the budget (all of
    it when the prompt is short); the prompt keeps its end, the part nearest the answer."""
    if len(ids) <= max_length:
        return ids
    prompt, answer = ids[:answer_start], ids[answer_start:]
    keep_answer = min(len(answer), max(max_length - len(prompt), max_length // 2))
    keep_prompt = max_length - keep_answer
    return (prompt[len(prompt) - keep_prompt:] if keep_prompt else []) + answer[:keep_answer]


def reward_columns(tokenizer: Any, examples: list[Example], max_length: int) -> tuple[dict[str, list], int]:
    """Reward modelling: each pair tokenised with the run's template and truncated like the other preference
    stages, never dropped. Returns the columns and how many pairs were cut."""
    out: dict[str, list] = {"chosen_ids": [], "rejected_ids": []}
    cut = 0
    for ex in examples:
        prompt = with_tools(ex)
        sides = []
        for answer in (ex.chosen, ex.rejected):
            full = tokenize_conversation(tokenizer, prompt + [{"role": ASSISTANT, "content": answer}], 10**9,
                                         mask_history=True)
            start = next((i for i, label in enumerate(full["labels"]) if label != -100), len(full["labels"]))
            sides.append(cut_pair_side(full["input_ids"], start, max_length))
            cut += len(full["input_ids"]) > max_length
        out["chosen_ids"].append(sides[0])
        out["rejected_ids"].append(sides[1])
    return out, cut


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


# the layouts a TRL trainer tokenises itself, by StageDef.columns
UNTOKENISED = {"preference": preference_columns, "kto": kto_columns, "prompt": prompt_columns}


# --------------------------------------------------------------------------- streaming
def stream_rows(sources: list, tokenizer_dir: str, chat_template: str, layout: str, opts: dict[str, Any]):
    """The training stream: valid rows of each source, tokenised one by one (a top-level function with plain
    arguments, so datasets can fingerprint and re-run it each epoch). `layout`: the stage's columns, text or
    conversation."""
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
            cols, _ = (text_columns(tokenizer, [item], opts["max_length"]) if layout == "text"
                       else tokenize_examples(tokenizer, [item], **opts))
            for ids, labels in zip(cols["input_ids"], cols["labels"]):
                yield {"input_ids": ids, "labels": labels}
