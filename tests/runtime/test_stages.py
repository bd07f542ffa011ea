"""Every stage trains for real through its TRL trainer on the tiny model (a few steps each)."""

import json
import math

import pytest

from ftune.runtime import launch
from ftune.runtime.data.formats import DataError
from tests.runtime.helpers import make_run, of_type, train_to_end

QS = ["Where is my order?", "How do I return a lamp?", "Can I pay by card?", "退款多久到账？"]


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")


def preference_rows(n=24):
    return [{"conversations": [{"from": "human", "value": QS[i % 4]}],
             "chosen": {"from": "gpt", "value": "Open Orders and follow the steps. Thanks!"},
             "rejected": {"from": "gpt", "value": "No idea, ask someone else."}} for i in range(n)]


def run_stage(project, tiny_model, stage, data_rows, **extra):
    write_jsonl(project / "data.jsonl", data_rows)
    training = {"max_steps": 6, "learning_rate": 5e-3, "per_device_train_batch_size": 4, "save_steps": 100,
                **extra.pop("training", {})}
    run = make_run(project, tiny_model, name=extra.pop("name", "run-01"), stage={"type": stage, **extra},
                   data={"train": "data.jsonl", "val_size": 0}, training=training)
    events = train_to_end(run)
    assert events[-1]["type"] == "finished", run.log_path.read_text()[-3000:]
    steps = of_type(events, "step")
    assert of_type(events, "started")[0]["stage"] == stage
    assert len(steps) == 6 and all(s["loss"] is not None and math.isfinite(s["loss"]) for s in steps)
    return run, events, [s["loss"] for s in steps]


def test_pretraining_on_text(project, tiny_model):
    rows = [{"text": "Lumen ships home electronics within three days. " * 3}] * 16
    run, events, losses = run_stage(project, tiny_model, "pt", rows)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("variant", [{}, {"pref_loss": "ipo", "pref_ftx": 0.5, "ref_model": "TINY",
                                           "ref_model_quantization_bits": 4}])
def test_dpo_learns_to_prefer_the_chosen_answer(project, tiny_model, variant):
    variant = {k: str(tiny_model) if v == "TINY" else v for k, v in variant.items()}
    run, events, losses = run_stage(project, tiny_model, "dpo", preference_rows(), **variant)
    started = of_type(events, "started")[0]
    if not variant:
        assert abs(losses[0] - math.log(2)) < 0.01  # the policy starts equal to the reference
        assert "ref_model_bits" not in started  # the base with the adapter off, not a model of its own
    else:  # a reference model of its own, in 4 bits (bitsandbytes on the CPU)
        assert started["ref_model_bits"] == 4
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("stage", ["orpo", "simpo"])
def test_orpo_and_simpo(project, tiny_model, stage):
    run, events, losses = run_stage(project, tiny_model, stage, preference_rows())
    assert losses[-1] < losses[0]


def test_kto(project, tiny_model):
    rows = [{"messages": [{"role": "user", "content": QS[i % 4]},
                          {"role": "assistant", "content": "Open Orders." if i % 2 else "No idea."}],
             "label": bool(i % 2)} for i in range(24)]
    run, events, losses = run_stage(project, tiny_model, "kto", rows, kto_undesirable_weight=1.2)
    assert losses[-1] < losses[0]


def test_reward_model_then_rl_with_it(project, tiny_model):
    rm, events, losses = run_stage(project, tiny_model, "rm", preference_rows(), name="rm-01")
    assert losses[-1] < losses[0]
    assert (rm.export_dir() / "adapter_config.json").is_file()
    prompts = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "x"}]} for q in QS * 4]
    for algorithm, trainer, bits in (("grpo", "GRPOTrainer", None), ("rloo", "RLOOTrainer", 8)):
        rl, events, losses = run_stage(project, tiny_model, "rl", prompts, name=f"rl-{algorithm}",
                                       reward_model="rm-01", rl_algorithm=algorithm, num_generations=2,
                                       max_completion_length=8, training={"per_device_train_batch_size": 4},
                                       reward_model_quantization_bits=bits)
        started = of_type(events, "started")[0]
        assert started["trainer"] == trainer and started["reward_model_bits"] == bits  # rloo's in 8 bits
        assert (rl.export_dir() / "adapter_config.json").is_file()


