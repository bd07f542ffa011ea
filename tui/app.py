"""`ftune watch`: the live monitor of one run (or a list of runs to pick from).

It reads the run directory only (events.jsonl, status.json, train.log): leaving it never touches
the run, and opening it later shows the whole history. Each data source has one long-lived thread
worker that sleeps on `worker.cancelled_event.wait(poll)` and reaches the UI through post_message:

    follow_events   events.jsonl + status.json  -> HistoryUpdated   (tail.py folds into history.py)
    sample_system   NVML / worker RSS, live     -> SystemSampled    (only while the run runs here)
    stop_run        launch.stop, on `s`         -> StopDone
    watch_terminal  stdin still a TTY?          -> exits when the terminal hangs up

The screen composes the regions of tui/regions.py (each a widget with its own CSS), lays them out for the
terminal's size, and hands each the data those messages carry. Never imports torch.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer
from textual.worker import get_current_worker

from ftune.runtime.history import History, View, empty_view
from ftune.runtime.rundir import ACTIVE_STATES, RunDir
from ftune.runtime.tail import ChildScan, Tail, load
from ftune.tui import panels
from ftune.tui.messages import HistoryUpdated, OverlayChoices, OverlaysLoaded, StopDone, SystemSampled
from ftune.tui.regions import Charts, CheckpointsRegion, GpuRegion, Problems, RunHeader, StepsTitle
from ftune.tui.widgets import StepLog


LIVE_SAMPLE_S = 2.0  # NVML sampling interval while the run runs on this machine
FINAL_POLL_S = 2.0  # a finished run is still watched (it may be resumed), just less often


class MonitorScreen(Screen):
    """One run: header, problems, loss / lr / grad-norm sparklines, GPUs, checkpoints, the step log."""

    BINDINGS = [
        Binding("q", "leave", "leave (run goes on)"),
        Binding("s", "stop", "stop"),
        Binding("c", "checkpoint", "checkpoint"),
        Binding("l", "train_log", "log"),  # train.log: short, so that every key fits 80 columns
        Binding("p", "plot", "plot"),
        Binding("o", "overlay", "overlay"),
        Binding("question_mark", "help", "help", key_display="?"),
    ]
    # the layout: which regions show, and how large, for the terminal's size (-tall, -wide) and with the plot (-plot)
    DEFAULT_CSS = """
    #middle { height: 6; margin-top: 1; }
    #side { width: 1fr; padding: 0 1; }
    MonitorScreen.-plot #middle, MonitorScreen.-plot #log-title, MonitorScreen.-plot #log { display: none; }
    MonitorScreen.-plot #plot { display: block; }
    MonitorScreen.-tall #middle { height: 10; }
    MonitorScreen.-tall #loss-spark { height: 6; }
    MonitorScreen.-tall #problems { max-height: 10; }
    MonitorScreen.-tall #gpu { max-height: 8; }
    MonitorScreen.-wide #side { width: 48; }  /* wide terminals: the loss chart takes the rest */
    """
    VERTICAL_BREAKPOINTS = [(0, "-short"), (32, "-tall")]
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]

    def __init__(self, run: RunDir, *, clock: Callable[[], float] = time.time, poll: float = 1.0,
                 live_system: bool = True, from_list: bool = False, first_load: Prefetch | None = None) -> None:
        super().__init__()
        self.run = run
        self.clock, self.poll, self.live_system, self.from_list = clock, poll, live_system, from_list
        self.view: View = empty_view()
        self.state = "not started"
        self.status: dict[str, Any] = {}
        self.note: str | None = None
        self.live: SystemSampled | None = None
        self.loaded = False  # the first read of the history is on screen
        self._generation = -1
        self._shown_seq = 0
        self._alert_seq = 0
        self._stop_requested = False
        self.checkpoint_asked = False  # `c`: a checkpoint was asked for from here
        self.stop_result: StopDone | None = None
        self.overlays: dict[str, Any] = {}  # other runs laid over the plot: name -> (loss, eval_loss) series
        self._first_shown: tuple | None = None  # (state, status, note) drawn from the first read, in on_mount
        # the first read of the history starts now (or started with the app), while Textual sets up the screen
        self._first_load = first_load or Prefetch(lambda: load(run.events_path, 0))

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield RunHeader(id="header")
        yield Problems(id="problems")
        with Horizontal(id="middle"):
            yield Charts(id="charts")
            with Vertical(id="side"):
                yield GpuRegion()
                yield CheckpointsRegion()
        yield StepsTitle("Steps", id="log-title")
        yield StepLog(id="log")
        yield Footer()

    def on_mount(self) -> None:
        log = self.query_one(StepLog)
        log.focus()
        self.watch(log, "unseen", lambda _: self._log_title())
        self._ticker = self.set_interval(1.0, self._tick)
        if not self._show_first_load():
            self._apply()
        self.follow_events()
        if self.live_system:
            self.sample_system()

    def _show_first_load(self) -> bool:
        """The history, when its first read is done by now (it began with the app): drawn before the first frame,
        so that frame is the full one, not empty panels followed by a second frame with the data."""
        first = self._first_load
        if first is None or not first.ready():
            return False
        try:
            history, _ = first.result()
            recorded, status = self.run.state(), self.run.read_status()
        except Exception:  # noqa: BLE001 - the events thread reads it again and says what went wrong
            return False
        state = panels.display_state(recorded, history.stall is not None)
        self.on_history_updated(HistoryUpdated(history.view(), state, status, None))
        self._first_shown = (state, status, None)  # the events thread goes on from this
        return True

    def on_resize(self) -> None:
        self.query_one(CheckpointsRegion).redraw()
        # once the breakpoints have given the side panel its width: lines that fit it
        self.call_after_refresh(self.query_one(CheckpointsRegion).redraw)
        self.call_after_refresh(self.query_one(GpuRegion).redraw)

    # ------------------------------------------------------------------ readers (threads)
    @work(thread=True, exit_on_error=False, group="events")
    def follow_events(self) -> None:
        worker = get_current_worker()
        path = self.run.events_path
        history, tail, fresh = History(-1), Tail(path), True
        recorded, status, last = "new", {}, None
        while not worker.is_cancelled:
            changed, note = False, None
            try:
                if fresh and self._first_load is not None:  # read since the monitor was made
                    history, tail = self._first_load.result()
                    self._first_load = None
                    if tail.replaced():
                        continue  # replaced meanwhile: read again, below
                    fresh, changed = False, self._first_shown is None
                    last = self._first_shown  # on screen already (on_mount drew it)
                elif fresh or tail.replaced():  # first, or truncated / replaced / deleted: read it all again
                    history, tail = load(path, history.generation + 1)
                    fresh, changed = False, True
                else:
                    events = tail.read_new()
                    if tail.reset:  # replaced between the check and the read: these events are the file
                        history = History(history.generation + 1)
                    if events or tail.reset:
                        history.extend(events)
                        changed = True
                if self.run.path.is_dir():
                    recorded, status = self.run.state(), self.run.read_status()
                else:
                    note = f"{self.run.path} no longer exists"
            except Exception as exc:  # noqa: BLE001 - the monitor stays up and says what it could not read
                note = f"could not read the run: {exc}"
            state = panels.display_state(recorded, history.stall is not None)
            if self._stop_requested and state in ("running", "starting", "stalled"):
                state = "stopping"
            if changed or (state, status, note) != last:
                self.post_message(HistoryUpdated(history.view(), state, status, note))
                last = (state, status, note)
            if worker.cancelled_event.wait(self.poll if state in panels.ACTIVE else max(self.poll, FINAL_POLL_S)):
                return

    @work(thread=True, exit_on_error=False, group="system")
    def sample_system(self) -> None:
        from ftune.runtime.sysmon import system_sample

        worker = get_current_worker()
        host = os.uname().nodename
        was_live = False
        while not worker.is_cancelled:
            status = self.run.read_status()
            here = status.get("state") in ACTIVE_STATES and status.get("host") == host and status.get("pid")
            if here:
                sample = system_sample(int(status["pid"]), status.get("cuda_visible_devices"))
                self.post_message(SystemSampled(sample, time.time()))
            elif was_live:
                self.post_message(SystemSampled(None, time.time()))
            was_live = bool(here)
            if worker.cancelled_event.wait(LIVE_SAMPLE_S):
                return

    @work(thread=True, exit_on_error=False, group="stop")
    def stop_run(self) -> None:
        from ftune.runtime import launch

        worker = get_current_worker()

        def on_wait() -> None:  # the monitor was closed: the run goes on stopping by itself
            if worker.is_cancelled:
                raise _Left()

        try:
            final = launch.stop(self.run, wait=600, on_wait=on_wait)
            self.post_message(StopDone(final, None))
        except _Left:
            pass
        except Exception as exc:  # noqa: BLE001 - RunError and the like: shown, never a crash
            self.post_message(StopDone(None, str(exc)))

    # ------------------------------------------------------------------ messages
    def on_history_updated(self, message: HistoryUpdated) -> None:
        first = not self.loaded
        self.view, self.state, self.status, self.note = message.view, message.state, message.status, message.note
        self.loaded = True
        self._alerts(first)
        self._apply()
        self._ticker.reset()  # the header was just drawn: the next clock-only redraw is a second away

    def on_system_sampled(self, message: SystemSampled) -> None:
        self.live = message if message.sample is not None else None
        self._gpu()

    def on_stop_done(self, message: StopDone) -> None:
        self.stop_result = message
        self._stop_requested = False
        self.checkpoint_asked = False  # `c`: a checkpoint was asked for from here
        name = self.run.name
        if message.error:
            self.notify(message.error, title="Stop", severity="error", timeout=10)
        elif message.final is None:
            self.notify(f"{name} ended without a final event: press l for train.log", severity="error", timeout=10)
        elif message.final.get("type") == "stopped":
            ckpt = (message.final.get("artifacts") or {}).get("checkpoint")
            self.notify(f"Stopped at step {message.final.get('step')}" + (f"; checkpoint {ckpt}" if ckpt else "")
                        + f". Continue with: ftune train {name} --resume", title="Stopped", timeout=15)
        else:
            self.notify(f"{name} ended with '{message.final.get('type')}' before it could stop", timeout=10)

    @work(thread=True, exit_on_error=False, group="overlay")
    def gather_runs(self) -> None:
        """The runs list's rows of every other run (read here, off the UI thread: their events may be long)."""
        from ftune.tui.runs_list import RunRows

        rows = [r for r in RunRows(self.run.root).rows() if r["name"] != self.run.name]
        self.post_message(OverlayChoices(rows))

    @work(thread=True, exit_on_error=False, group="overlay")
    def load_overlays(self, names: list[str]) -> None:
        curves = {}
        for name in names:
            view = load(RunDir(self.run.root, name).events_path)[0].view()
            curves[name] = (view.loss, view.eval_loss)
        self.post_message(OverlaysLoaded(curves))

    def on_overlay_choices(self, message: OverlayChoices) -> None:
        from ftune.tui.screens import OverlayPicker  # a dialog: imported when first opened

        self.app.push_screen(OverlayPicker(self.run.name, message.rows, list(self.overlays)), self._overlays_chosen)

    def _overlays_chosen(self, names: list[str] | None) -> None:
        if names is None:
            return
        if not names:
            self.overlays = {}
            if self.has_class("-plot"):
                self._plot()
            return
        self.load_overlays(names)

    def on_overlays_loaded(self, message: OverlaysLoaded) -> None:
        self.overlays = message.curves
        if not self.has_class("-plot"):
            self.action_plot()  # the overlay is drawn on the large plot
        else:
            self._plot()

    def _alerts(self, first: bool) -> None:
        """New problems ring the bell at once; the history they were loaded with does not. The banner (#problems)
        shows them; a toast says them too only while a dialog (train.log, help, the picker) hides the banner."""
        newest = max((p.seq for p in self.view.problems), default=0)
        if first or self.view.generation != self._generation:
            self._alert_seq = newest
            return
        fresh = [p for p in self.view.problems if p.seq > self._alert_seq]
        self._alert_seq = max(newest, self._alert_seq)
        for p in fresh[-3:] if self.app.screen is not self else []:
            self.notify(p.message + (f"\n{p.hint}" if p.hint else ""), title="Error" if p.kind == "error" else "Warning",
                        severity="error" if p.kind == "error" else "warning", timeout=12)
        if fresh:
            self.app.bell()

    # ------------------------------------------------------------------ drawing
    def _apply(self) -> None:
        self._header()
        self._problems()
        self._charts()
        self._gpu()
        self._checkpoints()
        self._log()
        if self.has_class("-plot"):
            self._plot()

    def _tick(self) -> None:  # once a second: the clocks move even when no event comes
        self._header()
        self._gpu_title()

    def _header(self) -> None:
        self.query_one(RunHeader).show(self.run.name, self.state, self.view, self.status, self.clock())

    def _problems(self) -> None:
        self.query_one(Problems).show(self.view, self.state, self.run.name, self.status, self.note)

    def _charts(self) -> None:
        self.query_one(Charts).show(self.view)

    def _gpu_sample(self) -> tuple[dict[str, Any] | None, str]:
        if self.live is not None:
            return self.live.sample, "live"
        sample = self.view.system
        if not sample:
            return None, ""
        t = sample.get("t")
        return sample, (f"{panels.duration(self.clock() - t)} ago" if isinstance(t, (int, float)) else "recorded")

    def _gpu_title(self) -> None:
        self.query_one(GpuRegion).show_title(*self._gpu_sample())

    def _gpu(self) -> None:
        self.query_one(GpuRegion).show(*self._gpu_sample(), active=self.state in panels.ACTIVE)

    def _checkpoints(self) -> None:
        self.query_one(CheckpointsRegion).show(self.view.checkpoints, self.run.path)

    def _log(self) -> None:
        log = self.query_one(StepLog)
        v = self.view
        if v.generation != self._generation:
            self._generation = v.generation
            log.reset(panels.step_line(e, v.started_t) for _, e in v.log)
        else:
            log.append(panels.step_line(e, v.started_t) for seq, e in v.log if seq > self._shown_seq)
        self._shown_seq = v.log_seq
        self._log_title()

    def _log_title(self) -> None:
        self.query_one(StepsTitle).show(self.view, self.query_one(StepLog))

    def _plot(self) -> None:
        from ftune.tui.loss_plot import LossPlot

        self.query_one(LossPlot).draw(self.run.name, self.view.loss, self.view.eval_loss, self.overlays)

    # ------------------------------------------------------------------ keys
    def action_leave(self) -> None:
        app = self.app
        if isinstance(app, WatchApp):
            app.left = (self.run.name, self.state)
        if self.from_list:
            self.dismiss()
            self.notify(f"{self.run.name} goes on; the monitor only read its files")
        else:
            app.exit()

    def action_stop(self) -> None:
        if self._stop_requested or self.state == "stopping":
            self.notify(f"{self.run.name} is already stopping: it is saving a checkpoint")
            return
        if self.status.get("state") not in ACTIVE_STATES or self.state not in ("running", "starting", "stalled"):
            shown = self.state if self.status.get("state") else "not started"
            self.notify(f"{self.run.name} is not running ({shown})", severity="warning")
            return
        from ftune.tui.screens import ConfirmStop  # a dialog: imported when first opened

        self.app.push_screen(ConfirmStop(self.run.name), self._stop_confirmed)

    def _stop_confirmed(self, yes: bool | None) -> None:
        if not yes:
            return
        self._stop_requested = True
        self.state = "stopping"
        self._header()
        self.notify(f"Stopping {self.run.name}: it finishes this step and saves a checkpoint…", timeout=8)
        self.stop_run()

    def action_checkpoint(self) -> None:
        if self.status.get("state") not in ACTIVE_STATES or self.state not in ("running", "starting", "stalled"):
            shown = self.state if self.status.get("state") else "not started"
            self.notify(f"{self.run.name} is not running ({shown}): nothing to checkpoint", severity="warning")
            return
        from ftune.tui.screens import ConfirmCheckpoint  # a dialog: imported when first opened

        self.app.push_screen(ConfirmCheckpoint(self.run.name), self._checkpoint_confirmed)

    def _checkpoint_confirmed(self, yes: bool | None) -> None:
        if not yes:
            return
        from ftune.runtime import launch
        from ftune.runtime.errors import UserError

        try:
            launch.request_checkpoint(self.run)
        except UserError as exc:
            self.notify(str(exc), severity="warning")
            return
        self.checkpoint_asked = True
        self.notify(f"Asked {self.run.name} for a checkpoint: it saves one at the end of this step and trains on "
                    f"(marked 'asked' under Checkpoints)", timeout=8)

    def action_overlay(self) -> None:
        self.gather_runs()

    def action_train_log(self) -> None:
        from ftune.tui.screens import LogScreen  # a dialog: imported when first opened

        self.app.push_screen(LogScreen(self.run.log_path, poll=self.poll))

    def action_help(self) -> None:
        from ftune.tui.screens import HelpScreen  # a dialog: imported when first opened

        self.app.push_screen(HelpScreen())

    def action_plot(self) -> None:
        if not self.query("#plot"):
            from ftune.tui.loss_plot import LossPlot  # textual-plotext: imported when first opened

            self.mount(LossPlot(id="plot"), before=self.query_one(Footer))
        self.toggle_class("-plot")
        if self.has_class("-plot"):
            self._plot()
        else:
            self.query_one(StepLog).focus()


