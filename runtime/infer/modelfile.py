"""The Ollama Modelfile written beside an exported GGUF file: FROM the file, TEMPLATE in Ollama's Go-template
language translated from the run's chat template, PARAMETER stop for the turn markers, SYSTEM when there is one.

The translation does not parse Jinja. It renders the run's template (through the tokenizer, exactly as training did)
on conversations whose contents are markers, and reads each role's text before and after its content from the
difference a turn makes. That covers every template that wraps each turn the same way whatever came before (ChatML
and Qwen, Llama 3, and each template ftune names); the result is rendered again and compared, and a template it does
not reproduce exactly (one that moves the system prompt into the last user turn, say) is reported as not
translatable, leaving TEMPLATE to Ollama's default. No torch here: `render` is handed in.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

Render = Callable[[list[dict[str, str]], bool], str]  # (messages, add_generation_prompt) -> text
ROLES = ("system", "user", "assistant", "tool")
_MARK = {r: f"\x01{r.upper()}\x02" for r in ROLES}  # contents no template contains
_MARK2 = {r: f"\x01{r.upper()}2\x02" for r in ROLES}


@dataclass
class Translation:
    template: str | None  # the Go template, or None when the chat template cannot be translated
    reason: str = ""  # why not, when template is None
    default_system: str | None = None  # a system prompt the chat template adds when the conversation has none
    wrappers: dict[str, tuple[str, str]] = field(default_factory=dict)


def _split(text: str, mark: str) -> tuple[str, str] | None:
    if text.count(mark) != 1:
        return None
    before, after = text.split(mark)
    return before, after


def translate(render: Render, bos_token: str | None = None, adds_bos: bool = False) -> Translation:
    """The chat template rendered by `render`, as an Ollama Go template (see the module doc).

    `bos_token` with `adds_bos`: llama.cpp puts the BOS token before the prompt itself, so a template's leading BOS
    text is left out of TEMPLATE rather than doubled."""
    m, m2 = _MARK, _MARK2
    conv = [{"role": "system", "content": m["system"]}, {"role": "user", "content": m["user"]},
            {"role": "assistant", "content": m["assistant"]}, {"role": "user", "content": m2["user"]},
            {"role": "assistant", "content": m2["assistant"]}]
    try:
        steps = [render(conv[:k], False) for k in range(1, len(conv) + 1)]
        gen_after = render(conv[:4], True)
        alone = render([{"role": "user", "content": m["user"]}], False)
    except Exception as e:  # noqa: BLE001 - a template that refuses these conversations cannot be translated
        return Translation(None, f"the chat template does not render a plain conversation ({e})")
    for a, b in zip(steps, steps[1:]):
        if not b.startswith(a):
            return Translation(None, "the chat template changes earlier turns when a turn is added")
    if not gen_after.startswith(steps[3]):
        return Translation(None, "the chat template's generation prompt changes the turns before it")
    generation = gen_after[len(steps[3]):]
    wrappers: dict[str, tuple[str, str]] = {}
    for i, mark in ((3, m2["user"]), (4, m2["assistant"])):
        parts = _split(steps[i][len(steps[i - 1]):], mark)
        if parts is None:
            return Translation(None, f"the chat template does not show a {conv[i]['role']} turn's content once")
        wrappers[conv[i]["role"]] = parts
    first_answer = _split(steps[2][len(steps[1]):], m["assistant"])
    first_user = _split(steps[1][len(steps[0]):], m["user"])
    if first_answer != wrappers["assistant"] or first_user != wrappers["user"]:
        return Translation(None, "the chat template wraps the first turns differently from later ones")
    sys_parts = _split(steps[0], m["system"])
    if sys_parts is None:
        return Translation(None, "the chat template does not show the system prompt once")
    # what comes before the system block: a BOS token, say; and what a conversation without one gets instead
    pre_u, suf_u = wrappers["user"]
    if not alone.endswith(pre_u + m["user"] + suf_u):
        return Translation(None, "the chat template renders a first user turn without a system prompt differently")
    head = alone[: len(alone) - len(pre_u + m["user"] + suf_u)]
    sys_before, sys_after = sys_parts
    default_system = None
    if sys_before.startswith(head):  # no system prompt of its own: `head` is what every conversation starts with
        prefix, sys_before = head, sys_before[len(head):]
    else:  # the template adds a system prompt of its own to a conversation without one
        common = 0
        while common < min(len(head), len(sys_before)) and head[common] == sys_before[common]:
            common += 1
        if not head.endswith(sys_after) or common != len(sys_before):
            return Translation(None, "the chat template's text before the first user turn cannot be placed")
        default_system = head[len(sys_before): len(head) - len(sys_after)]
        prefix = ""
    wrappers["system"] = (sys_before, sys_after)
    try:  # a tool result after an answer, where the template has a slot for it
        with_tool = render([*conv[:3], {"role": "tool", "content": m["tool"]}], False)
        parts = _split(with_tool[len(steps[2]):], m["tool"]) if with_tool.startswith(steps[2]) else None
        if parts is not None:
            wrappers["tool"] = parts
    except Exception:  # noqa: BLE001 - no tool slot: Ollama sends no tool turns to it
        pass
    if adds_bos and bos_token and prefix.startswith(bos_token):
        prefix = prefix[len(bos_token):]
    pieces = [prefix, sys_before, *[t for w in wrappers.values() for t in w], generation]
    if any("{{" in p or '"""' in p for p in pieces):
        return Translation(None, "the chat template's turn markers contain '{{' or '\"\"\"', which a Modelfile "
                                 "cannot hold as plain text")
    branches = []
    for i, (role, (before, after)) in enumerate(wrappers.items()):
        word = "if" if i == 0 else "else if"
        branches.append(f'{{{{ {word} eq .Role "{role}" }}}}{before}{{{{ .Content }}}}{after}')
    # no `{{-` anywhere: trimming would eat the newlines that are part of the turn markers
    template = prefix + "{{ range .Messages }}" + "".join(branches) + "{{ end }}{{ end }}" + generation
    return Translation(template, default_system=default_system, wrappers=wrappers)


