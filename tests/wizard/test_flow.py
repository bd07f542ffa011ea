"""Every branch of `ftune new`'s questions: back, cancel, models, templates, stages, methods, data, presets,
advanced settings, review and start."""

import json

import pytest
import yaml

from ftune.runtime import memory_estimate
from ftune.runtime.rundir import RunDir
from ftune.runtime.spec import load_spec
from ftune.wizard.advanced import GROUPS, knobs
from ftune.wizard.runfile import METHODS, STAGES, Answers, refusal
from tests.runtime.helpers import of_type, train_to_end
from tests.wizard.conftest import BACK, CLEAR, CTRL_C, DOWN, ENTER, H100, HUB, LOCAL, QWEN25_7B, UP, down, group

SHOWN_GROUPS = [g for g in GROUPS if knobs(g)] + ["Done"]


def move(start: str, to: str) -> str:
    """Keys from one advanced group to another (the groups shown are the ones training uses)."""
    steps = SHOWN_GROUPS.index(to) - SHOWN_GROUPS.index(start)
    return (DOWN * steps if steps > 0 else UP * -steps) + ENTER

DATA = "train.jsonl" + ENTER
REST = ENTER + ENTER + ENTER + DATA + ENTER + ENTER  # template, stage, method, data, validation, preset
WRITE, NO = ENTER, "n"


def run_file(project, name="run-01") -> dict:
    return yaml.safe_load((project / "runs" / name / "run.yaml").read_text())


def named_templates_work() -> bool:
    return refusal(Answers(), "model.template", template="qwen") is None


# --------------------------------------------------------------------------- the whole way
def test_catalog_model_all_the_way_to_a_valid_run_file(project, drive):
    d = drive(ENTER, QWEN25_7B, ENTER, ENTER, ENTER, DATA, ENTER, down(2) + ENTER, WRITE, NO, gpus=H100)
    assert d.outcome is not None and d.outcome.start is False
    raw = run_file(project)
    assert raw["name"] == "run-01" and raw["preset"] == "fast" and raw["stage"] == "sft" and raw["method"] == "lora"
    assert raw["model"]["name_or_path"] == "Qwen/Qwen2.5-7B-Instruct"
    assert raw["model"].get("template", "auto") == ("qwen" if named_templates_work() else "auto")
    assert raw["data"] == {"train": "train.jsonl"}  # relative to the project folder
    spec_ = load_spec(project / "runs" / "run-01" / "run.yaml")
    assert spec_.training.num_train_epochs == 2 and spec_.method.lora.rank == 4  # the fast preset under it
    # memory shown against the GPU: the method list, the choice and the review
    assert "GPUs here: H100 80GB HBM3 (79 of 80 GB free)" in d.text
    assert "LoRA: ~" in d.text and "memory: ~" in d.text and "Wrote runs/run-01/run.yaml" in d.text
    assert "Qwen/Qwen2.5-7B-Instruct: Qwen2.5, 7.62B parameters, context 32768, template qwen" in d.text


def test_local_folder_with_advanced_edits_validates_and_trains(project, drive, tiny_model):
    advanced = (down(3) + ENTER  # preset: advanced
                + down(2) + ENTER  # start from fast
                + ENTER  # group Training
                + DOWN + ENTER + "2" + ENTER  # max_steps: 2
                + DOWN + ENTER + CLEAR + "3e-3" + ENTER  # learning_rate
                + BACK  # back to the groups
                + move("Training", "LoRA") + ENTER + CLEAR + "2" + ENTER + BACK  # LoRA: rank 2
                + move("LoRA", "Done"))
    d = drive(ENTER, LOCAL, str(tiny_model) + ENTER, ENTER, ENTER, ENTER, DATA, ENTER, advanced, WRITE, NO)
    assert d.outcome is not None, d.output
    raw = run_file(project)
    assert raw["model"]["name_or_path"] == str(tiny_model)  # outside the project: absolute
    assert raw["preset"] == "fast"
    assert raw["training"] == {"max_steps": 2, "learning_rate": 0.003}  # numbers, not the strings typed
    assert raw["method"] == {"type": "lora", "lora": {"rank": 2}}
    assert "110K parameters" in d.text
    events = train_to_end(RunDir(project / "runs", "run-01"))
    finished = of_type(events, "finished")
    assert finished and finished[0]["step"] == 2, [e for e in events if e["type"] in ("error", "warning")]


