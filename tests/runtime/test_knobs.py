"""Every method and knob of the run file reaches the objects the worker builds.

The trainer is built in-process by the worker's own set-up (`recipe.setup`, the code the worker runs
before it trains), and the tests look at what was built: the peft model, the optimiser, the scheduler,
the dataloader, trainer.args, or what happens in the first training step. Training for real only
where that is the point.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import TrainerCallback

from ftune.runtime.events import read_all
from ftune.runtime.train import recipe
from tests.runtime.helpers import make_run, of_type, recipe_builder, train_to_end

LR = 1e-3


@pytest.fixture
def build(project, tiny_model):
    """build(**sections) -> the Recipe the worker builds (recipe.setup) for a run file like make_run's."""
    with recipe_builder(project, tiny_model, "knobs") as build:
        yield build


@pytest.fixture(scope="module")
def base(tiny_model):
    """The checkpoint as it is on disk, to count and compare against."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model).eval()


def value(x):
    return getattr(x, "value", x)  # trainer.args keeps some choices as enums


def trainable(model) -> int:
    return recipe.count_params(model)[0]  # what the started event reports


def linears(base, names=None):
    """The nn.Linear modules LoRA targets: all of them but the output head, or those named."""
    return [m for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"
            and (names is None or n.split(".")[-1] in names)]


def lr_curve(trainer, steps: int = 10) -> list[float]:
    """The scheduler's learning rate at steps 0..steps, as the trainer creates it for a run of `steps`."""
    trainer.create_optimizer_and_scheduler(num_training_steps=steps)
    out = []
    for _ in range(steps + 1):
        out.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()  # no gradients, so nothing moves; torch wants it before the scheduler's step
        trainer.lr_scheduler.step()
    return out


def group_of(optimizer, param) -> dict:
    return next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))


class Enough(Exception):
    """The probe has seen what the test needed: leave the training loop without computing more."""


class FirstStep(TrainerCallback):
    """Looks inside the first training step: at its start, or (forward=True) at the embedding's first output."""

    def __init__(self, forward: bool):
        self.forward = forward

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def look(module, inputs, output):  # registered after NEFTune's hook, so it sees its output
            self.noisy_embeddings = not torch.equal(output, module.weight[inputs[0]])
            raise Enough

        if self.forward:
            model.get_input_embeddings().register_forward_hook(look)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.max_steps = state.max_steps
        self.checkpointing = model.is_activation_checkpointing
        if not self.forward:
            raise Enough


def first_step(b, forward: bool = False) -> FirstStep:
    """Start the real training loop (trainer.train) and stop it inside the first step."""
    probe = FirstStep(forward)
    b.trainer.add_callback(probe)
    with pytest.raises(Enough):
        b.trainer.train()
    return probe


# --------------------------------------------------------------------------- methods: what is trained
@pytest.mark.parametrize("target,rank,dora", [
    ("all", 4, False), ("all", 8, False), (["q_proj", "v_proj"], 4, False), (["q_proj", "v_proj"], 16, False),
    ("all", 4, True), (["q_proj", "v_proj"], 4, True),  # DoRA adds one magnitude per output feature
])
def test_lora_trains_rank_times_in_plus_out_of_each_targeted_linear(build, base, target, rank, dora):
    b = build(method={"lora": {"target_modules": target, "rank": rank, "use_dora": dora}})
    targeted = linears(base, None if target == "all" else target)
    expected = sum(rank * (m.in_features + m.out_features) + (m.out_features if dora else 0) for m in targeted)
    assert trainable(b.model) == expected
    assert all("lora_" in n for n, p in b.model.named_parameters() if p.requires_grad)


def test_full_trains_every_parameter(build, base):
    b = build(method="full")
    assert trainable(b.model) == sum(p.numel() for p in base.parameters())


@pytest.mark.parametrize("freeze,chosen", [
    ({"trainable_layers": 1}, lambda m: [m.layers[1]]),  # the last N
    ({"trainable_layers": -1}, lambda m: [m.layers[0]]),  # the first N
    ({"trainable_layers": 2, "trainable_modules": ["mlp"]}, lambda m: [m.layers[0].mlp, m.layers[1].mlp]),
    ({"trainable_layers": 1, "extra_modules": ["norm"]}, lambda m: [m.layers[1], m.norm]),
], ids=["last-1", "first-1", "mlp-of-2", "last-1+norm"])
def test_freeze_trains_the_chosen_layers(build, base, freeze, chosen):
    b = build(method={"type": "freeze", "freeze": freeze})
    assert trainable(b.model) == sum(p.numel() for module in chosen(base.model) for p in module.parameters())


