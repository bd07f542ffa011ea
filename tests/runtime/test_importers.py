"""`ftune import`: LLaMA-Factory example YAMLs (written from its examples/ folder), GLM-4's lora.yaml (seed 001)
and a DoDo parameter set (seed 000) become run files that validate; every source key is carried or said why not;
one imported LLaMA-Factory file trains on the tiny model with the shared data through dataset_dir."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ftune.cli import main
from ftune.runtime.errors import UserError
from ftune.runtime.importers import (
    GPU_ONLY,
    NO_HOME,
    NO_MEANING,
    detect_kind,
    import_config,
    read_source,
    write_imported,
)
from ftune.runtime.importers.llamafactory import template_for
from ftune.runtime.rundir import RunDir
from ftune.runtime.spec import load_spec
from ftune.runtime.spec.editors import MODELINE, SCHEMA_FILE, schema_text
from tests.conftest import SHARED_DATA, write_messages
from tests.runtime.helpers import of_type, train_to_end

CASES = Path(__file__).parent / "import_cases"
LF = CASES / "lf" / "examples"
LF_FILES = sorted(LF.rglob("*.yaml"))
SHARED_LF = SHARED_DATA / "llamafactory"


@pytest.fixture
def lf_info(tmp_path) -> Path:
    """A dataset_info.json with the names LLaMA-Factory's examples use (importing reads only this file)."""
    folder = tmp_path / "lfdata"
    folder.mkdir()
    info = {"identity": {"file_name": "identity.json"}, "alpaca_en_demo": {"file_name": "alpaca_en_demo.json"},
            "dpo_en_demo": {"file_name": "dpo_en_demo.json", "ranking": True},
            "kto_en_demo": {"file_name": "kto_en_demo.json", "columns": {"kto_tag": "label"}},
            "c4_demo": {"file_name": "c4_demo.jsonl", "columns": {"prompt": "text"}},
            "mllm_demo": {"file_name": "mllm_demo.json", "formatting": "sharegpt",
                          "columns": {"messages": "messages", "images": "images"}}}
    (folder / "dataset_info.json").write_text(json.dumps(info))
    return folder


def lf_import(path: Path, tmp_path: Path, data_dir: Path, **kw):
    kw.setdefault("gpu", False)
    return import_config(path, project=tmp_path, dataset_dir=data_dir, **kw)


def accounted(src: dict, imported) -> list[str]:
    """Source keys neither carried nor listed as left out (nothing may be dropped silently)."""
    named = {key.split(".")[0] for x in [*imported.carried, *imported.left] for key in re.split(r"[ ,]+", x.source)}
    return [k for k in src if k not in named]


# --------------------------------------------------------------------------- LLaMA-Factory
EXPECT = {  # file -> dotted ftune paths of the validated spec and their values (no CUDA GPU here)
    "qwen3_lora_sft.yaml": {"stage.type": "sft", "method.lora.alpha": 16, "model.template": "qwen3",
                            "data.train": ["identity", "alpaca_en_demo"], "data.val_size": 0.0,
                            "training.gradient_checkpointing": True, "output.dir": "saves/qwen3-4b/lora/sft"},
    "qwen3_lora_dpo.yaml": {"stage.type": "dpo", "stage.pref_beta": 0.1, "stage.pref_loss": "sigmoid",
                            "training.learning_rate": 5e-6},
    "qwen3_lora_kto.yaml": {"stage.type": "kto", "data.train": ["kto_en_demo"]},
    "qwen3_lora_pretrain.yaml": {"stage.type": "pt", "data.packing": True, "model.template": "auto"},
    "qwen3_lora_reward.yaml": {"stage.type": "rm"},
    "qwen3_lora_sft_ds3.yaml": {"resources.strategy": "deepspeed-zero3"},  # DeepSpeed trains on a CPU too
    "qwen3_lora_sft_otfq.yaml": {"method.quantization.bits": 4},  # bitsandbytes: on a CPU too
    "qwen3_full_sft.yaml": {"method.type": "full", "training.precision": "bf16"},
    "qwen2_full_sft.yaml": {"method.type": "full"},
    "llama3_full_sft.yaml": {"method.type": "full"},
    "llama3_freeze_sft.yaml": {"method.type": "freeze", "method.llama_pro_blocks": 8},
    "qwen2_full_asft.yaml": {"resources.strategy": "ddp"},  # ZeRO-0 is plain data parallel
    "qwen3vl_lora_sft.yaml": {"model.template": "auto", "data.image_max_pixels": 262144},
}


