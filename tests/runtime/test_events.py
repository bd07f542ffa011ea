import json
import math
import os
import time

from ftune.runtime.events import EventReader, EventWriter, make_event, read_all, read_from, summarize


def test_writer_lines_are_whole_and_versioned(tmp_path):
    path = tmp_path / "events.jsonl"
    w = EventWriter(path)
    w.emit("step", step=1, loss=2.5, lr=1e-4)
    w.emit("warning", message="hi", hint="there")
    w.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["v"] == 1 and first["type"] == "step" and first["loss"] == 2.5 and isinstance(first["t"], float)


def test_nan_and_inf_written_as_null_and_named():
    e = make_event("step", step=3, loss=math.nan, grad_norm=math.inf, metrics={"eval_loss": -math.inf, "ok": 1.0})
    text = json.dumps(e, allow_nan=False)  # would raise if a NaN slipped through
    back = json.loads(text)
    assert back["loss"] is None and back["grad_norm"] is None and back["metrics"]["eval_loss"] is None
    assert sorted(back["nonfinite"]) == ["grad_norm", "loss", "metrics.eval_loss"]


def test_a_sample_after_the_final_event_is_not_written(tmp_path):
    """The system sampler's thread may take a sample as the run finishes: the stream still ends with its outcome
    (a test saw `system` after `finished`)."""
    w = EventWriter(tmp_path / "e.jsonl")
    w.emit("system", unless_ended=True, rss=1)
    w.emit("finished", step=4)
    w.emit("system", unless_ended=True, rss=2)
    w.emit("error", message="a failure after the end is still said")
    assert [(e["type"], e.get("rss")) for e in read_all(tmp_path / "e.jsonl")] == [
        ("system", 1), ("finished", None), ("error", None)]
    assert "unless_ended" not in read_all(tmp_path / "e.jsonl")[0]


def test_other_ranks_write_nothing(tmp_path):
    w = EventWriter.for_rank(tmp_path / "e.jsonl", rank=1)
    w.emit("step", step=1)
    assert not (tmp_path / "e.jsonl").exists()


def test_reader_is_incremental_and_waits_for_torn_line(tmp_path):
    path = tmp_path / "events.jsonl"
    r = EventReader(path)
    assert r.read_new() == []  # no file yet: nothing, no error
    with open(path, "w") as f:
        f.write(json.dumps(make_event("started", max_steps=10)) + "\n")
        f.write('{"v": 1, "t": 1, "type": "st')  # torn: the writer is mid-line
    assert [e["type"] for e in r.read_new()] == ["started"]
    with open(path, "a") as f:
        f.write('ep", "step": 1}\n')
    got = r.read_new()
    assert [(e["type"], e["step"]) for e in got] == [("step", 1)]
    assert r.read_new() == []


def test_reader_keeps_unknown_types_and_skips_garbage(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"v": 9, "t": 1, "type": "future_thing", "x": 1}\nnot json\n[1, 2]\n{"v":1,"t":2,"type":"step","step":2}\n')
    r = EventReader(path)
    assert [e["type"] for e in r.read_new()] == ["future_thing", "step"]
    assert r.bad_lines == 2


def test_reader_starts_over_on_truncation(tmp_path):
    path = tmp_path / "events.jsonl"
    w = EventWriter(path)
    for i in range(5):
        w.emit("step", step=i)
    r = EventReader(path)
    assert len(r.read_new()) == 5 and not r.reset
    with open(path, "w") as f:  # truncated and rewritten shorter
        f.write(json.dumps(make_event("started", max_steps=3)) + "\n")
    got = r.read_new()
    assert r.reset and [e["type"] for e in got] == ["started"]


