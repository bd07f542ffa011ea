"""`ftune new` without questions (flags, --from, no terminal) and `ftune presets`."""

import json

import pytest
import yaml
from click.testing import CliRunner

from ftune.cli import main
from ftune.presets import NAMES, load_preset
from ftune.runtime.events import read_all
from ftune.runtime.rundir import RunDir
from ftune.runtime.spec import load_spec
from tests.runtime.helpers import of_type, wait_for


def invoke(*args):
    return CliRunner().invoke(main, list(args), prog_name="ftune")  # CliRunner's stdin is not a terminal


def run_file(project, name="run-01") -> dict:
    return yaml.safe_load((project / "runs" / name / "run.yaml").read_text())


def test_the_issue_command(project, tiny_model):
    result = invoke("new", "--model", str(tiny_model), "--data", "train.jsonl", "--preset", "fast", "--stage", "sft",
                    "--method", "lora", "--set", "training.learning_rate=2e-4", "--yes")
    assert result.exit_code == 0, result.output
    assert "Wrote " in result.output and "train it: ftune train run-01" in result.output
    assert "memory: ~" in result.output
    raw = run_file(project)
    assert raw == {"name": "run-01", "preset": "fast",
                   "model": {"name_or_path": str(tiny_model), "template": raw["model"].get("template", "auto")},
                   "data": {"train": "train.jsonl"}, "stage": "sft", "method": "lora",
                   "training": {"learning_rate": 0.0002}} | ({} if "template" in raw["model"] else
                                                             {"model": {"name_or_path": str(tiny_model)}})
    s = load_spec(project / "runs" / "run-01" / "run.yaml")
    assert s.training.learning_rate == 2e-4 and s.training.num_train_epochs == 2


def test_set_null_keeps_the_null_where_it_overrides_a_default(project):
    result = invoke("new", "-m", "Qwen/Qwen2.5-0.5B-Instruct", "-d", "train.jsonl", "-y",
                    "--set", "training.save_total_limit=null", "--set", "training.eval_steps=null")
    assert result.exit_code == 0, result.output
    training = run_file(project)["training"]
    assert training == {"save_total_limit": None}  # keep every checkpoint, as `train --set` would
    assert load_spec(project / "runs" / "run-01" / "run.yaml").training.save_total_limit is None


def test_defaults_when_only_model_and_data_are_given(project):
    result = invoke("new", "-m", "Qwen/Qwen2.5-0.5B-Instruct", "-d", "train.jsonl", "-y")
    assert result.exit_code == 0, result.output
    raw = run_file(project)
    assert (raw["preset"], raw["stage"], raw["method"]) == ("standard", "sft", "lora")
    assert raw["model"]["template"] == "qwen"  # the model's own, as the wizard's default writes it
    assert invoke("new", "-m", "Qwen/Qwen2.5-0.5B-Instruct", "-d", "train.jsonl", "-y").exit_code == 0
    assert run_file(project, "run-02")["name"] == "run-02"  # the next free name


def test_without_a_terminal_every_missing_answer_names_its_flag(project):
    result = invoke("new")
    assert result.exit_code == 2
    assert result.output.startswith("ftune: missing answers (no terminal to ask on): pass --model MODEL")
    assert "--data FILE" in result.output and "--yes" in result.output
    assert not any((project / "runs").iterdir())
    result = invoke("new", "-m", "Qwen/Qwen2.5-0.5B-Instruct", "-d", "train.jsonl")
    assert result.exit_code == 2 and "pass --yes" in result.output and "--model" not in result.output


@pytest.mark.parametrize("args,message", [
    (("--name", "Bad_Name"), "--name: 'Bad_Name' is not a valid run name"),
    (("--model", "./nowhere"), "nowhere does not exist"),
    (("--model", "not a hub id"), "--model: 'not a hub id' is neither a model folder nor a hub id"),
    (("--data", "missing.jsonl"), "--data: data file not found: "),
    (("--validation", "missing.jsonl"), "--validation: data file not found"),
    (("--set", "training.learning_rat=1"), "training.learning_rat: unknown key — did you mean 'learning_rate'?"),
    (("--set", "training.learning_rate=abc"), "training.learning_rate: Input should be a valid number"),
    (("--set", "nonsense"), "an override must look like section.key=value"),
    (("--val-size", "2"), "data.val_size: Input should be less than 1"),
    (("--stage", "ppo"), "Invalid value for '--stage'"),
    (("--method", "magic"), "Invalid value for '--method'"),
    (("--model", "baichuan-inc/Baichuan2-7B-Chat"), "pass --trust-remote-code to allow it"),
])
def test_bad_flags_exit_2_with_one_clear_message(project, args, message):
    base = {"--model": "Qwen/Qwen2.5-0.5B-Instruct", "--data": "train.jsonl"}
    for i in range(0, len(args), 2):
        base.pop(args[i], None)
    flat = [x for kv in base.items() for x in kv]
    result = invoke("new", *flat, *args, "--yes")
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not any((project / "runs").iterdir())


