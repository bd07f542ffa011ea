"""Predict with generate: at the end of training (predict_with_generate + data.test) and with `ftune eval`."""

import json

import pytest
import sacrebleu
import torch

from ftune.runtime.infer import metrics
from ftune.runtime.spec import SpecError, build_spec
from tests.runtime.helpers import of_type
from tests.runtime.trained import cli, train_tiny_run


# --------------------------------------------------------------------------- metrics
def test_identical_answers_score_100_in_english_and_chinese():
    for text in ("Open Orders and pick the order.", "退款会在三到五个工作日内原路返回。"):
        s = metrics.score([text], [text])
        assert s["predict_bleu"] == pytest.approx(100) and s["predict_rougeL"] == pytest.approx(100)


def test_chinese_is_scored_by_character():
    from rouge_score import rouge_scorer

    ref, pred = "退款会在三到五个工作日内原路返回。", "退款会在三天内返回。"
    plain = rouge_scorer.RougeScorer(["rougeL"]).score(ref, pred)["rougeL"].fmeasure
    assert plain == 0  # rouge-score alone drops every Chinese character
    s = metrics.score([pred], [ref])
    # LCS 退款会在三…内…返回 = 8 characters; precision 8/9, recall 8/16
    assert s["predict_rougeL"] == pytest.approx(100 * 2 * (8 / 9) * (8 / 16) / (8 / 9 + 8 / 16), abs=1e-3)
    assert s["bleu_tokenize"] == "zh"
    assert s["predict_bleu"] == pytest.approx(sacrebleu.corpus_bleu([pred], [[ref]], tokenize="zh").score, abs=1e-3)


def test_english_rouge_is_rouge_score_with_stemming():
    from rouge_score import rouge_scorer

    ref, pred = "The cat sat on the mat.", "The cats were sitting on a mat"
    expected = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(ref, pred)["rougeL"].fmeasure
    s = metrics.score([pred], [ref])
    assert s["predict_rougeL"] == pytest.approx(100 * expected, abs=1e-3) and s["bleu_tokenize"] == "13a"


def test_predict_with_generate_needs_a_test_file():
    raw = {"name": "r", "model": {"name_or_path": "m"}, "data": {"train": "t.jsonl"},
           "training": {"predict_with_generate": True}}
    with pytest.raises(SpecError, match="predict_with_generate needs data.test"):
        build_spec(raw)
    assert build_spec({**raw, "data": {"train": "t.jsonl", "test": "x.jsonl"}}).training.max_new_tokens == 512


# --------------------------------------------------------------------------- on a trained run
@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    # merged_16bit too: the worker's own merged export and predictions on the merged model in memory
    # trained long enough (40 steps, 0.3 s each) to answer in words, so the scores have something to measure
    run, events = train_tiny_run(tmp_path_factory.mktemp("eval"), tiny_model, max_steps=40, rows=64,
                                 data={"test": "test.jsonl"}, method={"type": "lora", "lora": {"rank": 16}},
                                 training={"predict_with_generate": True, "max_new_tokens": 12,
                                           "learning_rate": 1e-2, "save_steps": 20},
                                 output={"save_format": "merged_16bit"})
    return run, events


def test_end_of_training_writes_predictions_and_metrics(trained):
    run, events = trained
    final = events[-1]
    assert not of_type(events, "warning"), of_type(events, "warning")
    folder = run.path / "eval" / "export"
    assert final["artifacts"]["predictions"] == str(folder / "predictions.jsonl")
    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    tests = [json.loads(line) for line in (run.root.parent / "test.jsonl").read_text().splitlines()]
    assert len(rows) == len(tests) == 6
    for row, test in zip(rows, tests):
        assert row["messages"] == test["messages"][:-1] and row["reference"] == test["messages"][-1]["content"]
    assert sum(bool(r["prediction"]) for r in rows) >= 4, rows  # it answers in words
    saved = json.loads((folder / "metrics.json").read_text())
    bleu = sacrebleu.corpus_bleu([r["prediction"] for r in rows], [[r["reference"] for r in rows]], tokenize="zh")
    assert saved["predict_bleu"] == pytest.approx(bleu.score, abs=1e-3)
    assert saved["predict_rougeL"] > 0 and saved["num_samples"] == 6 and saved["max_new_tokens"] == 12 and saved["model"] == "export"
    for key in ("predict_bleu", "predict_rouge1", "predict_rouge2", "predict_rougeL"):
        assert final["metrics"][key] == saved[key]
    assert "predict_rougeL" in (run.export_dir() / "README.md").read_text()  # the model card has them


def test_the_worker_merged_export_is_bf16_like_ftune_export(trained):
    from safetensors import safe_open

    run, events = trained
    assert events[-1]["artifacts"]["format"] == "merged_16bit"
    with safe_open(str(run.export_dir() / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}


def test_ftune_eval_on_a_checkpoint_matches_plain_greedy_decoding(trained, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, _ = trained
    result = cli(run, "eval", "run-01", "--checkpoint", "20", "--batch-size", "1", "--max-new-tokens", "8")
    assert result.exit_code == 0, result.output
    assert "6 answers (checkpoint-20" in result.output and "BLEU" in result.output and "ROUGE-L" in result.output
    folder = run.path / "eval" / "checkpoint-20"
    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    ckpt = run.checkpoints_dir() / "checkpoint-20"
    tok = AutoTokenizer.from_pretrained(ckpt)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), ckpt)
    assert any(r["prediction"] for r in rows[:3]), rows[:3]
    for row in rows[:3]:
        text = tok.apply_chat_template(row["messages"], tokenize=False, add_generation_prompt=True)
        enc = tok(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id,
                                 eos_token_id=[tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id])
        assert row["prediction"] == tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert json.loads((folder / "metrics.json").read_text())["model"] == "checkpoint-20"


def test_ftune_eval_says_what_is_missing(trained, tmp_path):
    run, _ = trained
    (tmp_path / "notes.txt").write_text("plain text\n")
    result = cli(run, "eval", "run-01", "--test", str(tmp_path / "nope.jsonl"))
    assert result.exit_code == 2 and "does not exist" in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    result = cli(run, "eval", "run-01", "--test", str(bad))
    assert result.exit_code == 2 and "test rows are invalid" in result.output and "bad.jsonl:1" in result.output


def test_ftune_eval_without_a_test_file_answers_the_held_out_rows(tmp_path_factory, tiny_model):
    from ftune.runtime.data.formats import Source, load_source
    from ftune.runtime.data.load import split
    from tests.runtime.trained import copy_of_trained_run

    run, _ = copy_of_trained_run(tmp_path_factory, tiny_model)  # as the wizard writes it: no data.test
    result = cli(run, "eval", "run-01", "--max-new-tokens", "4")
    assert result.exit_code == 0, result.output
    assert "Answering 5 prompts of the 5 rows held out for validation (data.val_size 0.1; no data.test)" in \
        " ".join(result.output.split())
    predictions = [json.loads(x) for x in (run.path / "eval" / "export" / "predictions.jsonl").read_text().splitlines()]
    _, held = split(load_source(Source(run.project / "train.jsonl")).examples, 0.1, 42, True)
    assert [p["reference"] for p in predictions] == [ex.messages[-1]["content"] for ex in held]
