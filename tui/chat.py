"""`ftune chat RUN`: talk to a run's model in the terminal, tokens streamed as they are generated.

Multi-turn, with the chat template the run trained with (it travels with the tokenizer). Commands:

    /system TEXT   set the system prompt (empty: none); applies from the next answer
    /image PATH    show the model a picture with your next message (vision-language runs; --image too)
    /tool RESULT   answer the model's last tool call with RESULT (with --tools FILE: the functions it may call)
    /reset         forget the conversation (the system prompt stays)
    /set KEY VALUE temperature, top_p or max_new_tokens (temperature 0: greedy, repeatable)
    /settings      show them
    /help          this list
    /exit          leave (Ctrl+D too); Ctrl+C stops an answer being written

With `--compare-base` every prompt is answered by the base model too, side by side (stacked on a
narrow terminal); each model keeps its own conversation. Nothing here imports torch: the model is
loaded and run through `ftune.runtime` functions, called once the chat starts.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

HELP = """commands:
  /system TEXT     set the system prompt (empty: none)
  /image PATH      attach a picture to your next message (vision-language runs)
  /tool RESULT     answer the model's last tool call (runs started with --tools FILE)
  /reset           forget the conversation
  /set KEY VALUE   temperature (0 = greedy), top_p, max_new_tokens
  /settings        show the generation settings
  /exit            leave (or Ctrl+D); Ctrl+C stops an answer"""
SETTING_TYPES = {"temperature": float, "top_p": float, "max_new_tokens": int}


@dataclass
class Conversation:
    """One model's side of the chat: the turns so far."""

    turns: list[dict[str, Any]] = field(default_factory=list)

    def messages(self, system: str | None, prompt: str | dict[str, Any]) -> list[dict[str, Any]]:
        head = [{"role": "system", "content": system}] if system else []
        return head + self.turns + [user_turn(prompt)]

    def add(self, prompt: str | dict[str, Any], answer: str, tools: list[dict[str, Any]] | None = None) -> None:
        self.turns += [user_turn(prompt), assistant_turn(answer, tools)]

    def open_call(self) -> dict[str, Any] | None:
        """The last tool call of the last answer, when nothing answers it yet."""
        if self.turns and self.turns[-1]["role"] == "assistant" and self.turns[-1].get("tool_calls"):
            return self.turns[-1]["tool_calls"][-1]
        return None


def assistant_turn(answer: str, tools: list[dict[str, Any]] | None) -> dict[str, Any]:
    """An answer as the history keeps it: with tools, the calls it wrote as tool_calls (as training saw them)."""
    if not tools:
        return {"role": "assistant", "content": answer}
    from ftune.runtime.data.agent import parse_answer, parse_call

    content, calls, _ = parse_answer(answer)
    if not calls:
        return {"role": "assistant", "content": answer}
    return {"role": "assistant", "content": content,
            "tool_calls": [parse_call(c, "the answer", k) | {"id": c["id"]} for k, c in enumerate(calls)]}


def user_turn(prompt: str | dict[str, Any]) -> dict[str, Any]:
    return prompt if isinstance(prompt, dict) else {"role": "user", "content": prompt}