def test_trust_remote_code_flag(project):
    result = invoke("new", "-m", "baichuan-inc/Baichuan2-7B-Chat", "-d", "train.jsonl", "--trust-remote-code", "-y")
    assert result.exit_code == 0, result.output
    assert run_file(project)["model"]["trust_remote_code"] is True


def test_invalid_rows_are_an_error_until_skipping_is_asked_for(project):
    with open(project / "train.jsonl", "a") as f:
        f.write(json.dumps({"messages": [{"role": "user", "content": "no answer"}]}) + "\n")
    result = invoke("new", "-m", "Qwen/Qwen2.5-0.5B-Instruct", "-d", "train.jsonl", "-y")
    assert result.exit_code == 2
    assert "1 of 65 rows in" in result.output and "--set data.on_invalid=skip" in result.output
    result = invoke("new", "-m", "Qwen/Qwen2.5-0.5B-Instruct", "-d", "train.jsonl", "--set", "data.on_invalid=skip",
                    "-y")
    assert result.exit_code == 0, result.output
    assert run_file(project)["data"]["on_invalid"] == "skip"


def test_existing_run_needs_overwrite(project):
    args = ("new", "-m", "Qwen/Qwen2.5-0.5B-Instruct", "-d", "train.jsonl", "--name", "mine", "-y")
    assert invoke(*args).exit_code == 0
    result = invoke(*args, "--preset", "quality")
    assert result.exit_code == 2 and "exists (new): pass --overwrite to replace it" in result.output
    assert run_file(project, "mine")["preset"] == "standard"
    assert invoke(*args, "--preset", "quality", "--overwrite").exit_code == 0
    assert run_file(project, "mine")["preset"] == "quality"



def test_method_flags_map_onto_the_run_file(project):
    cases = {"dora": {"type": "lora", "lora": {"use_dora": True}}, "full": "full"}
    for i, (flag, expected) in enumerate(cases.items()):
        result = invoke("new", "-m", "Qwen/Qwen2.5-0.5B-Instruct", "-d", "train.jsonl", "--method", flag,
                        "--name", f"m-{i}", "-y")
        assert result.exit_code == 0, result.output
        assert run_file(project, f"m-{i}")["method"] == expected


def test_from_a_partial_run_file(project, tiny_model):
    (project / "partial.yaml").write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tiny_model)}, "data": {"train": "train.jsonl", "max_length": 256},
        "training": {"learning_rate": 5e-4, "max_steps": 2}, "preset": "fast"}))
    result = invoke("new", "--from", "partial.yaml", "--preset", "quality", "--name", "from-file", "-y")
    assert result.exit_code == 0, result.output
    raw = run_file(project, "from-file")
    assert raw["preset"] == "quality"  # the flag wins
    assert raw["data"]["max_length"] == 256 and raw["training"] == {"learning_rate": 0.0005, "max_steps": 2}
    assert raw["model"]["name_or_path"] == str(tiny_model)


def test_from_a_file_of_another_stage_keeps_only_the_new_stage_s_settings(project, tiny_model):
    pair = {"conversations": [{"from": "human", "value": "Where is my order?"}],
            "chosen": {"from": "gpt", "value": "Open Orders."}, "rejected": {"from": "gpt", "value": "No idea."}}
    (project / "pairs.jsonl").write_text((json.dumps(pair) + "\n") * 8)
    (project / "dpo.yaml").write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tiny_model)}, "data": {"train": "pairs.jsonl"},
        "stage": {"type": "dpo", "pref_beta": 0.3, "ref_model_quantization_bits": 4}}))
    assert invoke("new", "--from", "dpo.yaml", "--stage", "orpo", "--name", "as-orpo", "-y").exit_code == 0
    assert run_file(project, "as-orpo")["stage"] == {"type": "orpo", "pref_beta": 0.3}  # its own kept, dpo's gone
    result = invoke("new", "--from", "dpo.yaml", "--stage", "orpo", "--set", "stage.pref_loss=ipo", "-y")
    assert result.exit_code == 2, result.output  # asked for by name: a mistake, not dropped
    assert "stage.pref_loss: not a setting of stage orpo: it belongs to dpo" in result.output


