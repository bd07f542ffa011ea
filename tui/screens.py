"""The monitor's dialogs: confirm a stop or a checkpoint, the tail of train.log, help."""

from __future__ import annotations

import os
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Log, SelectionList, Static
from textual.widgets.selection_list import Selection
from textual.worker import get_current_worker

from ftune.runtime.rundir import readable_log

LOG_TAIL_BYTES = 256 << 10


class ConfirmStop(ModalScreen[bool]):
    """y stops the run (it saves a checkpoint first); anything else keeps it training."""

    DEFAULT_CSS = """
    ConfirmStop { align: center middle; }
    #dialog { width: 64; height: auto; padding: 1 2; border: thick $warning; background: $surface; }
    """

    BINDINGS = [Binding("y", "answer(True)", "stop it"), Binding("n,escape,q", "answer(False)", "keep training")]

    def __init__(self, name: str) -> None:
        super().__init__()
        self.run_name = name

    def question(self) -> str:
        return (f"[b]Stop {self.run_name}?[/b]\n\n"
                f"It finishes the current step, saves a checkpoint and ends.\n"
                f"Continue it later with [b]ftune train {self.run_name} --resume[/b].\n\n"
                f"[b]y[/b] stop it    [b]n[/b] / [b]esc[/b] keep training")

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.question())

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class ConfirmCheckpoint(ConfirmStop):
    """y asks the run for a checkpoint at its next step end (`ftune checkpoint`); training goes on either way."""

    BINDINGS = [Binding("y", "answer(True)", "save one"), Binding("n,escape,q", "answer(False)", "not now")]

    def question(self) -> str:
        return (f"[b]Save a checkpoint of {self.run_name} now?[/b]\n\n"
                f"It saves one at the end of the current step and trains on.\n"
                f"Same as [b]ftune checkpoint {self.run_name}[/b].\n\n"
                f"[b]y[/b] save one    [b]n[/b] / [b]esc[/b] not now")


class LogScreen(ModalScreen[None]):
    """The end of train.log (the worker's output, tracebacks included), following as it grows."""

    DEFAULT_CSS = """
    LogScreen { align: center middle; }
    #logbox { width: 100%; height: 100%; border: thick $primary; background: $surface; }
    #logpath { height: 1; }
    #trainlog { height: 1fr; }
    """

    class Lines(Message):
        def __init__(self, lines: list[str]) -> None:
            super().__init__()
            self.lines = lines

    BINDINGS = [Binding("escape,q,l", "close", "close")]

    def __init__(self, path: Path, poll: float = 0.5) -> None:
        super().__init__()
        self.path, self.poll = path, poll

    def compose(self) -> ComposeResult:
        with Vertical(id="logbox"):
            yield Static(f"[b]{self.path}[/b]  [dim](esc closes)[/dim]", id="logpath")
            yield Log(id="trainlog", max_lines=5000)

    def on_mount(self) -> None:
        self.query_one(Log).focus()
        self.follow()

    @work(thread=True, exit_on_error=False)
    def follow(self) -> None:
        worker = get_current_worker()
        offset, inode = None, None
        while True:
            try:
                st = os.stat(self.path)
                if offset is None or st.st_ino != inode or st.st_size < offset:  # first look, or a new file
                    offset, inode = (max(0, st.st_size - LOG_TAIL_BYTES) if offset is None else 0), st.st_ino
                    mid_line = offset > 0
                else:
                    mid_line = False
                if st.st_size > offset:
                    with open(self.path, "rb") as f:
                        f.seek(offset)
                        chunk = f.read()
                    if mid_line:  # started inside the file: drop the partial first line
                        skip = chunk.find(b"\n") + 1
                        offset, chunk = offset + skip, chunk[skip:]
                    cut = chunk.rfind(b"\n") + 1  # whole lines only; the rest next time
                    offset += cut
                    if cut:
                        lines = readable_log(chunk[:cut].decode("utf-8", "replace")).splitlines()
                        self.post_message(self.Lines(lines))
            except FileNotFoundError:
                if offset is None:
                    offset = 0
                    self.post_message(self.Lines(["(no train.log yet)"]))
            if worker.cancelled_event.wait(self.poll):
                return

    def on_log_screen_lines(self, message: Lines) -> None:
        self.query_one(Log).write_lines(message.lines)

    def action_close(self) -> None:
        self.dismiss(None)


