"""The large loss plot (`p` in the monitor), with other runs laid over it (`o`). Imported when first opened:
textual-plotext is only needed then."""

from __future__ import annotations

from typing import Any

from textual_plotext import PlotextPlot

from ftune.tui.chart_math import log_scale, loss_ticks, scaler, step_ticks

LIVE_COLOUR = "blue+"  # the watched run, when other runs are laid over it
OVERLAY_COLOURS = ["magenta+", "yellow+", "green+", "red+", "cyan+"]  # the runs laid over it


class LossPlot(PlotextPlot):
    """Training loss as a line and eval loss as points, of the watched run and of the runs laid over it. Hidden
    until the screen shows it (its -plot class)."""

    DEFAULT_CSS = "LossPlot { height: 1fr; display: none; }"

    def draw(self, name: str, loss: Any, eval_loss: Any, overlays: dict[str, Any]) -> None:
        """loss, eval_loss: (steps, values) of the watched run `name`; overlays: name -> (loss, eval_loss)."""
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        xs, ys = loss
        exs, eys = eval_loss
        others = [(other, curves, evals) for other, (curves, evals) in overlays.items()]
        every = ys + eys + [y for _, curves, evals in others for y in curves[1] + evals[1]]
        log = log_scale(every)
        f = scaler(log)
        for (other, (oxs, oys), (oexs, oeys)), colour in zip(others, OVERLAY_COLOURS * 4):
            if oys:  # the other runs first, so the watched run is drawn over them; a legend names them
                plt.plot(oxs, [f(y) for y in oys], marker="braille", color=colour, label=other)
            if oeys:
                plt.scatter(oexs, [f(y) for y in oeys], marker="o", color=colour)
        live = {"color": LIVE_COLOUR} if others else {}  # alone, plotext's own colours
        if ys:  # no legend without overlays: it hides the first steps
            plt.plot(xs, [f(y) for y in ys], marker="braille", label=name if others else None, **live)
        if eys:
            plt.scatter(exs, [f(y) for y in eys], marker="o", **live)
        if log:  # ticks at round loss values, labelled as losses
            plt.yticks(*loss_ticks(every))
        steps = xs + exs + [x for _, curves, evals in others for x in curves[0] + evals[0]]
        if steps:
            ticks = step_ticks(steps)
            plt.xticks(ticks, [str(t) for t in ticks])
        if others:
            plt.title(f"training loss (line), eval loss (o): {name} over {', '.join(overlays)}"
                      + (", log scale" if log else ""))
        else:
            plt.title(f"{name}: training loss" + (" (line), eval loss (o)" if eys else "")
                      + (", log scale" if log else ""))
        plt.xlabel("step")
        self.refresh()