def test_from_a_broken_file_names_its_line(project):
    (project / "partial.yaml").write_text("model:\n  name_or_path: x/y\ndata: [unclosed\n")
    result = invoke("new", "--from", "partial.yaml", "-y")
    assert result.exit_code == 2 and "partial.yaml" in result.output and "not valid YAML" in result.output
    (project / "partial.yaml").write_text("model:\n  name_or_path: x/y\n  templte: qwen\ndata: {train: train.jsonl}\n")
    result = invoke("new", "--from", "partial.yaml", "-y")
    assert result.exit_code == 2 and "model.templte: unknown key — did you mean 'template'?" in result.output
    assert invoke("new", "--from", "nope.yaml", "-y").exit_code == 2


def test_start_trains_the_written_run(project, tiny_model):
    result = invoke("new", "-m", str(tiny_model), "-d", "train.jsonl", "--set", "training.max_steps=2",
                    "--set", "training.learning_rate=3e-3", "-y", "--start")
    assert result.exit_code == 0, result.output
    assert "Started run-01 in the background" in result.output
    run = RunDir(project / "runs", "run-01")
    final = wait_for(lambda: [e for e in read_all(run.events_path) if e["type"] in ("finished", "error")], 240)
    assert final[0]["type"] == "finished" and final[0]["step"] == 2, final
    assert of_type(read_all(run.events_path), "started")[0]["max_steps"] == 2


def test_presets_command_lists_every_preset_and_its_values(project):
    preset = next(p for p in main.commands["new"].params if p.name == "preset")
    assert preset.type.choices == tuple(NAMES)  # read from the presets, not a copy
    result = invoke("presets")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].split() == ["setting", *NAMES]
    row = next(line for line in lines if line.startswith("method.lora.rank"))
    assert row.split()[1:] == [str(load_preset(n)["method"]["lora"]["rank"]) for n in NAMES]
    for n in NAMES:
        assert any(line.startswith(n) for line in lines[len(lines) // 2:])


class _Proc:
    pid = 4242


def test_after_starting_the_monitor_opens_when_this_ftune_has_one(project, monkeypatch, capsys):
    import importlib.util

    import click

    from ftune import cli

    run = RunDir(project / "runs", "run-01")
    seen = []

    @click.command()
    @click.argument("name")
    @click.option("--every", default=1.0)
    def watch(name, every):
        seen.append((name, every))

    real_find_spec, real_get = importlib.util.find_spec, click.Group.get_command
    # no monitor module yet: the commands to follow the run are printed
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "ftune.tui.app" else
                        real_find_spec(n, *a))
    with click.Context(main) as ctx:
        cli._watch_or_follow(ctx, run, _Proc())
    assert "Started run-01 in the background (pid 4242)" in capsys.readouterr().out and not seen
    # a monitor and a `watch` command: it opens on the run
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "ftune.tui.app" else
                        real_find_spec(n, *a))
    monkeypatch.setattr(type(main), "get_command", lambda self, ctx, n: watch if n == "watch" else
                        real_get(self, ctx, n))
    with click.Context(main) as ctx:
        cli._watch_or_follow(ctx, run, _Proc())
    assert seen == [("run-01", 1.0)]
    assert "opening the monitor" in capsys.readouterr().out


def test_from_a_file_with_several_training_files(project):
    (project / "more.jsonl").write_text((project / "train.jsonl").read_text())
    (project / "partial.yaml").write_text("model: {name_or_path: Qwen/Qwen2.5-0.5B-Instruct}\n"
                                          "data: {train: [train.jsonl, more.jsonl]}\n")
    result = invoke("new", "--from", "partial.yaml", "-y")
    assert result.exit_code == 0, result.output
    assert run_file(project)["data"]["train"] == ["train.jsonl", "more.jsonl"]
    (project / "partial.yaml").write_text("model: {name_or_path: Qwen/Qwen2.5-0.5B-Instruct}\n"
                                          "data: {train: [train.jsonl, gone.jsonl]}\n")
    result = invoke("new", "--from", "partial.yaml", "--name", "two", "-y")
    assert result.exit_code == 2 and "gone.jsonl" in result.output
