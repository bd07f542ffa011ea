"""Agent and reasoning rows: tool definitions, assistant tool calls, tool results and thinking, in the shape chat
templates read (OpenAI's), checked row by row; what a chat template can render of them; and a model's answer read
back into tool calls.

Shapes, as the templates of Qwen2.5/3, Llama 3.1, Hermes and others read them:
    tools            [{"type": "function", "function": {"name", "description", "parameters"}}]
    assistant turn   {"role": "assistant", "content": str, "tool_calls": [{"id", "type": "function",
                      "function": {"name", "arguments": {...}}}], "reasoning_content": str}
    tool turn        {"role": "tool", "content": str, "tool_call_id": str, "name": str}

Arguments are kept as objects (templates `tojson` them); rows may give them as JSON text. Pure Python: rendering a
template needs only jinja (transformers' renderer, which does not import torch).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable

REASONING_MODES = ("auto", "keep", "drop", "last_turn_only")
THINK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.S)


# --------------------------------------------------------------------------- tools and tool calls
def _tool(item: Any, where: str) -> dict[str, Any]:
    """One tool definition in OpenAI's shape, from OpenAI's or the flat {"name", "description", "parameters"}."""
    if not isinstance(item, dict):
        raise ValueError(f"{where} must be an object with a function's name, description and parameters")
    fn = item.get("function") if isinstance(item.get("function"), dict) else item
    name = fn.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where} has no function name (expected {{\"name\": ..., \"parameters\": {{...}}}})")
    params = fn.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(params, dict):
        raise ValueError(f"{where} ('{name}'): parameters must be a JSON Schema object")
    out = {"name": name, "description": fn.get("description") or "", "parameters": params}
    return {"type": "function", "function": {**fn, **out}}


def parse_tools(value: Any, what: str = "tools") -> list[dict[str, Any]]:
    """A row's tool definitions (a list, or the JSON text of one, as LLaMA-Factory keeps them); [] for none."""
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"'{what}' is not valid JSON ({e.msg} at column {e.colno})") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise ValueError(f"'{what}' must be a list of function definitions")
    return [_tool(t, f"'{what}' item {i + 1}") for i, t in enumerate(value)]


