"""Vision-language training (runtime/data/tokenize.py's vision half, runtime/train/vision.py, the recipe): the
mask, which parts train, and a few real steps on the tiny Qwen2-VL."""

from __future__ import annotations

import math

import pytest
import torch

from ftune.runtime import models
from ftune.runtime.data.formats import Source, load_source, registry_sources
from ftune.runtime.data.images import open_image
from ftune.runtime.data.tokenize import VisionTokens, tokenize_vision_examples, vision_turns
from ftune.runtime.train.vision import part_of
from tests.conftest import shared_mllm_demo, write_colour_images
from tests.runtime.helpers import make_run, recipe_builder

MIN_PX, MAX_PX = 32 * 32, 112 * 112


@pytest.fixture(scope="module")
def processor(tiny_vl_model):
    return models.load_processor(str(tiny_vl_model))


def test_the_mask_learns_answers_only_and_matches_the_processor(processor):
    (src,) = registry_sources(shared_mllm_demo(), ["mllm_demo"])
    examples = load_source(src).examples
    vision = VisionTokens(processor, MIN_PX, MAX_PX)
    tok = processor.tokenizer
    cols, dropped = tokenize_vision_examples(vision, examples, 1024)
    assert dropped == 0 and len(cols["input_ids"]) == 6
    for ex, ids, labels, refs in zip(examples, cols["input_ids"], cols["labels"], cols["images"]):
        # the ids are the processor's own for the same conversation and images (its expansion of each image)
        text = processor.apply_chat_template(vision_turns(ex.messages), tokenize=False)
        own = processor(text=[text], images=[open_image(r, MIN_PX, MAX_PX) for r in refs])["input_ids"][0]
        assert ids == list(own) and refs == ex.images
        learnt = tok.decode([t for t, label in zip(ids, labels) if label != -100])
        # each answer up to its end-of-turn marker; the newline after it is the template's, not the answer's
        assert learnt == "".join(m["content"] + "<|im_end|>" for m in ex.messages if m["role"] == "assistant")
    # train_on_prompt learns the prompt too, but never an image token
    cols, _ = tokenize_vision_examples(vision, examples, 1024, train_on_prompt=True)
    image_ids = vision.never_learnt
    assert all(label == -100 for ids, labels in zip(cols["input_ids"], cols["labels"])
               for t, label in zip(ids, labels) if t in image_ids)
    assert sum(label != -100 for labels in cols["labels"] for label in labels) > 0


def test_a_cutoff_through_an_image_drops_the_row(processor, tmp_path):
    examples = load_source(Source(write_colour_images(tmp_path, 2))).examples
    vision = VisionTokens(processor, MIN_PX, MAX_PX)
    cols, dropped = tokenize_vision_examples(vision, examples, 20)  # the system prompt alone is ~15 tokens
    assert (len(cols["input_ids"]), dropped) == (0, 2)


@pytest.fixture
def build(project, tiny_vl_model):
    with recipe_builder(project, tiny_vl_model, "vl") as build:
        def _build(model=None, **sections):
            sections["data"] = {"max_length": 256, "image_max_pixels": MAX_PX, "val_size": 0,
                                **sections.get("data", {})}
            training = {"per_device_train_batch_size": 2, "max_steps": 3, "save_strategy": "no", "learning_rate": 1e-2}
            return build(folder=model, training=training, **sections)

        yield _build


