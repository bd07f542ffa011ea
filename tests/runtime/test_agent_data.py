"""Agent and reasoning rows trained as the model sees them: real templates (tests/runtime/chat_templates, with their
sources), the learnt tokens checked token by token against the assistant spans of each template's own render."""

import json
import shutil
from pathlib import Path

import pytest

from ftune.runtime.data.formats import Source, load_source, registry_sources
from ftune.runtime.data.tokenize import example_texts, tokenize_examples
from ftune.runtime.spec import load_spec
from tests.conftest import SHARED_MLLM

TEMPLATES = Path(__file__).parent / "chat_templates"
# The real tokenizers' control tokens: added here so tokens break where theirs do (the tiny BPE would split them)
CONTROL = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<tool_call>", "</tool_call>",
           "<think>", "</think>", "<tool_response>", "</tool_response>"]
HEADER = {"qwen2.5": "<|im_start|>assistant\n", "qwen3": "<|im_start|>assistant\n",
          "llama3.1": "<|start_header_id|>assistant<|end_header_id|>\n\n", "hermes2pro": "<|im_start|>assistant\n"}

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city now",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string", "description": "the city"}},
                                               "required": ["city"]}}}]
# Row A: a tool call, its result, an answer, then a new question: thinking on every answer
ROW_A = {"tools": TOOLS, "messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "reasoning_content": "I need the tool.",
     "tool_calls": [{"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": 22}"},
    {"role": "assistant", "content": "It is 22 C in Paris.", "reasoning_content": "Read the result."},
    {"role": "user", "content": "And tomorrow?"},
    {"role": "assistant", "content": "<think>\nNo forecast tool.\n</think>\n\nI cannot tell tomorrow's weather."}]}
CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
# What each template's own render shows of row A's three answers, read off the template by hand: the oracle.
EXPECTED_A = {
    "qwen2.5": [f"<think>\nI need the tool.\n</think>\n<tool_call>\n{CALL}\n</tool_call><|im_end|>",
                "<think>\nRead the result.\n</think>\n\nIt is 22 C in Paris.<|im_end|>",
                "<think>\nNo forecast tool.\n</think>\n\nI cannot tell tomorrow's weather.<|im_end|>"],
    # Qwen3 hides the thinking of answers before the last user turn
    "qwen3": [f"<tool_call>\n{CALL}\n</tool_call><|im_end|>", "It is 22 C in Paris.<|im_end|>",
              "<think>\nNo forecast tool.\n</think>\n\nI cannot tell tomorrow's weather.<|im_end|>"],
    # Llama 3.1 writes a call as the whole turn ("parameters"), and nothing else of that turn
    "llama3.1": ['{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>',
                 "<think>\nRead the result.\n</think>\n\nIt is 22 C in Paris.<|eot_id|>",
                 "<think>\nNo forecast tool.\n</think>\n\nI cannot tell tomorrow's weather.<|eot_id|>"],
    "hermes2pro": ['<tool_call>\n{ "arguments": {"city": "Paris"}, "name": "get_weather"}\n</tool_call> <|im_end|>',
                   "<think>\nRead the result.\n</think>\n\nIt is 22 C in Paris.<|im_end|>",
                   "<think>\nNo forecast tool.\n</think>\n\nI cannot tell tomorrow's weather.<|im_end|>"],
}
# Row B: one question answered through a tool: every answer is after the last user turn (Qwen3 shows all thinking)
ROW_B = {"tools": TOOLS, "messages": ROW_A["messages"][:5]}


def rows(tmp_path: Path, *rows: dict) -> list:
    """Rows through the real reading path (a JSON-lines file, checked and converted)."""
    p = tmp_path / "rows.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    loaded = load_source(Source(p))
    assert not loaded.problems, loaded.problems
    return loaded.examples


@pytest.fixture(scope="module")
def tok(tiny_model):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(tiny_model)
    t.add_special_tokens({"additional_special_tokens": CONTROL})
    return t


