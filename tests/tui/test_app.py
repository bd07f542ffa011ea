"""The monitor driven with Textual's pilot: events are appended to a real run directory while it runs,
and the widgets' state is checked."""

from __future__ import annotations

import os

from rich.text import Text
from textual.widgets import Sparkline

from ftune.tui.app import MonitorScreen, make_app
from ftune.tui.screens import HELP, ConfirmStop, HelpScreen, LogScreen
from ftune.tui.widgets import StepLog
from tests.tui.fakes import T0, Events, append_raw, hold_lock, line, new_run, run_async, scenario, status, wait_until
from tests.tui.screen import static

NOW = T0 + 300


def app_for(root, name="run-01", **kw):
    return make_app(root, name, clock=lambda: NOW, poll=0.05, live_system=False, **kw)


async def opened(pilot):
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, MonitorScreen) and pilot.app.screen.loaded,
                     what="the first load")
    return pilot.app.screen


def test_follows_a_live_run_as_events_arrive(tmp_path):
    run = new_run(tmp_path)
    ev = Events(run)
    ev.started()
    ev.steps(1, 5)
    status(run, "running")

    async def go():
        with hold_lock(run):
            app = app_for(tmp_path)
            async with app.run_test(size=(80, 24)) as pilot:
                screen = await opened(pilot)
                assert screen.state == "running"
                assert "5/100" in static(app, "#header") and "● running" in static(app, "#header")
                loss = screen.query_one("#loss-spark", Sparkline)
                first_data = loss.data
                assert len(first_data) == 5
                assert screen.query_one(StepLog).line_count == 5

                ev.steps(6, 12)
                await wait_until(pilot, lambda: screen.view.step == 12, what="step 12")
                assert loss.data is not first_data and len(loss.data) == 12  # a new list, so it redraws
                assert screen.query_one(StepLog).line_count == 12
                assert "12/100" in static(app, "#header")
                assert "epoch 0.36" in static(app, "#header")

                ev.emit("checkpoint", T0 + 25, step=12, path=str(run.path / "checkpoints" / "checkpoint-12"),
                        bytes=5 * 1024**2)
                ev.emit("eval", T0 + 25, step=12, eval_loss=1.75)
                await wait_until(pilot, lambda: screen.view.checkpoints, what="the checkpoint")
                text = static(app, "#checkpoints")
                assert "checkpoint-12" in text and "5.0 MB" in text and "22:13:45" in text
                assert "removed" in text  # the event says it landed, but it is not there (rotated out)
                (run.path / "checkpoints" / "checkpoint-12").mkdir(parents=True)
                ev.emit("checkpoint", T0 + 26, step=13, path=str(run.path / "checkpoints" / "checkpoint-13"), bytes=1)
                await wait_until(pilot, lambda: len(screen.view.checkpoints) == 2, what="a second checkpoint")
                assert "removed" not in static(app, "#checkpoints").splitlines()[0]
                assert screen.query_one("#eval-row").has_class("-shown")
                assert "eval 1.75" in static(app, "#loss-caption")
                ev.close()

    run_async(go())


