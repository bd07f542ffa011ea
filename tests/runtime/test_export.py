"""`ftune export` on a tiny trained run: what it writes loads with plain transformers/peft and computes
what the run's model computes."""

import json

import pytest
import torch

from ftune.runtime.infer import export as export_mod
from tests.runtime.trained import cli, copy_of_trained_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    run, _ = copy_of_trained_run(tmp_path_factory, tiny_model)
    return run


def probe(tokenizer):
    messages = [{"role": "user", "content": "Where is my order?"},
                {"role": "assistant", "content": "Open Orders and pick the order."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return tokenizer(text, add_special_tokens=False, return_tensors="pt")


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits.float()


def run_model(tiny_model, adapter_dir):
    """The run's model as a user would rebuild it: the base plus the adapter, with plain peft."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                                     adapter_dir).eval()


def test_lora_export_loads_with_peft_and_gives_the_same_logits(trained, tiny_model):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = cli(trained, "export", "run-01", "--format", "lora")
    assert result.exit_code == 0, result.output
    out = trained.path / "exports" / "lora"
    assert f"Done: {out}" in result.output and "it loads and generates" in result.output
    assert not list(out.parent.glob(".*partial"))  # the staging folder is gone

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == AutoTokenizer.from_pretrained(trained.export_dir()).chat_template
    inputs = probe(tok)
    exported = AutoPeftModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    reference = logits(run_model(tiny_model, trained.export_dir()), inputs)
    assert torch.allclose(logits(exported, inputs), reference, atol=1e-5, rtol=0)
    base = logits(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval(), inputs)
    assert not torch.allclose(base, reference, atol=1e-2), "the adapter changes nothing: the test would prove nothing"

    card = (out / "README.md").read_text()
    assert "base_model:" in card and str(tiny_model) in card and "| stage | sft |" in card
    assert "| method | lora |" in card and "train_loss" in card and "train.jsonl" in card
    meta = json.loads((out / "ftune_export.json").read_text())
    assert meta["format"] == "lora" and meta["source"] == "export" and meta["check"]["max_abs_diff"] == 0


def test_merged_16bit_export_is_bf16_and_matches_within_bf16_rounding(trained, tiny_model):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = cli(trained, "export", "run-01", "--format", "merged_16bit")
    assert result.exit_code == 0, result.output
    out = trained.path / "exports" / "merged_16bit"
    assert not (out / "adapter_config.json").exists()
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}

    tok = AutoTokenizer.from_pretrained(out)
    inputs = probe(tok)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()  # plain transformers
    reference = logits(run_model(tiny_model, trained.export_dir()), inputs)
    # bf16 keeps 8 significant bits: weights move by up to 2^-8 of their size; over two layers the logits
    # stay within 1% of their range. Without the adapter they would be far outside it.
    tol = 0.01 * reference.abs().max()
    assert torch.allclose(logits(merged, inputs), reference, atol=tol, rtol=0)
    base = logits(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval(), inputs)
    assert not torch.allclose(base, reference, atol=tol, rtol=0)
    gen = json.loads((out / "generation_config.json").read_text())
    assert tok.convert_tokens_to_ids("<|im_end|>") in gen["eos_token_id"]  # plain generate stops at the turn end


def test_export_of_a_checkpoint(trained, tiny_model):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    result = cli(trained, "export", "run-01", "--checkpoint", "4", "--format", "lora")
    assert result.exit_code == 0, result.output
    out = trained.path / "exports" / "lora-step-4"
    inputs = probe(AutoTokenizer.from_pretrained(out))
    exported = AutoPeftModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    at_step_4 = logits(run_model(tiny_model, trained.checkpoints_dir() / "checkpoint-4"), inputs)
    final = logits(run_model(tiny_model, trained.export_dir()), inputs)
    assert torch.allclose(logits(exported, inputs), at_step_4, atol=1e-5, rtol=0)
    assert not torch.allclose(at_step_4, final, atol=1e-3)
    assert json.loads((out / "ftune_export.json").read_text())["step"] == 4

    missing = cli(trained, "export", "run-01", "--checkpoint", "3")
    assert missing.exit_code == 2 and "no complete checkpoint at step 3 (checkpoints: 4, 8)" in missing.output


def test_export_refuses_a_folder_it_did_not_write_and_the_run_own_folders(trained, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    result = cli(trained, "export", "run-01", "--out", str(mine))
    assert result.exit_code == 2 and "is not an earlier ftune export" in result.output
    assert (mine / "notes.txt").read_text() == "keep me"
    inside = cli(trained, "export", "run-01", "--out", str(trained.export_dir() / "x"))
    assert inside.exit_code == 2 and "inside the run's own export/" in inside.output


def test_a_failed_check_leaves_nothing_behind(trained, tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "judge", lambda fmt, check, causal=True: "its logits are not finite")
    out = tmp_path / "bad"
    result = cli(trained, "export", "run-01", "--out", str(out))
    assert result.exit_code == 2
    assert "does not match the run's model: its logits are not finite" in result.output
    assert not out.exists() and not list(tmp_path.glob(".*partial"))


def test_judge_catches_a_merge_that_lost_the_adapter():
    ok = {"max_abs_diff": 0.002, "rel_diff": 0.002, "scale": 1.0, "adapter_effect": 0.8, "generated_tokens": 5}
    assert export_mod.judge("merged_16bit", ok) is None
    lost = dict(ok, max_abs_diff=0.6, rel_diff=0.04)  # small against the logits, large against the adapter
    assert "did not survive the merge" in export_mod.judge("merged_16bit", lost)
    assert "generated nothing" in export_mod.judge("lora", dict(ok, generated_tokens=0))
    assert export_mod.judge("lora", dict(ok, rel_diff=0.01)).startswith("its logits differ")


def test_a_reward_model_exports_merged_and_scores_the_same(tmp_path, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tests.runtime.helpers import make_run, train_to_end

    pair = {"messages": [{"role": "user", "content": "Where is my order?"}],
            "chosen": {"role": "assistant", "content": "Open Orders and pick the order."},
            "rejected": {"role": "assistant", "content": "No idea."}}
    (tmp_path / "train.jsonl").write_text((json.dumps(pair) + "\n") * 16)
    (tmp_path / "runs").mkdir()
    run = make_run(tmp_path, tiny_model, stage="rm", training={"max_steps": 3})
    assert train_to_end(run)[-1]["type"] == "finished", run.log_path.read_text()[-3000:]
    result = cli(run, "export", "run-01", "--format", "merged_16bit")
    assert result.exit_code == 0 and "it loads and scores like the run's model" in result.output, result.output
    out = run.path / "exports" / "merged_16bit"
    tok = AutoTokenizer.from_pretrained(out)
    inputs = probe(tok)
    merged = AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32).eval()
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1, dtype=torch.float32)
    reference = logits(PeftModel.from_pretrained(base, run.export_dir()).eval(), inputs)
    assert torch.allclose(logits(merged, inputs), reference, atol=0.01 * reference.abs().max(), rtol=0)
    chat = cli(run, "chat", "run-01")
    assert chat.exit_code == 2 and "trained a reward model (stage rm)" in chat.output
