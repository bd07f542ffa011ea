import json

import pytest

from ftune.runtime.data import DataError, check_messages, load_messages, read_jsonl, split, tokenize_conversation


def m(role, content):
    return {"role": role, "content": content}


@pytest.mark.parametrize("row,problem", [
    ({"messages": [m("user", "hi"), m("assistant", "hello")]}, None),
    ({"messages": [m("system", "s"), m("user", "hi"), m("assistant", "a"), m("user", "q"), m("assistant", "b")]}, None),
    ([1, 2], "each line must be a JSON object with a 'messages' array"),
    ({"msgs": []}, "missing the 'messages' key"),
    ({"messages": []}, "'messages' must be a non-empty array"),
    ({"messages": [{"role": "user"}]}, "message 1 must be an object with 'role' and 'content'"),
    ({"messages": [m("bot", "x"), m("assistant", "y")]}, "message 1 has role 'bot'; use system, user or assistant"),
    ({"messages": [m("user", "x"), m("system", "s"), m("assistant", "y")]},
     "message 2 is a system message; it may only come first"),
    ({"messages": [m("system", "s")]}, "only a system message: add at least one user/assistant pair"),
    ({"messages": [m("system", "s"), m("assistant", "y")]},
     "the first message after system should be user (user and assistant must alternate, starting with user)"),
    ({"messages": [m("user", "x"), m("user", "y")]},
     "message 2 should be assistant (user and assistant must alternate, starting with user)"),
    ({"messages": [m("user", "x"), m("assistant", "y"), m("user", "z")]},
     "the conversation ends with a user message: it needs the assistant's answer"),
    ({"messages": [m("user", 3), m("assistant", "y")]}, "message 1 has content that is not a string"),
])
def test_siliconflow_rules(row, problem):
    assert check_messages(row) == problem


def test_syntax_error_names_line_and_column_with_caret(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"messages": []}\n\n{"messages": [{"role": "user" "content": "x"}]}\n')
    with pytest.raises(DataError) as info:
        read_jsonl(p)
    msg = str(info.value)
    assert msg.startswith(f"{p}:3:31: not valid JSON: Expecting ',' delimiter")
    lines = msg.splitlines()
    assert lines[2].index("^") - 4 == 30 and lines[1].strip().startswith('{"messages"')


def test_invalid_rows_error_lists_them_and_skip_counts(tmp_path):
    p = tmp_path / "d.jsonl"
    good = json.dumps({"messages": [m("user", "a"), m("assistant", "b")]})
    p.write_text("\n".join([good, json.dumps({"messages": []}), good, json.dumps({"x": 1})]) + "\n")
    with pytest.raises(DataError) as info:
        load_messages([str(p)], tmp_path, "error", None)
    assert str(info.value) == (f"2 of 4 rows are invalid:\n  {p}:2: 'messages' must be a non-empty array\n"
                               f"  {p}:4: missing the 'messages' key")
    loaded = load_messages(["d.jsonl"], tmp_path, "skip", None)
    assert (len(loaded.rows), loaded.total, loaded.invalid) == (2, 4, 2)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        load_messages(["nope.jsonl"], tmp_path, "error", None)


def test_split_is_seeded_and_holds_out_share():
    rows = list(range(100))
    train, val = split(rows, 0.1, seed=1)
    assert len(val) == 10 and sorted(train + val) == rows
    assert split(rows, 0.1, seed=1) == (train, val)
    assert split(rows[:3], 0.1, seed=1)[1] == []  # rounds to none: no eval split


def test_mask_covers_exactly_the_assistant_turns(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    msgs = [m("system", "You are Lumen's support assistant."), m("user", "Where is my order?"),
            m("assistant", "Open Orders."), m("user", "退款多久到账？"), m("assistant", "三到五个工作日。")]
    out = tokenize_conversation(tok, msgs, max_length=1024)
    learnt = tok.decode([i for i, l in zip(out["input_ids"], out["labels"]) if l != -100])
    assert learnt == "Open Orders.<|im_end|>\n三到五个工作日。<|im_end|>\n"
    full = tok.decode(out["input_ids"])
    assert full == tok.apply_chat_template(msgs, tokenize=False)
    everything = tokenize_conversation(tok, msgs, max_length=1024, train_on_prompt=True)
    assert -100 not in everything["labels"]


def test_truncation_that_leaves_no_answer_returns_none(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    msgs = [m("user", "Where is my order? " * 20), m("assistant", "Open Orders.")]
    assert tokenize_conversation(tok, msgs, max_length=10) is None
