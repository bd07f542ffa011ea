"""LLaMA Pro block expansion, BAdam and Adam-mini, trained for real on the tiny model; the CUDA-only choices."""

import math

import pytest
import yaml

from ftune.runtime import launch
from ftune.runtime.rundir import RunError
from ftune.runtime.sysmon import gpu_samples
from tests.runtime.helpers import make_run, of_type, train_to_end

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
    from ftune.runtime.train import expand_blocks

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
    from ftune.runtime.train import custom_optimizer

    run = make_run(project, tiny_model, name="ratio", method={"type": "full", "badam": {"mode": "ratio",
                                                                                      "update_ratio": 0.1}},
                   training=SHORT)
    finished(run, train_to_end(run))
    run = make_run(project, tiny_model, name="mini", method="full", training={**SHORT, "optim": "adam_mini"})
    finished(run, train_to_end(run))

    from transformers import AutoModelForCausalLM

    spec = build_spec(yaml.safe_load(run.spec_path.read_text()))
    optimizer = custom_optimizer(spec, AutoModelForCausalLM.from_pretrained(tiny_model))
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
    ({"output": {"save_format": "merged_4bit"}}, "output.save_format: merged_16bit"),
    ({"stage": {"type": "dpo", "ref_model": "ref", "ref_model_quantization_bits": 4}},
     "no stage.ref_model_quantization_bits"),
    ({"stage": {"type": "rl", "reward_model": "rm", "reward_model_quantization_bits": 8}},
     "no stage.reward_model_quantization_bits"),
])
def test_more_cuda_only_choices_are_refused_with_what_to_do_instead(project, tiny_model, change, instead):
    run = make_run(project, tiny_model, **change)
    with pytest.raises(RunError, match="needs a CUDA GPU, and none is visible here") as info:
        launch.start(run)
    assert f"on this machine use {instead}" in str(info.value)
    assert not run.events_path.exists()


def test_logging_per_epoch_and_automatic_acceleration_on_a_cpu(project, tiny_model):
    run = make_run(project, tiny_model, model={"acceleration": "auto"},
                   training={"logging_strategy": "epoch", "num_train_epochs": 2, "per_device_train_batch_size": 16,
                             "save_strategy": "no"}, data={"train": "train.jsonl", "val_size": 0})
    events = train_to_end(run)
    started = finished(run, events)
    assert [s["step"] for s in of_type(events, "step")] == [1, 4, 8]  # the first step, then each epoch's end
    assert started["liger"] is False and started["attn_implementation"] == "sdpa"  # auto: nothing to add on a CPU
