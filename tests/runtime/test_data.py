import json

import pytest

from ftune.runtime.data.formats import DataError, Source, load_source
from ftune.runtime.data.load import check_messages, load_data, sources_for, split
from ftune.runtime.data.tokenize import tokenize_conversation


def m(role, content):
    return {"role": role, "content": content}


@pytest.mark.parametrize("row,problem", [
    ({"messages": [m("user", "hi"), m("assistant", "hello")]}, None),
    ({"messages": [m("system", "s"), m("user", "hi"), m("assistant", "a"), m("user", "q"), m("assistant", "b")]}, None),
    ([1, 2], "each line must be a JSON object with a 'messages' array"),
    ({"msgs": []}, "missing the 'messages' key"),
    ({"messages": []}, "'messages' must be a non-empty array"),
    ({"messages": [{"role": "user"}]}, "message 1 must be an object with 'role' and 'content'"),
    ({"messages": [m("bot", "x"), m("assistant", "y")]}, "message 1 has role 'bot'; use system, user, assistant or tool"),
    ({"messages": [m("user", "x"), m("system", "s"), m("assistant", "y")]},
     "turn 2 is a system message; it may only come first"),
    ({"messages": [m("system", "s")]}, "no conversation: add at least one user/assistant pair"),
    ({"messages": [m("system", "s"), m("assistant", "y")]},
     "the first turn after system should be user (user and assistant must alternate, starting with user)"),
    ({"messages": [m("user", "x"), m("user", "y")]},
     "turn 2 should be assistant (user and assistant must alternate, starting with user)"),
    ({"messages": [m("user", "x"), m("assistant", "y"), m("user", "z")]},
     "the conversation ends with a user turn: it needs the assistant's answer"),
    ({"messages": [m("user", 3), m("assistant", "y")]}, "message 1's content must be a string, not int"),
])
def test_siliconflow_rules(row, problem):
    assert check_messages(row) == problem


def test_an_invalid_json_line_is_one_row_error_and_the_others_are_still_checked(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"messages": []}\n\n{"messages": [{"role": "user" "content": "x"}]}\n'
                 '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n')
    loaded = load_source(Source(p))
    assert [str(x) for x in loaded.problems] == [
        f"{p}:1: 'messages' must be a non-empty array",
        f"{p}:3: not valid JSON at column 31: Expecting ',' delimiter",
    ]
    assert len(loaded.examples) == 1 and loaded.total == 3


def test_invalid_rows_error_lists_them_and_skip_counts(tmp_path):
    p = tmp_path / "d.jsonl"
    good = json.dumps({"messages": [m("user", "a"), m("assistant", "b")]})
    p.write_text("\n".join([good, json.dumps({"messages": []}), good, json.dumps({"x": 1})]) + "\n")
    with pytest.raises(DataError) as info:
        load_data(sources_for([str(p)], tmp_path), "sft", "error")
    assert str(info.value) == (f"2 of 4 rows are invalid:\n  {p}:2: 'messages' must be a non-empty array\n"
                               f"  {p}:4: missing the 'messages' key")
    loaded = load_data(sources_for(["d.jsonl"], tmp_path), "sft", "skip")
    assert (len(loaded.examples), loaded.total, loaded.invalid) == (2, 4, 2)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        load_data(sources_for(["nope.jsonl"], tmp_path), "sft", "error")


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
    assert learnt == "Open Orders.<|im_end|>三到五个工作日。<|im_end|>"  # up to the end-of-turn marker, not the \n after
    full = tok.decode(out["input_ids"])
    assert full == tok.apply_chat_template(msgs, tokenize=False)
    everything = tokenize_conversation(tok, msgs, max_length=1024, train_on_prompt=True)
    assert -100 not in everything["labels"]


