"""`ftune serve`: a run's model behind an OpenAI-compatible API (FastAPI + uvicorn).

    GET  /v1/models              the served model (its id is the run's name)
    GET  /v1/models/{id}
    POST /v1/chat/completions    with or without `stream: true` (server-sent events); a vision-language run
                                 reads image_url content parts: data: URLs, and local files only under the
                                 folder named at start-up (`--image-dir`). `tools` (tool_choice auto or none)
                                 are rendered through the run's chat template and the calls the model writes
                                 come back parsed as `tool_calls` (finish_reason tool_calls); tool turns and
                                 assistant tool_calls in the history are read
    GET  /health                 no key needed: for load balancers and scripts

Errors use OpenAI's body, `{"error": {"message", "type", "param", "code"}}`, with its status codes:
400 for a bad request (validation, unsupported options, a prompt longer than the context), 401 for a
missing or wrong API key, 404 for an unknown model or path, 500 when generation itself fails.

Engines: transformers (always; one generation at a time, in the order requests arrive) or vLLM —
its own OpenAI server, started on the run's export — when vLLM is installed and a CUDA GPU is
present. Binds to 127.0.0.1 unless told otherwise: over SSH, forward the port
(`ssh -L 8000:127.0.0.1:8000 host`) rather than opening it to the network.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
import uuid
from typing import Any, Iterator, Literal

from fastapi import Request  # at module level: FastAPI resolves the string annotations of the routes here
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from ftune.runtime.errors import UserError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ServeError(UserError):
    """A server that cannot start as asked."""


# --------------------------------------------------------------------------- request schema
class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            for part in self.content:
                if part.type == "image_url":
                    raise APIError(400, "this model reads text only: image_url parts need a run of a "
                                        "vision-language model", param="messages")
                if part.type != "text":
                    raise APIError(400, f"content parts of type '{part.type}' are not supported: this model reads "
                                        f"text only", param="messages")
            return "".join(p.text or "" for p in self.content)
        if self.content is None:
            if self.role == "assistant" and getattr(self, "tool_calls", None):
                return ""
            raise APIError(400, f"a {self.role} message needs text content", param="messages")
        return self.content


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: StrictBool = False


class ChatRequest(BaseModel):
    """The fields of OpenAI's chat/completions request that this server honours. Unknown fields are
    ignored (clients send new ones all the time); known ones it cannot honour are refused."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream: StrictBool = False  # OpenAI refuses "yes" and 1: a typo must not silently change the reply's shape
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1)
    seed: int | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logprobs: StrictBool | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    response_format: dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: Any) -> Any:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    def unsupported(self) -> tuple[str, str] | None:
        """(param, why) for an option this server cannot honour."""
        if self.n != 1:
            return "n", "only n=1 is supported"
        if self.presence_penalty or self.frequency_penalty:
            return ("presence_penalty" if self.presence_penalty else "frequency_penalty",
                    "presence and frequency penalties are not supported")
        if self.logprobs:
            return "logprobs", "logprobs are not supported"
        if isinstance(self.tool_choice, dict) or self.tool_choice not in (None, "auto", "none"):
            return ("tool_choice", "this server cannot force a tool call: tool_choice may be 'auto' (the model "
                                   "decides) or 'none'")
        if self.response_format and self.response_format.get("type", "text") != "text":
            return "response_format", "only the text response format is supported"
        return None


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str | None = None, param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type_ or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# --------------------------------------------------------------------------- engine
class TransformersEngine:
    """A run's model loaded with transformers; one generation at a time."""

    def __init__(self, rm):
        self.rm = rm
        self.vision = rm.vision  # a vision-language run's processor: image_url parts are read
        self.lock = threading.Lock()
        cfg = getattr(rm.model, "config", None)
        self.context = int(getattr(cfg, "max_position_embeddings", 0) or 0) or None
        gen = rm.model.generation_config
        sampled = bool(getattr(gen, "do_sample", False))
        self.default_temperature = float(gen.temperature) if sampled and gen.temperature is not None else 1.0
        self.default_top_p = float(gen.top_p) if sampled and gen.top_p is not None else 1.0

    def start(self, messages: list[dict[str, str]], req: ChatRequest, tools: list[dict[str, Any]] | None = None):
        from ftune.runtime.infer.generate import Generation, Settings, prompt_inputs

        if tools:
            from ftune.runtime.data.tokenize import template_abilities

            ab = template_abilities(self.rm.tokenizer)
            if not ab.tools:
                raise APIError(400, f"this model's chat template cannot render tools ({ab.tools_problem}): train "
                                    f"the run with model.template chatml, or a model whose template has tools",
                               param="tools")
        n_prompt = int(prompt_inputs(self.rm.tokenizer, messages, "cpu", self.vision, tools)["input_ids"].shape[1])
        if self.context and n_prompt >= self.context:
            raise APIError(400, f"the messages are {n_prompt} tokens; this model's context is {self.context} tokens",
                           param="messages", code="context_length_exceeded")
        room = (self.context - n_prompt) if self.context else 1024
        wanted = req.max_completion_tokens or req.max_tokens
        if wanted and self.context and wanted > room:
            raise APIError(400, f"max_tokens {wanted} plus the {n_prompt} prompt tokens exceeds this model's context "
                                f"of {self.context} tokens", param="max_tokens", code="context_length_exceeded")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        settings = Settings(temperature=self.default_temperature if req.temperature is None else req.temperature,
                            top_p=self.default_top_p if req.top_p is None else req.top_p,
                            max_new_tokens=wanted or min(1024, room), seed=req.seed, stop=stop)
        return Generation(self.rm.model, self.rm.tokenizer, messages, settings, lock=self.lock, vision=self.vision,
                          tools=tools)