# --------------------------------------------------------------------------- back and cancel
def test_back_keeps_every_previous_answer(project, drive):
    keys = [CLEAR + "my-run" + ENTER, QWEN25_7B,
            BACK,  # template -> model: starts on Qwen, then Qwen2.5, then the 7B
            ENTER, ENTER, ENTER,
            BACK, BACK,  # template -> model -> name (keeps my-run)
            BACK,  # the first step: Ctrl+B stays there
            ENTER, ENTER, ENTER, ENTER, REST, WRITE, NO]
    d = drive(*keys)
    assert d.outcome is not None, d.output
    raw = run_file(project, "my-run")
    assert raw["name"] == "my-run" and raw["model"]["name_or_path"] == "Qwen/Qwen2.5-7B-Instruct"


def test_back_from_the_review_and_from_the_start_question(project, drive):
    keys = [ENTER, QWEN25_7B, REST,
            DOWN + ENTER,  # review: go back -> preset (starts on standard)
            down(2) + ENTER,  # fast
            WRITE, BACK,  # start? -> back to the review: write again (our own file)
            WRITE, NO]
    d = drive(*keys)
    assert d.outcome is not None and run_file(project)["preset"] == "fast"
    assert d.text.count("Wrote runs/run-01/run.yaml") == 2


@pytest.mark.parametrize("step", range(9))
def test_ctrl_c_at_any_step_writes_nothing(project, drive, step):
    answers = [ENTER, QWEN25_7B, ENTER, ENTER, ENTER, DATA, ENTER, ENTER]
    d = drive(*answers[:step], CTRL_C)
    assert d.outcome is None
    assert not any((project / "runs").iterdir())


def test_cancel_in_the_review_writes_nothing(project, drive):
    d = drive(ENTER, QWEN25_7B, REST, down(2) + ENTER)
    assert d.outcome is None and not any((project / "runs").iterdir())


def test_ctrl_c_after_writing_says_so(project, drive):
    d = drive(ENTER, QWEN25_7B, REST, WRITE, CTRL_C)
    assert d.outcome.interrupted and d.outcome.start is False
    assert (project / "runs" / "run-01" / "run.yaml").is_file()


def test_start_now(project, drive):
    d = drive(ENTER, QWEN25_7B, REST, WRITE, "y")
    assert d.outcome.start is True and d.outcome.run.name == "run-01"


# --------------------------------------------------------------------------- name
def test_name_checked_as_typed_and_existing_run_asks_first(project, drive):
    (project / "runs" / "run-01").mkdir()
    (project / "runs" / "run-01" / "run.yaml").write_text("name: run-01\n")
    keys = [CLEAR + "Bad_Name" + ENTER,  # refused by the validator: stays on the question
            CLEAR + "run-01" + ENTER, "n",  # exists: do not replace -> asked again, now on run-02
            ENTER, CTRL_C]
    d = drive(*keys)
    assert d.a.name == "run-02" and not d.wizard.overwrite_ok
    d = drive(CLEAR + "run-01" + ENTER, "y", CTRL_C)
    assert d.a.name == "run-01" and d.wizard.overwrite_ok
    assert (project / "runs" / "run-01" / "run.yaml").read_text() == "name: run-01\n"  # untouched until the review


def test_next_free_name_is_the_default(project, drive):
    for n in (1, 2):
        (project / "runs" / f"run-0{n}").mkdir()
        (project / "runs" / f"run-0{n}" / "run.yaml").write_text(f"name: run-0{n}\n")
    assert drive(ENTER, CTRL_C).a.name == "run-03"


# --------------------------------------------------------------------------- model
def test_hub_id_checked_and_size_guessed_from_the_name(project, drive):
    d = drive(ENTER, HUB, "not a hub id" + ENTER, CLEAR + "HuggingFaceTB/SmolLM2-135M-Instruct" + ENTER, CTRL_C)
    assert d.a.model == "HuggingFaceTB/SmolLM2-135M-Instruct" and d.wizard.info.params_b == pytest.approx(0.135)


def test_hub_id_of_unknown_size_asks_for_it(project, drive):
    d = drive(ENTER, HUB, "someone/mystery" + ENTER, "x" + ENTER, CLEAR + "3" + ENTER, ENTER, ENTER, ENTER,
              CTRL_C, gpus=H100)
    assert d.a.model == "someone/mystery" and d.wizard.info.params_b == 3.0
    assert "someone/mystery: family not in the catalog, 3B parameters" in d.text
    assert "LoRA: ~" in d.text  # the method step estimated with the size given