def test_truncation_that_leaves_no_answer_returns_none(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    msgs = [m("user", "Where is my order? " * 20), m("assistant", "Open Orders.")]
    assert tokenize_conversation(tok, msgs, max_length=10) is None


def tok_of(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def learnt(tok, out):
    return tok.decode([i for i, l in zip(out["input_ids"], out["labels"]) if l != -100])


def test_mask_history_learns_only_the_last_answer(tiny_model):
    tok = tok_of(tiny_model)
    msgs = [m("user", "a?"), m("assistant", "First."), m("user", "b?"), m("assistant", "Second.")]
    out = tokenize_conversation(tok, msgs, max_length=1024, mask_history=True)
    assert learnt(tok, out) == "Second.<|im_end|>"


def test_tool_turns_are_context_and_calls_are_learnt(tiny_model):
    from ftune.runtime import templates
    from ftune.runtime.data.formats import Example
    from ftune.runtime.data.tokenize import ToolsNotRendered, tokenize_examples

    tok = tok_of(tiny_model)
    call = {"id": "call_0", "type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}
    tools = [{"type": "function", "function": {"name": "weather", "description": "Now", "parameters": {}}}]
    ex = Example(messages=[m("user", "Weather in Oslo?"), {"role": "assistant", "content": "", "tool_calls": [call]},
                           {"role": "tool", "content": '{"temp": 3}', "tool_call_id": "call_0"},
                           m("assistant", "It is 3 degrees.")], tools=tools)
    with pytest.raises(ToolsNotRendered, match="cannot render tools: it does not show tool definitions"):
        tokenize_examples(tok, [ex], max_length=1024)  # the tiny model's own ChatML has no place for tools
    tok.chat_template = templates.get("chatml")  # ChatML with Qwen2.5's tool format
    cols, dropped = tokenize_examples(tok, [ex], max_length=1024)
    out = {"input_ids": cols["input_ids"][0], "labels": cols["labels"][0]}
    assert dropped == 0
    assert learnt(tok, out) == ('<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>'
                                'It is 3 degrees.<|im_end|>')
    text = tok.decode(out["input_ids"])
    assert text.startswith("<|im_start|>system\n# Tools\n") and '"name": "weather", "description": "Now"' in text
    assert "<|im_start|>tool\n{\"temp\": 3}<|im_end|>" in text


def test_combine_false_makes_one_example_per_answer(tiny_model):
    from ftune.runtime.data.formats import Example
    from ftune.runtime.data.tokenize import tokenize_examples

    tok = tok_of(tiny_model)
    ex = Example(messages=[m("system", "S"), m("user", "a?"), m("assistant", "First."), m("user", "b?"),
                           m("assistant", "Second.")])
    cols, _ = tokenize_examples(tok, [ex], max_length=1024, combine=False)
    assert len(cols["input_ids"]) == 2
    assert [learnt(tok, {"input_ids": i, "labels": l}) for i, l in zip(cols["input_ids"], cols["labels"])] == \
        ["First.<|im_end|>", "Second.<|im_end|>"]
    combined, _ = tokenize_examples(tok, [ex], max_length=1024, combine=True)
    assert len(combined["input_ids"]) == 1


def test_stage_needs_the_right_kind_of_data(tmp_path):
    p = tmp_path / "pref.jsonl"
    p.write_text(json.dumps({"conversations": [{"from": "human", "value": "q"}],
                             "chosen": {"from": "gpt", "value": "good"}, "rejected": {"from": "gpt", "value": "bad"}}) + "\n")
    with pytest.raises(DataError) as info:
        load_data(sources_for(["pref.jsonl"], tmp_path), "sft", "error")
    assert "holds preference data" in str(info.value) and "suits dpo, orpo, simpo, rm" in str(info.value)
    assert load_data(sources_for(["pref.jsonl"], tmp_path), "dpo", "error").examples[0].chosen == "good"


def test_no_shuffle_keeps_order():
    rows = list(range(10))
    assert split(rows, 0.2, seed=3, shuffle=False) == (rows[2:], rows[:2])


def test_glm_input_and_output_cutoffs(tiny_model):
    tok = tok_of(tiny_model)
    msgs = [m("user", "one two three four five six seven eight nine ten"), m("assistant", "alpha beta gamma delta")]
    full = tokenize_conversation(tok, msgs, max_length=1024)
    n_prompt = full["labels"].index(next(l for l in full["labels"] if l != -100))
    cut = tokenize_conversation(tok, msgs, max_length=1024, max_input_length=3, max_output_length=2)
    assert cut["input_ids"][:3] == full["input_ids"][n_prompt - 3:n_prompt]  # the prompt keeps its end
    assert cut["labels"][3:] == full["labels"][n_prompt:n_prompt + 2]  # the answer keeps its start
    assert len(cut["input_ids"]) == 5


def test_num_proc_gives_the_same_columns(tiny_model):
    from ftune.runtime.data.formats import Example
    from ftune.runtime.data.tokenize import tokenize_examples

    tok = tok_of(tiny_model)
    examples = [Example(messages=[m("user", f"question {i}"), m("assistant", f"answer {i}")]) for i in range(40)]
    one, d1 = tokenize_examples(tok, examples, max_length=64)
    two, d2 = tokenize_examples(tok, examples, max_length=64, num_proc=2)
    assert one == two and d1 == d2 == 0


def test_interleave_under_and_over():
    from ftune.runtime.data.load import interleave

    a, b = list(range(10)), ["x", "y"]
    under = interleave([a, b], [0.5, 0.5], seed=0, until="first")
    assert set(b) <= set(under) and len(under) < 12
    over = interleave([a, b], [0.5, 0.5], seed=0, until="all")
    assert set(a) <= set(over) and over.count("x") >= 2  # the short set repeats until the long one is used up
    assert interleave([a, b], [0.5, 0.5], seed=0, until="all") == over  # seeded


def test_tokenising_reports_progress_and_num_proc_is_capped_at_the_cpus(tiny_model, tmp_path, capsys):
    import os

    from ftune.runtime.data.formats import Example
    from ftune.runtime.data.prepare import Progress, processes
    from ftune.runtime.data.tokenize import tokenize_examples
    from ftune.runtime.events import EventWriter, read_all

    events = EventWriter(tmp_path / "events.jsonl")
    cpus = len(os.sched_getaffinity(0))
    assert processes(cpus + 14, events) == cpus and processes(1, events) == 1
    rows = [Example(messages=[m("user", f"q{i}"), m("assistant", f"a{i}")]) for i in range(2500)]
    seen = []
    cols, _ = tokenize_examples(tok_of(tiny_model), rows, max_length=64,
                                progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1000, 2500), (2000, 2500), (2500, 2500)] and len(cols["input_ids"]) == 2500
    report = Progress(events, every_s=3600)
    report(1000, 2500)  # within the interval: quiet
    report(2500, 2500)  # the end always reports
    events.close()
    out = read_all(tmp_path / "events.jsonl")
    assert out[0]["type"] == "warning" and out[0]["message"] == (
        f"data.num_proc {cpus + 14} is more than the {cpus} CPUs here: tokenising in {cpus} processes")
    assert [(e["phase"], e["done"], e["total"]) for e in out if e["type"] == "phase"] == [("tokenising", 2500, 2500)]
    assert "tokenising: 2,500 of 2,500 rows (" in capsys.readouterr().out
