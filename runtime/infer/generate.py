"""Generation with a run's model: streamed answers (chat, serve) and batched greedy answers (eval).

Prompts are rendered with the tokenizer's chat template and tokenised the way training tokenised
them (the rendered text, no extra special tokens), so the model sees at inference exactly the
format it learnt. Generation stops at the tokenizer's end-of-sequence token and at the end-of-turn
markers of the common templates that are single tokens in the vocabulary (<|im_end|>, <|eot_id|>,
<end_of_turn>, ...): a model trained with a template whose turn marker is not its eos token still
stops after its answer instead of running on.

A vision-language model's prompts go through its processor (`Vision`): turns carry `<image>` placeholders and
the images they stand for (an `images` list on the turn), opened within the run's pixel limits.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

from ftune.runtime.templates import stop_token_ids


@dataclass
class Settings:
    """Sampling settings; temperature 0 means greedy (deterministic) decoding."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 512
    seed: int | None = None
    stop: list[str] = field(default_factory=list)  # strings that end the answer (not included in it)

    def check(self) -> None:
        if not 0 <= self.temperature <= 2:
            raise ValueError("temperature must be between 0 and 2")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be greater than 0 and at most 1")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")


@dataclass
class Vision:
    """A vision-language model's processor and the run's pixel limits (data.image_min_pixels / max_pixels)."""

    processor: Any
    min_pixels: int
    max_pixels: int

    def render(self, messages: list[dict[str, Any]]) -> str:
        from ftune.runtime.data.tokenize import vision_turns

        return self.processor.apply_chat_template(vision_turns(messages), tokenize=False, add_generation_prompt=True)

    def inputs(self, conversations: list[list[dict[str, Any]]], padding: bool = False) -> dict[str, Any]:
        from ftune.runtime.data.images import images_of, open_image

        pictures = [open_image(ref, self.min_pixels, self.max_pixels) for c in conversations for ref in images_of(c)]
        return self.processor(text=[self.render(c) for c in conversations], images=pictures or None,
                              padding=padding, return_tensors="pt")


def render(tokenizer, messages: list[dict[str, str]], tools: list[dict[str, Any]] | None = None) -> str:
    extra = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)


def text_only(messages: list[dict[str, Any]]) -> None:
    if any(m.get("images") for m in messages):
        raise ValueError("this model reads text only: images need a run of a vision-language model")