def trained_parts(model) -> dict[str, set[str]]:
    """Which parts (language, tower, projector) have trainable parameters, and of which kind (lora, whole)."""
    out: dict[str, set[str]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            out.setdefault(part_of(name), set()).add("lora" if "lora_" in name else "whole")
    return out


def test_lora_trains_the_language_model_on_the_shared_sample(build):
    shared_mllm_demo()
    r = build(data={"train": ["mllm_demo"], "dataset_dir": str(shared_mllm_demo())})
    assert r.processor is not None and r.data.train.column_names == ["input_ids", "labels", "images"]
    assert trained_parts(r.model) == {"language": {"lora"}}
    frozen = {n: p.detach().clone() for n, p in r.model.named_parameters() if part_of(n) != "language"}
    lora = {n: p.detach().clone() for n, p in r.model.named_parameters() if p.requires_grad}
    result = r.trainer.train()
    assert r.trainer.state.global_step == 3 and math.isfinite(result.training_loss)
    after = dict(r.model.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in frozen.items())
    assert any(not torch.equal(after[n], v) for n, v in lora.items())


def test_vision_parts_train_as_the_run_file_says(build, tmp_path):
    data = str(write_colour_images(tmp_path / "imgs", 4))
    r = build(data={"train": [data]}, method={"type": "lora", "vision_tower": "lora", "projector": "full"})
    assert trained_parts(r.model) == {"language": {"lora"}, "tower": {"lora"}, "projector": {"whole"}}
    r = build(data={"train": [data]}, method={"type": "full", "projector": "full"})
    assert trained_parts(r.model) == {"language": {"whole"}, "projector": {"whole"}}
    r = build(data={"train": [data]}, method={"type": "freeze", "freeze": {"trainable_layers": 1}})
    trained = {n for n, p in r.model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith("model.language_model.layers.1.") for n in trained)
    before = {n: p.detach().clone() for n, p in r.model.named_parameters() if n in trained}
    r.trainer.train()  # freeze tuning on images the test wrote: the chosen layer moves
    assert any(not torch.equal(p, before[n]) for n, p in r.model.named_parameters() if n in trained)


def test_qwen2_5_vl_trains_through_the_same_path(build, tmp_path):
    from ftune.runtime.tinymodel import build_tiny_vl_model

    model = build_tiny_vl_model(tmp_path / "tiny-qwen2.5-vl", ["What colour is this? It is red, blue or green."] * 4,
                                arch="qwen2_5_vl")
    r = build(model, data={"train": [str(write_colour_images(tmp_path / "imgs", 4))]})
    assert type(r.model.base_model.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert trained_parts(r.model) == {"language": {"lora"}}
    result = r.trainer.train()
    assert r.trainer.state.global_step == 3 and math.isfinite(result.training_loss)


def test_train_refuses_before_detaching(project, tiny_model, tiny_vl_model):
    from ftune.runtime import launch
    from ftune.runtime.errors import UserError

    data = str(write_colour_images(project / "imgs", 2))
    cases = [
        (tiny_model, {"data": {"train": data}},
         f"2 rows of the data have images, but {tiny_model} is a text model: choose a vision-language model"),
        (tiny_vl_model, {"data": {"train": data, "packing": True}},
         "data.streaming and data.packing are for text models"),
        (tiny_vl_model, {"data": {"train": data}, "model": {"template": "llama3"}},
         f"model.template llama3 is a text template, and {tiny_vl_model} is a vision-language model"),
    ]
    for i, (model, sections, said) in enumerate(cases):
        run = make_run(project, model, name=f"bad-{i}", **sections)
        with pytest.raises(UserError) as e:
            launch.start(run)
        assert str(e.value).startswith(said), str(e.value)
        assert not run.events_path.exists() and not run.is_locked()


def test_data_check_with_a_vision_language_model_counts_image_tokens(tiny_vl_model, processor):
    from ftune.runtime.data.check import check

    report = check("mllm_demo", model=str(tiny_vl_model), dataset_dir=str(shared_mllm_demo()), show=1)
    (src,) = registry_sources(shared_mllm_demo(), ["mllm_demo"])
    examples = load_source(src).examples
    cols, _ = tokenize_vision_examples(VisionTokens(processor, 32 * 32, 768 * 768), examples, 10**9)
    assert report.tokens.tokens["max"] == max(len(ids) for ids in cols["input_ids"])
    sample = report.tokens.samples[0]
    assert "<|vision_start|><|image_pad|>×66<|vision_end|>Who are they?" in "".join(s["text"] for s in sample)
    assert [s["text"] for s in sample if s["learnt"]] == [
        "They're Kane and Gretzka from Bayern Munich.<|im_end|>", "They are celebrating on the soccer field.<|im_end|>"]