def test_reward_pairs_longer_than_max_length_are_cut_not_dropped(project, tiny_model):
    rows = preference_rows(8)
    rows[0]["chosen"]["value"] = "long " * 300  # beyond max_length: TRL's RewardTrainer alone would drop the pair
    write_jsonl(project / "data.jsonl", rows)
    run = make_run(project, tiny_model, stage={"type": "rm"}, data={"train": "data.jsonl", "val_size": 0,
                                                                    "max_length": 64},
                   training={"max_steps": 1, "per_device_train_batch_size": 4})
    events = train_to_end(run)
    assert events[-1]["type"] == "finished", run.log_path.read_text()[-2000:]
    assert "1 answers of 16 were longer than data.max_length (64 tokens) and were cut to fit" in \
        [w["message"] for w in of_type(events, "warning")]
    started = of_type(events, "started")[0]
    assert started["skipped_rows"] == 0 and started["num_train_rows"] == 8


@pytest.mark.parametrize("prompt,answer,max_length,kept", [
    (10, 10, 32, (10, 10)),  # fits: untouched
    (4, 100, 32, (4, 28)),  # a short prompt stays whole; the answer keeps its start
    (100, 10, 32, (22, 10)),  # a short answer stays whole; the prompt keeps its end
    (100, 100, 32, (16, 16)),  # both long: the answer keeps half
])
def test_a_pair_side_is_cut_keeping_the_prompts_end_and_the_answers_start(prompt, answer, max_length, kept):
    from ftune.runtime.data.columns import cut_pair_side

    ids = [("p", i) for i in range(prompt)] + [("a", i) for i in range(answer)]
    out = cut_pair_side(ids, prompt, max_length)
    p, a = [x for x in out if x[0] == "p"], [x for x in out if x[0] == "a"]
    assert (len(p), len(a)) == kept and len(out) <= max_length
    assert p == ids[prompt - kept[0]:prompt] and a == ids[prompt:prompt + kept[1]]


def test_wrong_data_for_the_stage(project, tiny_model):
    write_jsonl(project / "data.jsonl", preference_rows(4))
    run = make_run(project, tiny_model, stage={"type": "kto"}, data={"train": "data.jsonl"})
    with pytest.raises(DataError, match="holds preference data"):  # refused before anything detaches
        launch.start(run)


LF = __import__("tests.conftest", fromlist=["SHARED_DATA"]).SHARED_DATA / "llamafactory"


@pytest.mark.skipif(not LF.is_dir(), reason=f"shared data not found at {LF} (a fresh clone has none)")
@pytest.mark.parametrize("stage,dataset", [("sft", "identity"), ("sft", "glaive_toolcall_en_demo"), ("pt", "c4_demo"),
                                           ("dpo", "dpo_en_demo"), ("kto", "kto_en_demo"), ("rm", "dpo_en_demo"),
                                           ("orpo", "dpo_en_demo"), ("simpo", "dpo_en_demo")])
def test_stages_on_the_shared_llamafactory_files(project, tiny_model, stage, dataset):
    # the tiny model's own template cannot render tools (refused, docs/data.md): glaive trains in Qwen2.5's tool format
    tools = {"model": {"name_or_path": str(tiny_model), "template": "chatml"}} if "toolcall" in dataset else {}
    run = make_run(project, tiny_model, stage={"type": stage}, **tools,
                   data={"train": [dataset], "dataset_dir": str(LF), "max_samples": 16, "val_size": 0,
                         "max_length": 128 if stage == "rm" else 2048},  # rm at 128: every pair cut, none dropped
                   training={"max_steps": 2, "per_device_train_batch_size": 4, "save_steps": 100})
    events = train_to_end(run)
    assert events[-1]["type"] == "finished", run.log_path.read_text()[-3000:]
    assert all(math.isfinite(s["loss"]) for s in of_type(events, "step"))
    assert (run.export_dir() / "adapter_config.json").is_file()
    if stage == "rm":  # the reward model loads as a scorer and gives one score per sequence
        assert of_type(events, "started")[0]["num_train_rows"] == 16
        import torch
        from peft import AutoPeftModelForSequenceClassification
        from transformers import AutoTokenizer

        model = AutoPeftModelForSequenceClassification.from_pretrained(run.export_dir(), num_labels=1)
        tok = AutoTokenizer.from_pretrained(run.export_dir())
        batch = tok(["a good answer", "a bad answer"], return_tensors="pt", padding=True)
        with torch.no_grad():
            scores = model(**batch).logits
        assert scores.shape == (2, 1) and torch.isfinite(scores).all()
    else:  # the adapter loads onto its base and generates
        import torch
        from peft import AutoPeftModelForCausalLM
        from transformers import AutoTokenizer

        model = AutoPeftModelForCausalLM.from_pretrained(run.export_dir())
        tok = AutoTokenizer.from_pretrained(run.export_dir())
        prompt = tok.apply_chat_template([{"role": "user", "content": "Who are you?"}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)
        out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
        assert out.shape[1] > prompt["input_ids"].shape[1]
