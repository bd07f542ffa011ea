"""The monitor's regions: each a widget that carries its own CSS and draws itself from the data the screen hands
it (tui/panels.py renders the text). MonitorScreen composes them, lays them out for the terminal's size and routes
each update to the region it changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Sparkline

from ftune.runtime.history import View
from ftune.tui import panels
from ftune.tui.chart_math import curve, mean
from ftune.tui.widgets import Panel, StepLog, Title


class RunHeader(Panel):
    """The run's name, state, progress, ETA and clocks (redrawn every second)."""

    DEFAULT_CSS = "RunHeader { height: 3; padding: 0 1; background: $boost; }"

    def show(self, name: str, state: str, view: View, status: dict[str, Any], now: float) -> None:
        self.update(panels.header(name, state, view, status, now))


class Problems(Panel):
    """Warnings and errors of the run (and what the monitor could not read): hidden while there are none."""

    DEFAULT_CSS = """
    Problems { height: auto; max-height: 7; padding: 0 1; border-left: thick $warning; background: $warning 10%;
               display: none; }
    Problems.-shown { display: block; }
    Problems.-error { border-left: thick $error; background: $error 12%; }
    """

    def show(self, view: View, state: str, name: str, status: dict[str, Any], note: str | None) -> None:
        text = panels.problems_panel(view.problems, state, name, status, view.omitted_warnings)
        if note:
            line = Text(f"monitor: {note}", style="italic")
            text = line if text is None else Text("\n").join([text, line])
        self.set_class(text is not None, "-shown")
        self.set_class(state in ("failed", "crashed") or any(p.kind == "error" for p in view.problems), "-error")
        if text is not None:
            self.update(text, key=text.plain, same=text)  # its height follows its text


class Charts(Vertical):
    """Loss (a caption over a sparkline), eval loss (once there is one), learning rate and grad norm."""

    DEFAULT_CSS = """
    Charts { width: 1fr; padding: 0 1; }
    #loss-spark { height: 2; }
    .row { height: 1; }
    .caption { width: 16; }
    .row > Sparkline { width: 1fr; }  /* the rest of the row: a Sparkline's own width is the row's, cut off */
    #eval-row { display: none; }
    #eval-row.-shown { display: block; }
    #loss-spark > .sparkline--max-color { color: $warning; }
    #loss-spark > .sparkline--min-color { color: $success; }
    #eval-spark > .sparkline--max-color { color: $secondary; }
    #eval-spark > .sparkline--min-color { color: $secondary 50%; }
    """

    def compose(self) -> ComposeResult:
        yield Panel(id="loss-caption", classes="row")
        yield Sparkline([], id="loss-spark", summary_function=mean)
        with Horizontal(id="eval-row", classes="row"):
            yield Panel(id="eval-caption", classes="caption")
            yield Sparkline([], id="eval-spark", summary_function=mean)
        with Horizontal(classes="row"):
            yield Panel(id="lr-caption", classes="caption")
            yield Sparkline([], id="lr-spark", summary_function=mean)
        with Horizontal(classes="row"):
            yield Panel(id="gn-caption", classes="caption")
            yield Sparkline([], id="gn-spark", summary_function=mean)

    def show(self, v: View) -> None:
        last = v.last_step or {}
        caption = panels.loss_caption(v)
        self.query_one("#loss-caption", Panel).update(caption, same=caption)
        self.query_one("#loss-spark", Sparkline).data = curve(v.loss[1])
        has_eval = bool(v.eval_loss[1])
        self.query_one("#eval-row").set_class(has_eval, "-shown")
        if has_eval:
            self.query_one("#eval-caption", Panel).update(
                panels.series_caption("eval", v.last_eval.get("eval_loss") if v.last_eval else None, ".4g"))
            self.query_one("#eval-spark", Sparkline).data = curve(v.eval_loss[1])
        for name, key, spec in (("lr", "lr", ".2e"), ("gn", "grad_norm", ".3g")):
            caption = panels.series_caption(name, last.get(key), spec)
            self.query_one(f"#{name}-caption", Panel).update(caption, same=caption)
            self.query_one(f"#{name}-spark", Sparkline).data = curve(getattr(v, key)[1])


class GpuRegion(Vertical):
    """GPU figures: live from NVML while the run runs on this machine, else the run's last recorded sample."""

    DEFAULT_CSS = """
    GpuRegion { height: auto; }
    #gpu { height: auto; max-height: 4; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._shown: tuple[dict[str, Any] | None, str, bool] = (None, "", True)

    def compose(self) -> ComposeResult:
        yield Title("GPU", id="gpu-title")
        yield Panel(id="gpu")

    def show(self, sample: dict[str, Any] | None, source: str, active: bool) -> None:
        """sample: a `system` event's fields (None: none yet); source: 'live', 'Ns ago'...; active: the run runs."""
        self._shown = (sample, source, active)
        self.show_title(sample, source)
        widget = self.query_one("#gpu", Panel)
        width = max(20, widget.size.width or 38)
        if sample is None:
            text = "no sample yet" if active else "no GPU figures recorded"
            widget.update(Text(text, style="dim"), key=1, same=text)
            return
        gpus = sample.get("gpus") or []
        widget.update(panels.gpu_panel(sample, width), key=max(1, len(gpus)), same=(width, repr(sample)))

    def show_title(self, sample: dict[str, Any] | None, source: str) -> None:
        gpus = (sample or {}).get("gpus") or []
        title = f"GPU{'s' if len(gpus) > 1 else ''}" + (f" · {source}" if source else "")
        self.query_one("#gpu-title", Title).update(title, same=title)

    def redraw(self) -> None:  # the width changed: lines that fit it
        self.show(*self._shown)


class CheckpointsRegion(Vertical):
    """The newest checkpoints, as many as fit, marked where their folder was removed since."""

    DEFAULT_CSS = "CheckpointsRegion { height: 1fr; } #checkpoints { height: 1fr; }"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._shown: tuple[list[dict[str, Any]], Path | None] = ([], None)

    def compose(self) -> ComposeResult:
        yield Title("Checkpoints", id="checkpoints-title")
        yield Panel(id="checkpoints")

    def show(self, cps: list[dict[str, Any]], run_path: Path) -> None:
        self._shown = (cps, run_path)
        widget = self.query_one("#checkpoints", Panel)
        rows = widget.size.height or 3
        title = f"Checkpoints{f' · {len(cps)}' if cps else ''}"
        self.query_one("#checkpoints-title", Title).update(title, same=title)
        removed = frozenset(str(c.get("path")) for c in cps[-rows:] if c.get("path") and not Path(c["path"]).exists())
        widget.update(panels.checkpoints_panel(cps, run_path, rows, removed),
                      same=(rows, widget.size.width, len(cps), cps[-1] if cps else None, removed))

    def redraw(self) -> None:  # the height changed: as many rows as fit
        cps, run_path = self._shown
        if run_path is not None:
            self.show(cps, run_path)


class StepsTitle(Panel):
    """The step log's title: how much of the history it holds, and "+N new" while scrolled up."""

    DEFAULT_CSS = "StepsTitle { height: 1; padding: 0 1; background: $boost; color: $text-muted; text-style: bold; }"

    def show(self, view: View, log: StepLog) -> None:
        text = Text("Steps")
        if view.log_seq > len(view.log) or view.stride > 1:
            text.append(f"  (the last {len(view.log)})", "dim")
        if log.unseen:
            text.append(f"   +{log.unseen} new ↓ (End)", "bold reverse")
        self.update(text, same=text)