def test_waits_for_a_run_that_has_not_started(tmp_path):
    run = new_run(tmp_path)

    async def go():
        app = app_for(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await opened(pilot)
            assert screen.state == "not started"  # the words of `ftune ls`
            assert "not started: start it with `ftune train run-01`" in static(app, "#header")
            with hold_lock(run):
                status(run, "starting")
                await wait_until(pilot, lambda: "loading the model" in static(app, "#header"), what="starting")
                assert screen.state == "starting"  # a worker before phases: the start in general words
                ev = Events(run)
                ev.emit("phase", NOW - 20, phase="importing")
                ev.emit("phase", NOW - 12, phase="downloading the model")  # a hub model not yet in the cache
                ev.emit("phase", NOW - 10, phase="downloading the model", unit="bytes", done=2**30, total=4 * 2**30,
                        bytes_per_s=50 * 2**20, eta_s=60.0, what="org/model")
                await wait_until(pilot, lambda: "1.0 GB/4.0 GB 25%" in static(app, "#header"), what="the bar")
                assert "starting: downloading the model ██░░░░░░░░ 25% of 4.0 GB, 50.0 MB/s" in static(app, "#header")
                ev.emit("phase", NOW - 5, phase="tokenising")
                ev.emit("phase", NOW - 2, phase="tokenising", done=40, total=100, rows_per_s=1200.0)
                line = "starting: tokenising 40% (1,200 rows/s) for 0:05 · l shows train.log"  # since it began
                await wait_until(pilot, lambda: line in static(app, "#header"), what="the phase")
                ev.started()
                ev.steps(1, 3)
                status(run, "running")
                await wait_until(pilot, lambda: screen.state == "running" and screen.view.step == 3, what="running")
                assert "3/100" in static(app, "#header")
                ev.close()

    run_async(go())


def test_torn_last_line_waits_for_its_end(tmp_path):
    run = new_run(tmp_path)
    ev = Events(run)
    ev.started()
    ev.steps(1, 2)
    whole = line("step", T0 + 6, step=3, max_steps=100, loss=1.5, lr=1e-4, grad_norm=0.5)
    append_raw(run, whole[:25])  # the worker's write is half way through

    async def go():
        app = app_for(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await opened(pilot)
            assert screen.view.step == 2
            await pilot.pause(0.2)
            assert screen.view.step == 2 and screen.view.events == 3
            append_raw(run, whole[25:])
            await wait_until(pilot, lambda: screen.view.step == 3, what="the completed line")
            assert screen.query_one(StepLog).line_count == 3

    run_async(go())


def test_truncated_or_replaced_file_starts_over(tmp_path):
    run = new_run(tmp_path)
    ev = Events(run)
    ev.started()
    ev.steps(1, 30)
    ev.close()

    async def go():
        app = app_for(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await opened(pilot)
            assert screen.view.step == 30
            run.events_path.write_bytes(b"")  # truncated (`ftune train --restart` clears it)
            await wait_until(pilot, lambda: screen.view.step == 0, what="the reset")
            assert screen.query_one(StepLog).line_count == 0
            fresh = Events(run)
            fresh.started(max_steps=50)
            fresh.steps(1, 4, max_steps=50)
            fresh.close()
            await wait_until(pilot, lambda: screen.view.step == 4, what="the new history")
            assert "4/50" in static(app, "#header")
            assert screen.query_one(StepLog).line_count == 4

            replacement = run.path / "events.new"  # replaced: a new inode, shorter or not
            replacement.write_bytes(line("started", T0, run="run-01", max_steps=7) +
                                    line("step", T0 + 1, step=6, max_steps=7, loss=0.9))
            os.replace(replacement, run.events_path)
            await wait_until(pilot, lambda: screen.view.max_steps == 7, what="the replaced file")
            assert screen.view.step == 6 and screen.query_one(StepLog).line_count == 1

    run_async(go())


def test_unknown_types_bad_lines_and_nan_as_null(tmp_path):
    run = new_run(tmp_path)
    ev = Events(run)
    ev.started()
    ev.steps(1, 3)
    ev.emit("telemetry", T0 + 7, something={"new": True})  # a newer writer's event type
    append_raw(run, b"this is not json\n[1, 2]\n")
    ev.emit("step", T0 + 8, step=4, max_steps=100, loss=float("nan"), lr=2e-4, grad_norm=float("inf"))
    ev.emit("warning", T0 + 8, step=4, message="loss is nan at step 4",
            hint="Lower the learning rate, use bf16 instead of fp16, or check the data for empty answers.")
    ev.close()
    assert b'"loss": null' in run.events_path.read_bytes()

    async def go():
        app = app_for(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await opened(pilot)
            assert screen.view.step == 4 and screen.view.unknown == 1
            assert len(screen.query_one("#loss-spark", Sparkline).data) == 3  # the null is not a point
            assert "NaN/inf" in static(app, "#loss-caption")
            assert "loss NaN/inf" in screen.query_one(StepLog).lines[-1]
            problems = static(app, "#problems")
            assert "loss is nan at step 4" in problems and "Lower the learning rate" in problems

    run_async(go())


def test_new_warnings_alert_at_once(tmp_path):
    run = new_run(tmp_path)
    ev = Events(run)
    ev.started()
    ev.steps(1, 3)
    status(run, "running")
    notes = []

    async def go():
        with hold_lock(run):
            app = app_for(tmp_path)
            async with app.run_test(size=(80, 24), notifications=True) as pilot:
                app.notify = lambda message, **kw: notes.append((message, kw))  # what the user is shown
                screen = await opened(pilot)
                assert not screen.query_one("#problems").has_class("-shown")
                for s in (4, 5, 6):
                    ev.emit("step", T0 + 2 * s, step=s, max_steps=100, loss=0.0, lr=1e-4, grad_norm=0.0)
                    ev.emit("warning", T0 + 2 * s, step=s, message=f"loss is exactly 0 at step {s}",
                            hint="Usually every label is masked; check `data.train_on_prompt` and the data.")
                await wait_until(pilot, lambda: screen.view.step == 6, what="the zero-loss steps")
                problems = screen.query_one("#problems")
                assert problems.has_class("-shown") and not problems.has_class("-error")
                text = static(app, "#problems")
                assert "loss is exactly 0 at step 6" in text and "×3" in text  # grouped, not three lines
                assert not notes  # the banner says it; a toast over the step log would say it twice
                await pilot.press("l")  # a dialog hides the banner: now a toast says it over the dialog
                await wait_until(pilot, lambda: isinstance(app.screen, LogScreen), what="train.log")
                ev.emit("warning", T0 + 14, step=7, message="grad norm is inf at step 7", hint="Lower the lr.")
                await wait_until(pilot, lambda: bool(notes), what="the toast")
                assert notes[-1][1]["severity"] == "warning" and "grad norm is inf" in notes[-1][0]
                ev.close()

    run_async(go())


def test_step_log_sticks_to_the_bottom_and_counts_new_lines_when_scrolled_up(tmp_path):
    run = new_run(tmp_path)
    ev = Events(run)
    ev.started()
    ev.steps(1, 60)

    async def go():
        app = app_for(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await opened(pilot)
            log = screen.query_one(StepLog)
            assert log.is_vertical_scroll_end and log.max_scroll_y > 0
            ev.steps(61, 62)
            await wait_until(pilot, lambda: screen.view.step == 62, what="two more steps")
            assert log.is_vertical_scroll_end and log.unseen == 0  # followed them

            await pilot.press("pageup")
            assert not log.is_vertical_scroll_end
            y = log.scroll_y
            ev.steps(63, 65)
            await wait_until(pilot, lambda: screen.view.step == 65, what="three more steps")
            assert log.scroll_y == y and log.unseen == 3  # stayed put
            assert "+3 new" in static(app, "#log-title")

            await pilot.press("end")
            for s in range(66, 71):  # lines that land while it gets there are followed too
                ev.steps(s, s)
                await pilot.pause(0.03)
            await wait_until(pilot, lambda: screen.view.step == 70, what="five more steps")
            await pilot.pause(0.5)
            assert log.is_vertical_scroll_end and log.unseen == 0
            assert "new" not in static(app, "#log-title")
            ev.steps(71, 71)
            await wait_until(pilot, lambda: screen.view.step == 71, what="one more step")
            assert log.is_vertical_scroll_end and log.unseen == 0
            ev.close()

    run_async(go())


def test_failed_and_crashed_runs_show_the_problem(tmp_path):
    scenario(tmp_path, "failed")
    crashed = new_run(tmp_path, "run-02")
    ev = Events(crashed)
    ev.started()
    ev.steps(1, 3)
    ev.close()
    status(crashed, "running", pid=99999)  # recorded as running, but nobody holds the lock

    async def go():
        app = app_for(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await opened(pilot)
            assert screen.state == "failed"
            problems = screen.query_one("#problems")
            assert problems.has_class("-shown") and problems.has_class("-error")
            text = static(app, "#problems")
            assert "failed: CUDA out of memory" in text and "per_device_train_batch_size" in text
        app = app_for(tmp_path, "run-02")
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await opened(pilot)
            assert screen.state == "crashed"
            assert "crashed" in static(app, "#problems") and "ftune logs run-02" in static(app, "#problems")

    run_async(go())


def test_keys_help_log_plot_and_leave(tmp_path):
    run = scenario(tmp_path, "finished")
    run.log_path.write_text("=== ftune train run-01 ===\n" + "".join(f"log line {i}\n" for i in range(50)))

    async def go():
        app = app_for(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await opened(pilot)
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            await pilot.press("l")
            assert isinstance(app.screen, LogScreen)
            from textual.widgets import Log

            trainlog = app.screen.query_one("#trainlog", Log)
            await wait_until(pilot, lambda: trainlog.line_count == 51, what="train.log")
            assert trainlog.lines[-1] == "log line 49"
            with open(run.log_path, "a") as f:
                f.write("a new line\n")
            await wait_until(pilot, lambda: trainlog.lines[-1] == "a new line", what="the log to follow")
            await pilot.press("escape")
            assert app.screen is screen

            await pilot.press("p")
            plot = screen.query_one("#plot")
            assert screen.has_class("-plot") and plot.display and not screen.query_one(StepLog).display
            build = plot.plt.build()
            assert "eval loss (o), log scale" in build and "step" in build
            await pilot.press("p")
            assert not screen.has_class("-plot") and screen.query_one(StepLog).display

            await pilot.press("s")  # a finished run cannot be stopped: it says so, no dialog
            assert not isinstance(app.screen, ConfirmStop)
            await pilot.press("q")
        assert app.left == ("run-01", "finished")

    run_async(go())


def test_stop_key_asks_first_and_no_keeps_training(tmp_path):
    run = scenario(tmp_path, "running")

    async def go():
        with hold_lock(run):
            app = app_for(tmp_path)
            async with app.run_test(size=(80, 24)) as pilot:
                screen = await opened(pilot)
                await pilot.press("s")
                assert isinstance(app.screen, ConfirmStop)
                await pilot.press("n")
                assert app.screen is screen and screen.state == "running"
                assert not screen.workers or all(w.group != "stop" for w in screen.workers)

    run_async(go())


def test_runs_list_highlights_the_running_run_first(tmp_path):
    new_run(tmp_path, "alpha")  # not started, first by name
    running = scenario(tmp_path, "running", "beta")

    async def go():
        from textual.widgets import DataTable

        from ftune.tui.runs_list import RunsScreen

        app = make_app(tmp_path, None, clock=lambda: T0 + 85, poll=0.05, live_system=False)
        async with app.run_test(size=(100, 24)) as pilot:
            await wait_until(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.loaded, what="rows")
            table = app.screen.query_one(DataTable)
            assert table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value == "beta"

    with hold_lock(running):
        run_async(go())


def test_runs_list_cells_keep_their_width_when_painted_at_once(tmp_path):
    """A real terminal paints a table before the table is next idle; its cells were then cut to the headers' width
    for good (Textual's cell cache does not know column widths). Here a longer run name arrives and is painted at
    once, as a terminal does."""
    scenario(tmp_path, "finished", "run-01")

    async def go():
        from textual.widgets import DataTable

        from ftune.tui.runs_list import RunRows, RunsScreen

        app = make_app(tmp_path, None, clock=lambda: NOW, poll=60, live_system=False)  # the list's own poll waits
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.loaded, what="rows")
            table = app.screen.query_one(DataTable)
            scenario(tmp_path, "failed", "a-long-run-name-07")
            app.screen.on_runs_screen_rows(RunsScreen.Rows(RunRows(tmp_path).rows()))
            table.render_line(1)  # the paint a terminal does before the table's next idle
            await pilot.pause()
            first_row = table.render_line(1).text
            assert "a-long-run-name-07" in first_row and "failed" in first_row, first_row

    run_async(go())


def test_runs_list_shows_runs_and_opens_one(tmp_path):
    scenario(tmp_path, "finished", "alpha")
    scenario(tmp_path, "failed", "beta")
    new_run(tmp_path, "gamma")

    async def go():
        from textual.widgets import DataTable

        from ftune.tui.runs_list import RunsScreen

        app = make_app(tmp_path, None, clock=lambda: NOW, poll=0.05, live_system=False)
        async with app.run_test(size=(100, 24)) as pilot:
            await wait_until(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.loaded, what="rows")
            table = app.screen.query_one(DataTable)
            rows = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
            assert [r[0] for r in rows] == ["alpha", "beta", "gamma"]
            assert rows[0][1:3] == ["finished", "100/100"] and rows[0][3] != "–" and rows[0][5] == "sft/lora"
            assert rows[0][4] == "1.564" and rows[2][4] == "–"  # the best eval loss
            assert rows[1][1:3] == ["failed", "40/100"]
            assert rows[2][1:3] == ["not started", "–"]
            await pilot.press("down", "enter")
            screen = await opened(pilot)
            assert screen.run.name == "beta" and screen.state == "failed"
            await pilot.press("q")  # back to the list, not out of the app
            assert isinstance(app.screen, RunsScreen)
            await pilot.press("q")
        assert app.return_code in (0, None)

    run_async(go())


def test_monitor_does_not_touch_terminal_settings(tmp_path):
    scenario(tmp_path, "finished")
    before = {k: os.environ.get(k) for k in ("TERM", "COLORTERM", "NO_COLOR", "FORCE_COLOR", "TEXTUAL")}

    async def go():
        app = app_for(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await opened(pilot)

    run_async(go())
    assert {k: os.environ.get(k) for k in before} == before


def test_live_samples_while_the_run_runs_here_and_recorded_ones_otherwise(tmp_path):
    run = scenario(tmp_path, "running")
    status(run, "running", host=os.uname().nodename, pid=os.getpid())  # "the worker" is this process

    async def go():
        with hold_lock(run):
            app = make_app(tmp_path, run.name, clock=lambda: T0 + 85, poll=0.05, live_system=True)
            async with app.run_test(size=(80, 24)) as pilot:
                screen = await opened(pilot)
                await wait_until(pilot, lambda: screen.live is not None, what="a live sample")
                assert "GPU" in static(app, "#gpu-title") and "live" in static(app, "#gpu-title")
                gpu = static(app, "#gpu")
                assert "worker memory" in gpu or " GB " in gpu  # no driver here: the worker's memory, quietly
                assert "error" not in gpu.lower()
        status(run, "running", host="elsewhere")
        app = make_app(tmp_path, run.name, clock=lambda: T0 + 85, poll=0.05, live_system=True)
        async with app.run_test(size=(80, 24)) as pilot:  # not here (and not alive): the run's own samples
            screen = await opened(pilot)
            await pilot.pause(0.3)
            assert screen.live is None
            assert "0:04 ago" in static(app, "#gpu-title") and "41/80 GB" in static(app, "#gpu")

    run_async(go())


def test_a_run_directory_removed_while_watching_is_said_plainly(tmp_path):
    import shutil

    run = scenario(tmp_path, "finished")

    async def go():
        app = app_for(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await opened(pilot)
            shutil.rmtree(run.path)
            await wait_until(pilot, lambda: screen.note is not None, what="the note")
            assert "no longer exists" in static(app, "#problems")
            assert screen.view.step == 0  # its events went with it

    run_async(go())


def test_one_logged_step_gives_an_eta_and_no_solid_block(tmp_path):
    """logging_steps 10: the first step event comes after minutes. Its time since the start gives the ETA, and
    its one loss is a caption, not a sparkline drawn as a solid block."""
    run = new_run(tmp_path)
    ev = Events(run)
    ev.started(t=NOW - 20)
    ev.emit("step", NOW - 10, step=10, max_steps=100, loss=2.0, lr=1e-4, grad_norm=0.5)
    status(run, "running")

    async def go():
        with hold_lock(run):
            app = app_for(tmp_path)
            async with app.run_test(size=(80, 24)) as pilot:
                screen = await opened(pilot)
                header = static(app, "#header")
                assert "ETA 1:20" in header, header  # 90 steps to go at 1 step/s, the last one 10 s ago
                for chart in ("#loss-spark", "#lr-spark", "#gn-spark"):
                    assert screen.query_one(chart, Sparkline).data == [], chart
                assert "2" in static(app, "#loss-caption")

    run_async(go())


def test_each_sparkline_ends_inside_its_row(tmp_path):
    """lr, grad norm and eval sit beside a caption: each takes the rest of its row, so its newest values (on the
    right) are on screen, not cut off past the row's end."""
    run = new_run(tmp_path)
    ev = Events(run)
    ev.started(t=NOW - 60)
    for i in range(1, 21):
        ev.emit("step", NOW - 60 + i, step=i, max_steps=100, loss=2.0 - i / 100, lr=1e-4, grad_norm=0.5)
    ev.emit("eval", NOW - 40, step=10, eval_loss=1.9)
    ev.emit("eval", NOW - 30, step=20, eval_loss=1.8)

    async def go():
        for size in ((80, 24), (120, 40)):
            app = app_for(tmp_path)
            async with app.run_test(size=size) as pilot:
                screen = await opened(pilot)
                await pilot.pause()
                for chart in ("#loss-spark", "#eval-spark", "#lr-spark", "#gn-spark"):
                    spark = screen.query_one(chart, Sparkline)
                    assert spark.region.width > 10 and spark.region.right <= spark.parent.region.right, (size, chart)

    run_async(go())


def test_help_scrolls_to_its_last_line_at_80x24(tmp_path):
    """The help is taller than 24 rows: it scrolls (End reaches "esc closes") and its lines are not wrapped."""
    scenario(tmp_path, "running")

    async def go():
        app = app_for(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await opened(pilot)
            await pilot.press("question_mark")
            await pilot.pause()
            box = app.screen.query_one("#helpbox")
            assert box.max_scroll_y > 0 and box.scroll_y == 0
            await pilot.press("end")
            await wait_until(pilot, lambda: box.scroll_y == box.max_scroll_y, what="the end of the help")
            longest = max(len(Text.from_markup(line).plain) for line in HELP.splitlines())
            assert box.scrollable_content_region.width >= longest

    run_async(go())
