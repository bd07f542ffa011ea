"""Real training on a tiny model through the launcher and worker: nothing mocked."""

import json
from itertools import pairwise

import pytest

from ftune.runtime import launch
from ftune.runtime.data.formats import DataError
from ftune.runtime.memory_estimate import lora_trainable
from ftune.runtime.rundir import RunError
from ftune.runtime.spec import load_spec
from tests.conftest import mounted_tmpfs
from tests.runtime.helpers import make_run, of_type, train_to_end


def test_lora_sft_trains_checkpoints_and_exports_a_loadable_adapter(project, tiny_model):
    run = make_run(project, tiny_model, training={"num_train_epochs": 2})
    events = train_to_end(run)
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "finished", open(run.log_path).read()[-3000:]

    started = of_type(events, "started")[0]
    assert started["num_train_rows"] + started["num_eval_rows"] == 64 and started["skipped_rows"] == 0
    assert started["method"] == "lora" and started["world_size"] == 1 and started["batching"] == "padding-free"
    assert 0 < started["trainable_params"] < started["total_params"]
    # the start, phase by phase: an event as each begins, and the seconds of each in the started event
    order = ["importing", "loading the tokenizer", "tokenising", "loading the model", "building the trainer",
             "starting training"]
    begun = [e["phase"] for e in of_type(events, "phase") if "done" not in e]
    assert begun == order, begun
    timeline = started["phases"]
    assert [p["phase"] for p in timeline] == ["starting python", *order] and all(p["s"] >= 0 for p in timeline)
    assert sum(p["s"] for p in timeline) <= started["t"] - json.loads(run.status_path.read_text())["started_at"] + 1
    rank = load_spec(run.spec_path).method.lora.rank  # the review's figure is peft's own
    assert started["trainable_params"] == lora_trainable(json.loads((tiny_model / "config.json").read_text()), rank)

    steps = of_type(events, "step")
    assert [s["step"] for s in steps] == list(range(1, started["max_steps"] + 1))
    losses = [s["loss"] for s in steps]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1, losses  # it learnt something
    assert all(s["tokens_per_s"] and s["lr"] is not None and s["grad_norm"] is not None for s in steps[1:])
    assert of_type(events, "eval") and "eval_loss" in of_type(events, "eval")[0]

    ckpts = of_type(events, "checkpoint")
    assert [c["step"] for c in ckpts] == [10, started["max_steps"]] and all(c["bytes"] > 0 for c in ckpts)

    final = events[-1]
    assert final["artifacts"]["format"] == "lora" and final["metrics"]["train_loss"] > 0
    export = run.export_dir()
    assert (export / "adapter_config.json").is_file() and (export / "tokenizer_config.json").is_file()
    status = json.loads(run.status_path.read_text())
    assert status["state"] == "finished" and status["step"] == started["max_steps"]

    # The adapter loads back with peft and generates.
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    model = AutoPeftModelForCausalLM.from_pretrained(export)
    tok = AutoTokenizer.from_pretrained(export)
    ids = tok.apply_chat_template([{"role": "user", "content": "Where is my order?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_full_sft_with_a_token_budget_saves_the_whole_model(project, tiny_model):
    run = make_run(project, tiny_model, method="full", data={"max_length": 128},
                   training={"learning_rate": 1e-3, "max_steps": 12, "tokens_per_batch": 160, "logging_steps": 1})
    events = train_to_end(run)
    assert events[-1]["type"] == "finished", open(run.log_path).read()[-3000:]
    started = of_type(events, "started")[0]
    assert started["method"] == "full" and started["trainable_params"] == started["total_params"]
    assert started["batching"] == "padding-free"
    steps = of_type(events, "step")
    losses = [s["loss"] for s in steps]
    assert len(losses) == 12 and min(losses[-3:]) < losses[0]
    # each step held whole rows up to 160 tokens: several rows, not the 8 of per_device_train_batch_size
    tokens = [b["tokens_seen"] - a["tokens_seen"] for a, b in pairwise(steps)]
    assert all(0 < n <= 160 for n in tokens) and sum(tokens) / len(tokens) > 80, tokens
    assert all(s["samples_per_s"] > 0 for s in steps[1:])  # rows counted as trained, not assumed from the batch

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run.export_dir())
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    changed = [n for (n, p), (_, q) in zip(model.named_parameters(), base.named_parameters()) if not p.equal(q)]
    assert changed, "full fine-tuning changed no weight"


def test_skip_invalid_rows_counts_them(project, tiny_model):
    with open(project / "train.jsonl", "a") as f:
        f.write('{"messages": []}\n{"messages": [{"role": "assistant", "content": "x"}]}\n')
    run = make_run(project, tiny_model, data={"on_invalid": "skip"}, training={"max_steps": 2})
    events = train_to_end(run)
    assert events[-1]["type"] == "finished"
    started = of_type(events, "started")[0]
    assert started["skipped_rows"] == 2 and started["total_rows"] == 66
    assert any("skipped 2 invalid rows of 66" in w["message"] for w in of_type(events, "warning"))


def test_output_dir_elsewhere_is_recorded_and_used(project, tiny_model, tmp_path_factory):
    big_disk = tmp_path_factory.mktemp("big-disk")
    run = make_run(project, tiny_model, output={"dir": str(big_disk / "run-01")}, training={"max_steps": 3, "save_steps": 2})
    events = train_to_end(run)
    assert events[-1]["type"] == "finished"
    assert (big_disk / "run-01" / "export" / "adapter_config.json").is_file()
    assert (big_disk / "run-01" / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    assert not (run.path / "checkpoints").exists() and not (run.path / "export").exists()
    assert json.loads(run.status_path.read_text())["output_dir"] == str((big_disk / "run-01").resolve())
    assert run.latest_checkpoint()[0] == 3
    system = of_type(events, "system")
    assert system and system[0]["rss"] > 10_000_000  # the worker's memory, recorded from the start

    # A second run pointed at the same folder is refused before anything of run-01's is touched, and removing it
    # (as if it had recorded that folder) leaves run-01's outputs alone.
    other = make_run(project, tiny_model, name="run-02", output={"dir": str(big_disk / "run-01")})
    with pytest.raises(RunError, match=r"output.dir .*run-01 belongs to run 'run-01' .*: give run 'run-02' a folder"):
        launch.start(other)
    other.update_status(output_dir=str((big_disk / "run-01").resolve()))
    other.remove()
    assert (big_disk / "run-01" / "export" / "adapter_config.json").is_file()

    run.remove()
    assert not (big_disk / "run-01" / "export").exists() and not run.path.exists()


def test_named_template_trains_and_ships_with_the_export(project, tiny_model):
    from transformers import AutoTokenizer

    from ftune.runtime import templates

    run = make_run(project, tiny_model, model={"template": "llama3"}, training={"max_steps": 2})
    assert train_to_end(run)[-1]["type"] == "finished"
    exported = AutoTokenizer.from_pretrained(run.export_dir())
    assert exported.chat_template == templates.get("llama3")
    msgs = [{"role": "user", "content": "hi"}]
    assert exported.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>" \
        "<|start_header_id|>assistant<|end_header_id|>\n\n"


def test_alpaca_data_through_dataset_info_trains(project, tiny_model):
    (project / "data").mkdir()
    (project / "data" / "mine.json").write_text(json.dumps(
        [{"q": f"question {i}", "a": f"answer {i}"} for i in range(20)]))
    (project / "data" / "dataset_info.json").write_text(json.dumps(
        {"mine": {"file_name": "mine.json", "columns": {"prompt": "q", "response": "a"}}}))
    run = make_run(project, tiny_model, data={"train": ["mine"], "dataset_dir": "data"}, training={"max_steps": 2})
    events = train_to_end(run)
    assert events[-1]["type"] == "finished", open(run.log_path).read()[-2000:]
    started = of_type(events, "started")[0]
    assert started["format"] == "alpaca" and started["num_train_rows"] + started["num_eval_rows"] == 20


def test_packing_and_gradient_checkpointing_train(project, tiny_model):
    run = make_run(project, tiny_model, data={"packing": True, "max_length": 256},
                   training={"num_train_epochs": 1, "gradient_checkpointing": True})
    events = train_to_end(run)
    assert events[-1]["type"] == "finished", open(run.log_path).read()[-2000:]
    started = of_type(events, "started")[0]
    assert started["batching"] == "packed"
    unpacked_steps = -(-started["num_train_rows"] // 8)
    assert started["max_steps"] < unpacked_steps / 2  # short rows share 256-token sequences
    assert all(s["loss"] is not None for s in of_type(events, "step"))
    assert "`gradient_checkpointing` is deprecated" not in run.log_path.read_text()  # the v5 name is used


def test_tokenised_data_is_cached_for_resume_and_interleave_mixes(project, tiny_model):
    import shutil

    shutil.copy(project / "train.jsonl", project / "more.jsonl")
    run = make_run(project, tiny_model, data={"train": ["train.jsonl", "more.jsonl"], "mix_strategy": "interleave_under",
                                              "interleave_probs": [0.5, 0.5]},
                   training={"max_steps": 2, "save_steps": 2})
    events = train_to_end(run)
    first = of_type(events, "started")[0]
    assert events[-1]["type"] == "finished" and first["data_cached"] is False
    assert 64 <= first["num_train_rows"] + first["num_eval_rows"] < 128  # stopped when one set ran out
    assert len(list((run.path / "tokenized").iterdir())) == 1
    run.spec_path.write_text(run.spec_path.read_text().replace("max_steps: 2", "max_steps: 3"))
    events = train_to_end(run, resume=True)
    again = of_type(events, "started")[-1]
    assert again["data_cached"] is True and again["num_train_rows"] == first["num_train_rows"]
    assert events[-1]["type"] == "finished"


def test_streaming_checks_first_then_trains_from_the_stream(project, tiny_model):
    with open(project / "train.jsonl", "a") as f:
        f.write('{"messages": []}\n')
    run = make_run(project, tiny_model, data={"streaming": True, "on_invalid": "skip", "buffer_size": 16},
                   training={"max_steps": 3, "save_steps": 3})
    events = train_to_end(run)
    assert events[-1]["type"] == "finished", run.log_path.read_text()[-3000:]
    started = of_type(events, "started")[0]
    assert (started["total_rows"], started["skipped_rows"]) == (65, 1)
    assert [s["step"] for s in of_type(events, "step")] == [1, 2, 3]
    assert not (run.path / "tokenized").exists()  # nothing materialised
    run2 = make_run(project, tiny_model, name="run-02", data={"streaming": True}, training={"max_steps": 2})
    with pytest.raises(DataError, match="^1 of 65 rows are invalid"):  # the head of a stream, checked before detaching
        launch.start(run2)


def test_a_full_disk_during_a_checkpoint_names_it_and_keeps_the_earlier_ones(project, tiny_model, tmp_path):
    small_disk = mounted_tmpfs(tmp_path / "small-disk", "700k")  # two tiny LoRA checkpoints (~310 KB each)
    run = make_run(project, tiny_model, output={"dir": str(small_disk)},
                   training={"max_steps": 6, "save_steps": 1, "save_total_limit": None})
    events = train_to_end(run)
    err = events[-1]
    assert err["type"] == "error", run.log_path.read_text()[-3000:]
    assert err["message"].startswith(f"no space left on device writing checkpoint-3 to {small_disk / 'checkpoints'} (")
    assert err["message"].endswith("MB free) (the partial folder was removed)")
    assert f"checkpoint-2 is intact: free some space, then `ftune train {run.name} --resume`" in err["hint"]
    assert [step for step, _ in run.checkpoints()] == [1, 2]  # whole, and resumable
    assert not (small_disk / "checkpoints" / "checkpoint-3").exists()
    assert json.loads(run.status_path.read_text())["state"] == "failed"
    assert "Traceback" in run.log_path.read_text()  # the traceback stays in the log


def test_a_run_starts_without_importing_bitsandbytes_or_trackers_it_does_not_use(tmp_path):
    import subprocess
    import sys

    code = """
import sys
from ftune.runtime.spec import build_spec
from ftune.runtime.train.worker import skip_unused_imports
base = {"name": "a", "model": {"name_or_path": "m"}, "data": {"train": "t.jsonl"}}
skip_unused_imports(build_spec({**base, "method": {"type": "full", "galore": {}},
                                 "training": {"report_to": ["wandb"]}}))
assert "bitsandbytes" not in sys.modules  # GaLore imports it itself: left alone
assert "wandb" not in sys.modules and sys.modules["trackio"] is None  # wandb is the run's: left alone
skip_unused_imports(build_spec(base))
import peft, trl
from peft import LoraConfig, get_peft_model
from trl import SFTTrainer
assert sys.modules["bitsandbytes"] is None, "bitsandbytes was imported"
assert sys.modules["wandb"] is None and sys.modules["trackio"] is None, "a tracker was imported"
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