def test_local_folder_must_hold_config_json(project, drive, tiny_model, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    d = drive(ENTER, LOCAL, str(empty) + ENTER, CLEAR + str(tiny_model) + ENTER, CTRL_C)
    assert d.a.model == str(tiny_model) and d.wizard.info.source == "local"


def test_model_inside_the_project_is_written_relative(project, drive, tiny_model):
    import shutil

    shutil.copytree(tiny_model, project / "models" / "tiny")
    d = drive(ENTER, LOCAL, "models/tiny" + ENTER, CTRL_C)
    assert d.a.model == "./models/tiny"  # "./": a relative folder never reads as the hub id models/tiny


def test_remote_code_is_asked_and_refusing_it_means_another_model(project, drive):
    keys = [ENTER, group("Baichuan 2"), ENTER, "n",  # 7B ships code: no -> choose again (starts on Baichuan 2)
            ENTER, DOWN + ENTER, "y", CTRL_C]
    d = drive(*keys)
    assert d.a.model == "baichuan-inc/Baichuan2-13B-Chat" and d.a.trust_remote_code is True
    assert "Without it this model cannot load" in d.text


# --------------------------------------------------------------------------- template
def test_template_matched_and_kept(project, drive):
    d = drive(ENTER, QWEN25_7B, ENTER, CTRL_C)
    assert "Template matched to the model: qwen." in d.text
    assert d.a.template_choice == "qwen"
    assert d.a.template == ("qwen" if named_templates_work() else "auto")


def test_another_template_on_a_chat_model_warns(project, drive):
    if not named_templates_work():
        pytest.skip("this ftune accepts only model.template: auto, so no other template is offered")
    keys = [ENTER, QWEN25_7B,
            down(2) + ENTER, "llama3" + ENTER, "n",  # warned: keep qwen after all
            down(2) + ENTER, "nope" + ENTER, CLEAR + "llama3" + ENTER, "y", CTRL_C]
    d = drive(*keys)
    assert "instruct and chat models need their own template" in d.text
    assert d.a.template == "llama3"


def test_auto_template(project, drive):
    d = drive(ENTER, QWEN25_7B, DOWN + ENTER, CTRL_C)
    assert d.a.template == "auto"


# --------------------------------------------------------------------------- stage
@pytest.mark.parametrize("index,stage", list(enumerate(STAGES)))
def test_each_stage(project, drive, index, stage):
    keys = [ENTER, HUB, "org/model-7b" + ENTER, ENTER, down(index) + ENTER]
    if stage == "rl":
        keys += [ENTER, "rm-run" + ENTER]  # the reward model is required: empty is refused
    keys.append(CTRL_C)  # at the method step
    d = drive(*keys)
    assert d.a.stage == stage
    if stage == "rl":
        assert d.a.settings["stage.reward_model"] == "rm-run"


# --------------------------------------------------------------------------- method
@pytest.mark.parametrize("index,method", list(enumerate(METHODS)))
def test_each_method_with_its_memory_estimate(project, drive, index, method):
    d = drive(ENTER, QWEN25_7B, ENTER, ENTER, down(index) + ENTER, CTRL_C, gpus=H100)  # Ctrl+C at the data step
    assert d.a.method == method
    label = memory_estimate.LABELS[method]
    assert f"{label}: ~" in d.text
    if method == "full":
        assert "more than the 79 GB free on 1× H100 80GB HBM3: LoRA would need ~" in d.text


def test_method_choice_changes_the_run_file(project, drive):
    method = next(m for m in ("dora", "full-bf16") if refusal(Answers(), "method", method=m) is None)
    drive(ENTER, QWEN25_7B, ENTER, ENTER, down(list(METHODS).index(method)) + ENTER, DATA, ENTER, ENTER,
          WRITE, NO, gpus=H100)
    raw = run_file(project)
    if method == "dora":
        assert raw["method"] == {"type": "lora", "lora": {"use_dora": True}}
    else:
        assert raw["method"] == "full" and raw["training"] == {"precision": "pure_bf16"}


# --------------------------------------------------------------------------- data
def write_rows(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
BAD = {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]}


def test_unreadable_file_is_asked_again_and_invalid_rows_can_be_skipped(project, drive):
    (project / "broken.jsonl").write_text('{"messages": [\n')
    write_rows(project / "mixed.jsonl", [GOOD] * 8 + [BAD] * 2)
    keys = [ENTER, QWEN25_7B, ENTER, ENTER, ENTER,
            "nothing.jsonl" + ENTER,  # refused by the validator: does not exist
            CLEAR + "broken.jsonl" + ENTER,  # read, cannot be parsed: asked again
            CLEAR + "mixed.jsonl" + ENTER, UP + ENTER,  # 2 invalid rows: skip them
            DOWN + ENTER, CLEAR + "5%" + ENTER,  # validation: another share
            ENTER, WRITE, NO]
    d = drive(*keys)
    assert "broken.jsonl: cannot be read" in d.text
    assert "mixed.jsonl: messages" in d.text and "10 rows, 8 valid, 2 invalid" in d.text
    raw = run_file(project)
    assert raw["data"] == {"train": "mixed.jsonl", "val_size": 0.05, "on_invalid": "skip"}


def test_separate_validation_file(project, drive):
    write_rows(project / "val.jsonl", [GOOD] * 3)
    d = drive(ENTER, QWEN25_7B, ENTER, ENTER, ENTER, DATA, down(2) + ENTER, "val.jsonl" + ENTER, ENTER, WRITE, NO)
    assert d.outcome is not None
    assert run_file(project)["data"] == {"train": "train.jsonl", "validation": "val.jsonl"}


def test_no_validation(project, drive):
    drive(ENTER, QWEN25_7B, ENTER, ENTER, ENTER, DATA, down(3) + ENTER, ENTER, WRITE, NO)
    assert run_file(project)["data"] == {"train": "train.jsonl", "val_size": 0}


def test_data_outside_the_project_is_written_absolute(project, drive, tmp_path_factory):
    other = tmp_path_factory.mktemp("elsewhere") / "chats.jsonl"
    write_rows(other, [GOOD] * 4)
    drive(ENTER, QWEN25_7B, ENTER, ENTER, ENTER, str(other) + ENTER, ENTER, ENTER, WRITE, NO)
    assert run_file(project)["data"]["train"] == str(other)


# --------------------------------------------------------------------------- presets and advanced
@pytest.mark.parametrize("index,preset", [(0, "standard"), (1, "quality"), (2, "fast")])
def test_each_preset(project, drive, index, preset):
    drive(ENTER, QWEN25_7B, ENTER, ENTER, ENTER, DATA, ENTER, down(index) + ENTER, WRITE, NO)
    assert run_file(project)["preset"] == preset
    assert "training" not in run_file(project)  # the preset's values stay in the preset


def test_advanced_refuses_bad_values_and_keeps_only_real_changes(project, drive):
    keys = [ENTER, QWEN25_7B, ENTER, ENTER, ENTER, DATA, ENTER,
            down(3) + ENTER, ENTER,  # advanced, from standard
            ENTER, down(2) + ENTER, CLEAR + "abc" + ENTER, CLEAR + "7" + ENTER,  # lr: not a number, then >= 1
            CLEAR + ENTER,  # empty: back to the default
            down(7) + ENTER, ENTER,  # optim: a select; keep the current one
            BACK, move("Training", "Precision"), DOWN + ENTER, UP + ENTER,  # Precision: gradient checkpointing on
            BACK, move("Precision", "Done"), CTRL_C]
    d = drive(*keys)
    assert d.a.settings == {"training.gradient_checkpointing": True}  # nothing else changed
    assert d.a.preset == "standard"


# --------------------------------------------------------------------------- terminals
def test_ascii_terminal_gets_ascii_only(project, drive):
    d = drive(ENTER, QWEN25_7B, REST, WRITE, NO, ascii_only=True, gpus=H100)
    assert d.outcome is not None
    assert d.output.isascii() and "+--" in d.text  # ASCII box
    assert "1x H100 80GB HBM3" in d.text or "no NVIDIA" in d.text


def test_narrow_output_fits_80_columns(project, drive):
    d = drive(ENTER, QWEN25_7B, REST, WRITE, NO, gpus=H100)
    assert max(len(line) for line in d.output.splitlines()) <= 80


# --------------------------------------------------------------------------- the beginner's path
def test_the_beginner_answers_five_questions_model_data_preset_go(project, drive, tiny_model):
    keys = [LOCAL, str(tiny_model) + ENTER,  # 1, 2: the model list, the folder
            DATA,  # 3: the data
            ENTER,  # 4: the preset (standard)
            ENTER]  # 5: write it and start training
    d = drive(*keys, quick=True)
    assert d.outcome is not None and d.outcome.start is True, d.output
    raw = run_file(project)
    assert raw["name"] == "run-01" and raw["stage"] == "sft" and raw["method"] == "lora"
    assert raw["data"] == {"train": "train.jsonl"} and raw["preset"] == "standard"
    assert "ftune new: model, data and preset, then a review of the rest" in d.text
    # the review says what will happen, on this machine: 64 rows, 10% held out, batch 8 × 3 epochs (standard)
    assert ("58 training rows (+6 to evaluate) → 24 steps on the CPU (no NVIDIA GPU found); no time estimate yet "
            "(no earlier run of this model here)") in d.text
    # and what LoRA will train: peft's own count (tests/runtime/test_memory_estimate.py), from the folder's config.json
    rank = load_spec(project / "runs" / "run-01" / "run.yaml").method.lora.rank
    trainable = memory_estimate.lora_trainable(json.loads((tiny_model / "config.json").read_text()), rank)
    assert f"LoRA r{rank} α32 ({trainable:,} trainable parameters)" in d.text


def test_the_stage_follows_the_data_and_one_answer_can_be_changed(project, drive, tiny_model):
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}], "chosen": "good", "rejected": "bad"}
            for i in range(8)]
    write_rows(project / "prefs.jsonl", rows)
    change_name = DOWN * 2 + ENTER + ENTER + CLEAR + "my-dpo" + ENTER  # Change something… → Run name
    d = drive(LOCAL, str(tiny_model) + ENTER, "prefs.jsonl" + ENTER, ENTER, change_name, DOWN + ENTER, quick=True)
    assert d.outcome is not None and d.outcome.start is False, d.output  # "write it; start later"
    assert "This is preference data: the stage is DPO (change it on the review)." in d.text
    raw = run_file(project, "my-dpo")
    assert raw["name"] == "my-dpo" and raw["stage"] == "dpo"


