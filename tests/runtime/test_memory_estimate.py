"""The memory estimate: the seeds' table per billion parameters, activations, and the verdict against GPUs."""

import json

import pytest

from ftune.runtime import memory_estimate
from ftune.runtime.present import gb
from ftune.runtime.memory_estimate import Gpu, check, estimate, gpus_from_samples, method_key, verdict

# The seeds' table (003, LLaMA-Factory's README): GB for 7B, 14B, 30B, 70B, and GB per billion parameters.
TABLE = {
    "full": ((120, 240, 600, 1200), 18),
    "full-bf16": ((60, 120, 300, 600), 8),
    "lora": ((16, 32, 64, 160), 2),
    "freeze": ((16, 32, 64, 160), 2),
    "qlora-8": ((10, 20, 40, 80), 1),
    "qlora-4": ((6, 12, 24, 48), 0.5),
}
H100 = Gpu("H100 80GB HBM3", 79.6, 79.0)


@pytest.mark.parametrize("method", TABLE)
@pytest.mark.parametrize("params_b", [0.5, 7, 70])
def test_weights_follow_the_per_billion_column(method, params_b):
    assert estimate(params_b, method).weights_gb == pytest.approx(TABLE[method][1] * params_b)


@pytest.mark.parametrize("method", TABLE)
def test_totals_land_near_every_cell_of_the_table(method):
    # The table's cells are rough measurements (one short sequence, gradient checkpointing): within 30 %.
    for params_b, cell in zip((7, 14, 30, 70), TABLE[method][0]):
        total = estimate(params_b, method, seq_len=1024, batch=1, gradient_checkpointing=True).total_gb
        assert abs(total - cell) / cell < 0.30, (method, params_b, total, cell)


def test_activations_grow_with_length_and_batch_and_checkpointing_cuts_them():
    base = estimate(7, "lora", seq_len=1024, batch=1).activations_gb
    assert estimate(7, "lora", seq_len=2048, batch=1).activations_gb == pytest.approx(2 * base)
    assert estimate(7, "lora", seq_len=1024, batch=8).activations_gb == pytest.approx(8 * base)
    assert estimate(7, "lora", seq_len=1024, batch=8, gradient_checkpointing=True).activations_gb < base * 8 / 4
    # the vocabulary matters: Gemma's 256k logits cost more than Llama 2's 32k
    assert estimate(7, "lora", vocab=256000).activations_gb > estimate(7, "lora", vocab=32000).activations_gb


def test_known_shape_beats_the_guess_for_moe():
    # Mixtral 8x7B: 46.7B parameters but a 4096-wide, 32-layer body: far fewer activations than a dense 47B guess
    moe = estimate(46.7, "lora", seq_len=1024, batch=4, hidden=4096, layers=32)
    dense = estimate(46.7, "lora", seq_len=1024, batch=4)
    assert moe.weights_gb == dense.weights_gb and moe.activations_gb < dense.activations_gb / 2


def test_method_key():
    assert method_key("lora") == "lora"
    assert method_key("lora", bits=4) == "qlora-4" and method_key("lora", bits=8) == "qlora-8"
    assert method_key("lora", use_dora=True) == "dora"
    assert method_key("full") == "full" and method_key("full", precision="pure_bf16") == "full-bf16"
    assert method_key("freeze") == "freeze"
    with pytest.raises(ValueError):
        estimate(7, "magic")


def test_verdict_labels_follow_the_share_of_free_memory():
    assert verdict(30, [H100]).label == "fits"  # 30 <= 0.75 * 79
    v = verdict(38, [H100])
    assert v.label == "fits" and v.text == "fits on 1× H100 80GB HBM3 with 41 GB to spare"
    assert verdict(70, [H100]).label == "tight"
    assert verdict(150, [H100]).label == "exceeds"
    assert verdict(5, []).label == "no-gpu"


def test_exceeding_names_a_cheaper_method_that_fits():
    est, v = check(70, "full", [H100], seq_len=512, batch=1, gradient_checkpointing=True)
    assert est.total_gb > 1000 and v.label == "exceeds"
    assert v.text.startswith(f"needs ~{gb(est.total_gb)}, more than the 79 GB free on 1× H100 80GB HBM3: ")
    assert "QLoRA 4-bit would need ~" in v.text  # LoRA (140 GB) and 8-bit (70 GB) do not fit in 75 % of 79
    est, v = check(7, "full", [H100], seq_len=512, batch=1, gradient_checkpointing=True)
    assert "LoRA would need ~" in v.text  # the first cheaper method that fits, not the cheapest
    _, v = check(400, "full", [H100], seq_len=512, batch=1)
    assert "even QLoRA 4-bit needs ~" in v.text


def test_every_gpu_must_hold_a_copy():
    busy = Gpu("H100 80GB HBM3", 79.6, 20.0)
    v = verdict(30, [H100, busy])
    assert v.label == "exceeds" and "each of 2× H100 80GB HBM3" in v.text


