"""The model catalog: data covering the seeds' families, and what ftune can tell about a model offline."""

import json
import re

import pytest

from ftune.runtime import catalog
from ftune.runtime.catalog import family_by_name, find_model, guess_params_b, inspect_local, local_problem, resolve
from ftune.runtime.spec import build_spec

SEED_FAMILIES = ["Qwen1.5", "Qwen2", "Qwen2.5", "Qwen3", "Qwen2-VL", "Qwen2.5-VL", "Llama 2", "Llama 3", "Llama 3.1", "Llama 3.2", "Yi",
                 "Yi-1.5", "GLM-4", "Mistral", "Mixtral", "Gemma 2", "Gemma 3", "DeepSeek-R1-Distill", "Phi-3",
                 "Phi-4", "Baichuan 2", "InternLM", "Falcon", "SmolLM2"]  # SmolLM2: the real-model tier's
ALL = [m for f in catalog.families() for m in f.models]


def test_covers_the_seed_families():
    assert [f.name for f in catalog.families()] == SEED_FAMILIES
    assert all(f.models for f in catalog.families())


@pytest.mark.parametrize("m", ALL, ids=lambda m: m.id)
def test_every_entry_is_complete(m):
    assert re.fullmatch(r"[\w.-]+/[\w.-]+", m.id)
    assert m.params_b > 0 and m.context >= 2048 and m.lora_targets and m.template
    assert m.kind in ("instruct", "base") and isinstance(m.trust_remote_code, bool)
    assert m.hidden and m.layers and m.vocab  # the memory estimate uses them
    assert find_model(m.id) == m and find_model(m.id.lower()) == m
    # the family's name pattern finds it from its hub id alone
    assert family_by_name(m.id).name == m.family


def test_ids_are_unique():
    assert len({m.id for m in ALL}) == len(ALL)


def test_remote_code_where_the_checkpoint_ships_code():
    assert find_model("baichuan-inc/Baichuan2-7B-Chat").trust_remote_code
    assert find_model("internlm/internlm2_5-7b-chat").trust_remote_code
    assert find_model("THUDM/glm-4-9b-chat").trust_remote_code
    assert not find_model("THUDM/GLM-4-9B-0414").trust_remote_code  # the transformers-native GLM-4


def test_templates_are_ones_the_run_spec_knows_or_auto_only():
    base = {"name": "run-01", "model": {"name_or_path": "m"}, "data": {"train": "t.jsonl"}}
    for name in catalog.templates():  # every template the catalog offers, the spec takes
        build_spec({**base, "model": {"name_or_path": "m", "template": name}})


def test_groups_keep_the_first_list_short():
    groups = catalog.groups()
    assert len(groups) + 3 <= 20  # plus a separator, a local folder and a hub id: fits 24 rows with the question
    assert [f.name for f in groups["Qwen"]] == ["Qwen1.5", "Qwen2", "Qwen2.5", "Qwen3"]
    assert all(len(f.models) <= 8 for f in catalog.families())


@pytest.mark.parametrize("hub_id,family,template,params,kind", [
    ("Qwen/Qwen2.5-7B", "Qwen2.5", "qwen", 7, "base"),
    ("Qwen/Qwen2-VL-7B-Instruct", "Qwen2-VL", "qwen2_vl", 8.29, "instruct"),  # not Qwen2 from the shorter match
    ("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen2.5-VL", "qwen2_vl", 3.75, "instruct"),
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "DeepSeek-R1-Distill", "deepseekr1", 7.62, "instruct"),
    ("mistralai/Mixtral-8x7B-v0.1", "Mixtral", "mistral", 56, "base"),  # not "Mistral" from the owner's name
    ("meta-llama/Llama-3.1-8B", "Llama 3.1", "llama3", 8, "base"),
    ("meta-llama/Meta-Llama-3-8B-Instruct", "Llama 3", "llama3", 8.03, "instruct"),
    ("internlm/internlm2_5-1_8b-chat", "InternLM", "intern2", 1.89, "instruct"),
    ("01-ai/Yi-1.5-9B", "Yi-1.5", "yi", 9, "base"),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2", "chatml", 0.135, "instruct"),
    ("someone/mystery", None, None, None, None),
])
def test_resolve_hub_ids_offline(hub_id, family, template, params, kind):
    info = resolve(hub_id)
    assert (info.family, info.template, info.kind) == (family, template, kind)
    assert info.params_b == (pytest.approx(params) if params else None)
    assert info.source == ("catalog" if find_model(hub_id) else "hub")


def test_a_family_whose_checkpoints_all_ship_code_needs_it_for_any_id():
    assert resolve("baichuan-inc/Baichuan2-13B-Base").trust_remote_code
    assert not resolve("Qwen/Qwen2.5-3B").trust_remote_code


@pytest.mark.parametrize("name,params", [("Qwen2.5-0.5B", 0.5), ("x/y-1_8b-chat", 1.8), ("x/Qwen3-30B-A3B", 30),
                                         ("x/gpt2", None), ("x/model-350m", 0.35)])
def test_guess_params(name, params):
    assert guess_params_b(name) == (pytest.approx(params) if params else None)


def test_local_folder_is_read_from_its_files(tiny_model):
    from transformers import AutoModelForCausalLM

    info = inspect_local(tiny_model)
    config = json.loads((tiny_model / "config.json").read_text())
    assert info.source == "local" and info.family == "Qwen2" and info.template == "qwen"
    assert (info.hidden, info.layers, info.vocab) == (config["hidden_size"], config["num_hidden_layers"],
                                                     config["vocab_size"])
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert round(info.params_b * 1e9) == model.num_parameters()  # counted from the safetensors headers
    assert not info.trust_remote_code


def test_local_folder_matched_by_model_type_when_the_name_says_nothing(tiny_model, tmp_path):
    import shutil

    plain = tmp_path / "my-model"
    shutil.copytree(tiny_model, plain)
    info = resolve(str(plain))
    assert info.family in ("Qwen2.5", "Qwen2", "Qwen1.5") and info.template == "qwen"
    assert info.params_b and info.params_b < 0.01


def test_local_problems(tmp_path):
    assert "does not exist" in local_problem(tmp_path / "nope")
    (tmp_path / "f.txt").write_text("x")
    assert "is a file" in local_problem(tmp_path / "f.txt")
    assert "has no config.json" in local_problem(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert local_problem(tmp_path) is None


def test_vision_language_models_know_their_tower(tiny_vl_model):
    assert catalog.resolve("Qwen/Qwen2-VL-2B-Instruct").vision == (0.67, 1280, 32)
    assert catalog.resolve("Qwen/Qwen2.5-7B-Instruct").vision is None
    local = catalog.resolve(str(tiny_vl_model))  # from config.json's vision_config: 2 blocks 32 wide
    assert (local.family, local.template) == ("Qwen2-VL", "qwen2_vl")
    params, width, blocks = local.vision
    assert (width, blocks) == (32, 2) and params == 2 * (4 * 32 * 32 + 2 * 32 * 64) / 1e9