def test_the_time_estimate_rests_on_an_earlier_run_of_the_same_model(project, tiny_model):
    from ftune.runtime.spec import build_spec
    from ftune.wizard.runfile import plan_line

    earlier = RunDir(project / "runs", "run-07")
    earlier.path.mkdir(parents=True)
    earlier.spec_path.write_text(yaml.safe_dump({"name": "run-07", "model": {"name_or_path": str(tiny_model)},
                                                 "data": {"train": "train.jsonl"}}))
    earlier.update_status(state="finished")
    earlier.events_path.write_text("".join(json.dumps(e) + "\n" for e in [
        {"v": 1, "t": 1, "type": "step", "step": s, "samples_per_s": rate} for s, rate in ((1, 2.0), (2, 4.0), (3, 5.0))
    ]))
    spec = build_spec({"name": "run-08", "model": {"name_or_path": str(tiny_model)}, "data": {
        "train": "train.jsonl", "max_samples": 250, "val_size": 0}, "training": {"num_train_epochs": 3}})
    line = plan_line(spec, 999, project / "runs", str(tiny_model), [])
    # 250 rows (max_samples, not the 999 in the file), batch 8 -> 32 steps a pass, 96 steps at the median 4 rows/s
    assert line == ("250 training rows → 96 steps on the CPU (no NVIDIA GPU found): about 3 minutes at the pace "
                    "of run-07 here (4.0 rows/s)")


