"""Chat examples as token ids with an exact loss mask: the answer spans come from rendering the conversation's
prefixes with the model's own template, so the mask is right for any template (no `{% generation %}` markers
needed). Takes any HF tokenizer object; nothing here imports torch.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from ftune.runtime.data import agent
from ftune.runtime.data.agent import TemplateAbilities
from ftune.runtime.data.formats import DataError, Example
from ftune.runtime.templates import END_OF_TURN


# --------------------------------------------------------------------------- tokenising chat examples
def _render(tokenizer: Any, messages: list[dict[str, Any]], add_generation_prompt: bool = False,
            tools: list[dict[str, Any]] | None = None) -> str:
    extra = {"tools": tools} if tools else {}  # a processor's template may not take the keyword
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **extra)


def with_tools(ex: Example) -> list[dict[str, Any]]:
    """The stages TRL tokenises (preference, KTO, RL) get the tools described in the system prompt as text: their
    trainers render plain turns. SFT renders tools through the model's own template (`example_conversations`)."""
    if not ex.tools:
        return ex.messages
    note = f"You can call these tools (answer with a JSON function call):\n{json.dumps(ex.tools, ensure_ascii=False)}"
    msgs = [dict(m) for m in ex.messages]
    if msgs and msgs[0]["role"] == "system":
        msgs[0]["content"] = f"{msgs[0]['content']}\n\n{note}"
    else:
        msgs.insert(0, {"role": "system", "content": note})
    return msgs


def _plain(content: Any) -> str:
    """A turn's text: content parts (a vision-language template's input) joined."""
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def stop_strings(tokenizer: Any) -> tuple[str, ...]:
    """The end-of-turn markers an answer can end with: the eos token and the known markers its template writes."""
    template = getattr(tokenizer, "chat_template", None) or ""
    template = template if isinstance(template, str) else ""
    eos = getattr(tokenizer, "eos_token", None)
    return tuple(dict.fromkeys([*([eos] if eos else []), *(t for t in END_OF_TURN if t in template)]))


_ABILITIES: dict[tuple, TemplateAbilities] = {}


def template_abilities(tokenizer: Any) -> TemplateAbilities:
    """What the tokenizer's template renders of tools and reasoning (probed once per template)."""
    key = (getattr(tokenizer, "chat_template", None), getattr(tokenizer, "bos_token", None),
           getattr(tokenizer, "eos_token", None))
    if key not in _ABILITIES:
        _ABILITIES[key] = agent.abilities(lambda m, tools=None, add_generation_prompt=False:
                                          _render(tokenizer, m, add_generation_prompt, tools))
    return _ABILITIES[key]


def _end_of_turn(text: str, start: int, stops: tuple[str, ...]) -> int | None:
    """Where the first end-of-turn marker at or after `start` ends."""
    found = [(i, len(s)) for s in stops if (i := text.find(s, start)) >= 0]
    return min(i + n for i, n in found) if found else None


def _trimmed(text: str, start: int, end: int, stops: tuple[str, ...]) -> int:
    """An answer's span ends with its end-of-turn marker: what the template writes after it (a newline) is the
    frame of the next turn, never generated."""
    best = None
    for s in stops:
        i = text.rfind(s, start, end)
        if i >= 0 and (best is None or i + len(s) > best):
            best = i + len(s)
    return best if best is not None else end