def parse_call(value: Any, where: str, index: int = 0) -> dict[str, Any]:
    """One tool call in OpenAI's shape, its arguments an object. Takes OpenAI's {"function": {...}} or the flat
    {"name", "arguments"} (LLaMA-Factory's function_call turns; "parameters" as Llama 3.1 writes it)."""
    if not isinstance(value, dict):
        raise ValueError(f"{where}: a tool call must be an object with a name and arguments")
    fn = value.get("function") if isinstance(value.get("function"), dict) else value
    name = fn.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: a tool call needs the name of the function it calls")
    args = fn.get("arguments", fn.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: the arguments of the call to '{name}' are not JSON ({e.msg} at column "
                             f"{e.colno}): {args[:60]!r}") from None
    if not isinstance(args, dict):
        raise ValueError(f"{where}: the arguments of the call to '{name}' must be a JSON object, not "
                         f"{type(args).__name__}")
    call_id = value.get("id") or f"call_{index}"
    return {"id": str(call_id), "type": "function", "function": {"name": name, "arguments": args}}


def parse_calls(value: Any, where: str, first_index: int = 0) -> list[dict[str, Any]]:
    """Tool calls from a list, one call, or the JSON text of either (a ShareGPT function_call turn)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: the tool call is not JSON ({e.msg} at column {e.colno}): "
                             f"{value[:60]!r}") from None
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError(f"{where}: no tool call in it")
    return [parse_call(c, where, first_index + k) for k, c in enumerate(items)]


def check_calls(turns: list[dict[str, Any]], tools: list[dict[str, Any]]) -> None:
    """Every call names a defined tool; every tool result answers a call made before it (linked by
    tool_call_id, or to the calls in order); each tool turn gets the called function's `name`."""
    names = [t["function"]["name"] for t in tools]
    pending: list[dict[str, Any]] = []
    for i, t in enumerate(turns, 1):
        if t["role"] == "assistant":
            pending = []
            for call in t.get("tool_calls") or []:
                name = call["function"]["name"]
                if name not in names:
                    defined = f"the row defines {', '.join(names)}" if names else "the row defines no tools"
                    raise ValueError(f"turn {i} calls the tool '{name}', which is not defined ({defined}); add "
                                     f"it to the row's tools")
                pending.append(call)
        elif t["role"] == "tool":
            if not pending:
                raise ValueError(f"turn {i} is a tool result with no tool call before it: the assistant turn "
                                 f"before it needs tool_calls (ShareGPT: a function_call turn)")
            wanted = t.get("tool_call_id")
            match = next((c for c in pending if c["id"] == wanted), None) if wanted else pending[0]
            if match is None:
                raise ValueError(f"turn {i} answers tool_call_id '{wanted}', which no call before it has "
                                 f"(open calls: {', '.join(c['id'] for c in pending)})")
            pending.remove(match)
            t["tool_call_id"] = match["id"]
            t.setdefault("name", match["function"]["name"])
        elif t["role"] == "user":
            pending = []


def split_think(content: str) -> tuple[str | None, str]:
    """(reasoning, answer) from an answer that starts with a <think>…</think> block; (None, content) otherwise."""
    m = THINK.match(content)
    if not m:
        return None, content
    return m.group(1).strip("\n"), content[m.end():]


# --------------------------------------------------------------------------- what a template renders
@dataclass(frozen=True)
class TemplateAbilities:
    """What a chat template does with tools and reasoning, found by rendering probe conversations."""

    tools: bool  # it shows tool definitions, assistant tool calls and tool results
    tools_problem: str  # why not, in a few words ("" when it does)
    reasoning_field: bool  # it reads an assistant turn's reasoning_content (else reasoning goes in as <think>…)
    past_reasoning: bool  # it shows the reasoning of an answer before the last user turn
    reasoning_shown: bool  # it shows reasoning at all (in its field or inline)


_PROBE_TOOL = [{"type": "function", "function": {
    "name": "ftune_probe_tool", "description": "ftune probe description",
    "parameters": {"type": "object", "properties": {"probe_arg": {"type": "string", "description": "an argument"}},
                   "required": ["probe_arg"]}}}]
_PROBE_CALLS = [{"role": "user", "content": "probe question"},
                {"role": "assistant", "content": "", "tool_calls": [{"id": "call_0", "type": "function", "function": {
                    "name": "ftune_probe_tool", "arguments": {"probe_arg": "probe_value_7"}}}]},
                {"role": "tool", "content": "probe_result_9", "tool_call_id": "call_0", "name": "ftune_probe_tool"},
                {"role": "assistant", "content": "probe answer"}]


def _reasoning_probe(field: bool) -> list[dict[str, Any]]:
    def answer(r: str, a: str) -> dict[str, Any]:
        return ({"role": "assistant", "content": a, "reasoning_content": r} if field
                else {"role": "assistant", "content": f"<think>\n{r}\n</think>\n\n{a}"})

    return [{"role": "user", "content": "probe one"}, answer("probe_thought_1", "probe answer one"),
            {"role": "user", "content": "probe two"}, answer("probe_thought_2", "probe answer two")]


Render = Callable[..., str]  # render(messages, tools=None, add_generation_prompt=False) -> str


def template_renderer(chat_template: str, special_tokens: dict[str, Any] | None = None) -> Render:
    """A template's own render without a tokenizer: transformers' Jinja renderer (no torch)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    extra = {k: v for k, v in (special_tokens or {}).items() if isinstance(v, str)}
    extra.setdefault("bos_token", "")
    extra.setdefault("eos_token", "")

    def render(messages, tools=None, add_generation_prompt=False) -> str:
        text, _ = render_jinja_template([messages], tools=tools or None, chat_template=chat_template,
                                        add_generation_prompt=add_generation_prompt, **extra)
        return text[0]

    return render


def tokenizer_renderer(tokenizer: Any) -> Render:
    def render(messages, tools=None, add_generation_prompt=False) -> str:
        return tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)

    return render


def abilities(render: Render) -> TemplateAbilities:
    """Render probe conversations and look at what came out."""
    try:
        text = render(_PROBE_CALLS, tools=_PROBE_TOOL)
        missing = [what for what, mark in (("tool definitions", "ftune probe description"),
                                           ("tool calls", "probe_value_7"), ("tool results", "probe_result_9"))
                   if mark not in text]
        tools_problem = f"it does not show {' or '.join(missing)}" if missing else ""
    except Exception as e:  # noqa: BLE001 - a template that raises on tools cannot render them
        tools_problem = f"it fails on them ({type(e).__name__}: {e})"

    def shown(field: bool) -> tuple[bool, bool]:
        try:
            out = render(_reasoning_probe(field))
        except Exception:  # noqa: BLE001
            return False, False
        return "probe_thought_2" in out, "probe_thought_1" in out

    last, past = shown(True)
    field = last
    if not field:
        last, past = shown(False)
    return TemplateAbilities(tools=not tools_problem, tools_problem=tools_problem, reasoning_field=field,
                             past_reasoning=past, reasoning_shown=last)


def tools_refusal(label: str, ab: TemplateAbilities, tool_rows: int) -> str:
    """The sentence that refuses tool rows for a template that cannot show them."""
    return (f"{tool_rows} rows have tools or tool calls, but {label} cannot render tools: {ab.tools_problem}. "
            f"Training on them would teach a format the model never sees at inference")


TOOLS_HINT = ("Set model.template: chatml (ChatML with Qwen2.5's tool format), or train a model whose own template "
              "renders tools (Qwen2.5, Qwen3, Llama 3.1, Hermes do).")


# --------------------------------------------------------------------------- rows as the template reads them
def with_reasoning(turn: dict[str, Any], reasoning: str | None, field: bool) -> dict[str, Any]:
    """An assistant turn with its reasoning given as the template reads it: in reasoning_content, or inline."""
    out = {k: v for k, v in turn.items() if k != "reasoning_content"}
    if reasoning is None:
        return out
    if field:
        out["reasoning_content"] = reasoning
    else:
        answer = turn.get("content") or ""
        out["content"] = f"<think>\n{reasoning}\n</think>" + (f"\n\n{answer}" if answer else "")
    return out


def conversations(messages: list[dict[str, Any]], mode: str, ab: TemplateAbilities) -> list[list[dict[str, Any]]]:
    """The conversation(s) one row trains as, by data.reasoning:
    auto            as the template renders the whole conversation (Qwen3: thinking after the last user turn);
    keep            every answer's thinking is learnt; where the template hides earlier thinking, each answer with
                    thinking becomes its own example, ending with it, as the model wrote it at inference;
    drop            no thinking is learnt;
    last_turn_only  the final answer's thinking only.
    Several conversations come back only for keep; each learns its own answers (see `learns_last_only`)."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)

    def build(keep: Callable[[int], bool]) -> list[dict[str, Any]]:
        return [with_reasoning(m, m.get("reasoning_content") if keep(i) else None, ab.reasoning_field)
                if m["role"] == "assistant" else m for i, m in enumerate(messages)]

    thinking = [i for i, m in enumerate(messages) if m["role"] == "assistant" and m.get("reasoning_content")]
    if mode == "drop" or not thinking:
        return [build(lambda i: False)]
    if mode == "last_turn_only":
        return [build(lambda i: i == last)]
    if mode == "keep" and not ab.past_reasoning and any(i != last for i in thinking):
        full = build(lambda i: True)
        return [full[: i + 1] for i in thinking if i != last] + [full]
    return [build(lambda i: True)]


# --------------------------------------------------------------------------- an answer read back
CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


def _json_at(text: str, start: int) -> tuple[Any, int] | None:
    try:
        return json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError:
        return None


def parse_answer(text: str) -> tuple[str, list[dict[str, Any]], str | None]:
    """(content, tool calls, reasoning) from a model's answer: a leading <think>…</think> block is the reasoning;
    `<tool_call>{json}</tool_call>` blocks (Qwen, Hermes) or an answer that is one JSON call (Llama 3.1's
    {"name", "parameters"}) are tool calls. Calls come back in OpenAI's shape with arguments as JSON text."""
    reasoning, rest = split_think(text)
    calls: list[dict[str, Any]] = []
    content = rest
    blocks = list(CALL_BLOCK.finditer(rest))
    candidates: list[Any] = []
    if blocks:
        for b in blocks:
            found = _json_at(b.group(1), 0)
            if found is not None:
                candidates.append(found[0])
        content = CALL_BLOCK.sub("", rest).strip()
    else:
        stripped = rest.strip()
        found = _json_at(stripped, 0) if stripped.startswith("{") else None
        if found is not None and not stripped[found[1]:].strip() and isinstance(found[0], dict) \
                and "name" in found[0] and ({"arguments", "parameters"} & set(found[0])):
            candidates, content = [found[0]], ""
    for k, c in enumerate(candidates):
        try:
            call = parse_call(c, "the answer", k)
        except ValueError:
            continue
        import uuid

        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": call["function"]["name"],
                                   "arguments": json.dumps(call["function"]["arguments"], ensure_ascii=False)}})
    if not calls:
        content = rest
    return content, calls, reasoning