class Prefetch:
    """`fn()` run on a thread of its own from now on; `result()` waits for it (and raises what it raised)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        import threading

        self._fn, self._value, self._error = fn, None, None
        self._thread = threading.Thread(target=self._run, name="ftune-first-load", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as exc:  # noqa: BLE001 - handed to whoever asks for the result
            self._error = exc

    def ready(self) -> bool:
        return not self._thread.is_alive()

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


class _Left(Exception):
    """The monitor closed while waiting for a stop."""


class WatchApp(App):
    """`ftune watch [RUN]`."""

    TITLE = "ftune watch"
    ENABLE_COMMAND_PALETTE = False

    def __init__(self, root: Path, name: str | None, *, clock: Callable[[], float] = time.time, poll: float = 1.0,
                 live_system: bool = True, watch_terminal: bool = False, scan: ChildScan | None = None) -> None:
        super().__init__()
        self.root, self.run_name = Path(root), name
        self.clock, self.poll, self.live_system, self.watch_terminal = clock, poll, live_system, watch_terminal
        self.left: tuple[str, str] | None = None  # (run, state) when the user left a monitor with q
        # a long history's first read overlaps Textual's start-up: the first paint of a million events is the sooner
        self._first_load = Prefetch(lambda: load(RunDir(self.root, name).events_path, 0, scan=scan)) if name else None

    def on_mount(self) -> None:
        if self.run_name:
            self.push_screen(self.monitor(RunDir(self.root, self.run_name)))
        else:
            from ftune.tui.runs_list import RunsScreen

            self.push_screen(RunsScreen(self.root, poll=max(self.poll, 1.0)))
        if self.watch_terminal:
            self.terminal_watchdog()

    def monitor(self, run: RunDir, from_list: bool = False) -> MonitorScreen:
        first_load, self._first_load = self._first_load, None  # only the first monitor's, read from the start
        return MonitorScreen(run, clock=self.clock, poll=self.poll, live_system=self.live_system, from_list=from_list,
                             first_load=first_load if not from_list else None)

    @work(thread=True, exit_on_error=False, group="terminal")
    def terminal_watchdog(self) -> None:
        """A hung-up terminal must end the monitor, not leave it spinning (or stuck) on a dead tty.

        There is nothing to restore on a terminal that is gone, and Textual's own shutdown blocks
        writing to it, so the process leaves at once. The run is not affected: it never depended
        on the monitor, and a stop already asked for goes on in the worker."""
        worker = get_current_worker()
        while not worker.cancelled_event.wait(1.0):
            if not os.isatty(0):
                os._exit(129)


def make_app(run_dir_root: str | Path, name: str | None = None, *, clock: Callable[[], float] = time.time,
             poll: float = 1.0, live_system: bool = True, watch_terminal: bool = False,
             scan: ChildScan | None = None) -> WatchApp:
    """The monitor for run `name` under `run_dir_root` (or the runs list when name is None).

    clock: what "now" is (tests freeze it); poll: seconds between reads of the run's files;
    live_system: sample GPUs through NVML while the run runs on this machine; watch_terminal: exit
    when stdin stops being a terminal (the CLI turns it on); scan: the first read's scan of the run's events,
    started (tail.ChildScan) before Textual was imported.
    """
    return WatchApp(Path(run_dir_root), name, clock=clock, poll=poll, live_system=live_system,
                    watch_terminal=watch_terminal, scan=scan)
