from pathlib import Path

import pytest
import yaml

from ftune.runtime.spec import RunSpec, SpecError, build_spec, check_run_name, load_spec, save_spec, spec_to_dict

BASE = {"name": "run-01", "model": {"name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"}, "data": {"train": "train.jsonl"}}


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def problems(err: SpecError) -> dict[str, str]:
    return {p.path: p.message for p in err.problems}


def test_valid_file_loads_with_defaults(tmp_path):
    spec = load_spec(write(tmp_path, yaml.safe_dump(BASE)))
    assert spec.stage.type == "sft" and spec.method.type == "lora"
    assert spec.data.train == ["train.jsonl"]
    assert spec.model.trust_remote_code is False
    assert spec.training.learning_rate == 1e-4


def test_shorthand_stage_and_method(tmp_path):
    spec = build_spec({**BASE, "stage": "sft", "method": "full"})
    assert spec.stage.type == "sft" and spec.method.type == "full"
    assert spec_to_dict(spec)["method"] == "full"  # written back in the short form


def test_round_trip_is_stable(tmp_path):
    spec = build_spec({**BASE, "preset": "quality"})
    path = tmp_path / "run.yaml"
    save_spec(spec, path)
    again = load_spec(path)
    assert again == spec
    assert "alpha: 64\n" in path.read_text()  # integral floats written as ints


def test_unknown_key_did_you_mean(tmp_path):
    path = write(tmp_path, "name: run-01\nmodel: {name_or_path: m}\ndata: {train: t.jsonl}\n"
                           "training:\n  learning_rat: 0.001\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    err = info.value
    assert problems(err) == {"training.learning_rat": "unknown key — did you mean 'learning_rate'?"}
    assert err.problems[0].line == 5
    assert f"{path} has 1 mistake:\n  line 5: training.learning_rat: unknown key" in str(err)


def test_foreign_key_points_to_its_home():
    with pytest.raises(SpecError) as info:
        build_spec({**BASE, "training": {"cutoff_len": 512}})
    assert problems(info.value) == {"training.cutoff_len": "unknown key — in ftune this is 'data.max_length'"}


def test_every_mistake_at_once_with_lines(tmp_path):
    text = (
        "name: Run_01\n"                     # 1 bad name
        "model: {name_or_path: m}\n"         # 2
        "data: {train: t.jsonl}\n"           # 3
        "training:\n"                        # 4
        "  num_train_epochs: three\n"        # 5 bad type
        "  seed: 1\n"                        # 6
        "method:\n"                          # 7
        "  llama_pro_blocks: 0\n"            # 8 below its minimum
        "stage: {type: rl, rl_algorithm: ppo, reward_model: rm-01}\n"  # 9 not one of the choices
    )
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, text))
    got = problems(info.value)
    assert got["name"] == "'Run_01' is not a valid run name: use lowercase letters, digits and '-', " \
                          "starting and ending with a letter or digit (e.g. run-01)"
    assert got["training.num_train_epochs"].startswith("Input should be a valid number")
    assert got["method.llama_pro_blocks"] == "Input should be greater than or equal to 1 (got 0)"
    assert got["stage.rl_algorithm"] == "Input should be 'grpo' or 'rloo' (got 'ppo')"
    assert [p.line for p in info.value.problems] == [1, 5, 8, 9]


def test_missing_sections():
    with pytest.raises(SpecError) as info:
        build_spec({"name": "run-01"})
    assert problems(info.value) == {"model": "required, but missing", "data": "required, but missing"}


def test_not_a_mapping_and_bad_yaml(tmp_path):
    with pytest.raises(SpecError, match="must be a mapping"):
        build_spec(["a"])
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, "name: run-01\nmodel: [unclosed\n"))
    assert "not valid YAML" in str(info.value) and info.value.problems[0].line == 3


def test_duplicate_keys_are_refused_with_both_lines(tmp_path):
    text = ("name: run-01\nmodel:\n  name_or_path: x/y\ndata:\n  train: t.jsonl\ntraining:\n  learning_rate: 1e-4\n"
            "  learning_rate: 2e-4\ntraining:\n  seed: 3\n")
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, text))
    assert [(p.line, p.message) for p in info.value.problems] == [
        (8, "learning_rate appears twice (lines 7 and 8): YAML would keep only the second; merge them into one"),
        (9, "training appears twice (lines 6 and 9): YAML would keep only the second; merge them into one")]


@pytest.mark.parametrize("name,ok", [
    ("run-01", True), ("a", True), ("9lives", True), ("-run", False), ("run-", False),
    ("Run", False), ("run_01", False), ("../etc", False), ("a" * 65, False), ("", False),
])
def test_run_name_rule(name, ok):
    assert (check_run_name(name) is None) is ok


def test_overrides_win_and_parse_yaml_values():
    spec = build_spec({**BASE, "preset": "fast"}, ["training.learning_rate=3e-4", "method.lora.target_modules=[q_proj, v_proj]",
                                                   "training.gradient_checkpointing=true"])
    assert spec.training.learning_rate == 3e-4
    assert spec.method.lora.target_modules == ["q_proj", "v_proj"]
    assert spec.training.gradient_checkpointing is True
    with pytest.raises(SpecError, match="must look like section.key=value"):
        build_spec(BASE, ["training.learning_rate"])


def test_full_method_rejects_adapter_save_format():
    with pytest.raises(SpecError, match="full fine-tuning always saves the whole model"):
        build_spec({**BASE, "method": "full", "output": {"save_format": "merged_16bit"}})