# --------------------------------------------------------------------------- the app
def image_ref(url: Any, image_dir) -> str:
    """An image_url part's image: a data: URL, or a local file under `image_dir` (a file: URL or a path).
    Anything else is a 400 that says what is allowed."""
    from pathlib import Path

    from ftune.runtime.data.images import image_size, resolve

    if not isinstance(url, str) or not url:
        raise APIError(400, "an image_url part needs image_url.url: a data: URL or a file path", param="messages")
    if not url.startswith("data:"):
        if "://" in url and not url.startswith("file:"):
            raise APIError(400, "image URLs are not fetched: send the image as a data: URL (base64) or, for a "
                                "file on this machine, its path", param="messages")
        if image_dir is None:
            raise APIError(400, "local image paths are read only from a folder named at start-up (ftune serve "
                                "--image-dir DIR); send the image as a data: URL", param="messages")
    try:
        ref = resolve(url, [Path(image_dir)] if image_dir else [])
        if not ref.startswith("data:") and not Path(ref).resolve().is_relative_to(Path(image_dir).resolve()):
            raise APIError(400, f"the image {url} is outside the image folder {image_dir} (--image-dir)",
                           param="messages")
        image_size(ref)
    except ValueError as e:
        raise APIError(400, f"image {e}", param="messages") from None
    return ref


def _turn(m: Message, vision: bool, image_dir) -> dict[str, Any]:
    role = "system" if m.role == "developer" else m.role
    if not (vision and isinstance(m.content, list)):
        turn: dict[str, Any] = {"role": role, "content": m.text()}
        calls = getattr(m, "tool_calls", None)
        if calls and role == "assistant":
            from ftune.runtime.data.agent import parse_call

            try:
                turn["tool_calls"] = [parse_call(c, "an assistant message's tool_calls", k) for k, c in enumerate(calls)]
            except ValueError as e:
                raise APIError(400, str(e), param="messages") from None
        for key in ("tool_call_id", "name"):
            if role == "tool" and isinstance(getattr(m, key, None), str):
                turn[key] = getattr(m, key)
        return turn
    from ftune.runtime.data.images import PLACEHOLDER

    text, refs = [], []
    for part in m.content:
        if part.type == "image_url":
            image = getattr(part, "image_url", None)
            refs.append(image_ref(image.get("url") if isinstance(image, dict) else image, image_dir))
            text.append(PLACEHOLDER)
        elif part.type == "text":
            text.append(part.text or "")
        else:
            raise APIError(400, f"content parts of type '{part.type}' are not supported: use text and image_url",
                           param="messages")
    return {"role": role, "content": "".join(text), **({"images": refs} if refs else {})}


def _messages(req: ChatRequest, vision: bool = False, image_dir=None) -> list[dict[str, Any]]:
    return [_turn(m, vision, image_dir) for m in req.messages]


