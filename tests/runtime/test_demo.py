"""`ftune demo` end to end, as a user runs it: builds the tiny model, trains on the bundled data."""

import json
import os
import subprocess
import sys

from ftune.runtime.data.load import summarize_file
from ftune.runtime.demo import demo_data_path
from ftune.runtime.events import read_all


def test_bundled_demo_data_is_valid_and_bilingual():
    s = summarize_file(demo_data_path())
    assert (s.format, s.fatal, s.invalid) == ("messages", None, 0) and s.total >= 200
    text = demo_data_path().read_text(encoding="utf-8")
    assert "订单" in text and "order" in text  # both languages
    assert s.turns.get(2, 0) > 0 and s.roles.get("system", 0) > 0  # multi-turn rows and system prompts


def test_demo_end_to_end(tmp_path):
    env = dict(os.environ, FTUNE_CACHE=str(tmp_path / "cache"), FTUNE_RUNS_DIR=str(tmp_path / "runs"), COLUMNS="100")
    out = subprocess.run([sys.executable, "-m", "ftune", "demo"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Finished" in out.stdout and "loss " in out.stdout
    events = read_all(tmp_path / "runs" / "demo" / "events.jsonl")
    assert events[-1]["type"] == "finished"
    losses = [e["loss"] for e in events if e["type"] == "step"]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5  # the loss fell
    assert (tmp_path / "cache" / "models").is_dir()
    assert json.loads((tmp_path / "runs" / "demo" / "status.json").read_text())["state"] == "finished"
    # A second demo reuses the cached model and starts the run afresh (two steps are enough to show that).
    again = subprocess.run([sys.executable, "-m", "ftune", "demo", "--set", "training.max_steps=2"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    events = read_all(tmp_path / "runs" / "demo" / "events.jsonl")
    assert len([e for e in events if e["type"] == "started"]) == 1 and events[-1]["step"] == 2
