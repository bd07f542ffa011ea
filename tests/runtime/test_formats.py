"""Formats: detection, row rules, JSON arrays with syntax errors, dataset_info.json, the shared data."""

import json

import pytest

from ftune.runtime.data.formats import DataError, Source, detect, load_source, read_rows, registry_sources
from ftune.runtime.data.load import summarize_file
from tests.conftest import SHARED_DATA

LF = SHARED_DATA / "llamafactory"
needs_shared = pytest.mark.skipif(not LF.is_dir(), reason=f"shared data not found at {LF} (a fresh clone has none)")


def write(tmp_path, name, rows):
    p = tmp_path / name
    p.write_text(json.dumps(rows, ensure_ascii=False, indent=2) if name.endswith(".json")
                 else "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    return p


@pytest.mark.parametrize("row,expected", [
    ({"messages": [{"role": "user", "content": "q"}]}, ("messages", "chat")),
    ({"messages": [{"role": "user", "content": "q"}], "label": True}, ("messages", "kto")),
    ({"messages": [{"from": "human", "value": "q"}]}, ("sharegpt", "chat")),
    ({"conversations": [], "chosen": {}, "rejected": {}}, ("sharegpt", "preference")),
    ({"instruction": "i", "output": "o"}, ("alpaca", "chat")),
    ({"instruction": "i", "chosen": "a", "rejected": "b"}, ("alpaca", "preference")),
    ({"text": "hello"}, ("text", "text")),
])
def test_detect(row, expected):
    assert detect(row)[:2] == expected


def test_detect_unknown_says_what_it_saw():
    with pytest.raises(DataError, match="cannot tell the format from the keys answer, question"):
        detect({"question": 1, "answer": 2})


def test_alpaca_with_system_and_history(tmp_path):
    p = write(tmp_path, "a.json", [{"instruction": "这是什么", "input": "苹果", "output": "fruit", "system": "S",
                                    "history": [["hi", "hello"]]}])
    ex = load_source(Source(p)).examples[0]
    assert ex.messages == [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"},
                           {"role": "assistant", "content": "hello"}, {"role": "user", "content": "这是什么\n苹果"},
                           {"role": "assistant", "content": "fruit"}]


@pytest.mark.parametrize("row,problem", [
    ({"instruction": "", "output": "o"}, "'instruction' is empty"),
    ({"instruction": "i"}, "missing 'output' (the answer to learn)"),
    ({"instruction": "i", "output": "o", "history": [["only one"]]},
     "history entry 1 must be a pair of strings [instruction, answer]"),
])
def test_alpaca_rules(tmp_path, row, problem):
    p = write(tmp_path, "a.jsonl", [{"instruction": "ok", "output": "fine"}, row])
    loaded = load_source(Source(p))
    assert [str(x) for x in loaded.problems] == [f"{p}:2: {problem}"]


def test_sharegpt_roles_tools_and_rules(tmp_path):
    good = {"conversations": [{"from": "human", "value": "q"},
                              {"from": "function_call", "value": '{"name": "f", "arguments": {"x": 1}}'},
                              {"from": "observation", "value": "r"}, {"from": "gpt", "value": "a"}],
            "system": "S", "tools": '[{"name": "f", "description": "d", "parameters": {"type": "object"}}]'}
    bad = {"conversations": [{"from": "gpt", "value": "a"}]}
    weird = {"conversations": [{"from": "bot", "value": "a"}]}
    p = tmp_path / "s.json"
    p.write_text("[\n" + ",\n".join(json.dumps(r) for r in (good, bad, weird)) + "\n]\n")
    loaded = load_source(Source(p))
    assert [mm["role"] for mm in loaded.examples[0].messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert loaded.examples[0].tools[0]["function"]["name"] == "f"  # LLaMA-Factory's flat tools, in OpenAI's shape
    assert loaded.examples[0].messages[2]["tool_calls"][0]["function"] == {"name": "f", "arguments": {"x": 1}}
    assert loaded.examples[0].messages[3]["tool_call_id"] == loaded.examples[0].messages[2]["tool_calls"][0]["id"]
    assert [str(x) for x in loaded.problems] == [
        f"{p}:3: item 1: turn 1 should be user (user and assistant must alternate, starting with user)",
        f"{p}:4: item 2: turn 1 has from 'bot'; use 'human', 'gpt', 'system', 'function_call', 'observation'",
    ]


def test_preference_and_kto_rows(tmp_path):
    p = write(tmp_path, "p.jsonl", [
        {"messages": [{"role": "user", "content": "q"}], "chosen": {"role": "assistant", "content": "good"},
         "rejected": "bad"},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "chosen": "x",
         "rejected": "y"},
    ])
    loaded = load_source(Source(p))
    assert (loaded.kind, loaded.examples[0].chosen, loaded.examples[0].rejected) == ("preference", "good", "bad")
    assert "must end with the user's turn" in str(loaded.problems[0])
    k = write(tmp_path, "k.jsonl", [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                                     "label": "yes"}])
    assert "the KTO label must be true or false, not 'yes'" in str(load_source(Source(k)).problems[0])


