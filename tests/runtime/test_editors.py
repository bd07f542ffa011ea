"""`ftune schema` and the modeline: the run file's JSON Schema accepts what ftune accepts (the shorthand included)
and refuses what it refuses; every run file ftune writes points at runs/run.schema.json."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from ftune.cli import main
from ftune.runtime.spec import SpecError, build_spec, save_spec
from ftune.runtime.spec.editors import MODELINE, SCHEMA_FILE, run_schema, schema_text

jsonschema = pytest.importorskip("jsonschema")

GOOD = {"name": "run-01", "preset": "fast", "model": {"name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"},
        "data": {"train": "data/support.jsonl"}, "stage": "sft", "method": "lora",
        "training": {"learning_rate": 2e-4, "max_steps": 10}, "resources": {"gpus_per_node": "auto"}}


def errors(data) -> list[str]:
    validator = jsonschema.Draft202012Validator(run_schema())
    return [e.message for e in validator.iter_errors(data)]


def test_the_schema_accepts_what_ftune_accepts():
    build_spec(GOOD)  # ftune takes it ...
    assert errors(GOOD) == []  # ... and so does the editor
    full = {**GOOD, "stage": {"type": "dpo", "pref_beta": 0.2}, "method": {"type": "lora", "lora": {"rank": 4}},
            "data": {"train": ["a.jsonl", "b.jsonl"]}}
    assert errors(full) == []
    assert errors({**GOOD, "stage": {}}) == errors({**GOOD, "stage": {"num_generations": 8, "type": "rl",
                                                                       "reward_model": "rm-01"}}) == []


@pytest.mark.parametrize("change,words", [
    ({"stage": {"type": "sft", "pref_beta": 0.2}}, "is not valid"),  # another stage's setting, as ftune says
    ({"stage": {"pref_beta": 0.2}}, "is not valid"),  # no type is sft
    ({"training": {"learning_rat": 1e-4}}, "learning_rat"),
    ({"stage": "sftt"}, "sftt"),
    ({"method": {"type": "lora", "lora": {"rank": 0}}}, "is not valid"),  # rank < 1, inside the shorthand's anyOf
    ({"resources": {"strategy": "zero9"}}, "zero9"),
])
def test_the_schema_refuses_what_ftune_refuses(change, words):
    bad = {**GOOD, **change}
    with pytest.raises(SpecError):
        build_spec(bad)
    found = errors(bad)
    assert any(words in m for m in found), found


def test_schema_command_prints_and_writes(tmp_path):
    runner = CliRunner()
    printed = runner.invoke(main, ["schema"], prog_name="ftune")
    assert printed.exit_code == 0 and json.loads(printed.output) == run_schema()
    runs = tmp_path / "runs"
    written = runner.invoke(main, ["--runs-dir", str(runs), "schema", "--write"], prog_name="ftune")
    assert written.exit_code == 0, written.output
    assert (runs / SCHEMA_FILE).read_text() == schema_text() and "$schema=" in written.output


def test_written_run_files_carry_the_modeline(project, tiny_model):
    spec = build_spec(GOOD)
    path = project / "runs" / "run-01" / "run.yaml"
    save_spec(spec, path)
    assert path.read_text().splitlines()[0] == MODELINE
    assert (project / "runs" / SCHEMA_FILE).read_text() == schema_text()
    assert errors(yaml.safe_load(path.read_text())) == []
    result = CliRunner().invoke(main, ["new", "--model", str(tiny_model), "--data", "train.jsonl", "--name", "w",
                                       "--yes"], prog_name="ftune")
    assert result.exit_code == 0, result.output
    text = (project / "runs" / "w" / "run.yaml").read_text()
    assert text.splitlines()[0] == MODELINE and errors(yaml.safe_load(text)) == []
