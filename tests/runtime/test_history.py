"""Folding events into the monitor's history (pure data) and loading long histories fast."""

from __future__ import annotations

import json
import math
import os

from ftune.runtime import tail as tail_mod
from ftune.runtime.events import read_all
from ftune.runtime.history import LOG_KEEP, MAX_POINTS, History, Series
from ftune.runtime.tail import load
from tests.tui.fakes import T0, Events, append_raw, line, new_run, scenario


def test_series_keeps_at_most_max_points_and_skips_non_finite():
    s = Series()
    for i in range(10 * MAX_POINTS):
        s.add(i, float(i))
    assert MAX_POINTS // 2 <= len(s) <= MAX_POINTS
    assert s.stride == 16  # 10 x MAX_POINTS values: one point per 16
    assert s.xs == sorted(s.xs) and s.ys[-1] >= 10 * MAX_POINTS - s.stride  # still reaches the newest
    s2 = Series()
    for y in (1.0, None, math.nan, math.inf, 2.0):
        s2.add(0, y)
    assert s2.ys == [1.0, 2.0]


def test_fold_a_run_with_resume_eval_checkpoints_and_problems(tmp_path):
    run = scenario(tmp_path, "failed")
    ev = Events(run)
    ev.started(t=T0 + 100, resumed_from=40)  # resumed after the failure
    ev.steps(41, 42, t0=T0 + 20)
    ev.close()
    h = History()
    h.extend(read_all(run.events_path))
    v = h.view()
    assert v.step == 42 and v.max_steps == 100 and v.final is None  # the new attempt has not ended
    assert v.started_t == T0 + 100 and v.meta["resumed_from"] == 40
    assert [c["step"] for c in v.checkpoints] == [20, 40]
    assert v.eval_loss[0] == [20, 40] and v.last_eval["step"] == 40
    assert len(v.loss[1]) == 42 and v.first_loss == v.loss[1][0]
    kinds = [(p.kind, p.message.split(" at ")[0]) for p in v.problems]
    assert kinds == [("warning", "loss jumped to 9.1"), ("error", "CUDA out of memory while training")]
    assert v.system["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3"
    assert [e["step"] for _, e in v.log][-3:] == [40, 41, 42]


def test_rate_gives_the_eta(tmp_path):
    h = History()
    h.add({"type": "started", "t": T0, "max_steps": 100})
    for i in range(1, 11):
        h.add({"type": "step", "t": T0 + 2 * i, "step": i, "max_steps": 100, "loss": 1.0})
    v = h.view()
    assert v.rate == 0.5 and v.rate_t == T0 + 20


def test_the_eta_is_known_from_the_first_logged_step():
    h = History()
    h.add({"type": "started", "t": T0, "max_steps": 100, "resumed_from": 40})
    assert h.view().rate is None
    h.add({"type": "step", "t": T0 + 50, "step": 50, "max_steps": 100, "loss": 1.0})  # logging_steps: 10
    assert h.view().rate == 0.2  # ten steps in 50 s since the (resumed) start


def test_warnings_that_differ_by_numbers_are_grouped():
    h = History()
    for s in range(1, 6):
        h.add({"type": "warning", "t": T0 + s, "step": s, "message": f"loss is exactly 0 at step {s}", "hint": "h"})
    h.add({"type": "warning", "t": T0 + 9, "message": "skipped 3 invalid rows of 100"})
    v = h.view()
    assert [(p.message, p.count) for p in v.problems] == [("loss is exactly 0 at step 5", 5),
                                                           ("skipped 3 invalid rows of 100", 1)]
    assert v.warnings_total == 6


def _write_long(run, n_steps: int, warnings: int = 0):
    ev = Events(run)
    ev.started(max_steps=n_steps)
    ev.emit("system", T0 + 1, rss=1, gpus=[])
    ev.steps(1, n_steps // 2, max_steps=n_steps)
    for i in range(warnings):
        ev.emit("warning", T0 + n_steps + 0.5, step=i, message=f"loss is exactly 0 at step {i}")
    ev.steps(n_steps // 2 + 1, n_steps, max_steps=n_steps)
    ev.emit("checkpoint", T0 + 3 * n_steps, step=n_steps // 2, path="/x/checkpoint", bytes=10)
    ev.emit("eval", T0 + 3 * n_steps, step=n_steps // 2, eval_loss=0.5)
    ev.emit("system", T0 + 3 * n_steps, rss=2, gpus=[])
    ev.steps(n_steps, n_steps, max_steps=n_steps, t0=T0 + n_steps)
    ev.close()


def test_fast_load_of_a_long_history_parses_only_a_sample_and_agrees_with_a_full_read(tmp_path, monkeypatch):
    run = new_run(tmp_path)
    _write_long(run, 12_000, warnings=300)
    parsed = []
    real_parse = tail_mod.Tail.parse

    def counting(self, lines):
        lines = list(lines)
        parsed.append(len(lines))
        return real_parse(self, lines)

    monkeypatch.setattr(tail_mod.Tail, "parse", counting)
    fast, tail = load(run.events_path, samples=500, full_parse_bytes=100_000)
    assert sum(parsed) < 500 + LOG_KEEP + 200 + 10  # not 12,300: samples, the last steps, kept warnings, the rest
    full = History()
    full.extend(read_all(run.events_path))
    f, g = fast.view(), full.view()
    assert (f.step, f.max_steps, f.meta["max_steps"]) == (g.step, g.max_steps, g.meta["max_steps"])
    assert f.checkpoints == g.checkpoints and f.last_eval == g.last_eval and f.system == g.system
    assert [e for _, e in f.log] == [e for _, e in g.log][-LOG_KEEP:]
    assert f.first_loss == g.first_loss
    assert 400 <= len(f.loss[1]) <= 2 * 500 + LOG_KEEP  # decimated, evenly enough
    assert f.loss[0] == sorted(f.loss[0])
    assert f.omitted_warnings == 100 and f.problems[-1].count == 200  # 300 warnings: 200 read, 100 counted
    assert tail.offset == run.events_path.stat().st_size


def test_load_excludes_a_torn_line_and_tail_takes_over(tmp_path):
    run = new_run(tmp_path)
    ev = Events(run)
    ev.started()
    ev.steps(1, 3)
    whole = line("step", T0 + 8, step=4, max_steps=100, loss=1.0)
    append_raw(run, whole[:10])
    h, tail = load(run.events_path)
    assert h.view().step == 3 and tail.offset == run.events_path.stat().st_size - 10
    append_raw(run, whole[10:])
    assert [e["step"] for e in tail.read_new()] == [4]
    assert not tail.replaced()
    run.events_path.write_bytes(b"")
    assert tail.replaced()
    os.remove(run.events_path)
    assert tail.replaced()
    h2, tail2 = load(run.events_path)  # a run that has not written anything yet
    assert h2.view().step == 0 and tail2.read_new() == []
    ev.close()


def test_the_eta_rate_is_a_window_of_time_so_an_eval_pause_barely_moves_it():
    h = History()
    h.add({"type": "started", "t": T0, "max_steps": 200})
    for i in range(1, 101):  # a step every 2 s, logged every step
        h.add({"type": "step", "t": T0 + 2 * i, "step": i, "max_steps": 200, "loss": 1.0})
    assert h.view().rate == 0.5
    for i in range(101, 104):  # then a 60 s evaluation, and three more steps
        h.add({"type": "step", "t": T0 + 60 + 2 * i, "step": i, "max_steps": 200, "loss": 1.0})
    assert 0.38 < h.view().rate < 0.5  # a window of the last 30 events said 0.25: the ETA doubled


def test_a_load_in_a_child_process_gives_the_same_history_and_events_appended_after_it_too(tmp_path):
    run = new_run(tmp_path)
    _write_long(run, 12_000, warnings=300)
    scan = tail_mod.ChildScan(run.events_path, full_parse_bytes=100_000, samples=500)
    assert scan.pid  # a long file: scanned by a child
    with open(run.events_path, "a") as f:  # after the child looked: a warning and a checkpoint it cannot know of
        f.write(json.dumps({"v": 1, "t": T0 + 9e4, "type": "warning", "message": "late", "hint": ""}) + "\n")
        f.write(json.dumps({"v": 1, "t": T0 + 9e4, "type": "checkpoint", "step": 12_000, "path": "x"}) + "\n")
        for s in range(12_001, 12_001 + LOG_KEEP):  # enough steps that both lie before the fully read tail
            f.write(json.dumps({"v": 1, "t": T0 + 9e4 + s, "type": "step", "step": s, "loss": 1.0}) + "\n")
    fast, _ = load(run.events_path, samples=500, full_parse_bytes=100_000, scan=scan)
    plain, _ = load(run.events_path, samples=500, full_parse_bytes=100_000)
    f, g = fast.view(), plain.view()
    assert f.checkpoints == g.checkpoints and f.checkpoints[-1]["step"] == 12_000
    assert [p.message for p in f.problems] == [p.message for p in g.problems] and f.problems[-1].message == "late"
    assert (f.step, f.eval_loss, f.system) == (g.step, g.eval_loss, g.system)
    # the late warning: bounded with the rest when the child read it too, kept as a live run's are when it came after
    assert f.omitted_warnings in (g.omitted_warnings - 1, g.omitted_warnings)
    # the chart: the child sampled the file as it was, the appended steps were read as a live run's are
    last = 12_000 + LOG_KEEP
    assert last - f.loss[0][-1] < 50 and last - g.loss[0][-1] < 50 and abs(len(f.loss[0]) - len(g.loss[0])) < 600
    assert [e["step"] for _, e in f.log] == [e["step"] for _, e in g.log]
    assert tail_mod.ChildScan(run.events_path).result() is None  # a short file (under 4 MB): no child, no scan