HELP = """\
[b]ftune watch[/b] only reads the run's files: leaving it never touches the run.

[b]q[/b]    leave the monitor: [b]the run goes on[/b] (back with ftune watch RUN)
[b]s[/b]    stop the run gracefully: it saves a checkpoint first (asks)
[b]c[/b]    save a checkpoint at the next step end and train on (asks)
[b]l[/b]    the end of train.log, following it
[b]p[/b]    a large loss plot (train and eval) instead of the sparklines
[b]o[/b]    lay other runs over that plot (picked from the runs list)
[b]?[/b]    this help
[b]↑ ↓ PgUp PgDn Home End[/b]  scroll the step log; it follows the
     newest line while you are at the bottom, "+N new" when you are not

[b]state[/b]     not started · starting · running · stalled (no step for
          training.hang_after) · stopping · stopped · finished · failed ·
          crashed (died without a final event)
[b]loss[/b]      training loss (and eval loss); [b]lr[/b] learning rate;
          [b]gn[/b] grad norm
[b]GPU[/b]       live from this machine while the run runs here,
          else the run's own samples; no GPU: the worker's memory
[b]Problems[/b]  NaN or inf, a loss stuck at 0 or jumping, a stall, a
          rollback (↺), the error + hint

[dim]esc closes[/dim]"""


class OverlayPicker(ModalScreen["list[str] | None"]):
    """The other runs, to lay over the watched run's loss chart: space picks, enter shows them, esc leaves it."""

    DEFAULT_CSS = """
    OverlayPicker { align: center middle; }
    #overlaybox { width: 76; max-width: 100%; height: auto; max-height: 90%; padding: 1 2; border: thick $primary;
                  background: $surface; }
    #overlay-runs { height: auto; max-height: 16; margin-top: 1; }
    """

    BINDINGS = [Binding("enter", "done", "lay over", priority=True), Binding("escape,q", "cancel", "cancel")]

    def __init__(self, live: str, rows: list[dict], selected: list[str]) -> None:
        super().__init__()
        self.live, self.rows, self.selected = live, rows, selected

    def compose(self) -> ComposeResult:
        with Vertical(id="overlaybox"):
            yield Static(f"[b]Lay runs over {self.live}'s loss chart[/b]\n"
                         f"[dim]space picks · enter shows them · esc leaves the chart as it is[/dim]")
            if not self.rows:
                yield Static("\nNo other runs in this runs folder.")
                return
            width = max(len(r["name"]) for r in self.rows)
            yield SelectionList(*[
                Selection(f"{r['name']:<{width}}  {r['status']:<11} {r['progress']:>9}  best eval {r['best_eval']}",
                          r["name"], r["name"] in self.selected) for r in self.rows], id="overlay-runs")

    def on_mount(self) -> None:
        if self.query("#overlay-runs"):
            self.query_one("#overlay-runs").focus()

    def action_done(self) -> None:
        picked = self.query_one("#overlay-runs", SelectionList).selected if self.query("#overlay-runs") else []
        self.dismiss(list(picked))

    def action_cancel(self) -> None:
        self.dismiss(None)


class HelpScreen(ModalScreen[None]):
    """The keys and what the monitor's words mean; it scrolls where the terminal is shorter than it (80x24)."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    #helpbox { width: 100; max-width: 100%; height: auto; max-height: 100%; padding: 1 0 1 2; border: thick $primary;
               background: $surface; scrollbar-size-vertical: 1; }  /* at 80 columns its lines fit beside the bar */
    """

    BINDINGS = [Binding("escape,q,question_mark", "close", "close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="helpbox"):
            yield Static(HELP)

    def action_close(self) -> None:
        self.dismiss(None)