def use(tok, name: str):
    tok.chat_template = (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
    return tok


def oracle(tok, text: str, expected: list[str], header: str) -> list[int]:
    """Labels for the template's own render: the tokens that start inside the expected answer texts, each found in
    order right after the assistant header."""
    spans, pos = [], 0
    for e in expected:
        at = text.index(e, pos)
        assert text[at - len(header):at] == header, (e, text[at - 40:at])
        spans.append((at, at + len(e)))
        pos = at + len(e)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return [t if any(a <= s < b for a, b in spans) else -100 for t, (s, _) in zip(enc["input_ids"],
                                                                                 enc["offset_mapping"])]


def same_mask(tok, ids: list[int], labels: list[int], want: list[int]) -> None:
    """Token by token; the first difference is shown as text."""
    assert len(labels) == len(want), f"{len(labels)} labels for {len(want)} tokens"
    for k, (got, exp) in enumerate(zip(labels, want)):
        if got != exp:
            raise AssertionError(f"token {k} {tok.decode([ids[k]])!r}: learnt={got != -100}, the template's span "
                                 f"says learnt={exp != -100} (context {tok.decode(ids[max(0, k - 6):k + 6])!r})")


@pytest.mark.parametrize("name", sorted(EXPECTED_A))
def test_learnt_tokens_are_the_assistant_spans_of_each_real_template(tok, tmp_path, name):
    use(tok, name)
    (ex,) = rows(tmp_path, ROW_A)
    (text, _), = example_texts(tok, ex)
    if name == "qwen3":  # it reads reasoning_content itself: the row goes in as it is (others get it as <think>)
        assert text == tok.apply_chat_template(ex.messages, tools=TOOLS, tokenize=False)
    cols, dropped = tokenize_examples(tok, [ex], max_length=4096)
    ids, labels = cols["input_ids"][0], cols["labels"][0]
    assert dropped == 0 and ids == tok(text, add_special_tokens=False)["input_ids"]
    want = oracle(tok, text, EXPECTED_A[name], HEADER[name])
    same_mask(tok, ids, labels, want)
    # the tool's definition and result are shown and never learnt
    learnt = tok.decode([t for t, label in zip(ids, labels) if label != -100])
    assert "The weather in a city now" in text and "temp_c" in text
    assert "The weather in a city now" not in learnt and "temp_c" not in learnt


def test_a_wrong_mask_fails_the_check(tok, tmp_path):
    use(tok, "qwen3")
    (ex,) = rows(tmp_path, ROW_A)
    cols, _ = tokenize_examples(tok, [ex], max_length=4096)
    ids, labels = cols["input_ids"][0], cols["labels"][0]
    text = tok.decode(ids)
    want = oracle(tok, text, EXPECTED_A["qwen3"], HEADER["qwen3"])
    same_mask(tok, ids, labels, want)
    # the tool result learnt as well; the end-of-turn marker not learnt; the answer shifted by one token
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    result = next(i for i, (a, b) in enumerate(offsets) if a <= text.index("temp_c") < b)
    wrong = [list(labels) for _ in range(3)]
    wrong[0][result] = ids[result]
    end = max(i for i, label in enumerate(labels) if label != -100)
    wrong[1][end] = -100
    wrong[2] = [-100] + labels[:-1]
    for w in wrong:
        with pytest.raises(AssertionError, match="learnt="):
            same_mask(tok, ids, w, want)
    # Qwen3's history changes as turns are added: rendering prefixes alone (what ftune did before) learns thinking
    # the template never shows for the first answers
    prefix = tok.apply_chat_template(ex.messages[:3], tools=TOOLS, tokenize=False)
    assert "I need the tool." in prefix and "I need the tool." not in text


def test_reasoning_settings_learn_what_the_template_shows(tok, tmp_path):
    use(tok, "qwen3")
    a, b = rows(tmp_path, ROW_A, ROW_B)

    def learnt(ex, mode):
        return [[text[s:e] for s, e in spans] for text, spans in example_texts(tok, ex, reasoning=mode)]

    think = "<think>\n{}\n</think>\n\n".format
    call = f"<tool_call>\n{CALL}\n</tool_call><|im_end|>"
    # auto: the template's own render. Row B is one question: Qwen3 shows both thoughts
    assert learnt(b, "auto") == [[think("I need the tool.") + call, think("Read the result.") +
                                  "It is 22 C in Paris.<|im_end|>"]]
    assert learnt(a, "auto") == [EXPECTED_A["qwen3"]]
    # last_turn_only: the final answer's thinking alone
    assert learnt(b, "last_turn_only") == [[call, think("Read the result.") + "It is 22 C in Paris.<|im_end|>"]]
    # drop: none (Qwen3 still writes an empty thinking block on the last answer: that is its render)
    assert learnt(b, "drop") == [[call, "<think>\n\n</think>\n\nIt is 22 C in Paris.<|im_end|>"]]
    # keep: every thought learnt; the ones Qwen3 would hide become examples of their own, each answer learnt once
    kept = learnt(a, "keep")
    assert kept == [[think("I need the tool.") + call], [think("Read the result.") + "It is 22 C in Paris.<|im_end|>"],
                    [think("No forecast tool.") + "I cannot tell tomorrow's weather.<|im_end|>"]]
    # a template without a reasoning field gets the thinking inline, and shows it on every turn (ChatML-style)
    use(tok, "qwen2.5")
    assert learnt(a, "auto") == [EXPECTED_A["qwen2.5"]]
    assert learnt(a, "drop") == [[f"<tool_call>\n{CALL}\n</tool_call><|im_end|>", "It is 22 C in Paris.<|im_end|>",
                                  "I cannot tell tomorrow's weather.<|im_end|>"]]


def test_bad_tool_rows_are_named_by_line(tmp_path):
    ok = ROW_A
    undefined = {**ROW_A, "tools": [{"name": "get_time", "parameters": {"type": "object"}}]}
    not_json = json.loads(json.dumps(ROW_A))
    not_json["messages"][2]["tool_calls"][0]["function"]["arguments"] = "{city: Paris}"
    orphan = {"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "r"},
                           {"role": "assistant", "content": "a"}]}
    wrong_id = json.loads(json.dumps(ROW_A))
    wrong_id["messages"][3]["tool_call_id"] = "call_9"
    p = tmp_path / "bad.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in (ok, undefined, not_json, orphan, wrong_id)))
    problems = [str(x) for x in load_source(Source(p)).problems]
    assert problems == [
        f"{p}:2: turn 3 calls the tool 'get_weather', which is not defined (the row defines get_time); add it to the "
        f"row's tools",
        f"{p}:3: message 3: the arguments of the call to 'get_weather' are not JSON (Expecting property name enclosed "
        f"in double quotes at column 2): '{{city: Paris}}'",
        f"{p}:4: turn 2 is a tool result with no tool call before it: the assistant turn before it needs tool_calls "
        f"(ShareGPT: a function_call turn)",
        f"{p}:5: turn 4 answers tool_call_id 'call_9', which no call before it has (open calls: call_1)",
    ]