def test_gpus_from_nvml_samples():
    gib = 1024**3
    samples = [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "mem_used": 1 * gib, "mem_total": 80 * gib},
               {"index": 1, "name": "NVIDIA A10", "mem_used": None, "mem_total": 24 * gib},
               {"index": 2, "name": "broken", "mem_total": 0}]
    gpus = gpus_from_samples(samples)
    assert gpus == [Gpu("H100 80GB HBM3", 80.0, 79.0), Gpu("A10", 24.0, 24.0)]


def test_sharding_strategies_split_the_model_states():
    from ftune.runtime.memory_estimate import estimate

    one = estimate(7, "full", seq_len=512)
    ddp = estimate(7, "full", seq_len=512, processes=8, strategy="ddp")
    zero2 = estimate(7, "full", seq_len=512, processes=8, strategy="deepspeed-zero2")
    zero3 = estimate(7, "full", seq_len=512, processes=8, strategy="deepspeed-zero3")
    fsdp_off = estimate(7, "full", seq_len=512, processes=8, strategy="fsdp", offload=True)
    assert ddp.weights_gb == one.weights_gb == 126  # replicated: 18 GB per billion on every GPU
    assert zero2.weights_gb == 14 + 112 / 8  # 16-bit weights stay; grads and optimiser states shard
    assert zero3.weights_gb == 126 / 8
    assert fsdp_off.weights_gb == 0 and fsdp_off.activations_gb == one.activations_gb
    lora = estimate(7, "lora", processes=8, strategy="deepspeed-zero2")
    assert lora.weights_gb == 14  # LoRA's frozen base stays whole under ZeRO-2


LORA_CASES = [  # (rank, target_modules, use_dora, modules_to_save, reward model)
    (8, "all", False, [], False), (4, ["q_proj", "v_proj"], False, [], False), (8, "all", True, [], False),
    (8, "all", False, ["lm_head"], False), (8, ["embed_tokens", "self_attn.o_proj"], False, [], False),
    (8, "all", False, [], True),
]


def test_lora_trainable_parameters_are_peft_s_own_count(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    config = json.loads((tiny_model / "config.json").read_text())
    for rank, targets, dora, saved, reward in LORA_CASES:
        model = (AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1) if reward
                 else AutoModelForCausalLM.from_pretrained(tiny_model))
        peft = get_peft_model(model, LoraConfig(r=rank, target_modules="all-linear" if targets == "all" else targets,
                                                use_dora=dora, modules_to_save=saved or None,
                                                task_type="SEQ_CLS" if reward else "CAUSAL_LM"))
        expected = peft.get_nb_trainable_parameters()[0]
        got = memory_estimate.lora_trainable(config, rank, targets, dora=dora, modules_to_save=saved, reward=reward)
        assert got == expected, (rank, targets, dora, saved, reward)


def test_lora_trainable_is_unknown_rather_than_wrong():
    llama = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
             "num_hidden_layers": 2, "vocab_size": 100}
    # no kv heads given: as many as heads
    assert memory_estimate.lora_trainable(llama, 8) == 2 * 8 * (4 * 128 + 3 * 192)
    assert memory_estimate.lora_trainable({**llama, "model_type": "gpt2"}, 8) is None  # Conv1D, fused qkv
    assert memory_estimate.lora_trainable(llama, 8, ["c_attn"]) is None
    assert memory_estimate.lora_trainable(llama, 8, modules_to_save=["wte"]) is None
    # and a vision tower
    assert memory_estimate.lora_trainable({"model_type": "llava", "text_config": llama}, 8) is None


def test_a_vision_tower_and_its_images_are_counted():
    tower = memory_estimate.Vision(params_b=0.67, hidden=1280, layers=32, image_pixels=768 * 768)
    assert (tower.patches, tower.image_tokens) == (3009, 752)  # 14x14 patches, 2x2 merged
    text = memory_estimate.estimate(7.0, "full", seq_len=1024, batch=2, hidden=3584, layers=28)
    frozen = memory_estimate.estimate(7.0, "full", seq_len=1024, batch=2, hidden=3584, layers=28, vision=tower)
    trained = memory_estimate.estimate(7.0, "full", seq_len=1024, batch=2, hidden=3584, layers=28,
                              vision=memory_estimate.Vision(0.67, 1280, 32, 768 * 768, trains=True))
    # a frozen tower costs its 16-bit weights (2 GB per billion) instead of full training's 18, plus one block's
    # activations for the batch's two images
    assert frozen.weights_gb == pytest.approx(text.weights_gb - 0.67 * 16)
    one_block = 2 * 3009 * 1280 * 34 / 1e9
    assert frozen.activations_gb == pytest.approx(text.activations_gb + one_block)
    assert trained.weights_gb == pytest.approx(text.weights_gb)
    assert trained.activations_gb == pytest.approx(text.activations_gb + 32 * one_block)
    assert frozen.image_tokens == 752 and frozen.vision_gb == pytest.approx(0.67 * 2 + one_block)
    assert frozen.params_b == trained.params_b == 7.0
