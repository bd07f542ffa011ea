"""`ftune mcp`: the Model Context Protocol server, on the official `mcp` SDK (its MCPServer, once FastMCP).

Each tool is a method of tools.Tools run in a worker thread (training, export and evaluation calls block); what it
returns goes out as compact JSON, unset fields left out, both as the tool's structured result and as its text.
A user mistake or a refusal is the tool's error: ftune's own sentence and its hint, never a traceback. Every call,
tools and resources alike, is one line of mcp.log in the runs folder.

stdio by default; with `--http PORT`, streamable HTTP on 127.0.0.1, every request carrying
`Authorization: Bearer $FTUNE_MCP_TOKEN`.
"""

from __future__ import annotations

import functools
import hmac
import importlib.util
import inspect
import json
import os
import time
from pathlib import Path
from typing import Any

from ftune import __version__
from ftune.agents.guard import Guard, Refused
from ftune.agents.tools import Tools
from ftune.runtime.errors import UserError, disk_full_message

INSTALL = "pip install 'ftune[agents]'"
TOKEN_ENV = "FTUNE_MCP_TOKEN"
TAIL_CHARS = 32_000  # a run file resource: the last this many characters (train.log grows)

INSTRUCTIONS = """ftune fine-tunes language models; this server serves one runs folder.
Typical session: list_runs; check_data on the training file; validate_spec or create_run (a preset such as
"fast" plus overrides like "training.max_steps=50"); estimate_memory; start_run; then read_events with the cursor
start_run returned and wait_s=30 until ended is true (show_run for a one-look summary); compare_runs to judge;
export_run and eval_run. Paths are relative to the project folder that holds the runs folder.
Run settings and their meaning: resource ftune://schema. Loss history: ftune://runs/NAME/loss.
Messages are the CLI's: --data, --model, --name, --overwrite are the same-named arguments, --set is overrides."""

# (tool, changes something, may destroy something): the hints MCP clients show their users
TOOLS = (
    ("list_runs", False, False),
    ("show_run", False, False),
    ("read_events", False, False),
    ("compare_runs", False, False),
    ("validate_spec", False, False),
    ("check_data", False, False),
    ("estimate_memory", False, False),
    ("create_run", True, False),
    ("start_run", True, True),  # restart deletes the run's checkpoints
    ("resume_run", True, False),
    ("stop_run", True, False),
    ("checkpoint_run", True, False),
    ("export_run", True, False),
    ("eval_run", True, False),
    ("delete_run", True, True),
)


def require_sdk() -> None:
    if importlib.util.find_spec("mcp") is None:
        raise UserError(f"ftune mcp needs the MCP SDK, which is not installed: {INSTALL}",
                        hint="Then add ftune to your agent's MCP servers; docs/agents.md shows how.")


def said(error: UserError) -> str:
    """A mistake as the agent reads it: ftune's sentence, then its hint."""
    text = str(error)
    return f"{text}\nhint: {error.hint}" if error.hint else text


def compact(answer: Any) -> dict[str, Any]:
    return answer.model_dump(mode="json", exclude_none=True)


def logged(guard: Guard, name: str, args: dict[str, Any], work):
    """Run `work()`, log the call, and turn a mistake into ftune's sentence (ToolError for the SDK)."""
    from mcp.server.mcpserver.exceptions import ToolError

    t0 = time.monotonic()
    try:
        result = work()
    except UserError as e:
        guard.log(name, args, "refused" if isinstance(e, Refused) else "mistake", time.monotonic() - t0, str(e))
        raise ToolError(said(e)) from None
    except OSError as e:
        guard.log(name, args, "failed", time.monotonic() - t0, str(e))
        if e.errno in (28, 122):  # ENOSPC, EDQUOT
            raise ToolError(disk_full_message(e, path=e.filename or guard.root)) from None
        raise ToolError(f"{e.strerror or e}{f': {e.filename}' if e.filename else ''}") from None
    except Exception as e:  # noqa: BLE001 - an agent gets one sentence; the log keeps what it was
        guard.log(name, args, "failed", time.monotonic() - t0, f"{type(e).__name__}: {e}")
        raise ToolError(f"ftune failed unexpectedly ({type(e).__name__}: {e}); the run's train.log or mcp.log "
                        f"may say more") from None
    guard.log(name, args, "ok", time.monotonic() - t0)
    return result


def as_tool(guard: Guard, method):
    """`method` as an MCP tool: run in a thread, logged, answered compactly. Its signature and docstring (the
    tool's input schema and description) and its return model (the output schema) are the method's own."""
    import anyio
    from mcp.types import CallToolResult, TextContent

    @functools.wraps(method)
    async def call(**kwargs: Any):
        answer = await anyio.to_thread.run_sync(
            lambda: logged(guard, method.__name__, kwargs, lambda: method(**kwargs)))
        data = compact(answer)
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data)

    return call