def test_alpaca_rows_cannot_carry_tools(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps([{"instruction": "q", "output": "a"},
                             {"instruction": "q", "output": "a", "tools": json.dumps(TOOLS)}], indent=1))
    loaded = load_source(Source(p))
    assert len(loaded.examples) == 1
    assert "an Alpaca row cannot carry tools or tool calls ('tools')" in str(loaded.problems[0])
    assert "Write the row as OpenAI messages" in str(loaded.problems[0]) and ":6: item 1:" in str(loaded.problems[0])


def tool_model(tiny_model: Path, folder: Path, template: str) -> Path:
    """The tiny model with a real template as its own (chat_template.jinja beside its tokenizer)."""
    shutil.copytree(tiny_model, folder)
    (folder / "chat_template.jinja").write_text((TEMPLATES / f"{template}.jinja").read_text(encoding="utf-8"))
    return folder


def shared_glaive() -> Path:
    if not (SHARED_MLLM / "glaive_toolcall_en_demo.json").is_file():
        pytest.skip(f"the shared sample {SHARED_MLLM / 'glaive_toolcall_en_demo.json'} is not here (../shared beside "
                    f"the checkout)")
    return SHARED_MLLM


def test_glaive_demo_reads_and_renders_in_the_model_format(tiny_model, tmp_path):
    from click.testing import CliRunner

    from ftune.cli import main

    folder = shared_glaive()
    (src,) = registry_sources(folder, ["glaive_toolcall_en_demo"])
    loaded = load_source(src)
    assert loaded.total == 300 and not loaded.problems
    with_calls = [ex for ex in loaded.examples if any(m.get("tool_calls") for m in ex.messages)]
    assert len(with_calls) > 100 and all(ex.tools for ex in with_calls)
    model = tool_model(tiny_model, tmp_path / "qwen25-tiny", "qwen2.5")
    first = loaded.examples.index(with_calls[0])
    result = CliRunner().invoke(main, ["data", "check", "glaive_toolcall_en_demo", "--dataset-dir", str(folder),
                                       "--model", str(model), "--show", str(first + 1)])
    assert result.exit_code == 0, result.output
    sample = result.output.split(f"sample {first + 1} ")[1]
    call = with_calls[0].messages[next(i for i, m in enumerate(with_calls[0].messages) if m.get("tool_calls"))]
    name = call["tool_calls"][0]["function"]["name"]
    assert f'[[call: <tool_call>\n{{"name": "{name}", "arguments": ' in sample  # learnt, in Qwen2.5's own format
    assert "# Tools\n\nYou may call one or more functions" in sample  # the tools where Qwen2.5 puts them
    assert "<tool_response>" in sample and "[[<tool_response>" not in sample
    # the tiny model's own ChatML cannot show tools: data check refuses, naming why
    refused = CliRunner().invoke(main, ["data", "check", "glaive_toolcall_en_demo", "--dataset-dir", str(folder),
                                        "--model", str(tiny_model)])
    assert refused.exit_code != 0 and "cannot render tools" in refused.output and "chatml" in refused.output


def test_a_template_without_tools_is_refused_before_anything_detaches(project, tiny_model):
    from ftune.runtime import launch
    from ftune.runtime.rundir import RunError
    from tests.runtime.helpers import make_run

    (project / "tools.jsonl").write_text(json.dumps(ROW_A) + "\n" + json.dumps(ROW_B) + "\n")
    for template, label in (("auto", f"the chat template of {tiny_model}"), ("llama2", "model.template llama2")):
        run = make_run(project, tiny_model, name=f"t-{template}", data={"train": "tools.jsonl"},
                       model={"name_or_path": str(tiny_model), "template": template})
        with pytest.raises(RunError) as info:
            launch.start(run)
        assert f"2 rows have tools or tool calls, but {label} cannot render tools" in str(info.value)
        assert "model.template: chatml" in str(info.value) and not run.events_path.exists()
    run = make_run(project, tiny_model, name="t-chatml", data={"train": "tools.jsonl"},
                   model={"name_or_path": str(tiny_model), "template": "chatml"})
    launch.preflight(load_spec(run.spec_path), run)  # chatml renders them: nothing to refuse
