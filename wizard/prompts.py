"""Questionary wrappers for the wizard: Ctrl+B goes back, defaults come from the choices, ASCII where needed.

Every question is asked with `.unsafe_ask()`, so Ctrl+C raises KeyboardInterrupt up to the one
handler in the CLI. Ctrl+B exits the question with the BACK sentinel. Tests pass prompt_toolkit's
pipe input and DummyOutput through `Prompter(input=..., output=...)`.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any, Callable

import questionary
from prompt_toolkit.completion import PathCompleter
from prompt_toolkit.key_binding import KeyBindings, merge_key_bindings
from prompt_toolkit.shortcuts import CompleteStyle
from questionary import Choice, Separator

from ftune.wizard.term import UI


class _Back:
    def __repr__(self) -> str:
        return "BACK"


BACK: Any = _Back()


@dataclass
class Option:
    """One choice of a select: what is shown, what it means, and why it cannot be chosen (if so)."""

    title: str
    value: Any
    description: str | None = None
    disabled: str | None = None


SEPARATOR = Option("", None, disabled="separator")


def _back_bindings() -> KeyBindings:
    kb = KeyBindings()

    @kb.add("c-b", eager=True)
    def _back(event) -> None:
        event.app.erase_when_done = True  # the question left unanswered goes from the screen
        event.app.exit(result=BACK)

    return kb


class Prompter:
    """Asks questions on the terminal (or on the input/output given, for tests)."""

    def __init__(self, ui: UI, input: Any = None, output: Any = None):
        self.ui = ui
        self._io = {} if input is None else {"input": input, "output": output}

    # ------------------------------------------------------------------ helpers
    @property
    def pointer(self) -> str:
        return ">" if self.ui.ascii else "»"

    def _hint(self, text: str) -> str:
        return self.ui.t(text)

    def _wrap(self, text: str | None) -> str | None:
        """Descriptions are drawn on one line each by questionary: wrap them to the terminal."""
        if not text:
            return None
        width = max(30, self.ui.width - 16)
        lines = []
        for para in self.ui.t(text).split("\n"):
            lines.extend(textwrap.wrap(para, width) or [""])
        return "\n               ".join(lines)

    def _ask(self, question: questionary.Question) -> Any:
        app = question.application
        app.key_bindings = merge_key_bindings([app.key_bindings or KeyBindings(), _back_bindings()])
        return question.unsafe_ask()

    # ------------------------------------------------------------------ questions
    def select(self, message: str, options: list[Option], default: Any = None, instruction: str | None = None,
               search: bool = False) -> Any:
        """Choose one option; `default` is the value to start on (the first enabled option when it is not one)."""
        choices: list[Any] = []
        for o in options:
            if o.disabled == "separator":
                choices.append(Separator(self.ui.t(o.title) if o.title else " "))
                continue
            choices.append(Choice(self.ui.t(o.title), value=o.value, description=self._wrap(o.description),
                                  disabled=self.ui.t(o.disabled) if o.disabled else None))
        enabled = [c for c in choices if isinstance(c, Choice) and not isinstance(c, Separator) and not c.disabled]
        start = next((c for c in enabled if c.value == default), enabled[0] if enabled else None)
        hint = instruction or ("(arrows or type to filter, Enter; Ctrl+B back)" if search
                               else "(arrows, Enter; Ctrl+B back)")
        q = questionary.select(self.ui.t(message), choices=choices, default=start, pointer=self.pointer,
                               instruction=self._hint(hint), use_search_filter=search, use_jk_keys=not search,
                               **self._io)
        return self._ask(q)

    def text(self, message: str, default: str = "", validate: Callable[[str], bool | str] | None = None,
             instruction: str | None = None, **kwargs: Any) -> Any:
        def check(value: str) -> bool | str:
            if validate is None:
                return True
            result = validate(value)
            return result if result is True else self.ui.t(str(result))

        q = questionary.text(self.ui.t(message), default=default, validate=check,
                             instruction=self._hint(instruction or "(Ctrl+B back)"), **kwargs, **self._io)
        return self._ask(q)

    def path(self, message: str, default: str = "", validate: Callable[[str], bool | str] | None = None,
             only_directories: bool = False) -> Any:
        """A path, completed with Tab (files and folders, ~ expanded)."""
        return self.text(message, default, validate, instruction="(Tab completes; Ctrl+B back)",
                         completer=PathCompleter(expanduser=True, only_directories=only_directories),
                         complete_while_typing=False, complete_style=CompleteStyle.READLINE_LIKE)

    def checkbox(self, message: str, options: list[Option], checked: list[Any] | None = None) -> Any:
        """Choose any number of options (Space toggles, Enter confirms); the list of values chosen."""
        choices = [questionary.Choice(self.ui.t(o.title), value=o.value, description=self._wrap(o.description),
                                      checked=o.value in (checked or [])) for o in options]
        q = questionary.checkbox(self.ui.t(message), choices=choices, pointer=self.pointer,
                                 instruction=self._hint("(Space picks, Enter confirms; Ctrl+B back)"), **self._io)
        return self._ask(q)

    def confirm(self, message: str, default: bool = True) -> Any:
        q = questionary.confirm(self.ui.t(message), default=default, **self._io)
        return self._ask(q)
