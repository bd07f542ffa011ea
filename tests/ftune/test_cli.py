"""The CLI's faces: tables, messages and exit codes (training itself is tested in tests/runtime)."""

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from ftune.cli import main
from tests.conftest import mounted_tmpfs, write_messages
from tests.runtime.helpers import make_run, train_to_end


def disk_free(path) -> int:
    import shutil

    return shutil.disk_usage(path).free


def invoke(*args):
    return CliRunner().invoke(main, list(args), prog_name="ftune")


def test_help_lists_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for cmd in ("demo", "train", "stop", "ls", "logs", "rm"):
        assert f"  {cmd}" in result.output


def test_export_help_lists_the_registry_s_formats_in_its_order():
    """The table in `ftune export --help` is text (the help stays free of imports): it must not drift from
    infer/formats/."""
    import re

    from ftune.runtime.infer import formats

    text = invoke("export", "--help").output
    listed = re.findall(r"^\s{2,}([a-z0-9_]+)\s{2,}\S", text.split("Options:")[0], re.M)
    assert listed == list(formats.ORDER)
    assert "CUDA GPU only" not in text  # bitsandbytes' 4 bits run on a CPU too


def test_ls_empty_and_with_runs(project, tiny_model, monkeypatch):
    assert "No runs in" in invoke("ls").output
    run = make_run(project, tiny_model, training={"max_steps": 3})
    make_run(project, tiny_model, name="run-02")
    train_to_end(run)
    monkeypatch.setenv("COLUMNS", "120")  # every column (at 80 the start time gives way to the model's room)
    result = invoke("ls")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].split() == ["run", "status", "stage/method", "model", "step", "ckpt", "loss", "eval", "started"]
    row1 = lines[1].split()
    assert row1[:3] == ["run-01", "finished", "sft/lora"] and row1[4:6] == ["3/3", "3"]  # ckpt: the newest one's step
    assert lines[2].split()[:2] == ["run-02", "not"]


def test_ls_names_the_phase_of_a_starting_run_where_it_fits(tmp_path, monkeypatch):
    from tests.tui.fakes import Events, hold_lock, new_run, status

    run = new_run(tmp_path / "runs", "run-01")
    status(run, "starting")
    ev = Events(run)
    ev.emit("phase", 100.0, phase="importing")
    ev.emit("phase", 101.0, phase="tokenising", done=2, total=5)
    ev.close()

    def ls(columns: int, *args: str) -> str:
        monkeypatch.setenv("COLUMNS", str(columns))
        with hold_lock(run):
            return CliRunner().invoke(main, ["--runs-dir", str(tmp_path / "runs"), "ls", *args]).output

    assert ls(120).splitlines()[1].split()[1:4] == ["starting:", "tokenising", "40%"]
    assert ls(80).splitlines()[1].split()[1] == "starting"  # at 80 columns the model's room comes first
    assert '"phase": "tokenising 40%"' in ls(80, "--json")
    Events(run).started()  # training began: no phase any more
    assert "tokenising" not in ls(120)


def test_ls_keeps_long_run_names_apart_within_80_columns(tmp_path, monkeypatch):
    from tests.tui.fakes import new_run, status

    for name in ("a-long-experiment-name-01", "a-long-experiment-name-02"):
        status(new_run(tmp_path / "runs", name), "finished")

    def ls(columns: int) -> list[str]:
        monkeypatch.setenv("COLUMNS", str(columns))
        return CliRunner().invoke(main, ["--runs-dir", str(tmp_path / "runs"), "ls"]).output.splitlines()

    assert "started" in ls(120)[0] and "a-long-experiment-name-02" in ls(120)[2]
    narrow = ls(80)
    assert all(len(line) <= 80 for line in narrow), narrow
    assert "started" not in narrow[0]  # the start time gave way first
    names = [line.split()[0] for line in narrow[1:]]
    assert names[0] != names[1] and all(n.endswith(("-01", "-02")) for n in names), names
    assert narrow[1].split()[1] == "finished"


@pytest.mark.parametrize("args,message", [
    (("train", "nope"), "ftune: no run named 'nope' in "),
    (("train", "Bad_Name"), "ftune: 'Bad_Name' is not a valid run name"),
    (("stop", "nope"), "ftune: no run named 'nope'"),
    (("logs", "nope"), "ftune: no run named 'nope'"),
    (("rm", "nope"), "ftune: no run named 'nope'"),
])
def test_missing_or_bad_run_exit_2(project, args, message):
    result = invoke(*args)
    assert result.exit_code == 2 and result.output.startswith(message), result.output
    assert "Traceback" not in result.output