def build(guard: Guard):
    """The MCP server over `guard`'s runs folder: the tools and the resources."""
    from mcp.server.mcpserver import MCPServer
    from mcp.types import ToolAnnotations

    server = MCPServer("ftune", instructions=INSTRUCTIONS, version=__version__, log_level="WARNING")
    tools = Tools(guard)
    for name, changes, destroys in TOOLS:
        method = getattr(tools, name)
        server.add_tool(as_tool(guard, method), name=name, description=inspect.getdoc(method),
                        annotations=ToolAnnotations(read_only_hint=not changes, destructive_hint=destroys,
                                                    open_world_hint=False),
                        structured_output=True)
    add_resources(server, guard)
    return server


def add_resources(server, guard: Guard) -> None:
    from mcp.server.mcpserver.exceptions import ResourceError

    def read(uri: str, work) -> str:
        try:
            return logged(guard, "resource", {"uri": uri}, work)
        except Exception as e:  # noqa: BLE001 - resources answer with a ResourceError, not a tool error
            raise ResourceError(str(e)) from None

    @server.resource("ftune://schema", mime_type="application/schema+json",
                     description="The run file's JSON Schema: every setting, its type, default and meaning.")
    def schema() -> str:
        from ftune.runtime.spec.editors import schema_text

        return read("ftune://schema", schema_text)

    @server.resource("ftune://presets", mime_type="application/json",
                     description="The presets (standard, quality, fast): what each is for and the settings it sets.")
    def presets() -> str:
        def work() -> str:
            from ftune.presets import NAMES, describe, load_preset
            from ftune.runtime.spec import shorthand

            return json.dumps({n: {"about": describe(n), "settings": shorthand.flatten(load_preset(n))}
                               for n in NAMES}, ensure_ascii=False)

        return read("ftune://presets", work)

    @server.resource("ftune://runs/{name}/loss", mime_type="application/json",
                     description="A run's training loss, eval loss and learning rate: up to 100 [step, value] "
                                 "pairs each.")
    def loss(name: str) -> str:
        from ftune.runtime.runs import loss_series

        return read(f"ftune://runs/{name}/loss",
                    lambda: json.dumps(loss_series(guard.run(name)), separators=(",", ":")))

    @server.resource("ftune://runs/{name}/files/{file}", mime_type="text/plain",
                     description="A file of a run's folder: run.yaml, status.json, train.log (its last 32,000 "
                                 "characters), events.jsonl, ...")
    def run_file(name: str, file: str) -> str:
        return read(f"ftune://runs/{name}/files/{file}", lambda: run_file_text(guard, name, file))


def run_file_text(guard: Guard, name: str, file: str) -> str:
    """A top-level file of a run's folder as text, its last TAIL_CHARS characters."""
    run = guard.run(name)
    files = sorted(p.name for p in run.path.iterdir() if p.is_file() and not p.name.startswith("."))
    if file not in files:
        raise UserError(f"run '{name}' has no file {file!r}: it has {', '.join(files)}")
    path = guard.path(str(run.path / file), "file")
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - TAIL_CHARS * 4))
        text = f.read().decode("utf-8", "replace")
    if "\x00" in text:
        raise UserError(f"{file} is not a text file")
    return text[-TAIL_CHARS:]


# --------------------------------------------------------------------------- running it
def serve(root: Path, *, port: int | None = None, read_only: bool = False, trust_remote_code: bool = False,
          allow: list[str] | None = None) -> None:
    """`ftune mcp`: serve the runs folder `root` over stdio, or streamable HTTP on 127.0.0.1:`port`."""
    require_sdk()
    guard = Guard(root, allow=[Path(a) for a in allow or []], read_only=read_only,
                  trust_remote_code=trust_remote_code)
    token = os.environ.get(TOKEN_ENV, "")
    if port is not None and len(token) < 16:
        raise UserError(f"ftune mcp --http needs a bearer token of 16 characters or more in {TOKEN_ENV}: every "
                        f"request must carry 'Authorization: Bearer TOKEN'",
                        hint=f'e.g. export {TOKEN_ENV}="$(python -c \'import secrets; print(secrets.token_urlsafe())\')"')
    server = build(guard)
    guard.log("serve", {"transport": "http" if port else "stdio", "port": port, "read_only": read_only,
                        "trust_remote_code": trust_remote_code, "allow": guard.where()}, "ok", 0.0)
    try:
        if port is None:
            server.run("stdio")
            return
        import uvicorn

        app = BearerToken(server.streamable_http_app(host="127.0.0.1"), token)
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
    except KeyboardInterrupt:  # Ctrl+C where a person started it: the runs it started go on
        pass


class BearerToken:
    """ASGI middleware: an HTTP request without `Authorization: Bearer TOKEN` is answered 401 and goes no further."""

    def __init__(self, app, token: str):
        self.app, self.expected = app, f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                body = b'{"error":"unauthorized: send Authorization: Bearer $FTUNE_MCP_TOKEN"}'
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
