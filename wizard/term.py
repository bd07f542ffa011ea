"""What the terminal can show, and a console that respects it.

Over SSH the locale may be C or Latin-1: then the wizard speaks plain ASCII (">" for the pointer,
"-" for dashes, ASCII boxes) instead of printing glyphs the terminal turns into garbage.
FTUNE_ASCII=1 forces ASCII, FTUNE_ASCII=0 forces Unicode.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import textwrap
from typing import IO, Any

from rich import box
from rich.console import Console

_UTF8 = re.compile(r"utf-?8", re.IGNORECASE)

_ASCII = str.maketrans({
    "—": "-", "–": "-", "…": "...", "≈": "~", "×": "x", "·": "-", "»": ">", "«": "<", "→": "->",
    "←": "<-", "↑": "^", "↓": "v", "✓": "ok", "✗": "x", "α": "alpha", "≤": "<=", "≥": ">=", "’": "'",
    "‘": "'", "“": '"', "”": '"', "•": "*",
})


def locale_is_utf8(environ: Any = None, utf8_mode: int | None = None) -> bool:
    """True when the user's locale asks for UTF-8 (LC_ALL > LC_CTYPE > LANG).

    Python turns a plain C locale into C.UTF-8 by setting LC_CTYPE itself (PEP 538) and then runs
    in UTF-8 mode: that is the terminal asking for C, so it counts as not UTF-8.
    """
    env = os.environ if environ is None else environ
    mode = sys.flags.utf8_mode if utf8_mode is None else utf8_mode
    lc_all, lc_ctype, lang = env.get("LC_ALL"), env.get("LC_CTYPE"), env.get("LANG")
    if not lc_all and lc_ctype in ("C.UTF-8", "C.utf8") and mode and (lang or "C") in ("C", "POSIX"):
        return False
    name = lc_all or lc_ctype or lang or ""
    return bool(_UTF8.search(name))


def use_ascii(stream: IO[str] | None = None, environ: Any = None) -> bool:
    env = os.environ if environ is None else environ
    forced = env.get("FTUNE_ASCII")
    if forced in ("0", "1"):
        return forced == "1"
    encoding = getattr(stream or sys.stdout, "encoding", None) or ""
    return not (_UTF8.search(encoding) and locale_is_utf8(env))


def asciify(text: str) -> str:
    return text.translate(_ASCII).encode("ascii", "replace").decode("ascii")


class UI:
    """Printing for the wizard: a rich console plus the ASCII switch and the terminal width."""

    def __init__(self, file: IO[str] | None = None, width: int | None = None, ascii_only: bool | None = None,
                 color: bool | None = None):
        self.ascii = use_ascii(file) if ascii_only is None else ascii_only
        self.console = Console(file=file, width=width, highlight=False, emoji=False,
                               no_color=(color is False) or None, force_terminal=color or None,
                               safe_box=True)

    @property
    def width(self) -> int:
        return self.console.width or shutil.get_terminal_size().columns

    @property
    def box(self) -> box.Box:
        return box.ASCII if self.ascii else box.ROUNDED

    def t(self, text: str) -> str:
        """Text as this terminal can show it."""
        return asciify(text) if self.ascii else text

    def print(self, text: Any = "", style: str | None = None) -> None:
        if isinstance(text, str):
            self.console.print(self.t(text), style=style, markup=False, soft_wrap=False)
        else:
            self.console.print(text)

    def wrapped(self, text: str, first: str, rest: str, style: str | None = None) -> None:
        """Print `text` wrapped to the terminal, continuation lines indented under the first."""
        width = max(20, self.width - 1)
        for para in self.t(text).split("\n"):
            lines = textwrap.wrap(para, width, initial_indent=first, subsequent_indent=rest,
                                  break_on_hyphens=False) or [first]
            self.console.print("\n".join(lines), style=style, markup=False, soft_wrap=True)
            first = rest

    def note(self, text: str) -> None:
        self.wrapped(text, "  ", "    ", style="dim")

    def warn(self, text: str) -> None:
        self.wrapped(text, "! " if self.ascii else "⚠ ", "  ", style="yellow")

    def good(self, text: str) -> None:
        self.wrapped(text, "ok " if self.ascii else "✓ ", "   ", style="green")