class ChatSession:
    """The chat loop. `models` is a list of (label, model, tokenizer, disable_adapter): the run's model
    first, the base second with --compare-base. Input comes from `read` (input() by default)."""

    def __init__(self, models: list[tuple[str, Any, Any, bool]], settings, console: Console | None = None,
                 read: Callable[[str], str] | None = None, system: str | None = None, vision: Any = None,
                 tools: list[dict[str, Any]] | None = None):
        self.models = models
        self.tools = tools  # functions the model may call (OpenAI's shape): rendered by its template
        self.vision = vision  # a vision-language run's processor and pixel limits (runtime.infer.generate.Vision)
        self.pending: list[str] = []  # images for the next message
        self.settings = settings
        self.console = console or Console(highlight=False)
        self.read = read or (lambda prompt: self.console.input(prompt))
        self.system = system
        self.conversations = [Conversation() for _ in models]
        self.lock = threading.Lock()  # one generation at a time: a stopped one finishes its step first

    # ------------------------------------------------------------------ commands
    def command(self, line: str) -> bool:
        """Run a /command; False when the chat should end."""
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        say = self.console.print
        if name in ("exit", "quit", "q"):
            return False
        if name == "reset":
            self.conversations = [Conversation() for _ in self.models]
            say("[dim]Conversation cleared.[/]")
        elif name == "system":
            self.system = arg or None
            say(f"[dim]System prompt {'set' if arg else 'cleared'}; it applies from the next answer.[/]")
        elif name == "set":
            self._set(arg)
        elif name == "image":
            self.attach(arg)
        elif name == "tool":
            self.tool_result(arg)
        elif name == "settings":
            s = self.settings
            say(f"[dim]temperature {s.temperature}, top_p {s.top_p}, max_new_tokens {s.max_new_tokens}; "
                f"system prompt: {self.system or '(none)'}[/]")
        elif name == "help":
            say(Text(HELP, style="dim"))
        else:
            say(f"[yellow]unknown command /{name}[/]: /help lists them")
        return True

    def _set(self, arg: str) -> None:
        key, _, value = arg.partition(" ")
        if key not in SETTING_TYPES or not value.strip():
            self.console.print(f"[yellow]usage: /set {{{'|'.join(SETTING_TYPES)}}} VALUE[/]")
            return
        try:
            new = SETTING_TYPES[key](value.strip())
        except ValueError:
            self.console.print(f"[yellow]{key} needs {'a whole number' if SETTING_TYPES[key] is int else 'a number'}[/]")
            return
        old = getattr(self.settings, key)
        setattr(self.settings, key, new)
        try:
            self.settings.check()
        except ValueError as e:
            setattr(self.settings, key, old)
            self.console.print(f"[yellow]{e}[/]")
            return
        self.console.print(f"[dim]{key} = {new}[/]")

    def attach(self, path: str) -> bool:
        """Attach an image to the next message: found, opening, and a model that reads images."""
        from pathlib import Path

        from ftune.runtime.data.images import image_size, resolve

        if not path:
            self.console.print("[yellow]usage: /image PATH[/]")
            return False
        if self.vision is None:
            self.console.print("[yellow]this run's model reads text only: /image needs a vision-language model "
                               "(e.g. Qwen2-VL)[/]")
            return False
        try:
            ref = resolve(path, [Path.cwd()])
            width, height = image_size(ref)
        except ValueError as e:
            self.console.print(f"[yellow]image {e}[/]")
            return False
        self.pending.append(ref)
        self.console.print(f"[dim]{ref} ({width}x{height}) goes with your next message.[/]")
        return True

    def tool_result(self, result: str) -> list[str] | None:
        """Answer the model's last tool call with `result`, and let it go on."""
        call = self.conversations[0].open_call()
        if call is None or not result:
            self.console.print("[yellow]usage: /tool RESULT, after an answer that calls a tool[/]")
            return None
        return self.answer({"role": "tool", "content": result, "tool_call_id": call["id"],
                            "name": call["function"]["name"]})

    def _show_calls(self, text: str) -> None:
        """The tool calls an answer makes, one line each: name(arguments)."""
        if not self.tools:
            return
        import json

        for call in assistant_turn(text, self.tools).get("tool_calls") or []:
            fn = call["function"]
            line = Text("tool call ", style="bold magenta")
            line.append(f"{fn['name']}({json.dumps(fn['arguments'], ensure_ascii=False)})")
            self.console.print(line)
            self.console.print("[dim]/tool RESULT gives it the result.[/]")

    # ------------------------------------------------------------------ answering
    def answer(self, prompt: str | dict[str, Any]) -> list[str] | None:
        """Every model's answer to `prompt` (with the images attached since the last one), streamed to the
        terminal; each conversation grows by a turn. None when Ctrl+C stopped it (the conversations are left as
        they were; the images stay attached)."""
        from ftune.runtime.data.images import PLACEHOLDER

        if self.pending and isinstance(prompt, str):
            prompt = {"role": "user", "content": PLACEHOLDER * len(self.pending) + prompt,
                      "images": list(self.pending)}
        if len(self.models) == 1:
            answers = self._stream_plain(prompt)
        else:
            answers = self._stream_side_by_side(prompt)
        if answers is not None:
            self.pending = []
            for conv, text in zip(self.conversations, answers):
                conv.add(prompt, text, self.tools)
        return answers

    def _generation(self, i: int, prompt: str | dict[str, Any]):
        from ftune.runtime.infer.generate import Generation

        _, model, tok, adapter_off = self.models[i]
        return Generation(model, tok, self.conversations[i].messages(self.system, prompt), self.settings,
                          disable_adapter=adapter_off, lock=self.lock, vision=self.vision, tools=self.tools)

    def _stream_plain(self, prompt: str | dict[str, Any]) -> list[str] | None:
        gen = self._generation(0, prompt)
        self.console.print(f"[bold cyan]{self.models[0][0]} ›[/] ", end="")
        out = self.console.file
        try:
            for piece in gen:
                out.write(piece)
                out.flush()
        except KeyboardInterrupt:
            gen.cancel()
            out.write(" [stopped]\n")
            out.flush()
            return None
        out.write("\n")
        out.flush()
        self._show_calls(gen.text)
        self._footer(gen)
        return [gen.text]

    def _footer(self, gen) -> None:
        if gen.finish_reason == "length":
            self.console.print(f"[dim](cut at max_new_tokens={self.settings.max_new_tokens}; "
                               f"/set max_new_tokens N for longer answers)[/]")

    def _stream_side_by_side(self, prompt: str | dict[str, Any]) -> list[str] | None:
        texts = ["" for _ in self.models]
        wide = self.console.width >= 80

        def view():
            if not wide:
                return Group(*[Panel(Text(t or "…"), title=label, title_align="left", border_style=style)
                               for (label, *_), t, style in zip(self.models, texts, ("cyan", "magenta"))])
            # one bordered table row: both answers as tall as the longer one, titles wrapped, never cropped
            table = Table(expand=True, show_lines=False, header_style="bold", border_style="dim")
            for (label, *_), style in zip(self.models, ("cyan", "magenta")):
                table.add_column(Text(label, style=style), ratio=1, overflow="fold")
            table.add_row(*[Text(t or "…") for t in texts])
            return table

        # visible: a long answer scrolls the terminal instead of being cut at its height
        with Live(view(), console=self.console, refresh_per_second=12, vertical_overflow="visible") as live:
            for i in range(len(self.models)):
                gen = self._generation(i, prompt)
                try:
                    for piece in gen:
                        texts[i] += piece
                        live.update(view())
                except KeyboardInterrupt:
                    gen.cancel()
                    texts[i] += " [stopped]"
                    live.update(view())
                    return None
                texts[i] = gen.text
            live.update(view())
        return texts

    # ------------------------------------------------------------------ the loop
    def loop(self) -> None:
        while True:
            try:
                line = self.read("[bold green]you ›[/] ")
            except (EOFError, KeyboardInterrupt):
                self.console.print()
                break
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if not self.command(line):
                    break
                continue
            self.answer(line)