def test_without_a_gpu_qlora_can_be_chosen(project, drive):
    d = drive(ENTER, QWEN25_7B, ENTER, ENTER, DOWN + ENTER, CTRL_C)  # one down from LoRA
    assert d.a.method == "qlora-8"  # bitsandbytes trains on a CPU too: no longer greyed out


def test_data_sets_picked_by_name_from_a_dataset_info_json(project, drive, tiny_model):
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
    (project / "data").mkdir()
    write_rows(project / "data" / "a.jsonl", [GOOD] * 6)
    write_rows(project / "data" / "b.jsonl", [GOOD] * 4)
    entry = {"formatting": "sharegpt", "columns": {"messages": "messages"}, "tags": tags}
    (project / "data" / "dataset_info.json").write_text(json.dumps({
        "first": {"file_name": "a.jsonl", **entry}, "second": {"file_name": "b.jsonl", **entry},
        "far": {"hf_hub_url": "someone/far"}}))
    pick_both = " " + DOWN + " " + ENTER  # Space on each, Enter
    d = drive(LOCAL, str(tiny_model) + ENTER, "data/dataset_info.json" + ENTER, pick_both, ENTER, DOWN + ENTER,
              quick=True)
    assert d.outcome is not None, d.output
    assert "first, second: 10 rows of chat data; suits sft, rl" in d.text
    raw = run_file(project)
    assert raw["data"] == {"train": ["first", "second"], "dataset_dir": "data"}
    assert load_spec(project / "runs" / "run-01" / "run.yaml").data.dataset_dir == "data"