def test_a_token_budget_fits_a_whole_row_and_applies_to_sft_and_pt():
    with pytest.raises(SpecError, match=r"tokens_per_batch \(512\) is below data.max_length \(1024\)"):
        build_spec({**BASE, "training": {"tokens_per_batch": 512}})
    with pytest.raises(SpecError, match="tokens_per_batch works for stage sft or pt"):
        build_spec({**BASE, "stage": "dpo", "training": {"tokens_per_batch": 4096}})
    spec = build_spec({**BASE, "data": {**BASE["data"], "max_length": 256}, "training": {"tokens_per_batch": 256}})
    assert spec.training.tokens_per_batch == 256 and spec.data.padding_free


def test_method_label():
    assert build_spec({**BASE, "method": {"lora": {"use_dora": True}}}).method_label == "dora"
    assert build_spec({**BASE, "method": "full"}).method_label == "full"
    assert isinstance(build_spec(BASE), RunSpec)


def test_an_unknown_preset_is_one_mistake_among_the_others():
    with pytest.raises(SpecError) as info:
        build_spec({**BASE, "preset": "nope", "data": {"train": "t.jsonl", "max_lenght": 5},
                    "training": {"learning_rate": "lots", "epochs": 3}})
    assert set(problems(info.value)) == {"preset", "data.max_lenght", "training.learning_rate", "training.epochs"}


def test_set_edits_the_run_file_in_place_keeping_comments_order_and_shorthand():
    from ftune.runtime.spec.overrides import edit_in_place

    text = ("# my experiment\nname: r  # short\nmodel:\n  name_or_path: ./m\ndata:\n  train: t.jsonl\nstage: sft\n"
            "method: lora\ntraining:\n  learning_rate: 1.0e-4  # was 2e-4\n")
    edited = edit_in_place(text, ["training.learning_rate=3e-4", "stage.type=dpo", "method.lora.rank=4",
                                  "training.save_total_limit=null"])
    assert edited == ("# my experiment\nname: r  # short\nmodel:\n  name_or_path: ./m\ndata:\n  train: t.jsonl\n"
                      "stage: dpo\nmethod:\n  type: lora\n  lora:\n    rank: 4\ntraining:\n"
                      "  learning_rate: 0.0003  # was 2e-4\n  save_total_limit: null\n")
    spec = build_spec(yaml.safe_load(edited))
    assert (spec.training.learning_rate, spec.stage.type, spec.method.lora.rank) == (3e-4, "dpo", 4)
    assert spec.training.save_total_limit is None


def test_each_stage_takes_its_own_settings_and_refuses_another_stage_s(tmp_path):
    from ftune.runtime.spec.schema import STAGE_SPECS, class_at, iter_fields, not_of_stage

    spec = build_spec({**BASE, "stage": {"type": "dpo", "pref_beta": 0.2, "ref_model_quantization_bits": 4}})
    assert type(spec.stage) is STAGE_SPECS["dpo"] and spec.stage.pref_beta == 0.2
    assert spec.stage.quantizes_a_frozen_model
    assert not build_spec({**BASE, "stage": "kto"}).stage.quantizes_a_frozen_model
    assert spec_to_dict(spec)["stage"] == {"type": "dpo", "pref_beta": 0.2, "pref_loss": "sigmoid", "pref_ftx": 0,
                                           "label_smoothing": 0, "ref_model_quantization_bits": 4}
    assert not hasattr(build_spec(BASE).stage, "pref_beta")  # sft has none: no setting that means nothing

    text = ("name: r\nmodel: {name_or_path: m}\ndata: {train: t.jsonl}\nstage:\n  type: sft\n  pref_beta: 0.2\n"
            "  kl_beta: 1\n  pref_betta: 1\n")
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, text))
    got = problems(info.value)
    assert got == {
        "stage.pref_beta": "not a setting of stage sft: it belongs to dpo, kto, orpo and simpo; remove it, or set "
                           "stage.type to one of them",
        "stage.kl_beta": "not a setting of stage sft: it belongs to rl; remove it, or set stage.type to rl",
        "stage.pref_betta": "unknown key — expected one of: type"}
    assert [p.line for p in info.value.problems] == [6, 7, 8]
    with pytest.raises(SpecError) as info:  # a section without a type is sft's
        build_spec({**BASE, "stage": {"pref_beta": 0.2}})
    assert list(problems(info.value)) == ["stage.pref_beta"]
    with pytest.raises(SpecError) as info:
        build_spec({**BASE, "stage": {"type": "dpo", "pref_betta": 0.2}})
    assert problems(info.value) == {"stage.pref_betta": "unknown key — did you mean 'pref_beta'?"}
    with pytest.raises(SpecError) as info:
        build_spec({**BASE, "stage": "sftt"})
    assert problems(info.value) == {"stage.type": "Input should be 'sft', 'dpo', 'kto', 'orpo', 'simpo', 'rm', 'pt' "
                                                  "or 'rl' (got 'sftt')"}

    # walking the schema: each setting once, under the stage's section; a tag picks a stage's own class
    paths = [p for p, _, _ in iter_fields() if p.startswith("stage.")]
    assert len(paths) == len(set(paths)) and {"stage.type", "stage.pref_beta", "stage.kl_beta"} <= set(paths)
    assert class_at(("stage", "rl")) is STAGE_SPECS["rl"] and "type" in class_at(("stage",)).model_fields
    # what a change of stage leaves behind: another stage's settings, not this one's nor unknown keys
    assert not_of_stage("orpo", ["pref_beta", "pref_loss", "kl_beta", "no_such_key"]) == ["pref_loss", "kl_beta"]
