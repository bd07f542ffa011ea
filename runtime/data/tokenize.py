"""Chat examples as token ids with an exact loss mask: the answer spans come from rendering the conversation's
prefixes with the model's own template, so the mask is right for any template (no `{% generation %}` markers
needed). Takes any HF tokenizer object; nothing here imports torch.
"""

from __future__ import annotations

from typing import Any, Callable

from ftune.runtime.data.formats import DataError, Example


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


def _plain(content: Any) -> str:
    """A turn's text: content parts (a vision-language template's input) joined."""
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


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
            start = full.find(_plain(m["content"]), cursor)
            if start < 0:
                raise DataError("the chat template drops an assistant answer; choose another template")
            spans.append((start, start + len(_plain(m["content"]))))
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
                      max_output_length: int | None = None, num_proc: int | None = None,
                      progress: Callable[[int, int], None] | None = None) -> tuple[dict[str, list], int]:
    """Columns for a datasets.Dataset, and how many rows truncation emptied (reported, not hidden).
    With num_proc > 1 the rows are split into chunks tokenised in parallel processes, order kept.
    `progress(done, total)` is called after each batch of rows."""
    opts = dict(max_length=max_length, train_on_prompt=train_on_prompt, mask_history=mask_history, combine=combine,
                max_input_length=max_input_length, max_output_length=max_output_length)
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
            msgs = with_tools(ex)
            for conversation in ([msgs] if combine else per_turn(msgs)):
                text, spans = assistant_spans(tokenizer, conversation)
                # per-turn examples learn their last answer only: the earlier ones are prompt
                batch.append((text, spans[-1:] if mask_history or not combine else spans))
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