def turn_spans(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
               ) -> tuple[str, list[tuple[int, int, int]]]:
    """The rendered conversation and (message index, start, end) of each assistant turn: from the end of the
    generation prompt to its end-of-turn marker, in the render of the whole conversation.

    Starts come from rendering the prefix before each answer with the generation prompt. Ends come from rendering
    up to the answer where the template renders history unchanged; where it does not (Qwen3 drops the thinking of
    earlier answers and gives the last one an empty thinking block), the answer ends at its first end-of-turn
    marker in the whole render, so what is learnt is what the whole render shows."""
    full = _render(tokenizer, messages, tools=tools)
    stops = stop_strings(tokenizer)
    spans, cursor = [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], add_generation_prompt=True, tools=tools)
        # the rendering up to the last message is the whole text: one render saved per row
        upto = full if i == len(messages) - 1 else _render(tokenizer, messages[: i + 1], tools=tools)
        if full.startswith(before):
            start = len(before)
        else:  # the history before this answer renders differently now: find its header after the last answer
            header = before[len(_render(tokenizer, messages[:i], tools=tools)):] if i else ""
            at = full.find(header, cursor) if header else -1
            start = at + len(header) if at >= 0 else -1
        end = None
        if start >= 0 and start == len(before) and upto.startswith(before) and full.startswith(upto):
            end = _trimmed(full, start, len(upto), stops)
        elif start >= 0:
            end = _end_of_turn(full, start, stops)
        if end is None:
            text = _plain(m.get("content") or "")
            start = full.find(text, cursor) if text else -1
            if start < 0:
                raise DataError("the chat template drops an assistant answer; choose another template")
            end = start + len(text)
        spans.append((i, start, end))
        cursor = end
    return full, spans


