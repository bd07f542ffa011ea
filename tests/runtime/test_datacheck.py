import json

from click.testing import CliRunner

from ftune.cli import main
from ftune.runtime.data.check import check
from tests.conftest import SHARED_DATA, write_messages


def test_check_without_model_counts_turns_and_roles(tmp_path):
    p = write_messages(tmp_path / "d.jsonl", 20)
    r = check(str(p)).to_dict()
    assert (r["format"], r["kind"], r["stages"], r["total"], r["valid"], r["invalid"]) == \
        ("messages", "chat", ["sft", "rl"], 20, 20, 0)
    assert sum(r["turns"].values()) == 20 and r["roles"]["user"] == r["roles"]["assistant"]
    assert "tokens" not in r


def test_check_with_model_measures_tokens_and_cutoff(tmp_path, tiny_model):
    p = write_messages(tmp_path / "d.jsonl", 20)
    r = check(str(p), model=str(tiny_model), max_length=12, show=1).to_dict()
    t = r["tokens"]
    assert t["tokens"]["min"] <= t["tokens"]["p50"] <= t["tokens"]["max"] and t["tokens"]["min"] > 12
    assert t["over_max_length"] == 20 and t["answer_cut_away"] == 20  # 12 tokens never reach an answer
    (sample,) = t["samples"]
    assert any(s["learnt"] for s in sample) and any(not s["learnt"] for s in sample)
    assert "".join(s["text"] for s in sample).startswith("<|im_start|>")


def test_cli_json_and_exit_codes(tmp_path):
    good = write_messages(tmp_path / "good.jsonl", 5)
    result = CliRunner().invoke(main, ["data", "check", str(good), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["valid"] == 5
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + '{"messages": []}\n')
    result = CliRunner().invoke(main, ["data", "check", str(bad)])
    assert result.exit_code == 1 and "1 invalid" in result.output and "bad.jsonl:6: 'messages' must be" in result.output
    broken = tmp_path / "broken.json"
    broken.write_text('[{"instruction": "a", "output": "b"} {"instruction": "c"}]')
    result = CliRunner().invoke(main, ["data", "check", str(broken)])
    assert result.exit_code == 2 and "broken.json:1:38: not valid JSON" in result.output


def test_cli_dataset_dir_key():
    lf = SHARED_DATA / "llamafactory"
    if not lf.is_dir():
        import pytest

        pytest.skip(f"shared data not found at {lf}")
    result = CliRunner().invoke(main, ["data", "check", "dpo_en_demo", "--dataset-dir", str(lf), "--json"])
    r = json.loads(result.output)
    assert result.exit_code == 0 and r["kind"] == "preference" and r["valid"] == 300


def test_a_dataset_info_json_lists_and_checks_every_entry(tmp_path):
    write_messages(tmp_path / "good.jsonl", 5)
    (tmp_path / "mixed.jsonl").write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", '
                                          '"content": "a"}]}\n{"messages": []}\n')
    (tmp_path / "dataset_info.json").write_text(json.dumps({
        "good": {"file_name": "good.jsonl", "formatting": "sharegpt", "columns": {"messages": "messages"},
                 "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                          "assistant_tag": "assistant"}},
        "mixed": {"file_name": "mixed.jsonl", "formatting": "sharegpt", "columns": {"messages": "messages"},
                  "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                           "assistant_tag": "assistant"}},
        "big": {"hf_hub_url": "someone/big"},
    }))
    result = CliRunner().invoke(main, ["data", "check", str(tmp_path / "dataset_info.json")])
    assert result.exit_code == 1, result.output  # a valid registry, one entry with an invalid row
    lines = result.output.splitlines()
    assert lines[0] == f"{tmp_path / 'dataset_info.json'}: 3 data sets (dataset_info.json)"
    assert lines[1] == "  good   sharegpt, chat data; all 5 valid; suits sft, rl"
    assert lines[2] == "  mixed  sharegpt, chat data; 1 of 2 invalid; suits sft, rl"
    assert "1 more are on a hub or made by a script (big): not checked offline" in result.output
    as_json = json.loads(CliRunner().invoke(main, ["data", "check", str(tmp_path / "dataset_info.json"),
                                                   "--json"]).output)
    assert as_json["big"] == {"skipped": "on a hub (someone/big): not checked offline"}
    assert as_json["good"]["valid"] == 5


def test_samples_mark_the_learnt_tokens_without_colours(tmp_path, tiny_model):
    p = write_messages(tmp_path / "d.jsonl", 3)
    result = CliRunner().invoke(main, ["data", "check", str(p), "--model", str(tiny_model), "--show", "1"])
    assert result.exit_code == 0, result.output  # CliRunner is no terminal: as in a pipe or a log
    assert "sample 1 (learnt tokens between [[ and ]]" in result.output
    answer = json.loads(p.read_text().splitlines()[0])["messages"][-1]["content"]
    assert f"[[{answer}" in result.output and "[[<|im_start|>user" not in result.output


def test_unfilled_placeholders_are_named_with_their_rows(tmp_path):
    """LLaMA-Factory's identity.json ships with {{name}} and {{author}} to fill in; left as they are, the model
    learns to call itself {{name}}. The check names them; a row without them is not counted."""
    rows = [{"instruction": "Who are you?", "output": "I am {{name}}, made by {{ author }}."},
            {"instruction": "hi", "output": "Hello! I am {{name}}."},
            {"instruction": "2+2?", "output": "4"}]
    data = tmp_path / "identity.json"
    data.write_text(json.dumps(rows))
    assert check(str(data)).summary.placeholders == {"{{ author }}": 1, "{{name}}": 2}
    result = CliRunner().invoke(main, ["data", "check", str(data)])
    assert result.exit_code == 0, result.output
    assert "placeholders left unfilled: {{ author }} (1 row), {{name}} (2 rows)" in result.output
    clean = write_messages(tmp_path / "clean.jsonl", 5)
    assert "warning" not in CliRunner().invoke(main, ["data", "check", str(clean)]).output