def test_reader_starts_over_when_file_is_replaced(tmp_path):
    path = tmp_path / "events.jsonl"
    EventWriter(path).emit("step", step=1)
    r = EventReader(path)
    assert len(r.read_new()) == 1
    new = tmp_path / "new.jsonl"
    with open(new, "w") as f:  # same size or larger, different inode
        for i in range(3):
            f.write(json.dumps(make_event("step", step=10 + i)) + "\n")
    os.replace(new, path)
    got = r.read_new()
    assert r.reset and [e["step"] for e in got] == [10, 11, 12]


def test_reader_survives_deleted_file(tmp_path):
    path = tmp_path / "events.jsonl"
    EventWriter(path).emit("step", step=1)
    r = EventReader(path)
    r.read_new()
    path.unlink()
    assert r.read_new() == [] and r.reset


def test_summarize_folds_history(tmp_path):
    path = tmp_path / "events.jsonl"
    w = EventWriter(path)
    w.emit("started", max_steps=10)
    w.emit("step", step=5, max_steps=10, loss=1.5)
    w.emit("step", step=6, max_steps=10, loss=None)
    w.emit("stopped", step=6)
    s = summarize(read_all(path))
    assert s["step"] == 6 and s["max_steps"] == 10 and s["loss"] == 1.5 and s["final"]["type"] == "stopped"


def test_the_latest_phase_until_training_begins(tmp_path):
    from ftune.runtime.events import phase_text
    from ftune.runtime.history import History

    path = tmp_path / "events.jsonl"
    w = EventWriter(path)
    w.emit("phase", phase="importing")
    w.emit("phase", phase="tokenising")
    w.emit("phase", phase="tokenising", done=1, total=3, rows_per_s=10.0)
    events = read_all(path)
    assert summarize(events)["phase"] == "tokenising 33%"
    history = History()
    history.extend(events)
    assert phase_text(history.phase) == "tokenising 33%" and history.phase["since"] == events[1]["t"]
    w.emit("started", max_steps=10)
    events = read_all(path)
    history.extend(events[3:])
    assert summarize(events)["phase"] == "" and history.phase is None
    assert [phase_text(e) for e in ({"phase": "loading the model"}, {"phase": 3}, None, {"phase": "x", "total": 0})] \
        == ["loading the model", "", "", "x"]


def test_read_from_a_cursor_pages_waits_for_a_torn_line_and_starts_over_on_a_new_file(tmp_path):
    """`ftune mcp`'s read_events: a client passes back the cursor it was given."""
    path = tmp_path / "events.jsonl"
    assert read_from(path, None) == ([], "0-0", False, False)
    w = EventWriter(path)
    for step in range(1, 6):
        w.emit("step", step=step, loss=1.0)
    with open(path, "ab") as f:
        f.write(b'{"v": 1, "type": "eval", "ste')  # a torn last line: not read until it ends
    events, cursor, reset, more = read_from(path, None, limit=3)
    assert [e["step"] for e in events] == [1, 2, 3] and more and not reset
    events, cursor, reset, more = read_from(path, cursor, limit=3)
    assert [e["step"] for e in events] == [4, 5] and not more
    assert read_from(path, cursor)[:2] == ([], cursor)
    with open(path, "ab") as f:
        f.write(b'p": 5, "eval_loss": 0.5}\n')
    events, cursor, _, _ = read_from(path, cursor)
    assert events == [{"v": 1, "type": "eval", "step": 5, "eval_loss": 0.5}]

    w.close()
    path.unlink()  # a restart: a new file, longer than where the cursor stood
    # A file is told from the next by its first line, whose time is in ms; a real restart is seconds later, and this
    # test ran both first lines within one ms on a fast machine (the same line, so no reset): wait that ms out.
    time.sleep(0.002)
    w = EventWriter(path)
    for step in range(1, 30):
        w.emit("step", step=step, loss=1.0)
    events, _, reset, _ = read_from(path, cursor, limit=500)
    assert reset and [e["step"] for e in events] == list(range(1, 30))
    assert read_from(path, "not-a-cursor", limit=1)[0][0]["step"] == 1