def test_bad_run_file_lists_every_mistake_and_writes_nothing(project, tiny_model):
    run = make_run(project, tiny_model, training={"learning_rat": 1, "num_train_epochs": "x"})
    result = invoke("train", "run-01")
    assert result.exit_code == 2
    assert "has 2 mistakes" in result.output
    assert "training.learning_rat: unknown key — did you mean 'learning_rate'?" in result.output
    assert "training.num_train_epochs: Input should be a valid number" in result.output
    assert sorted(p.name for p in run.path.iterdir()) == ["run.yaml"]


def test_missing_data_file_exit_2(project, tiny_model):
    make_run(project, tiny_model, data={"train": "gone.jsonl"})
    result = invoke("train", "run-01")
    assert result.exit_code == 2 and "data file not found:" in result.output


def test_set_is_validated_then_written(project, tiny_model):
    run = make_run(project, tiny_model)
    before = run.spec_path.read_text()
    result = invoke("train", "run-01", "--set", "training.learning_rate=lots")
    assert result.exit_code == 2 and "training.learning_rate" in result.output
    assert run.spec_path.read_text() == before  # nothing written on a bad override


def test_rm_asks_and_refuses_without_tty(project, tiny_model):
    run = make_run(project, tiny_model)
    result = invoke("rm", "run-01")
    assert result.exit_code == 2 and "pass --yes" in result.output and run.path.exists()
    result = invoke("rm", "run-01", "--yes")
    assert result.exit_code == 0 and not run.path.exists()