@pytest.mark.parametrize("path", LF_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_each_llamafactory_example_imports_to_a_valid_run_file(path, tmp_path, lf_info):
    extra = {"overrides": ["dataset=identity"]} if "asft" in path.parts else {}
    if "nlg_eval" in path.parts:  # predicts only: no training data of its own
        with pytest.raises(UserError, match="names no training data"):
            lf_import(path, tmp_path, lf_info)
        extra = {"data": str(write_messages(tmp_path / "train.jsonl", 4))}
    imported = lf_import(path, tmp_path, lf_info, **extra)
    assert imported.kind == "lf"
    assert accounted(read_source(path), imported) == []
    dumped = imported.spec.model_dump()
    for dotted, want in EXPECT.get(path.name, {}).items():
        value = dumped
        for part in dotted.split("."):
            value = value[part]
        assert value == want, dotted
    run = write_imported(tmp_path / "runs", imported)
    assert load_spec(run.spec_path) == imported.spec
    text = run.spec_path.read_text()
    assert text.splitlines()[0] == MODELINE
    assert all(f"#   {x.source}:" in text for x in imported.left)  # what was left out is in the file too
    assert (tmp_path / "runs" / SCHEMA_FILE).read_text() == schema_text()


def left(imported) -> dict[str, tuple[str, str]]:
    return {x.source: (x.reason, x.why) for x in imported.left}


def test_extras_map_onto_their_ftune_homes(tmp_path, lf_info):
    ex = LF / "extras"
    apollo = lf_import(ex / "apollo/llama3_full_sft.yaml", tmp_path, lf_info).spec
    assert apollo.method.apollo == {"layerwise": True, "target": "all", "rank": 128, "scale": 32.0,
                                    "scale_type": "channel"}
    assert apollo.training.precision == "pure_bf16"
    galore = lf_import(ex / "galore/llama3_full_sft.yaml", tmp_path, lf_info).spec.method.galore
    assert galore == {"layerwise": True, "target": "all", "rank": 128, "scale": 2.0}
    badam = lf_import(ex / "badam/llama3_full_sft.yaml", tmp_path, lf_info)
    assert badam.spec.method.badam == {"mode": "layer", "switch_mode": "ascending", "switch_every": 50}
    assert left(badam)["badam_verbose"][0] == NO_MEANING
    assert lf_import(ex / "adam_mini/qwen2_full_sft.yaml", tmp_path, lf_info).spec.training.optim == "adam_mini"
    assert lf_import(ex / "loraplus/llama3_lora_sft.yaml", tmp_path, lf_info).spec.method.lora.loraplus_lr_ratio == 16
    pissa = lf_import(ex / "pissa/llama3_lora_sft.yaml", tmp_path, lf_info)
    assert pissa.spec.method.lora.pissa_init and {"pissa_iter", "pissa_convert"} <= set(left(pissa))
    pro = lf_import(ex / "llama_pro/llama3_freeze_sft.yaml", tmp_path, lf_info)
    assert any("before expansion" in w for w in pro.warnings)
    oft = lf_import(ex / "oft/llama3_oft_sft.yaml", tmp_path, lf_info)
    assert left(oft)["finetuning_type"][0] == NO_HOME and oft.spec.method.type == "lora"
    for name in ("muon/qwen2_full_sft.yaml", "dft/qwen2_full_sft.yaml", "mod/llama3_full_sft.yaml"):
        key = {"muon": "use_muon", "dft": "use_dft_loss", "mod": "mixture_of_depths"}[name.split("/")[0]]
        assert left(lf_import(ex / name, tmp_path, lf_info))[key][0] == NO_HOME
    asft = lf_import(ex / "asft/qwen2_full_asft.yaml", tmp_path, lf_info, overrides=["dataset=identity"])
    assert left(asft)["use_asft_loss"][0] == NO_HOME
    assert any("models/Qwen2.5-7B reads as a hub id" in w for w in asft.warnings)  # a folder in LLaMA-Factory
    fp8 = left(lf_import(ex / "fp8/llama3_fp8_deepspeed_sft.yaml", tmp_path, lf_info))
    assert fp8["fp8"][0] == GPU_ONLY and fp8["run_name"][0] == NO_MEANING


def test_vision_language_settings(tmp_path, lf_info):
    src = (LF / "train_lora/qwen3vl_lora_sft.yaml").read_text()
    unfrozen = "freeze_vision_tower: false\nfreeze_multi_modal_projector: false\n"
    full_projector = "finetuning_type: full\nfreeze_vision_tower: true\nfreeze_multi_modal_projector: false\n"
    for extra, tower, projector in [(unfrozen, "lora", "lora"), (full_projector, "frozen", "full")]:
        path = tmp_path / "vl.yaml"
        path.write_text(src.replace("finetuning_type: lora\n", "") + extra + "image_min_pixels: 1024\n")
        imported = lf_import(path, tmp_path, lf_info)
        m, d = imported.spec.method, imported.spec.data
        assert (m.vision_tower, m.projector, d.image_max_pixels, d.image_min_pixels) == (tower, projector, 262144, 1024)
        assert accounted(read_source(path), imported) == []
        assert left(imported)["video_max_pixels"][1] == "ftune reads images (docs/vision.md); video and audio are not read"


def test_gpu_settings_are_kept_with_gpu_and_listed_without(tmp_path, lf_info):
    ds3 = LF / "train_lora/qwen3_lora_sft_ds3.yaml"
    kept = lf_import(ds3, tmp_path, lf_info)  # DeepSpeed: on a CPU too
    fsdp_file = LF / "extras/fp8/llama3_fp8_fsdp_sft.yaml"
    without = lf_import(fsdp_file, tmp_path, lf_info)  # FSDP needs a GPU (accelerate): listed, not written
    assert left(without)["fsdp"][0] == GPU_ONLY and without.spec.resources.strategy == "auto"
    assert kept.spec.resources.strategy == "deepspeed-zero3" and not kept.spec.resources.offload
    assert "ds_z3_config.json" in next(c.note for c in kept.carried if c.source == "deepspeed")  # read, not guessed
    fp8 = lf_import(LF / "extras/fp8/llama3_fp8_deepspeed_sft.yaml", tmp_path, lf_info, gpu=True).spec.resources
    assert (fp8.strategy, fp8.offload) == ("deepspeed-zero3", True)  # its config offloads the optimiser
    fsdp = lf_import(fsdp_file, tmp_path, lf_info, gpu=True).spec
    assert fsdp.resources.strategy == "fsdp"
    q = lf_import(LF / "train_qlora/qwen3_lora_sft_otfq.yaml", tmp_path, lf_info, gpu=True).spec.method.quantization
    assert (q.bits, q.method) == (4, "bnb")
    mod = lf_import(LF / "extras/mod/llama3_full_sft.yaml", tmp_path, lf_info, gpu=True)
    assert mod.spec.training.optim == "paged_adamw_8bit"


def test_deepspeed_file_not_found_is_read_from_its_name(tmp_path, lf_info):
    cfg = tmp_path / "x.yaml"
    cfg.write_text("model_name_or_path: Qwen/Qwen3-4B\nstage: sft\nfinetuning_type: full\ndataset: identity\n"
                   "deepspeed: somewhere/ds_z3_offload_config.json\n")
    imported = lf_import(cfg, tmp_path, lf_info, gpu=True)
    assert (imported.spec.resources.strategy, imported.spec.resources.offload) == ("deepspeed-zero3", True)
    assert any("read from its name" in c.note for c in imported.carried)


def test_overrides_like_llamafactory_cli(tmp_path, lf_info):
    imported = lf_import(LF / "train_lora/qwen3_lora_sft.yaml", tmp_path, lf_info,
                         overrides=["learning_rate=2e-5", "lora_rank=16", "pref_loss=orpo", "stage=dpo"])
    s = imported.spec
    assert (s.training.learning_rate, s.method.lora.rank, s.method.lora.alpha, s.stage.type) == (2e-5, 16, 32, "orpo")
    assert "from the command line" in next(c.note for c in imported.carried if c.source == "learning_rate")
    with pytest.raises(UserError, match="not KEY=VALUE"):
        lf_import(LF / "train_lora/qwen3_lora_sft.yaml", tmp_path, lf_info, overrides=["learning_rate"])
    # LLaMA-Factory reads pref_beta for its preference stages only: on an sft run it is left out, saying so
    sft = lf_import(LF / "train_lora/qwen3_lora_sft.yaml", tmp_path, lf_info, overrides=["pref_beta=0.2"])
    assert left(sft)["pref_beta"] == (NO_MEANING, "a setting of stage dpo, kto, orpo and simpo; this run is stage "
                                                  "sft")
    assert sft.spec.stage.type == "sft" and not hasattr(sft.spec.stage, "pref_beta")


@pytest.mark.parametrize("name,want", [("qwen3_nothink", "qwen3"), ("qwen3", "qwen3"), ("llama3", "llama3"),
                                       ("qwen3_vl_nothink", None), ("qwen2_vl", "qwen2_vl"), ("moss_vl", None),
                                       ("empty", None), ("cohere", None)])
def test_templates(name, want):
    mapped, note = template_for(name)
    assert mapped == want
    if name == "qwen3":
        assert "<think>" in note  # LLaMA-Factory's qwen3 differs: said, not hidden
    if name.endswith("vl_nothink"):
        assert "multimodal" in note


def test_dataset_names_are_checked_against_dataset_info(tmp_path, lf_info):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model_name_or_path: m/m\nstage: sft\ndataset: identiti\n")
    with pytest.raises(UserError, match="did you mean 'identity'"):
        lf_import(cfg, tmp_path, lf_info)
    with pytest.raises(UserError, match="dataset_info.json") as info:
        import_config(cfg, project=tmp_path, gpu=False)  # no data/ beside it
    assert "--dataset-dir" in info.value.hint
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset_info.json").write_text((lf_info / "dataset_info.json").read_text())
    cfg.write_text("model_name_or_path: m/m\nstage: sft\ndataset: identity\n")
    found = import_config(cfg, project=tmp_path, gpu=False)  # LLaMA-Factory's default: data/ beside the file
    assert found.spec.data.dataset_dir == "data"


# --------------------------------------------------------------------------- GLM-4 and DoDo
def test_glm4_lora_yaml(tmp_path, tiny_model):
    write_messages(tmp_path / "train.jsonl", 8)
    write_messages(tmp_path / "dev.jsonl", 4, seed=1)
    path = CASES / "glm" / "lora.yaml"
    assert detect_kind(read_source(path)) == "glm"
    with pytest.raises(UserError, match="names no model"):
        import_config(path, project=tmp_path, dataset_dir=tmp_path, gpu=False)
    imported = import_config(path, project=tmp_path, dataset_dir=tmp_path, model=str(tiny_model), gpu=False)
    s = imported.spec
    assert (s.data.train, s.data.validation, s.data.test) == (["train.jsonl"], "dev.jsonl", "dev.jsonl")
    assert (s.data.max_input_length, s.data.max_output_length, s.data.max_length) == (512, 512, 1040)
    assert (s.training.max_steps, s.training.learning_rate, s.training.max_new_tokens) == (3000, 5e-4, 512)
    assert s.training.predict_with_generate and s.training.eval_steps == 500
    assert (s.method.lora.rank, s.method.lora.alpha, s.method.lora.dropout) == (8, 32, 0.1)
    assert s.method.lora.target_modules == ["query_key_value"]  # kept, with a warning: this Qwen2 has none
    assert any("has no module named query_key_value" in w and "q_proj" in w for w in imported.warnings)
    assert accounted(read_source(path), imported) == []
    assert left(imported)["training_args.remove_unused_columns"][0] == NO_MEANING
    with pytest.raises(UserError, match="prefix tuning"):
        import_config(CASES / "glm" / "ptuning_v2.yaml", project=tmp_path, model="m/m", gpu=False)


def test_dodo_parameters_with_numeric_codes(tmp_path):
    data = str(write_messages(tmp_path / "chat.jsonl", 4))
    path = CASES / "dodo" / "yi_chat.json"
    assert detect_kind(read_source(path)) == "dodo"
    imported = import_config(path, project=tmp_path, model="01-ai/Yi-1.5-6B-Chat", data=data, gpu=False)
    s = imported.spec
    assert (s.training.lr_scheduler_type, s.training.save_strategy, s.output.save_format) == \
        ("linear", "steps", "merged_16bit")
    assert (s.method.lora.rank, s.method.lora.alpha, s.data.max_length, s.data.num_proc) == (16, 16, 2048, 2)
    assert (s.training.seed, s.training.auto_resume, s.method.lora.use_rslora) == (3407, True, False)
    assert (s.training.optim, s.method.quantization.bits) == ("adamw_8bit", 4)  # bitsandbytes: on a CPU too
    assert accounted(read_source(path), imported) == []
    # the same set as YAML, numbers as a form sends them (text), other codes
    as_text = tmp_path / "params.yaml"
    raw = {**json.loads(path.read_text()), "optim": "1", "lr_scheduler_type": "1", "model_save_type": "2",
           "max_seq_length": "1024", "load_in_4bit": "0", "learning_rate": "2e-4"}
    as_text.write_text(yaml.safe_dump({k: str(v) for k, v in raw.items()}))
    s = import_config(as_text, project=tmp_path, model="01-ai/Yi-1.5-6B-Chat", data=data, gpu=True).spec
    assert (s.training.optim, s.training.lr_scheduler_type, s.output.save_format) == ("adamw_torch", "cosine",
                                                                                      "merged_4bit")
    assert (s.data.max_length, s.training.learning_rate, s.method.quantization.bits) == (1024, 2e-4, None)


def test_what_is_not_a_config_gets_one_sentence(tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("hello: world\n")
    result = CliRunner().invoke(main, ["import", str(other)], prog_name="ftune")
    assert result.exit_code == 2
    assert "is not a config ftune can import: expected a LLaMA-Factory training YAML" in result.output
    ours = tmp_path / "run.yaml"
    ours.write_text("name: a\nmodel: {name_or_path: m}\ndata: {train: t.jsonl}\n")
    with pytest.raises(UserError, match="is an ftune run file already"):
        import_config(ours, project=tmp_path)
    forced = tmp_path / "p.yaml"  # DoDo-looking keys, read as LLaMA-Factory because --kind says so
    forced.write_text("lora_r: 8\nmodel_save_type: 1\nmax_seq_length: 512\nmodel_name_or_path: m/m\n"
                      "dataset: identity\n")
    assert detect_kind(read_source(forced)) == "dodo"
    with pytest.raises(UserError, match="dataset_info.json"):
        import_config(forced, project=tmp_path, kind="lf")


# --------------------------------------------------------------------------- the commands
def test_cli_import_and_new_from(project, lf_info, tiny_model):
    path = LF / "train_lora/qwen3_lora_dpo.yaml"
    runner = CliRunner()
    result = runner.invoke(main, ["import", str(path), "--dataset-dir", str(lf_info), "--model", str(tiny_model),
                                  "--no-gpu", "lora_rank=4"], prog_name="ftune")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "source key" in out and "lora_rank" in out and "method.lora.rank" in out
    assert "Not carried over" in out and "ddp_timeout" in out and "no home yet" in out
    assert "Wrote " in out and "ftune train qwen3-lora-dpo" in out
    spec = load_spec(RunDir(project / "runs", "qwen3-lora-dpo").spec_path)
    assert (spec.stage.type, spec.method.lora.rank) == ("dpo", 4)
    again = runner.invoke(main, ["import", str(path), "--dataset-dir", str(lf_info)], prog_name="ftune")
    assert again.exit_code == 2 and "exists already" in again.output
    # `ftune new --from` takes the same file, through the same mapping (no terminal: nothing asked)
    new = runner.invoke(main, ["new", "--from", str(LF / "train_lora/qwen3_lora_sft.yaml"), "--model",
                               str(tiny_model), "--name", "from-lf", "--yes"], prog_name="ftune")
    assert "dataset_info.json" in new.output and new.exit_code == 2  # its data/ is not beside it: said so
    cfg = project / "lf.yaml"
    cfg.write_text((LF / "train_lora/qwen3_lora_sft.yaml").read_text() + f"dataset_dir: {lf_info}\n")
    new = runner.invoke(main, ["new", "--from", str(cfg), "--model", str(tiny_model), "--name", "from-lf",
                               "--yes"], prog_name="ftune")
    assert new.exit_code == 0, new.output
    assert "Not carried over" in new.output
    written = load_spec(project / "runs" / "from-lf" / "run.yaml")
    assert (written.method.lora.alpha, written.data.dataset_dir, written.training.gradient_checkpointing) == \
        (16, "lfdata", True)  # relative to the project folder, which holds it


@pytest.mark.skipif(not SHARED_LF.is_dir(), reason=f"shared data not found at {SHARED_LF} (a fresh clone has none)")
def test_an_imported_llamafactory_file_trains(project, tiny_model):
    imported = import_config(LF / "train_lora/qwen3_lora_sft.yaml", project=project, dataset_dir=SHARED_LF,
                             model=str(tiny_model), gpu=False, overrides=[
                                 "dataset=identity", "max_samples=16", "cutoff_len=128", "max_steps=2", "bf16=false",
                                 "per_device_train_batch_size=4", "gradient_accumulation_steps=1", "save_steps=100",
                                 "learning_rate=1e-3"])
    run = write_imported(project / "runs", imported)
    events = train_to_end(run)
    assert events[-1]["type"] == "finished", run.log_path.read_text()[-3000:]
    steps = of_type(events, "step")
    assert steps and all(math.isfinite(s["loss"]) for s in steps)
    assert (project / "saves/qwen3-4b/lora/sft").is_dir()  # output_dir -> output.dir


def test_report_to_trackers_carry_over_and_others_are_left(tmp_path, lf_info):
    imported = lf_import(LF / "train_lora/qwen3_lora_sft.yaml", tmp_path, lf_info,
                         overrides=["report_to=wandb,comet_ml"])
    assert imported.spec.training.report_to == ["wandb"]
    assert [left.value for left in imported.left if left.source == "report_to"] == ["comet_ml"]


def test_tool_formats_and_thinking_map_onto_templates_and_reasoning(tmp_path, lf_info):
    base = {"model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct", "stage": "sft", "do_train": True,
            "finetuning_type": "lora", "dataset": "identity", "output_dir": "saves/x"}

    def imported(**extra):
        p = tmp_path / "c.yaml"
        p.write_text(yaml.safe_dump({**base, **extra}))
        return lf_import(p, tmp_path, lf_info)

    qwen = imported(template="qwen", tool_format="qwen")
    assert qwen.spec.model.template == "chatml"  # ChatML with Qwen2.5's tool format
    for fmt in ("default", "glm4"):
        other = imported(tool_format=fmt)
        assert other.spec.model.template == "auto" and left(other)["tool_format"][0] == NO_HOME
        assert "the model's own template has its own tool format" in left(other)["tool_format"][1]
    assert imported(enable_thinking=False).spec.data.reasoning == "drop"
    assert imported(preserve_thinking=True).spec.data.reasoning == "keep"
    assert imported(enable_thinking=True).spec.data.reasoning == "auto"
