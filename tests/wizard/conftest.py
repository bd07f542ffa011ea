"""Driving the wizard: keys sent up front through prompt_toolkit's pipe input, output to DummyOutput.

The pipe is closed after the keys, so a wizard that wants more answers than the test gave ends with
EOF (a cancellation), never a hang.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from ftune.runtime import catalog
from ftune.runtime.memory_estimate import Gpu
from ftune.wizard.flow import Outcome, Wizard
from ftune.wizard.prompts import Prompter
from ftune.wizard.runfile import Answers
from ftune.wizard.term import UI

DOWN, UP, ENTER, BACK, CTRL_C, CLEAR = "\x1b[B", "\x1b[A", "\r", "\x02", "\x03", "\x15"
H100 = [Gpu("H100 80GB HBM3", 79.6, 79.0)]
GROUPS = list(catalog.groups())


def down(n: int) -> str:
    return DOWN * n


def group(name: str) -> str:
    """Choose a maker in the first model list (it starts on the first)."""
    return down(GROUPS.index(name)) + ENTER


LOCAL = down(len(GROUPS)) + ENTER  # the separator is skipped
HUB = down(len(GROUPS) + 1) + ENTER
QWEN25_7B = group("Qwen") + UP + ENTER + down(3) + ENTER  # versions start on the newest (Qwen3); sizes on the first


@dataclass
class Drive:
    wizard: Wizard
    outcome: Outcome | None  # None: cancelled (Ctrl+C, or the keys ran out)
    output: str

    @property
    def a(self) -> Answers:
        return self.wizard.a

    @property
    def text(self) -> str:
        """The output with its wrapping undone (lines are wrapped to 80 columns)."""
        return " ".join(self.output.replace("│", " ").split())


@pytest.fixture
def drive(project):
    def run(*keys: str, answers: Answers | None = None, gpus: list[Gpu] | None = None, cwd: Path | None = None,
            ascii_only: bool = False, width: int = 80, quick: bool = False) -> Drive:
        out = io.StringIO()
        ui = UI(file=out, width=width, ascii_only=ascii_only, color=False)
        with create_pipe_input() as inp:
            inp.send_text("".join(keys))
            inp.close()
            wizard = Wizard(Prompter(ui, input=inp, output=DummyOutput()), answers or Answers(), project / "runs",
                            gpus=list(gpus or []), cwd=cwd or project, quick=quick)
            try:
                outcome: Any = wizard.run()
            except KeyboardInterrupt:
                outcome = None
        return Drive(wizard, outcome, out.getvalue())

    return run