def _tools(req: ChatRequest, messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The request's tools in the shape templates read (None with tool_choice none), and the tool turns linked to
    the calls they answer (a template such as Hermes names the function in each result)."""
    from ftune.runtime.data import agent

    try:
        tools = agent.parse_tools(req.tools or [])
    except ValueError as e:
        raise APIError(400, str(e).replace("'tools'", "tools"), param="tools") from None
    if tools or any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
        called = [{"type": "function", "function": {"name": c["function"]["name"]}}
                  for m in messages for c in m.get("tool_calls") or []]
        try:
            agent.check_calls(messages, tools + called)  # a call in the history may name a tool not offered now
        except ValueError as e:
            raise APIError(400, str(e).replace("turn ", "message "), param="messages") from None
    return tools if tools and req.tool_choice != "none" else None


def _reply(text: str, tools: list[dict[str, Any]] | None) -> tuple[dict[str, Any], bool]:
    """The assistant message for a generated text: with tools, calls the model wrote become `tool_calls` and a
    leading <think>…</think> becomes `reasoning_content`; without, the text as it is. Returns (message, whether it
    calls tools)."""
    from ftune.runtime.data.agent import parse_answer

    if not tools:
        return {"role": "assistant", "content": text}, False
    content, calls, reasoning = parse_answer(text)
    message: dict[str, Any] = {"role": "assistant", "content": content if (content or not calls) else None}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = calls
    return message, bool(calls)


def _validation_message(exc) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    e = errors[0]
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    if e.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    if e.get("type") == "missing":
        return f"missing required parameter: '{'.'.join(loc)}'", ".".join(loc) or None
    where = ".".join(loc)
    msg = str(e.get("msg", "")).removeprefix("Value error, ")
    return (f"invalid value for '{where}': {msg}" if where else msg), where or None


def create_app(engine, model_id: str, api_key: str | None = None, owned_by: str = "ftune", image_dir=None):
    """The FastAPI app around an engine (anything with `start(messages, request) -> Generation`; one with a
    `vision` reads images). Local image files are read from `image_dir` only."""
    from fastapi import Depends, FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    created = int(time.time())
    app = FastAPI(title=f"ftune · {model_id}", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return JSONResponse(APIError(400, message, param=param).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = {404: f"unknown path {request.url.path}: this server has /v1/models and /v1/chat/completions",
                   405: f"method {request.method} is not allowed on {request.url.path}"}.get(exc.status_code,
                                                                                               str(exc.detail))
        return JSONResponse(APIError(exc.status_code, message).body(), status_code=exc.status_code)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if not header:
            raise APIError(401, "no API key given: send it as 'Authorization: Bearer KEY'", code="invalid_api_key")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            raise APIError(401, "incorrect API key", code="invalid_api_key")

    def model_card() -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "model": model_id}

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}", dependencies=[Depends(authorize)])
    def get_model(name: str) -> dict[str, Any]:
        if name != model_id:
            raise APIError(404, f"the model '{name}' does not exist: this server serves '{model_id}'",
                           param="model", code="model_not_found")
        return model_card()

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    def chat_completions(req: ChatRequest):
        if req.model != model_id:
            raise APIError(404, f"the model '{req.model}' does not exist: this server serves '{model_id}'",
                           param="model", code="model_not_found")
        problem = req.unsupported()
        if problem:
            raise APIError(400, problem[1], param=problem[0])
        messages = _messages(req, getattr(engine, "vision", None) is not None, image_dir)
        tools = _tools(req, messages)
        try:
            gen = engine.start(messages, req, tools) if tools else engine.start(messages, req)
        except ValueError as e:  # settings out of range
            raise APIError(400, str(e)) from None
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        now = int(time.time())
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(_until_gone(gen, _sse(gen, cid, now, model_id, usage, tools)),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            text = gen.result()
        except Exception as e:  # noqa: BLE001 - the client gets a 500 with the reason
            raise APIError(500, f"generation failed: {type(e).__name__}: {e}") from None
        message, called = _reply(text, tools)
        return {
            "id": cid, "object": "chat.completion", "created": now, "model": model_id,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if called else gen.finish_reason}],
            "usage": _usage(gen),
        }

    return app


def _usage(gen) -> dict[str, int]:
    return {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
            "total_tokens": gen.prompt_tokens + gen.completion_tokens}


async def _until_gone(gen, chunks: Iterator[str]):
    """The stream's chunks, each taken in a worker thread. When the client goes away Starlette cancels this
    generator; its `finally` then cancels the generation (a sync iterator's own `finally` would wait for the
    garbage collector, and the model would write the whole answer for no one while the next request waited)."""
    from starlette.concurrency import run_in_threadpool

    end = object()
    sent, done = 0, False
    try:
        while (chunk := await run_in_threadpool(next, chunks, end)) is not end:
            sent += 1
            yield chunk
        done = True
    finally:
        if not done:
            gen.cancel()
            logging.getLogger("uvicorn.error").info("the client went away after %d chunks: generation stopped", sent)


def _sse(gen, cid: str, created: int, model_id: str, include_usage: bool,
         tools: list[dict[str, Any]] | None = None) -> Iterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`. With tools the answer is sent when
    it is complete, its calls parsed into tool_calls deltas, so a client's stream parser gets what a non-streamed
    reply holds."""
    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_id,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""})
        called = False
        if tools:  # sent when whole: a call is never split between content and tool_calls
            message, called = _reply(gen.result(), tools)
            for delta in _tool_deltas(message):
                yield chunk(delta)
        else:
            for piece in gen:
                yield chunk({"content": piece})
        yield chunk({}, "tool_calls" if called else gen.finish_reason)
        if include_usage:
            body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_id,
                    "choices": [], "usage": _usage(gen)}
            yield f"data: {json.dumps(body)}\n\n"
        yield "data: [DONE]\n\n"
    except Exception as e:  # noqa: BLE001 - headers are sent: the error goes in the stream
        yield f"data: {json.dumps(APIError(500, f'generation failed: {type(e).__name__}: {e}').body())}\n\n"
    finally:
        gen.cancel()  # a client that went away stops the generation