def test_text_jsonl_and_txt(tmp_path):
    (tmp_path / "t.txt").write_text("line one\n\nline two\n")
    assert [e.text for e in load_source(Source(tmp_path / "t.txt")).examples] == ["line one", "line two"]
    p = write(tmp_path, "t.jsonl", [{"text": "a"}, {"text": ""}])
    loaded = load_source(Source(p))
    assert loaded.kind == "text" and str(loaded.problems[0]) == f"{p}:2: 'text' is empty"


def test_json_array_missing_comma_points_at_it(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text('[\n  {"instruction": "a", "output": "b"}\n  {"instruction": "c", "output": "d"}\n]\n')
    with pytest.raises(DataError) as info:
        list(read_rows(p))
    lines = str(info.value).splitlines()
    assert lines[0] == f"{p}:3:3: not valid JSON: Expecting ',' delimiter between items"
    assert lines[1] == '      {"instruction": "c", "output": "d"}' and lines[2] == "    " + "  ^"
    assert "missing comma" in info.value.hint


def test_json_array_rows_carry_line_and_index(tmp_path):
    p = write(tmp_path, "a.json", [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}])
    assert [(line, index) for line, index, _ in read_rows(p)] == [(2, 0), (6, 1)]


def test_registry_columns_tags_and_ranking(tmp_path):
    write(tmp_path, "mine.json", [{"q": "hi", "a": "hello"}])
    (tmp_path / "dataset_info.json").write_text(json.dumps({
        "mine": {"file_name": "mine.json", "columns": {"prompt": "q", "response": "a"}},
        "chat": {"file_name": "chat.json", "formatting": "sharegpt", "columns": {"messages": "msgs"},
                 "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}},
    }))
    write(tmp_path, "chat.json", [{"msgs": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}])
    mine, chat = registry_sources(tmp_path, ["mine", "chat"])
    assert load_source(mine).examples[0].messages[-1] == {"role": "assistant", "content": "hello"}
    assert load_source(chat).examples[0].messages[0] == {"role": "user", "content": "q"}
    with pytest.raises(DataError, match="'mnie' is not in .* did you mean 'mine'"):
        registry_sources(tmp_path, ["mnie"])


@needs_shared
@pytest.mark.parametrize("name,formatting,kind,rows", [
    ("identity", "alpaca", "chat", 91), ("alpaca_en_demo", "alpaca", "chat", 999),
    ("alpaca_zh_demo", "alpaca", "chat", 1000), ("glaive_toolcall_en_demo", "sharegpt", "chat", 300),
    ("dpo_en_demo", "sharegpt", "preference", 300), ("kto_en_demo", "sharegpt", "kto", 300),
    ("c4_demo", "text", "text", 300),
])
def test_shared_data_through_dataset_info(name, formatting, kind, rows):
    (src,) = registry_sources(LF, [name])
    loaded = load_source(src)
    assert (loaded.formatting, loaded.kind, loaded.total, len(loaded.examples)) == (formatting, kind, rows, rows)


@needs_shared
@pytest.mark.parametrize("file,formatting,stages", [
    ("identity.json", "alpaca", ["sft", "rl"]), ("alpaca_en_demo.json", "alpaca", ["sft", "rl"]),
    ("alpaca_zh_demo.json", "alpaca", ["sft", "rl"]), ("glaive_toolcall_en_demo.json", "sharegpt", ["sft", "rl"]),
    ("dpo_en_demo.json", "sharegpt", ["dpo", "orpo", "simpo", "rm"]), ("kto_en_demo.json", "messages", ["kto"]),
    ("c4_demo.jsonl", "text", ["pt"]),
])
def test_shared_data_as_plain_files(file, formatting, stages):
    s = summarize_file(LF / file)
    assert (s.format, s.stages, s.invalid, s.fatal) == (formatting, stages, 0, None)
    assert s.total == s.valid > 0