def assistant_spans(tokenizer: Any, messages: list[dict[str, Any]],
                    tools: list[dict[str, Any]] | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant turn (see `turn_spans`)."""
    full, spans = turn_spans(tokenizer, messages, tools)
    return full, [(a, b) for _, a, b in spans]


def has_tools(ex: Example) -> bool:
    return bool(ex.tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in ex.messages)


class ToolsNotRendered(DataError):
    """Tool rows for a template that cannot show them."""


def example_conversations(tokenizer: Any, ex: Example, reasoning: str = "auto"
                          ) -> list[tuple[list[dict[str, Any]], set[int] | None]]:
    """The conversations a chat row trains as, with the tools and reasoning given as the tokenizer's template reads
    them, and which answers each learns (None: all). See `agent.conversations` for data.reasoning."""
    ab = template_abilities(tokenizer)
    if has_tools(ex) and not ab.tools:
        raise ToolsNotRendered(f"the chat template cannot render tools: {ab.tools_problem}",
                               hint=agent.TOOLS_HINT)
    convs = agent.conversations(ex.messages, reasoning, ab)
    if len(convs) == 1:
        return [(convs[0], None)]
    # keep, split: each earlier answer with thinking is learnt in its own example, the rest in the whole one
    own = {len(c) - 1 for c in convs[:-1]}
    whole = {i for i, m in enumerate(convs[-1]) if m["role"] == "assistant"} - own
    return [(c, {len(c) - 1}) for c in convs[:-1]] + [(convs[-1], whole)]


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
                          max_output_length: int | None = None,
                          tools: list[dict[str, Any]] | None = None) -> dict[str, list[int]] | None:
    """input_ids and labels (-100 where there is no loss); None when truncation leaves nothing to learn.

    Cutting, in this order: max_input_length keeps the LAST N tokens of everything before the final
    answer (the question nearest the answer stays); max_output_length keeps the FIRST N tokens of the
    final answer; max_length (cutoff) keeps the start of the whole sequence. A row whose answers are
    all cut away returns None and is counted by the caller."""
    text, spans = assistant_spans(tokenizer, messages, tools)
    if mask_history:
        spans = spans[-1:]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return _mask_and_cut(enc["input_ids"], enc["offset_mapping"], spans, max_length, train_on_prompt,
                         max_input_length, max_output_length)


def per_turn(messages: list[dict[str, str]]) -> list[list[dict[str, str]]]:
    """combine: false — each assistant turn its own example, with the turns before it as the prompt."""
    return [messages[: i + 1] for i, m in enumerate(messages) if m["role"] == "assistant"]


def example_texts(tokenizer: Any, ex: Example, combine: bool = True, mask_history: bool = False,
                  reasoning: str = "auto") -> list[tuple[str, list[tuple[int, int]]]]:
    """A chat row's rendered sequences and the answer spans each learns: tools and reasoning through the model's
    own template (`example_conversations`); combine: false and mask_history learn each sequence's last answer."""
    out = []
    for conv, learn in example_conversations(tokenizer, ex, reasoning):
        for conversation in ([conv] if combine else per_turn(conv)):
            text, spans = turn_spans(tokenizer, conversation, ex.tools or None)
            spans = [(a, b) for i, a, b in spans if learn is None or i in learn or not combine]
            # per-turn examples learn their last answer only: the earlier ones are prompt
            out.append((text, spans[-1:] if mask_history or not combine else spans))
    return out


_worker_tokenizer: Any = None


def _init_worker(tokenizer: Any) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _tokenize_chunk(args: tuple) -> tuple[dict[str, list], int]:
    examples, opts = args
    return tokenize_examples(_worker_tokenizer, examples, **opts)


def tokenize_examples(tokenizer: Any, examples: list[Example], max_length: int, train_on_prompt: bool = False,
                      mask_history: bool = False, combine: bool = True, max_input_length: int | None = None,
                      max_output_length: int | None = None, num_proc: int | None = None,
                      progress: Callable[[int, int], None] | None = None,
                      reasoning: str = "auto") -> tuple[dict[str, list], int]:
    """Columns for a datasets.Dataset, and how many rows truncation emptied (reported, not hidden).
    With num_proc > 1 the rows are split into chunks tokenised in parallel processes, order kept.
    `progress(done, total)` is called after each batch of rows."""
    opts = dict(max_length=max_length, train_on_prompt=train_on_prompt, mask_history=mask_history, combine=combine,
                max_input_length=max_input_length, max_output_length=max_output_length, reasoning=reasoning)
    if num_proc and num_proc > 1 and len(examples) >= 2 * num_proc:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        size = -(-len(examples) // (num_proc * 4))
        chunks = [(examples[i: i + size], opts) for i in range(0, len(examples), size)]
        ctx = multiprocessing.get_context("spawn")  # fork after torch/tokenizers threads is unsafe
        parts, done = [], 0
        with ProcessPoolExecutor(num_proc, mp_context=ctx, initializer=_init_worker, initargs=(tokenizer,)) as pool:
            for (chunk, _), part in zip(chunks, pool.map(_tokenize_chunk, chunks)):  # in order, as each is done
                parts.append(part)
                done += len(chunk)
                if progress:
                    progress(done, len(examples))
        return ({k: [x for cols, _ in parts for x in cols[k]] for k in ("input_ids", "labels")},
                sum(d for _, d in parts))
    columns: dict[str, list] = {"input_ids": [], "labels": []}
    dropped = 0
    for start in range(0, len(examples), 1000):  # batches: the Rust tokenizer encodes them on all cores
        batch = []
        for ex in examples[start: start + 1000]:
            batch += example_texts(tokenizer, ex, combine, mask_history, reasoning)
        enc = tokenizer([t for t, _ in batch], add_special_tokens=False, return_offsets_mapping=True)
        for (_, spans), ids, offsets in zip(batch, enc["input_ids"], enc["offset_mapping"]):
            out = _mask_and_cut(ids, offsets, spans, max_length, train_on_prompt, max_input_length,
                                max_output_length)
            if out is None:
                dropped += 1
                continue
            columns["input_ids"].append(out["input_ids"])
            columns["labels"].append(out["labels"])
        if progress:
            progress(min(start + 1000, len(examples)), len(examples))
    return columns, dropped


# --------------------------------------------------------------------------- chat examples with images
class VisionTokens:
    """How a vision-language processor spells images in token ids: each `<image>` of a row becomes the
    processor's image token repeated once per image patch group, a number that depends on the image's size only
    (after the run's pixel limits), found once per size by running the processor on a blank image of it."""

    def __init__(self, processor: Any, min_pixels: int, max_pixels: int):
        self.processor, self.min_pixels, self.max_pixels = processor, min_pixels, max_pixels
        self.tokenizer = processor.tokenizer
        self.image_token = processor.image_token
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        vocab = self.tokenizer.get_vocab()
        # the pads and their frame (Qwen-VL's vision start and end): never learnt, even with train_on_prompt
        self.never_learnt = {self.image_token_id} | {vocab[t] for t in ("<|vision_start|>", "<|vision_end|>")
                                                     if t in vocab}
        self._per_size: dict[tuple[int, int], int] = {}

    def count(self, size: tuple[int, int]) -> int:
        from ftune.runtime.data.images import fit_size

        size = fit_size(*size, self.min_pixels, self.max_pixels)
        if size not in self._per_size:
            from PIL import Image

            enc = self.processor(text=[self.image_token], images=[Image.new("RGB", size)])
            self._per_size[size] = list(enc["input_ids"][0]).count(self.image_token_id)
        return self._per_size[size]

    def expand(self, text: str, spans: list[tuple[int, int]], counts: list[int]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered text with each image token repeated as often as its image needs, and the answer spans
        moved with it."""
        pieces = text.split(self.image_token)
        if len(pieces) - 1 != len(counts):
            raise DataError(f"the chat template rendered {len(pieces) - 1} images for {len(counts)} in the row")
        out, shifts, pos = [pieces[0]], [], len(pieces[0])
        for n, piece in zip(counts, pieces[1:]):
            shifts.append((pos + len(self.image_token), len(self.image_token) * (n - 1)))
            out += [self.image_token * n, piece]
            pos += len(self.image_token) + len(piece)

        def moved(x: int) -> int:
            return x + sum(extra for at, extra in shifts if at <= x)

        return "".join(out), [(moved(a), moved(b)) for a, b in spans]


def vision_turns(messages: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Turns with `<image>` placeholders as content parts, as a processor's chat template reads them."""
    from ftune.runtime.data.images import to_parts

    return [{"role": m["role"], "content": to_parts(m["content"])} for m in messages]


def tokenize_vision_examples(vision: VisionTokens, examples: list[Example], max_length: int,
                             train_on_prompt: bool = False, mask_history: bool = False, combine: bool = True,
                             max_input_length: int | None = None, max_output_length: int | None = None,
                             progress: Callable[[int, int], None] | None = None) -> tuple[dict[str, list], int]:
    """Columns input_ids, labels and images (each row's image references) for a vision-language model, with the
    same exact mask as text: answer spans from rendering prefixes with the processor's template, then the image
    tokens expanded. Image tokens are never learnt. A row that the cutoff would cut through an image is dropped
    (counted with the truncated rows): half an image does not match its pixels."""
    from ftune.runtime.data.images import placeholders

    columns: dict[str, list] = {"input_ids": [], "labels": [], "images": []}
    dropped = 0
    for done, ex in enumerate(examples, 1):
        msgs = with_tools(ex)
        for conversation in ([msgs] if combine else per_turn(msgs)):
            n_images = sum(placeholders(m["content"]) for m in conversation)
            text, spans = assistant_spans(vision.processor, vision_turns(conversation))
            if mask_history or not combine:
                spans = spans[-1:]
            counts = [vision.count(size) for size in ex.image_sizes[:n_images]]
            text, spans = vision.expand(text, spans, counts)
            enc = vision.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            out = _mask_and_cut(enc["input_ids"], enc["offset_mapping"], spans, max_length, train_on_prompt,
                                max_input_length, max_output_length)
            if out is None or out["input_ids"].count(vision.image_token_id) != sum(counts):
                dropped += 1
                continue
            out["labels"] = [-100 if t in vision.never_learnt else label
                             for t, label in zip(out["input_ids"], out["labels"])]
            columns["input_ids"].append(out["input_ids"])
            columns["labels"].append(out["labels"])
            columns["images"].append(list(ex.images[:n_images]))
        if progress and (done % 200 == 0 or done == len(examples)):
            progress(done, len(examples))
    return columns, dropped