def prompt_inputs(tokenizer, messages: list[dict[str, str]], device, vision: Vision | None = None,
                  tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    if vision is not None:
        enc = vision.inputs([messages])
    else:
        text_only(messages)
        enc = tokenizer(render(tokenizer, messages, tools), add_special_tokens=False, return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items()}


def generation_config(model, tokenizer, settings: Settings):
    """The model's own generation config with our settings on top (greedy when temperature is 0)."""
    cfg = copy.deepcopy(model.generation_config)
    greedy = settings.temperature == 0
    cfg.update(max_new_tokens=settings.max_new_tokens, do_sample=not greedy,
               temperature=None if greedy else settings.temperature, top_p=None if greedy else settings.top_p,
               top_k=None if greedy else cfg.top_k, eos_token_id=stop_token_ids(tokenizer, model),
               pad_token_id=tokenizer.pad_token_id, max_length=None, use_cache=True)
    return cfg


def _device(model):
    return next(model.parameters()).device


class Generation:
    """One answer generated in a background thread; iterate over it for the text as it comes.

    After iteration: `text`, `finish_reason` ("stop" or "length"), `prompt_tokens`,
    `completion_tokens`. `cancel()` ends it early (a client that went away). `lock`, when given,
    is held for the whole generation (one model, one generation at a time)."""

    def __init__(self, model, tokenizer, messages: list[dict[str, str]], settings: Settings,
                 disable_adapter: bool = False, lock: threading.Lock | None = None, vision: Vision | None = None,
                 tools: list[dict[str, Any]] | None = None):
        from transformers import TextIteratorStreamer

        settings.check()
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.disable_adapter, self.lock = disable_adapter, lock
        self.inputs = prompt_inputs(tokenizer, messages, _device(model), vision, tools)
        self.prompt_tokens = int(self.inputs["input_ids"].shape[1])
        self.streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self._cancel = threading.Event()
        self._error: BaseException | None = None
        self._output = None
        self.text = ""
        self.finish_reason: str | None = None
        self.completion_tokens = 0
        self._thread = threading.Thread(target=self._run, name="ftune-generate", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        self._cancel.set()

    def _run(self) -> None:
        import contextlib

        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        cancel = self._cancel

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        try:
            with self.lock or contextlib.nullcontext():
                if self.settings.seed is not None:
                    torch.manual_seed(self.settings.seed)
                off = self.model.disable_adapter() if self.disable_adapter else contextlib.nullcontext()
                with off, torch.inference_mode():
                    self._output = self.model.generate(
                        **self.inputs, generation_config=generation_config(self.model, self.tokenizer, self.settings),
                        streamer=self.streamer, stopping_criteria=StoppingCriteriaList([Cancelled()]))
        except BaseException as e:  # noqa: BLE001 - handed to the reader, which raises it
            self._error = e
            self.streamer.end()  # unblock the reader

    def __iter__(self) -> Iterator[str]:
        stops = [s for s in self.settings.stop if s]
        hold = max((len(s) for s in stops), default=1) - 1  # a stop string may arrive split over pieces
        sent = 0
        stopped = False
        for piece in self.streamer:
            if stopped:
                continue  # drain: generation is being cancelled
            self.text += piece
            cut = min((i for i in (self.text.find(s, max(0, sent - hold)) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                self.text, stopped = self.text[:cut], True
                self.cancel()
                if cut > sent:
                    yield self.text[sent:cut]
                sent = cut
                continue
            upto = len(self.text) - hold if stops else len(self.text)
            if upto > sent:
                yield self.text[sent:upto]
                sent = upto
        self._thread.join()
        if self._error is not None:
            raise self._error
        if not stopped and len(self.text) > sent:
            yield self.text[sent:]
        self._finish(stopped)

    def _finish(self, stopped_by_string: bool) -> None:
        new = self._output[0, self.prompt_tokens:].tolist() if self._output is not None else []
        self.completion_tokens = len(new)
        ended = bool(new) and new[-1] in stop_token_ids(self.tokenizer, self.model)
        if stopped_by_string or ended or self.completion_tokens < self.settings.max_new_tokens:
            self.finish_reason = "stop"
        else:
            self.finish_reason = "length"

    def result(self) -> str:
        """Generate to the end and return the whole answer."""
        for _ in self:
            pass
        return self.text


def generate_batch(model, tokenizer, conversations: list[list[dict[str, str]]], max_new_tokens: int,
                   batch_size: int = 8, on_batch=None, vision: Vision | None = None) -> list[str]:
    """Greedy answers to many prompts, in batches (left-padded, longest first), in input order."""
    import torch

    settings = Settings(temperature=0, max_new_tokens=max_new_tokens)
    cfg = generation_config(model, tokenizer, settings)
    if vision is None:
        for c in conversations:
            text_only(c)
    texts = [vision.render(c) if vision else render(tokenizer, c) for c in conversations]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    answers: list[str] = [""] * len(texts)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if vision is not None:  # images in the prompts; the lengths above are close enough to order by
                enc = vision.inputs([conversations[i] for i in idx], padding=True)
            else:
                enc = tokenizer([texts[i] for i in idx], add_special_tokens=False, padding=True, return_tensors="pt")
            enc = {k: v.to(_device(model)) for k, v in enc.items()}
            with torch.inference_mode():
                out = model.generate(**enc, generation_config=cfg)
            new = out[:, enc["input_ids"].shape[1]:]
            for i, row in zip(idx, new):
                answers[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
            if on_batch:
                on_batch(min(start + batch_size, len(order)), len(order))
    finally:
        tokenizer.padding_side = side
    return answers
