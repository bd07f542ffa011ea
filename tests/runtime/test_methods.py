"""Methods beyond plain LoRA and full: freeze, LLaMA Pro, PiSSA, LoRA+, GaLore, APOLLO, BAdam, Adam-mini, continuing an
adapter, and the CUDA-only ones. (What each method builds, parameter by parameter, is in test_knobs.py.)"""

import math

import pytest
import yaml

from ftune.runtime import launch
from ftune.runtime.rundir import RunError
from ftune.runtime.sysmon import gpu_samples
from tests.runtime.helpers import make_run, of_type, train_to_end

SHORT = {"max_steps": 3, "save_steps": 100}


def test_freeze_trains_only_the_chosen_layers(project, tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    run = make_run(project, tiny_model, method={"type": "freeze", "freeze": {"trainable_layers": 1,
                                                                            "trainable_modules": ["mlp"]}},
                   training=SHORT)
    events = train_to_end(run)
    assert events[-1]["type"] == "finished", run.log_path.read_text()[-2000:]
    started = of_type(events, "started")[0]
    assert started["method"] == "freeze" and 0 < started["trainable_params"] < started["total_params"] / 4
    after = dict(AutoModelForCausalLM.from_pretrained(run.export_dir()).named_parameters())
    before = dict(AutoModelForCausalLM.from_pretrained(tiny_model).named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(n.startswith("model.layers.1.mlp.") for n in changed), changed


def test_pissa_and_loraplus_train(project, tiny_model):
    run = make_run(project, tiny_model, method={"lora": {"pissa_init": True, "loraplus_lr_ratio": 16}},
                   training=SHORT)
    events = train_to_end(run)
    assert events[-1]["type"] == "finished", run.log_path.read_text()[-2000:]
    assert len(of_type(events, "step")) == 3


@pytest.mark.parametrize("kind", ["galore", "apollo"])
def test_galore_and_apollo_train_full_weights(project, tiny_model, kind):
    import torch
    from transformers import AutoModelForCausalLM

    run = make_run(project, tiny_model, method={"type": "full", kind: {"rank": 4, "update_proj_gap": 2, "scale": 0.25}},
                   training={"max_steps": 2, "save_steps": 100})
    events = train_to_end(run)
    assert events[-1]["type"] == "finished", run.log_path.read_text()[-2000:]
    losses = [s["loss"] for s in of_type(events, "step")]
    assert len(losses) == 2 and all(isinstance(x, float) and math.isfinite(x) for x in losses), losses
    # the projected optimiser moved the projected weights
    after = AutoModelForCausalLM.from_pretrained(run.export_dir()).model.layers[0].self_attn.q_proj.weight
    before = AutoModelForCausalLM.from_pretrained(tiny_model).model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(before, after)


def test_continue_from_an_adapter_and_stack_a_new_one(project, tiny_model):
    first = make_run(project, tiny_model, name="first", training=SHORT)
    assert train_to_end(first)[-1]["type"] == "finished"
    again = make_run(project, tiny_model, name="again", method={"lora": {"adapter": "first"}}, training=SHORT)
    events = train_to_end(again)
    assert events[-1]["type"] == "finished", again.log_path.read_text()[-2000:]
    # continuing: the first steps start from the trained adapter, so the loss starts lower than at first
    first_losses = [s["loss"] for s in of_type(train_to_end(first, restart=True), "step")]
    assert of_type(events, "step")[0]["loss"] < first_losses[0]
    stacked = make_run(project, tiny_model, name="stacked",
                       method={"lora": {"adapter": "first", "create_new_adapter": True}}, training=SHORT)
    assert train_to_end(stacked)[-1]["type"] == "finished"


@pytest.mark.skipif(bool(gpu_samples()), reason="checks the refusal on a machine without a GPU")
@pytest.mark.parametrize("change", [{"training": {"precision": "fp16"}}, {"model": {"acceleration": "liger"}}])
def test_cuda_only_choices_are_refused_clearly_without_a_gpu(project, tiny_model, change):
    run = make_run(project, tiny_model, **change)
    with pytest.raises(RunError, match="needs a CUDA GPU, and none is visible here"):
        launch.start(run)
    assert not run.events_path.exists()


@pytest.mark.parametrize("kind", ["linear", "yarn"])
def test_rope_scaling_reaches_the_model(project, tiny_model, kind):
    import json

    run = make_run(project, tiny_model, model={"rope_scaling": kind, "rope_factor": 4}, method="full",
                   training=SHORT)
    events = train_to_end(run)
    assert events[-1]["type"] == "finished", run.log_path.read_text()[-2000:]
    rope = json.loads((run.export_dir() / "config.json").read_text())["rope_parameters"]
    assert rope["rope_type"] == kind and rope["factor"] == 4

SHORT = {"max_steps": 3, "save_steps": 100}


def finished(run, events):
    assert events[-1]["type"] == "finished", run.log_path.read_text()[-3000:]
    assert all(math.isfinite(s["loss"]) for s in of_type(events, "step"))
    return of_type(events, "started")[0]


def weights(folder):
    from transformers import AutoModelForCausalLM

    return {n: p.detach().clone() for n, p in AutoModelForCausalLM.from_pretrained(folder).named_parameters()}


def test_llama_pro_grows_the_model_without_changing_it_then_trains_only_the_new_blocks(project, tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    from ftune.runtime.spec import build_spec
    from ftune.runtime.train.model import expand_blocks

    spec = build_spec({"name": "x", "model": {"name_or_path": str(tiny_model)}, "data": {"train": "t.jsonl"},
                       "method": {"type": "freeze", "llama_pro_blocks": 2}})
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    with torch.no_grad():
        before = model(ids).logits
        added = expand_blocks(model, spec.method.llama_pro_blocks)
        after = model(ids).logits
    assert added == [1, 3] and model.config.num_hidden_layers == 4 and len(model.model.layers) == 4
    assert torch.allclose(before, after, atol=1e-5)  # the inserted blocks pass their input through

    run = make_run(project, tiny_model, method={"type": "freeze", "llama_pro_blocks": 2}, training=SHORT)
    started = finished(run, train_to_end(run))
    assert started["method"] == "freeze"
    old, new = weights(tiny_model), weights(run.export_dir())
    assert yaml.safe_load((run.export_dir() / "config.json").read_text())["num_hidden_layers"] == 4
    for i, src in ((0, 0), (2, 1)):  # the original layers: untouched
        for n, p in old.items():
            if n.startswith(f"model.layers.{src}."):
                assert torch.equal(new[n.replace(f"layers.{src}.", f"layers.{i}.")], p), n
    assert not torch.equal(new["model.layers.3.self_attn.o_proj.weight"], torch.zeros_like(
        new["model.layers.3.self_attn.o_proj.weight"]))  # the new blocks learnt
    assert torch.equal(new["model.embed_tokens.weight"], old["model.embed_tokens.weight"])


def test_llama_pro_needs_blocks_that_divide_the_layers(project, tiny_model):
    run = make_run(project, tiny_model, method={"type": "freeze", "llama_pro_blocks": 3}, training=SHORT)
    events = train_to_end(run)
    assert events[-1]["type"] == "error" and "must divide the model's 2 layers" in events[-1]["message"]


def test_badam_updates_one_block_of_layers_at_a_time(project, tiny_model):
    import torch

    run = make_run(project, tiny_model, method={"type": "full", "badam": {"switch_every": 100}}, training=SHORT)
    finished(run, train_to_end(run))
    old, new = weights(tiny_model), weights(run.export_dir())
    changed = {n.split(".")[2] for n in old if n.startswith("model.layers.") and not torch.equal(old[n], new[n])}
    assert changed == {"1"}  # descending: the last layer's block first, and 3 steps stay within it
    assert torch.equal(old["model.embed_tokens.weight"], new["model.embed_tokens.weight"])


def test_badam_ratio_mode_and_adam_mini_train(project, tiny_model):
    from ftune.runtime.spec import build_spec
    from ftune.runtime.train.optim import custom_optimizer

    run = make_run(project, tiny_model, name="ratio", method={"type": "full", "badam": {"mode": "ratio",
                                                                                      "update_ratio": 0.1}},
                   training=SHORT)
    finished(run, train_to_end(run))
    run = make_run(project, tiny_model, name="mini", method="full", training={**SHORT, "optim": "adam_mini"})
    finished(run, train_to_end(run))

    from transformers import AutoModelForCausalLM

    spec = build_spec(yaml.safe_load(run.spec_path.read_text()))
    optimizer = custom_optimizer(spec, AutoModelForCausalLM.from_pretrained(tiny_model), {})
    assert type(optimizer).__name__ == "Adam_mini" and optimizer.param_groups[0]["lr"] == spec.training.learning_rate


@pytest.mark.parametrize("change,message", [
    ({"method": "lora", "training": {"optim": "adam_mini"}}, "adam_mini splits whole weight matrices"),
    ({"method": {"type": "lora", "badam": {}}}, "method.badam is its own optimiser"),
    ({"method": {"type": "full", "llama_pro_blocks": 2}}, "llama_pro_blocks trains only the inserted blocks"),
    ({"method": "full", "model": {"name_or_path": "m", "acceleration": "unsloth"}}, "unsloth patches LoRA training"),
    ({"stage": "rm", "output": {"save_format": "merged_4bit"}}, "merged_4bit is for generating models"),
])
def test_method_combinations_that_cannot_work_are_refused(change, message):
    from ftune.runtime.spec import SpecError, build_spec

    raw = {"name": "x", "model": {"name_or_path": "m"}, "data": {"train": "t.jsonl"}, **change}
    with pytest.raises(SpecError, match=message):
        build_spec(raw)


@pytest.mark.skipif(bool(gpu_samples()), reason="checks the refusal on a machine without a GPU")
@pytest.mark.parametrize("change,instead", [
    ({"model": {"acceleration": "unsloth"}}, "model.acceleration: none"),
    ({"method": {"quantization": {"bits": 8, "method": "eetq"}}}, "method.quantization.method: bnb"),
    ({"resources": {"strategy": "fsdp", "gpus_per_node": 2}}, "resources.strategy: ddp"),
])
def test_more_cuda_only_choices_are_refused_with_what_to_do_instead(project, tiny_model, change, instead):
    run = make_run(project, tiny_model, **change)
    with pytest.raises(RunError, match="needs a CUDA GPU, and none is visible here") as info:
        launch.start(run)
    assert f"On this machine use {instead}" in str(info.value)
    assert not run.events_path.exists()