# --------------------------------------------------------------------------- vision-language models
def test_a_vision_language_model_with_image_data(project, drive):
    from tests.conftest import write_colour_images

    write_colour_images(project / "imgs", 4)
    qwen25_vl_3b = group("Qwen-VL") + ENTER + ENTER  # versions start on the newest (Qwen2.5-VL); sizes on the first
    d = drive(qwen25_vl_3b, "imgs/colours.jsonl" + ENTER, ENTER, WRITE, NO, quick=True, gpus=H100)
    assert d.outcome is not None, d.output
    assert "images: 4 in 4 rows, sizes 56x56 to 84x56: image data, for a vision-language model" in d.text
    assert "vision tower and one image a row: 752 tokens each" in d.text  # data.image_max_pixels 768x768
    raw = run_file(project)
    assert raw["model"] == {"name_or_path": "Qwen/Qwen2.5-VL-3B-Instruct", "template": "qwen2_vl"}
    load_spec(project / "runs" / "run-01" / "run.yaml")


def test_image_data_for_a_text_model_is_said(project, drive):
    from tests.conftest import write_colour_images

    write_colour_images(project / "imgs", 2)
    d = drive(QWEN25_7B, "imgs/colours.jsonl" + ENTER, CTRL_C, quick=True)
    assert "it has images, and Qwen/Qwen2.5-7B-Instruct reads text only: choose a vision-language model" in d.text


def test_unfilled_placeholders_in_the_data_are_said(project, drive):
    (project / "identity.json").write_text(json.dumps(
        [{"instruction": "Who are you?", "output": f"I am {{{{name}}}}, number {i}."} for i in range(4)]))
    d = drive(QWEN25_7B, "identity.json" + ENTER, CTRL_C, quick=True)
    assert "placeholders left unfilled: {{name}} (4 rows)" in d.text, d.text


def test_changing_the_stage_drops_the_settings_of_the_stage_before(project, tiny_model):
    """A stage's own settings (stage.rl_algorithm for rl) mean nothing to another: chosen away from, they go, so the
    run file stays valid; the settings the new stage shares stay (pref_beta from dpo to orpo)."""
    import io

    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    from ftune.wizard.flow import Wizard
    from ftune.wizard.prompts import Prompter
    from ftune.wizard.term import UI

    def choose(stage_before: str, settings: dict, keys: str) -> Answers:
        a = Answers(model=str(tiny_model), data=["train.jsonl"], stage=stage_before, settings=dict(settings))
        with create_pipe_input() as inp:
            inp.send_text(keys)
            inp.close()
            ui = UI(file=io.StringIO(), width=80, color=False)
            Wizard(Prompter(ui, input=inp, output=DummyOutput()), a, project / "runs", cwd=project).step_stage()
        return a

    a = choose("rl", {"stage.rl_algorithm": "rloo", "stage.reward_model": "rm-01", "training.seed": 3},
               UP * 7 + ENTER)  # rl is the last of the stages; sft the first
    assert a.stage == "sft" and a.settings == {"training.seed": 3}
    a = choose("dpo", {"stage.pref_beta": 0.3, "stage.pref_loss": "ipo"}, DOWN * 2 + ENTER)  # dpo, kto, orpo
    assert a.stage == "orpo" and a.settings == {"stage.pref_beta": 0.3}


def test_the_advanced_stage_group_holds_the_chosen_stage_s_own_settings():
    assert knobs("Stage", "dpo") == ["stage.pref_beta", "stage.pref_loss", "stage.pref_ftx", "stage.label_smoothing",
                                     "stage.ref_model", "stage.ref_model_quantization_bits"]
    assert knobs("Stage", "rl") == ["stage.reward_model_quantization_bits", "stage.rl_algorithm",
                                    "stage.num_generations", "stage.max_completion_length", "stage.kl_beta"]
    assert knobs("Stage", "sft") == []  # listed in the menu as "(none for stage sft)", so the groups keep their places
    assert set(knobs("Stage")) == set(knobs("Stage", "dpo") + knobs("Stage", "kto") + knobs("Stage", "simpo")
                                      + knobs("Stage", "rl"))