def read_tools(path: str) -> list[dict[str, Any]]:
    """The functions in a JSON file (a list of OpenAI tool definitions, or the flat {"name", "parameters"})."""
    import json
    from pathlib import Path

    from ftune.runtime.data.agent import parse_tools
    from ftune.runtime.errors import UserError

    try:
        return parse_tools(json.loads(Path(path).read_text(encoding="utf-8")), path)
    except (OSError, json.JSONDecodeError, ValueError) as e:
        raise UserError(f"--tools {path}: {e}", hint="Give a JSON file holding a list of function definitions "
                                                    "({\"name\", \"description\", \"parameters\"}).") from None


def run_chat(run, checkpoint: int | None = None, compare_base: bool = False, temperature: float = 0.7,
             top_p: float = 0.9, max_new_tokens: int = 512, system: str | None = None, seed: int | None = None,
             console: Console | None = None, read: Callable[[str], str] | None = None,
             images: tuple[str, ...] = (), tools: str | None = None) -> ChatSession:
    """Load the run's model (and the base) and chat until /exit or end of input. `images` go with the first
    message (vision-language runs); `tools`: a JSON file of the functions the model may call."""
    from ftune.runtime.infer.generate import Settings
    from ftune.runtime.infer.loading import load_base_for_comparison, load_run_model

    console = console or Console(highlight=False)
    settings = Settings(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
    settings.check()
    functions = read_tools(tools) if tools else None
    with console.status(f"Loading {run.name}…"):
        rm = load_run_model(run, checkpoint)
        models = [(f"{run.name} ({rm.target.label})", rm.model, rm.tokenizer, False)]
        if compare_base:
            base, via_adapter = load_base_for_comparison(rm, run)
            models.append((f"base ({rm.spec.model.name_or_path})", base, rm.tokenizer, via_adapter))
    template = rm.spec.model.template if rm.spec.model.template != "auto" else \
        "the processor's own" if rm.vision is not None else "the tokenizer's own"
    console.print(f"Chatting with [bold]{run.name}[/] ({rm.target.label}"
                  f"{', adapter on ' + rm.spec.model.name_or_path if rm.adapter else ''}); template: {template}."
                  f"{' The base answers too.' if compare_base else ''} /help for commands, /exit to leave.")
    if functions:
        from ftune.runtime.data.tokenize import template_abilities
        from ftune.runtime.errors import UserError

        ab = template_abilities(rm.tokenizer)
        if not ab.tools:
            raise UserError(f"--tools {tools}: {run.name}'s chat template cannot render tools ({ab.tools_problem})",
                            hint="Train with model.template chatml, or a model whose template has tools.")
        console.print(f"[dim]It may call {', '.join(t['function']['name'] for t in functions)}; /tool RESULT "
                      f"answers a call.[/]")
    session = ChatSession(models, settings, console, read, system, rm.vision, functions)
    if rm.vision is not None:
        console.print("[dim]It reads images: /image PATH attaches one to your next message.[/]")
    for path in images:
        if not session.attach(path):
            from ftune.runtime.errors import UserError

            raise UserError(f"--image {path}: see above", hint="Pass an image file that exists, to a run of a "
                                                               "vision-language model.")
    session.loop()
    return session
