"""Named chat templates: masks rely on them rendering history unchanged; training and inference agree."""

import pytest

from ftune.runtime import templates
from ftune.runtime.data.tokenize import tokenize_conversation
from ftune.runtime.spec import SpecError, build_spec

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is my order?"},
        {"role": "assistant", "content": "Open Orders."}, {"role": "tool", "content": "{\"ok\": 1}"},
        {"role": "assistant", "content": "退款三天到账。"}]


@pytest.fixture(scope="module")
def tok(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.mark.parametrize("name", templates.NAMES)
def test_every_template_is_prefix_stable_and_masks_only_answers(tok, name):
    tok.chat_template = templates.get(name)
    for i, m in enumerate(CONV):
        if m["role"] == "assistant":
            before = tok.apply_chat_template(CONV[:i], tokenize=False, add_generation_prompt=True)
            upto = tok.apply_chat_template(CONV[: i + 1], tokenize=False)
            assert upto.startswith(before), name
    out = tokenize_conversation(tok, CONV, max_length=4096)
    learnt = tok.decode([t for t, label in zip(out["input_ids"], out["labels"]) if label != -100])
    assert "Open Orders." in learnt and "退款三天到账。" in learnt
    assert "Where is my order?" not in learnt and "Be brief." not in learnt and '{"ok": 1}' not in learnt


def test_unknown_template_did_you_mean():
    base = {"name": "r", "model": {"name_or_path": "m"}, "data": {"train": "t.jsonl"}}
    with pytest.raises(SpecError, match="unknown template 'lama3' — did you mean 'llama3'"):
        build_spec({**base, "model": {"name_or_path": "m", "template": "lama3"}})
    assert build_spec({**base, "model": {"name_or_path": "m", "template": "qwen"}}).model.template == "qwen"