def _tool_deltas(message: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A whole reply that may call tools as stream deltas: reasoning, content, then each call (OpenAI's: index, id,
    type and name first, then its arguments)."""
    if message.get("reasoning_content") is not None:
        yield {"reasoning_content": message["reasoning_content"]}
    if message["content"]:
        yield {"content": message["content"]}
    for k, call in enumerate(message.get("tool_calls") or []):
        yield {"tool_calls": [{"index": k, "id": call["id"], "type": "function",
                               "function": {"name": call["function"]["name"], "arguments": ""}}]}
        yield {"tool_calls": [{"index": k, "function": {"arguments": call["function"]["arguments"]}}]}


# --------------------------------------------------------------------------- vLLM
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def vllm_usable() -> bool:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def vllm_command(run, checkpoint: int | None, host: str, port: int, api_key: str | None) -> list[str]:
    """`vllm serve` for the run: a merged model directly; an adapter on its base (`--enable-lora`),
    served under the run's name, with the run's tokenizer (and so its chat template)."""
    import shutil
    import sys
    from pathlib import Path

    from ftune.runtime import models
    from ftune.runtime.infer import loading
    from ftune.runtime.spec import load_spec

    spec = load_spec(run.spec_path)
    target = loading.resolve_target(run, checkpoint)
    exe = Path(sys.executable).with_name("vllm")
    vllm = str(exe) if exe.exists() else (shutil.which("vllm") or "vllm")
    if target.adapter:
        rank = next((r for r in VLLM_LORA_RANKS if r >= spec.method.lora.rank), VLLM_LORA_RANKS[-1])
        cmd = [vllm, "serve", models.model_source(spec.model.name_or_path, run.project), "--tokenizer", str(target.path),
               "--served-model-name", f"{run.name}-base", "--enable-lora",
               "--lora-modules", f"{run.name}={target.path}", "--max-lora-rank", str(rank)]
    else:
        cmd = [vllm, "serve", str(target.path), "--served-model-name", run.name]
    cmd += ["--host", host, "--port", str(port)]
    if api_key:
        cmd += ["--api-key", api_key]
    if spec.model.trust_remote_code:
        cmd.append("--trust-remote-code")
    return cmd


# --------------------------------------------------------------------------- entry point
def serve(run, checkpoint: int | None = None, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          engine: str = "auto", say=print, image_dir: str | None = None) -> None:
    """Serve until interrupted. `image_dir`: the folder local image paths may come from."""
    from pathlib import Path

    if image_dir is not None and not Path(image_dir).is_dir():
        raise ServeError(f"--image-dir {image_dir} is not a folder")
    if host not in LOOPBACK and not api_key:
        say(f"warning: serving on {host} without --api-key: anyone who can reach this port can use the model")
    if engine == "vllm" or (engine == "auto" and vllm_usable()):
        if engine == "vllm" and not vllm_usable():
            raise ServeError("--engine vllm needs the vllm package and a CUDA GPU; use --engine transformers")
        import os

        cmd = vllm_command(run, checkpoint, host, port, api_key)
        say(f"Starting vLLM: {' '.join(c if c != api_key else '***' for c in cmd)}")
        os.execv(cmd[0], cmd)  # vLLM's own OpenAI server takes over this process
    import uvicorn

    from ftune.runtime.infer.loading import load_run_model

    say(f"Loading {run.name}…")
    rm = load_run_model(run, checkpoint)
    if image_dir is not None and rm.vision is None:
        raise ServeError(f"--image-dir is for vision-language runs; {run.name} reads text only")
    app = create_app(TransformersEngine(rm), run.name, api_key, image_dir=image_dir)
    shown = f"[{host}]" if ":" in host else host
    say(f"Serving {run.name} ({rm.target.label}) with transformers at http://{shown}:{port}/v1 — model id "
        f"'{run.name}'{', API key required' if api_key else ''}. Ctrl+C stops.")
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=True)
