"""Methods beyond plain LoRA and full: freeze, PiSSA, LoRA+, GaLore, APOLLO, continuing an adapter, and the CUDA-only
ones. (What each method builds, parameter by parameter, is in test_knobs.py.)"""

import math

import pytest

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
@pytest.mark.parametrize("change", [{"method": {"quantization": {"bits": 4}}}, {"training": {"optim": "adamw_8bit"}},
                                    {"model": {"acceleration": "liger"}},
                                    {"resources": {"strategy": "deepspeed-zero3", "gpus_per_node": 2}}])
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