def test_rm_of_a_linked_run_folder_removes_the_link_and_keeps_its_target(project, tiny_model, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("big-disk") / "run-01"
    run = make_run(project, tiny_model)
    run.path.rename(elsewhere)
    run.path.symlink_to(elsewhere)
    result = invoke("rm", "run-01", "--yes")
    assert result.exit_code == 0, result.output
    assert f"Deleted the link {run.path}; the folder it pointed at, {elsewhere}, is left in place" in result.output
    assert not run.path.exists() and not run.path.is_symlink() and (elsewhere / "run.yaml").is_file()


def test_a_run_file_named_for_another_run_is_refused(project, tiny_model):
    run = make_run(project, tiny_model)
    run.spec_path.write_text(run.spec_path.read_text().replace("name: run-01", "name: other-name"))
    result = invoke("train", "run-01")
    assert result.exit_code == 2
    assert f"{run.spec_path} says name: other-name, but it lies in the folder of run 'run-01': set name: run-01" \
        in result.output


def test_yaml_true_is_not_a_number(project, tiny_model):
    make_run(project, tiny_model, training={"save_steps": True})
    result = invoke("train", "run-01")
    assert result.exit_code == 2 and "training.save_steps: must be a whole number, not true" in result.output


def test_a_full_disk_at_train_is_one_sentence(tiny_model, tmp_path, monkeypatch):
    disk = mounted_tmpfs(tmp_path / "full-disk", "64k")
    write_messages(disk / "train.jsonl", 8)
    run = make_run(disk, tiny_model)
    (disk / "filler").write_bytes(b"x" * (disk_free(disk) // 4096 * 4096))  # the disk is now full
    monkeypatch.chdir(disk)
    result = invoke("--runs-dir", str(disk / "runs"), "train", "run-01")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.startswith(f"ftune: no space left on device writing {disk}/runs"), result.output
    assert "(0 MB free)" in result.output and "Free some space" in result.output
    assert not run.is_locked() and not list(run.path.glob(".*.tmp"))  # no lock held, no half-written file


def test_data_check_of_an_empty_file_exits_2(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    result = invoke("data", "check", str(tmp_path / "empty.jsonl"))
    assert result.exit_code == 2 and "has no rows: it is empty, or holds only blank lines" in result.output


def test_data_check_with_a_cut_short_model_config(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"messages": [{"role": "user", "content": "q"}, '
                                      '{"role": "assistant", "content": "a"}]}\n')
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"model_type": "qwen2", "hidden_')
    result = invoke("data", "check", str(tmp_path / "d.jsonl"), "--model", str(tmp_path / "model"))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{tmp_path}/model/config.json is not valid JSON (" in result.output


def test_rm_refuses_a_running_run(project, tiny_model):
    from ftune.runtime import launch

    run = make_run(project, tiny_model, training={"max_steps": 100000})
    proc = launch.start(run)
    try:
        result = invoke("rm", "run-01", "--yes")
        assert result.exit_code == 2 and "stop it first" in result.output and run.path.exists()
    finally:
        launch.stop(run, wait=120)
        proc.wait(timeout=60)


def test_logs_prints_the_worker_output(project, tiny_model):
    run = make_run(project, tiny_model, training={"max_steps": 2})
    train_to_end(run)
    result = invoke("logs", "run-01", "-n", "5")
    assert result.exit_code == 0 and "train_runtime" in result.output
    full = invoke("logs", "run-01")
    assert "=== ftune train run-01 at" in full.output


def test_logs_show_a_progress_bar_as_its_last_redraw(project, tiny_model):
    run = make_run(project, tiny_model)
    bar = "".join(f"\rMap: {p:3d}%|{'#' * (p // 10)}| {p}/100" for p in (0, 40, 100))
    run.log_path.write_text(f"=== ftune train run-01 ===\n{bar}\nloading model\r\n{{'loss': 1.5}}\n")
    for args in ((), ("-f",), ("-n", "3")):  # -f: the worker is gone, so it prints and returns
        out = invoke("logs", "run-01", *args).output
        assert "\r" not in out and out.count("Map:") == 1 and "Map: 100%|##########| 100/100\n" in out, args
        assert out.endswith("Map: 100%|##########| 100/100\nloading model\n{'loss': 1.5}\n")


def test_train_foreground_shows_progress_and_summary(project, tiny_model):
    make_run(project, tiny_model, training={"max_steps": 6, "save_steps": 3})
    out = subprocess.run([sys.executable, "-m", "ftune", "train", "run-01", "--foreground"],
                         capture_output=True, text=True, timeout=240, env=dict(os.environ, COLUMNS="120"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Training run-01:" in out.stdout and "checkpoint saved" in out.stdout
    assert "Finished 6 steps" in out.stdout and "loss " in out.stdout


def test_train_set_refuses_a_run_file_with_duplicate_keys_before_writing(project, tiny_model):
    run = make_run(project, tiny_model)
    run.spec_path.write_text(run.spec_path.read_text() + "training:\n  seed: 3\n")  # a second training: block
    before = run.spec_path.read_text()
    result = invoke("train", "run-01", "--set", "training.learning_rate=1e-4")
    assert result.exit_code == 2 and "training appears twice" in result.output and "Traceback" not in result.output
    assert run.spec_path.read_text() == before and not run.events_path.exists()


def test_completion_offers_files_and_run_file_keys():
    def complete(words: str) -> list[str]:
        env = {**os.environ, "_FTUNE_COMPLETE": "bash_complete", "COMP_WORDS": words,
               "COMP_CWORD": str(len(words.split()) - 1)}
        done = subprocess.run([sys.executable, "-m", "ftune"], env=env, capture_output=True, text=True, timeout=60)
        return done.stdout.split()

    assert complete("ftune train run-01 --set training.learn") == ["plain,training.learning_rate="]
    assert complete("ftune new --data tra") == ["file,tra"]  # the shell completes the path itself
    assert complete("ftune data check da") == ["file,da"]


def test_every_help_fits_80_columns():
    def helps(group, path):
        yield path
        for name, cmd in getattr(group, "commands", {}).items():
            yield from helps(cmd, [*path, name])

    for path in helps(main, []):
        result = CliRunner().invoke(main, [*path, "--help"], terminal_width=80)
        assert result.exit_code == 0, (path, result.output)
        wide = [line for line in result.output.splitlines() if len(line) > 80]
        assert not wide, (path, wide)


def test_ls_shortens_a_model_to_its_last_whole_parts():
    from ftune.runtime.present import fit_model as _short_model

    assert _short_model("/tmp/pytest-of-root/pytest-84/tiny-model/tiny-qwen2", 24) == "…/tiny-model/tiny-qwen2"
    assert _short_model("/tmp/pytest-of-root/pytest-84/tiny-model/tiny-qwen2", 16) == "…/tiny-qwen2"
    assert _short_model("Qwen/Qwen2.5-7B-Instruct", 20) == "Qwen2.5-7B-Instruct"
    assert _short_model("Qwen/Qwen2.5-7B-Instruct", 30) == "Qwen/Qwen2.5-7B-Instruct"


def test_run_names_are_cut_in_their_middles_only_when_short_of_room():
    from ftune.runtime.present import fit_names

    names = ["a-long-experiment-name-01", "a-long-experiment-name-02", "short"]
    assert fit_names(names, 0) == names and fit_names([], 5) == []
    cut = fit_names(names, 10)  # 25 columns down to 15
    assert cut[:2] == ["a-long-…name-01", "a-long-…name-02"] and cut[2] == "short"
    assert fit_names(names, 40)[0] == "a-lon…ame-01"  # never below 12


def test_submit_needs_a_scheduler_and_sbatch_and_writes_nothing_without(project, tiny_model, monkeypatch, tmp_path):
    run = make_run(project, tiny_model, resources={"gpus_per_node": 1})
    result = invoke("submit", "run-01")
    assert result.exit_code == 2 and "say where to submit: --slurm" in result.output
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no sbatch here
    result = invoke("submit", "run-01", "--slurm", "--nodes", "2")
    assert result.exit_code == 2 and "ftune: sbatch is not on this machine's PATH" in result.output, result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in run.path.iterdir()) == ["run.yaml"]