def data_system_prompt(rows: list[dict]) -> str | None:
    """The system prompt the training data used most (messages/ShareGPT turns or an Alpaca `system` column)."""
    seen: Counter[str] = Counter()
    for row in rows:
        if not isinstance(row, dict):
            continue
        if isinstance(row.get("system"), str) and row["system"].strip():
            seen[row["system"]] += 1
        for turns in (row.get("messages"), row.get("conversations")):
            for t in turns if isinstance(turns, list) else []:
                if isinstance(t, dict) and (t.get("role") or t.get("from")) == "system":
                    text = t.get("content", t.get("value"))
                    if isinstance(text, str) and text.strip():
                        seen[text] += 1
    return seen.most_common(1)[0][0] if seen else None


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def build(gguf_name: str, template: str | None, stops: list[str], system: str | None, note: str = "") -> str:
    """The Modelfile text (FROM a file in the same folder)."""
    lines = ["# Made by ftune. Create the model: ollama create NAME -f Modelfile", f"FROM ./{gguf_name}"]
    if template is not None:
        lines.append(f'TEMPLATE """{template}"""')
    else:
        lines.append(f"# TEMPLATE left to Ollama's default: {note}")
    for s in dict.fromkeys(stops):
        lines.append(f"PARAMETER stop {_quote(s)}")
    if system:
        if '"""' in system:
            lines.append(f"SYSTEM {_quote(system)}")
        else:
            lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"


def parse(text: str) -> dict[str, list[str]]:
    """A Modelfile's instructions (upper-case names) and their arguments, quoted ones unquoted; PARAMETER values as
    "name value". Raises ValueError for a line that is not an instruction or a quote never closed."""
    import json

    out: dict[str, list[str]] = {}
    pos = 0
    while pos < len(text):
        end = text.find("\n", pos)
        end = len(text) if end < 0 else end
        line = text[pos:end].strip()
        if not line or line.startswith("#"):
            pos = end + 1
            continue
        name, _, arg = line.partition(" ")
        if not name.isalpha():
            raise ValueError(f"not a Modelfile instruction: {line!r}")
        if arg.startswith('"""'):
            start = text.index('"""', pos) + 3
            close = text.find('"""', start)
            if close < 0:
                raise ValueError(f'{name}: """ is never closed')
            value = text[start:close]
            end = text.find("\n", close)
            end = len(text) if end < 0 else end
        elif name.upper() == "PARAMETER":
            key, _, v = arg.partition(" ")
            value = key + " " + (json.loads(v) if v.startswith('"') else v)
        else:
            value = json.loads(arg) if arg.startswith('"') else arg
        out.setdefault(name.upper(), []).append(value)
        pos = end + 1
    return out


def write(folder: Path, text: str) -> Path:
    path = Path(folder) / "Modelfile"
    path.write_text(text, encoding="utf-8")
    return path
