"""`ftune watch` without a run: every run with its status, progress and last loss; Enter opens one.

Rows come from the same files as `ftune ls` (runtime/runs.py), but each run's events are followed
incrementally (runtime/tail.py), so a list that refreshes every second stays cheap with long runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static
from textual.worker import get_current_worker

from ftune.runtime.events import phase_text
from ftune.runtime.history import History, finite
from ftune.runtime.rundir import RunDir, list_run_names
from ftune.runtime.runs import fit_model, fit_names, spec_fields  # the loose run.yaml reading `ftune ls` uses
from ftune.runtime.tail import Tail, load
from ftune.tui import panels

# eval: the best eval loss; model last: it gives way. Short headers, so that 80 columns hold every column
COLUMNS = ("run", "status", "progress", "loss", "eval", "stage", "started", "model")


class RunRows:
    """One row per run, from files only; each run's events are read once and then followed."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._followed: dict[str, tuple[History, Tail]] = {}

    def rows(self) -> list[dict[str, Any]]:
        names = list_run_names(self.root)
        for gone in set(self._followed) - set(names):
            del self._followed[gone]
        return [self.row(RunDir(self.root, n)) for n in names]

    def row(self, run: RunDir) -> dict[str, Any]:
        history, tail = self._followed.get(run.name) or load(run.events_path)
        if tail.replaced():
            history, tail = load(run.events_path)
        else:
            events = tail.read_new()
            if tail.reset:
                history = History()
            history.extend(events)
        self._followed[run.name] = (history, tail)
        view, status = history.view(), run.read_status()
        recorded = run.state()
        state = "not started" if recorded == "new" else panels.display_state(recorded, view.stall is not None)
        loss = (view.last_step or {}).get("loss")
        evals = [y for y in view.eval_loss[1] if finite(y)]
        started = status.get("started_at") or view.started_t
        return {
            "name": run.name, "status": state, **spec_fields(run),
            "phase": phase_text(view.phase, short=True) if state == "starting" else "",
            "progress": f"{view.step}/{view.max_steps}" if view.max_steps else "–",
            "loss": panels.num(loss),
            "best_eval": panels.num(min(evals)) if evals else "–",
            "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)) if started else "–",
        }


class RunsScreen(Screen):
    DEFAULT_CSS = """
    #runs-title { height: auto; padding: 0 1; background: $boost; }
    #runs { height: 1fr; }
    #runs-empty { height: auto; padding: 0 1; }
    """

    BINDINGS = [Binding("q", "app.quit", "quit"), Binding("enter", "open", "watch", show=True)]

    class Rows(Message):
        def __init__(self, rows: list[dict[str, Any]]) -> None:
            super().__init__()
            self.rows = rows

    def __init__(self, root: Path, poll: float = 1.0) -> None:
        super().__init__()
        self.root, self.poll = Path(root), poll
        self.loaded = False

    def compose(self) -> ComposeResult:
        yield Static(f"[b]Runs[/b] in {self.root}   [dim]Enter watches one · q quits · eval: the best eval loss[/dim]",
                     id="runs-title")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)  # its columns come with the rows
        yield Static(id="runs-empty")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DataTable).focus()
        self.follow_runs()

    @work(thread=True, exit_on_error=False, group="runs")
    def follow_runs(self) -> None:
        worker = get_current_worker()
        rows, last = RunRows(self.root), None
        while not worker.is_cancelled:
            try:
                current = rows.rows()
            except Exception as exc:  # noqa: BLE001 - a run folder vanishing mid-read: try again next time
                current = last or []
                self.log.warning(f"runs list: {exc}")
            if current != last:
                self.post_message(self.Rows(current))
                last = current
            if worker.cancelled_event.wait(self.poll):
                return

    def on_runs_screen_rows(self, message: Rows) -> None:
        table = self.query_one(DataTable)
        selected = None
        if table.row_count and table.cursor_row is not None and table.cursor_row < table.row_count:
            selected = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value
        width = self.size.width or 80
        narrow = width < 100  # the start without its year

        def cells_of(status) -> list[tuple[str, ...]]:
            return [(r["name"], status(r), r["progress"], r["loss"], r["best_eval"], r["stage_method"],
                     r["started"][5:] if narrow and len(r["started"]) == 16 else r["started"],
                     panels.short_model(r["model"])) for r in message.rows]

        columns = list(COLUMNS)

        def widths_of(cells) -> list[int]:
            return [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]

        def room_for_model(cells) -> int:
            return width - sum(widths_of(cells)[:-1]) - 2 * len(columns) - 1

        cells = cells_of(lambda r: f"{r['status']}: {r['phase']}" if r.get("phase") else r["status"])
        if room_for_model(cells) < 8:  # a starting run's phase only where it fits, as in `ftune ls`
            cells = cells_of(lambda r: r["status"])
        if room_for_model(cells) < 8:  # a long run name: the start time gives way (the monitor shows it)
            gone = columns.index("started")
            columns.pop(gone)
            cells = [row[:gone] + row[gone + 1:] for row in cells]
        # then the names' middles, so that run-a-long-name-01 and -02 stay apart
        names = fit_names([row[0] for row in cells], 8 - room_for_model(cells))
        cells = [(n, *row[1:]) for n, row in zip(names, cells)]
        room = max(8, room_for_model(cells))  # the model column's share
        cells = [(*row[:-1], fit_model(row[-1], room)) for row in cells]
        widths = widths_of(cells)
        # Columns of the widths just measured, rebuilt each time: an auto-width column learns its cells' widths
        # only when the table is next idle, and a paint before that (a real terminal paints at once) caches every
        # cell cut to its header's width, a cache that does not know widths and so is never redrawn.
        table.clear(columns=True)
        for col, w in zip(columns, widths):
            table.add_column(col, width=w, key=col)
        for r, row in zip(message.rows, cells):
            style = panels.STATE_STYLE.get(row[1].split(":")[0], "")
            table.add_row(row[0], Text(row[1], style=style), *row[2:], key=r["name"])
        if selected is not None and selected in {r["name"] for r in message.rows}:
            table.move_cursor(row=table.get_row_index(selected))
        elif not self.loaded:  # first look: the run that is running (or stopping) is the likely one to watch
            rank = {"running": 0, "stopping": 1, "starting": 2}
            live = sorted((rank[r["status"]], i) for i, r in enumerate(message.rows) if r["status"] in rank)
            if live:
                table.move_cursor(row=live[0][1])
        empty = self.query_one("#runs-empty", Static)
        empty.update("" if message.rows else f"No runs in {self.root}. Try `ftune demo`, or `ftune new`.")
        self.loaded = True

    def on_data_table_row_selected(self, message: DataTable.RowSelected) -> None:
        self._open(message.row_key.value)

    def action_open(self) -> None:
        table = self.query_one(DataTable)
        if table.row_count:
            self._open(table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value)

    def _open(self, name: str | None) -> None:
        if name:
            self.app.push_screen(self.app.monitor(RunDir(self.root, name), from_list=True))