@pytest.mark.parametrize("dora", [False, True])
def test_dora_reaches_peft_as_magnitude_vectors(build, base, dora):
    b = build(method={"lora": {"use_dora": dora, "target_modules": ["q_proj"]}})
    magnitudes = [p for n, p in b.model.named_parameters() if "lora_magnitude_vector" in n]
    assert len(magnitudes) == (len(linears(base, ["q_proj"])) if dora else 0)
    assert all(p.requires_grad for p in magnitudes)


@pytest.mark.parametrize("rslora,scaling", [(False, 8 / 4), (True, 8 / math.sqrt(4))])
def test_rslora_scales_by_alpha_over_sqrt_rank(build, rslora, scaling):
    from peft.tuners.lora import LoraLayer

    b = build(method={"lora": {"rank": 4, "alpha": 8, "use_rslora": rslora}})
    layers = [m for m in b.model.modules() if isinstance(m, LoraLayer)]
    assert layers and all(m.scaling["default"] == pytest.approx(scaling) for m in layers)


@pytest.mark.parametrize("pissa", [False, True])
def test_pissa_moves_the_principal_part_into_the_adapter(build, base, pissa):
    b = build(method={"lora": {"pissa_init": pissa, "target_modules": ["q_proj", "v_proj"]}})
    q = b.model.get_submodule("base_model.model.model.layers.0.self_attn.q_proj")
    moved = not torch.allclose(q.base_layer.weight, base.model.layers[0].self_attn.q_proj.weight)
    assert moved == pissa  # plain LoRA leaves the base weight alone
    ids = torch.arange(3, 40).unsqueeze(0)
    with torch.no_grad():  # base + adapter is still the original model at step 0
        got, want = b.model.eval()(input_ids=ids).logits, base(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("ratio", [None, 4, 16])
def test_loraplus_gives_b_matrices_ratio_times_the_learning_rate(build, ratio):
    b = build(method={"lora": {"loraplus_lr_ratio": ratio}}, training={"learning_rate": LR})
    optimizer = b.trainer.create_optimizer()
    assert optimizer is b.trainer.optimizer
    params = dict(b.model.named_parameters())
    a = [group_of(optimizer, p)["lr"] for n, p in params.items() if "lora_A" in n]
    bs = [group_of(optimizer, p)["lr"] for n, p in params.items() if "lora_B" in n]
    assert a and all(lr == LR for lr in a)
    assert bs and all(lr == pytest.approx(LR * (ratio or 1)) for lr in bs)


def test_loraplus_lr_embedding_reaches_the_embedding_adapter(build):
    b = build(method={"lora": {"loraplus_lr_ratio": 16, "loraplus_lr_embedding": 1e-5,
                               "target_modules": ["q_proj", "embed_tokens"]}}, training={"learning_rate": LR})
    optimizer = b.trainer.create_optimizer()
    emb = [p for n, p in b.model.named_parameters() if "lora_embedding" in n]
    assert emb and all(group_of(optimizer, p)["lr"] == 1e-5 for p in emb)


def test_loraplus_keeps_the_weight_decay(build):
    b = build(method={"lora": {"loraplus_lr_ratio": 16}}, training={"weight_decay": 0.1})
    lora_a = [p for n, p in b.model.named_parameters() if "lora_A" in n]
    assert all(group_of(b.trainer.create_optimizer(), p)["weight_decay"] == 0.1 for p in lora_a)


@pytest.mark.parametrize("optim,cls", [("sgd", "torch.optim.sgd.SGD"),
                                       ("adafactor", "transformers.optimization.Adafactor")])
def test_loraplus_keeps_the_chosen_optimiser(build, optim, cls):
    b = build(method={"lora": {"loraplus_lr_ratio": 16}}, training={"optim": optim})
    optimizer = b.trainer.create_optimizer()
    assert f"{type(optimizer).__module__}.{type(optimizer).__name__}" == cls


@pytest.mark.parametrize("kind,cls", [("galore", "galore_torch.adamw.AdamW"), ("apollo", "apollo_torch.apollo.AdamW")])
@pytest.mark.parametrize("target", ["all", ["q_proj"]])
def test_galore_and_apollo_build_their_optimiser_with_the_settings(build, base, kind, cls, target):
    b = build(method={"type": "full", kind: {"rank": 4, "update_proj_gap": 2, "scale": 0.25, "target": target}})
    optimizer = b.trainer.create_optimizer()
    assert f"{type(optimizer).__module__}.{type(optimizer).__name__}" == cls
    projected = [g for g in optimizer.param_groups if "rank" in g]
    assert [(g["rank"], g["update_proj_gap"], g["scale"]) for g in projected] == [(4, 2, 0.25)]
    names = {id(p): n for n, p in b.model.named_parameters()}
    assert sorted(names[id(p)] for p in projected[0]["params"]) == sorted(
        f"{n}.weight" for n, m in base.named_modules() if m in linears(base, None if target == "all" else target))


# --------------------------------------------------------------------------- knobs on trainer.args
@pytest.mark.parametrize("sections,expected", [
    ({"training": {"num_train_epochs": 2}}, {"num_train_epochs": 2, "max_steps": -1}),
    ({"training": {"max_steps": 5}}, {"max_steps": 5}),
    ({"training": {"learning_rate": 7e-4}}, {"learning_rate": 7e-4}),
    ({"training": {"gradient_accumulation_steps": 3}}, {"gradient_accumulation_steps": 3}),
    ({"training": {"max_grad_norm": 0.5}}, {"max_grad_norm": 0.5}),
    ({"training": {"seed": 7}}, {"seed": 7, "data_seed": 7}),
    ({"training": {"neftune_noise_alpha": 5}}, {"neftune_noise_alpha": 5}),
    ({"training": {"gradient_checkpointing": True}}, {"activation_checkpointing": True}),
    ({"training": {"logging_steps": 3}}, {"logging_steps": 3}),
    ({"training": {"save_strategy": "epoch"}}, {"save_strategy": "epoch"}),
    ({"training": {"save_strategy": "no"}}, {"save_strategy": "no"}),
    ({"training": {"save_steps": 7}}, {"save_steps": 7, "save_strategy": "steps"}),
    ({"training": {"save_total_limit": 2}}, {"save_total_limit": 2}),
    ({"training": {"eval_strategy": "epoch"}}, {"eval_strategy": "epoch"}),
    ({"training": {"eval_strategy": "no"}}, {"eval_strategy": "no"}),
    ({"training": {"eval_steps": 4}}, {"eval_strategy": "steps", "eval_steps": 4}),
    ({"data": {"val_size": 0}}, {"eval_strategy": "no"}),  # auto: nothing to evaluate on
    ({"training": {"dataloader_num_workers": 2}}, {"dataloader_num_workers": 2}),
    ({"training": {"warmup_steps": 3}}, {"warmup_steps": 3}),
    ({"training": {"warmup_ratio": 0.2}}, {"warmup_steps": 0.2}),  # transformers 5: a float below 1 is a ratio
], ids=lambda x: ",".join(f"{s}.{k}={v}" for s, d in x.items() for k, v in d.items()) if "training" in x or "data" in x
   else "args")
def test_knob_reaches_the_trainer_arguments(build, sections, expected):
    args = build(**sections).trainer.args
    assert {k: value(getattr(args, k)) for k in expected} == expected


@pytest.mark.parametrize("training", [
    {"num_train_epochs": 1, "per_device_train_batch_size": 8},
    {"num_train_epochs": 2, "per_device_train_batch_size": 8},
    {"num_train_epochs": 1, "per_device_train_batch_size": 16},
    {"num_train_epochs": 1, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 3},
    {"num_train_epochs": 3, "max_steps": 5},  # max_steps wins over epochs
])
def test_epochs_batch_size_and_accumulation_set_the_number_of_steps(build, training):
    b = build(training=training)
    rows = b.data.num_train_rows
    batches = math.ceil(rows / training["per_device_train_batch_size"]) if "max_steps" not in training else 0
    want = training.get("max_steps") or math.ceil(batches / training.get("gradient_accumulation_steps", 1)) * \
        training["num_train_epochs"]
    assert first_step(b).max_steps == want
    assert of_type(read_all(b.run.events_path), "started")[0]["max_steps"] == want


@pytest.mark.parametrize("batch,workers", [(3, 0), (5, 2)])
def test_batch_size_and_workers_reach_the_dataloader(build, batch, workers):
    loader = build(training={"per_device_train_batch_size": batch, "dataloader_num_workers": workers}
                   ).trainer.get_train_dataloader()
    assert loader.num_workers == workers
    first = next(iter(loader))  # padding-free: the rows end to end, each starting at position 0
    assert first["input_ids"].shape[0] == 1 and int((first["position_ids"] == 0).sum()) == batch


def test_seed_orders_the_data(build):
    first = [next(iter(build(training={"seed": s}).trainer.get_train_dataloader()))["input_ids"] for s in (1, 1, 2)]
    assert torch.equal(first[0], first[1])
    assert first[0].shape != first[2].shape or not torch.equal(first[0], first[2])


# --------------------------------------------------------------------------- learning rate over time
N = 10
COSINE = [0.5 * (1 + math.cos(math.pi * i / N)) for i in range(N + 1)]
SCHEDULES = [
    ("linear", {}, [1 - i / N for i in range(N + 1)]),  # down to 0 at the end
    ("cosine", {}, COSINE),  # half the peak at the midpoint
    ("cosine_with_restarts", {}, COSINE),  # one cycle: no restart within the run
    ("polynomial", {}, [(1 - i / N) * (1 - 1e-4) + 1e-4 for i in range(N + 1)]),  # power 1 down to lr_end 1e-7
    ("constant", {}, [1.0] * (N + 1)),
    ("constant_with_warmup", {"warmup_steps": 2}, [0, 0.5] + [1.0] * (N - 1)),
]


@pytest.mark.parametrize("kind,extra,shape", SCHEDULES, ids=[kind for kind, *_ in SCHEDULES])
def test_lr_scheduler_type_shapes_the_learning_rate(build, kind, extra, shape):
    b = build(training={"lr_scheduler_type": kind, "learning_rate": LR, **extra})
    assert value(b.trainer.args.lr_scheduler_type) == kind
    assert lr_curve(b.trainer, N) == pytest.approx([LR * x for x in shape], rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("warmup,steps", [
    ({}, 0), ({"warmup_steps": 3}, 3), ({"warmup_ratio": 0.2}, 2),
    ({"warmup_steps": 3, "warmup_ratio": 0.5}, 3),  # the ratio counts only without warmup_steps
], ids=["none", "steps", "ratio", "steps-win"])
def test_warmup_ramps_the_learning_rate_up_first(build, warmup, steps):
    b = build(training={"lr_scheduler_type": "linear", "learning_rate": LR, **warmup})
    want = [i / steps if i < steps else (N - i) / (N - steps) for i in range(N + 1)]
    assert lr_curve(b.trainer, N) == pytest.approx([LR * x for x in want], rel=1e-6, abs=1e-12)


# --------------------------------------------------------------------------- optimiser
@pytest.mark.parametrize("optim,cls", [("adamw_torch", "torch.optim.adamw.AdamW"), ("sgd", "torch.optim.sgd.SGD"),
                                       ("adafactor", "transformers.optimization.Adafactor")])
def test_optim_picks_the_optimiser_class(build, optim, cls):
    optimizer = build(training={"optim": optim, "learning_rate": LR}).trainer.create_optimizer()
    assert f"{type(optimizer).__module__}.{type(optimizer).__name__}" == cls
    assert {g["lr"] for g in optimizer.param_groups} == {LR}  # learning_rate reaches it as well


@pytest.mark.parametrize("decay", [0.0, 0.1])
def test_weight_decay_reaches_the_weights_but_not_norms_and_biases(build, decay):
    b = build(method="full", training={"weight_decay": decay})
    optimizer = b.trainer.create_optimizer()
    got = {n: group_of(optimizer, p)["weight_decay"] for n, p in b.model.named_parameters()}
    assert got == {n: 0.0 if "norm" in n or n.endswith("bias") else decay for n in got}


# --------------------------------------------------------------------------- model and precision
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's precision plan")
@pytest.mark.parametrize("precision,method,frozen,trained,bf16", [
    ("auto", "lora", torch.float32, torch.float32, False),  # auto on a CPU without bf16 units (conftest): fp32
    ("fp32", "lora", torch.float32, torch.float32, False),
    ("fp32", "full", None, torch.float32, False),
    ("bf16", "lora", torch.bfloat16, torch.float32, True),  # frozen base in bf16, adapter fp32 under autocast
    ("bf16", "full", None, torch.float32, True),  # weights being trained stay fp32 under autocast
    ("pure_bf16", "lora", torch.bfloat16, torch.float32, False),  # peft keeps the adapter in fp32
    ("pure_bf16", "full", None, torch.bfloat16, False),  # bf16 weights, no mixed precision
])
def test_precision_sets_weight_dtypes_and_mixed_precision(build, precision, method, frozen, trained, bf16):
    b = build(method=method, training={"precision": precision})
    params = list(b.model.parameters())
    assert {p.dtype for p in params if not p.requires_grad} == ({frozen} if frozen else set())
    assert {p.dtype for p in params if p.requires_grad} == {trained}
    assert (b.trainer.args.bf16, b.trainer.args.fp16) == (bf16, False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's precision plan")
def test_auto_precision_on_a_cpu_with_bf16_units_is_bf16_autocast_for_a_wide_model_only(build, monkeypatch):
    from ftune.runtime.train.model import CPU_BF16_MIN_HIDDEN, precision_plan

    monkeypatch.setenv("FTUNE_CPU_BF16", "1")  # what sysmon.cpu_native_bf16 finds on an AMX or AVX512-BF16 CPU
    wide = precision_plan("auto", "lora", hidden=576)  # SmolLM2-135M
    assert (wide.name, wide.dtype, wide.bf16) == ("bf16", torch.bfloat16, True)  # frozen base bf16, adapter fp32
    assert precision_plan("auto", "lora", hidden=CPU_BF16_MIN_HIDDEN - 1).name == "fp32"
    b = build(training={"precision": "auto"})  # the tiny model, 64 wide: the casts would cost more than they save
    assert {p.dtype for p in b.model.parameters()} == {torch.float32} and not b.trainer.args.bf16
    monkeypatch.setenv("FTUNE_CPU_BF16", "0")
    assert precision_plan("auto", "lora", hidden=576).name == "fp32"


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_attn_implementation_reaches_the_model(build, attn):
    expected = {"eager": "eager", "sdpa": "sdpa_by_row"}[attn]  # sdpa trains padding-free one row at a time
    assert build(model={"attn_implementation": attn}).model.config._attn_implementation == expected


# --------------------------------------------------------------------------- seen in the first training step
@pytest.mark.parametrize("alpha", [None, 5])
def test_neftune_adds_noise_to_the_embeddings_while_training(build, alpha):
    b = build(training={"neftune_noise_alpha": alpha})
    assert first_step(b, forward=True).noisy_embeddings == (alpha is not None)


@pytest.mark.parametrize("method,on", [("lora", True), ("full", True), ("lora", False)])
def test_gradient_checkpointing_is_on_while_training(build, method, on):
    b = build(method=method, training={"gradient_checkpointing": on})
    assert first_step(b).checkpointing == on


def test_logging_per_epoch_and_automatic_acceleration_on_a_cpu(project, tiny_model):
    run = make_run(project, tiny_model, model={"acceleration": "auto"},
                   training={"logging_strategy": "epoch", "num_train_epochs": 2, "per_device_train_batch_size": 16,
                             "save_strategy": "no"}, data={"train": "train.jsonl", "val_size": 0})
    events = train_to_end(run)
    assert events[-1]["type"] == "finished", run.log_path.read_text()[-3000:]
    started = of_type(events, "started")[0]
    assert [s["step"] for s in of_type(events, "step")] == [1, 4, 8]  # the first step, then each epoch's end
    assert started["liger"] is False and started["attn_implementation"] == "sdpa_by_row"  # auto: no kernels on a CPU


def test_sft_trains_with_the_models_own_loss_which_equals_trls(build):
    """ftune's SFT loss (full logits, cross-entropy) against TRL's fused LM head, on the same batch."""
    from trl import SFTTrainer

    b = build(training={"max_steps": 1})
    assert type(b.trainer).__name__ == "PlainLossSFTTrainer"
    batch = next(iter(b.trainer.get_train_dataloader()))
    b.model.eval()  # no dropout: both losses see the same network
    with torch.no_grad():
        ours = b.trainer.compute_loss(b.model, dict(batch))
        trls = SFTTrainer.compute_loss(b.trainer, b.model, dict(batch))
    assert torch.isfinite(ours) and torch.allclose(ours, trls, rtol=1e-4), (ours, trls)


@pytest.mark.parametrize("on", [True, False])
def test_compute_accuracy_adds_token_accuracy_to_evaluation(project, tiny_model, on):
    run = make_run(project, tiny_model, training={"max_steps": 2, "eval_steps": 2, "compute_accuracy": on,
                                                   "save_steps": 100}, data={"train": "train.jsonl", "val_size": 0.25})
    events = train_to_end(run)
    assert events[-1]["type"] == "finished", run.log_path.read_text()[-3000:]
    evals = of_type(events, "eval")
    assert evals and all(math.isfinite(e["eval_loss"]) for e in evals)
    if on:
        assert all(0 <= e["eval_mean_token_accuracy"] <= 1 for e in evals)
    else:
        assert not any("eval_mean_token_accuracy" in e for e in evals)
