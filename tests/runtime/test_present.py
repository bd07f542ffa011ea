"""The formats and sentences every face shares (runtime/present.py)."""

from __future__ import annotations

from types import SimpleNamespace

from ftune.runtime import present


def test_numbers():
    assert present.duration(65) == "1:05" and present.duration(7384) == "2:03:04"
    assert present.duration(93780) == "1d 2h03m" and present.duration(None) == present.duration(-1) == "–"
    assert present.wall_time(4.24) == "4.2 s" and present.wall_time(185) == "3m05s"
    assert present.wall_time(3720) == "1h02m"
    assert present.span(1.5) == "1.5 s" and present.span(21) == "21 s" and present.span(840) == "14 min"
    assert present.span(7500) == "2 h 5 min"
    assert present.size(512) == "512 B" and present.size(1536) == "1.5 KB" and present.size(None) == "–"
    assert present.gb(5.23) == "5.2 GB" and present.gb(41.4) == "41 GB" and present.gb(9.96) == "10 GB"
    assert present.gib_figure(5.2 * 1024**3) == "5.2" and present.gib_figure(41 * 1024**3) == "41"
    assert present.gib_figure(float("nan")) == "–" and present.num(True) == "–"
    assert present.num(2e-4, ".2e") == "2.00e-04"


def test_cells_and_values():
    assert [present.cell(v) for v in (None, True, 0.123456, ["q", "v"], [], 3)] == ["–", "true", "0.1235", "q, v",
                                                                                     "[]", "3"]
    assert [present.value_text(v) for v in (1e-4, 2.5e-5, 0.05, 3, False, None)] == ["1e-4", "2.5e-5", "0.05", "3",
                                                                                    "false", "none"]
    assert present.value_text({"mode": "layer", "switch_every": 20}) == "{mode: layer, switch_every: 20}"


def test_how_a_stop_and_a_checkpoint_ended():
    see = "see `ftune logs r`."
    assert present.stop_outcome("r", None, see) == ["r ended without a final event; see `ftune logs r`."]
    assert present.stop_outcome("r", None, see, cancelled_job="42") == [
        "Cancelled Slurm job 42 before it started; nothing was trained."]
    stopped = {"type": "stopped", "step": 7, "artifacts": {"checkpoint": "ck-7"}}
    assert present.stop_outcome("r", stopped, see) == ["Stopped at step 7. Checkpoint: ck-7",
                                                       "Continue with: ftune train r --resume"]
    assert present.stop_outcome("r", {"type": "error", "message": "boom"}, see) == [
        "r ended with 'error' before it could stop: boom"]
    assert present.checkpoint_outcome("r", None, see) == "r ended without a final event before it saved; " + see
    assert present.checkpoint_outcome("r", {"type": "checkpoint", "step": 3, "path": "p"}, see) == \
        "Saved step 3: p. Training goes on."


def test_a_wizard_data_summary():
    s = SimpleNamespace(fatal=None, valid=3, total=4, invalid=1, format="alpaca", reason="instruction/output",
                        stages=["sft"], images=0, errors=["row 4: no output"], placeholder_note=lambda: None)
    assert present.data_summary(s, "d.json") == [
        ("note", "d.json: alpaca (instruction/output); 4 rows, 3 valid, 1 invalid; suits sft"),
        ("note", "  row 4: no output")]


def test_a_runs_table_fits_a_narrow_terminal():
    row = {"name": "a-rather-long-run-name-01", "status": "running", "phase": "tokenising 40%",
           "stage_method": "sft/lora", "model": "some/org/Model-7B", "progress": "10/100", "ckpt": "–", "loss": "1.2",
           "best_eval": "–", "started": "12-01 10:00"}
    cols, rows, _, room = present.fit_runs([row], present.LS_COLUMNS, 200)
    assert cols[-1] == ("started", "started") and rows[0]["status"] == "running: tokenising 40%" and room > 8
    assert rows[0]["model"] == "some/org/Model-7B"
    cols, rows, _, room = present.fit_runs([row], present.LS_COLUMNS, 80)
    assert ("started", "started") not in cols and room == 8 and len(rows[0]["name"]) < len(row["name"])
    assert rows[0]["status"] == "running" and rows[0]["model"] == "Model-7B"


def test_here_shows_a_path_below_the_working_folder_relative_and_others_whole(tmp_path, monkeypatch):
    from ftune.runtime.present import here

    monkeypatch.chdir(tmp_path)
    assert here(tmp_path / "runs" / "demo" / "export") == "runs/demo/export"
    assert here("/elsewhere/runs/demo") == "/elsewhere/runs/demo"
    assert here(None) == "–"
