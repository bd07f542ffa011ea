"""Tool data trained for real: a tiny model with a real template as its own learns to call a tool, then answers the
official openai client through `ftune serve` with parsed `tool_calls`; the other real templates train a few steps on
tool data through the worker's own recipe; `ftune chat` shows a call."""

import json
import math
from pathlib import Path

import openai
import pytest

from tests.runtime.helpers import make_run, of_type, recipe_builder, train_to_end
from tests.runtime.test_agent_data import ROW_A, TOOLS, tool_model
from tests.runtime.trained import serving

KEY = "tools-key"
QUESTION = {"role": "user", "content": "Weather in Paris?"}
CALL_ROW = {"tools": TOOLS, "messages": [QUESTION, {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}]}


@pytest.fixture(scope="module")
def tool_run(tmp_path_factory, tiny_model):
    """The tiny model with Qwen2.5's template as its own, trained on one tool call until it has it by heart (one
    repeated row, full fine-tuning: 60 steps of one sequence)."""
    project = tmp_path_factory.mktemp("tools")
    model = tool_model(tiny_model, project / "tiny-qwen25", "qwen2.5")
    (project / "train.jsonl").write_text(json.dumps(CALL_ROW) + "\n")
    (project / "runs").mkdir()
    run = make_run(project, model, method="full", data={"val_size": 0},
                   training={"max_steps": 60, "learning_rate": 5e-3, "per_device_train_batch_size": 1,
                             "lr_scheduler_type": "constant", "save_steps": 1000})
    events = train_to_end(run, timeout=400)
    assert events[-1]["type"] == "finished", run.log_path.read_text()[-3000:]
    return run, events


def test_the_model_learns_the_call_in_its_own_template(tool_run):
    run, events = tool_run
    losses = [e["loss"] for e in of_type(events, "step") if e.get("loss") is not None]
    assert losses[-1] < 0.3 * losses[0], losses
    exported = run.path / "export" / "chat_template.jinja"
    assert "You are Qwen, created by Alibaba Cloud" in exported.read_text()  # the template it trained with, kept


def test_openai_client_gets_parsed_tool_calls_streamed_and_not(tool_run):
    run, _ = tool_run
    with serving(run, KEY) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=120)
        args = dict(model=run.name, messages=[QUESTION], tools=TOOLS, temperature=0, max_tokens=96)
        r = client.chat.completions.create(**args)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls", choice.message
        (call,) = choice.message.tool_calls
        assert call.type == "function" and call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Paris"} and call.id.startswith("call_")
        # streamed: the client's own stream parser gathers the same call
        chunks = list(client.chat.completions.create(**args, stream=True))
        deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        name = "".join(d.function.name or "" for d in deltas if d.function)
        arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
        assert name == "get_weather" and json.loads(arguments) == {"city": "Paris"}
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
            ["tool_calls"]
        # the conversation goes on: the call and its result in the history are rendered, not refused
        follow = client.chat.completions.create(
            model=run.name, tools=TOOLS, temperature=0, max_tokens=8,
            messages=[QUESTION, choice.message.model_dump(exclude_none=True),
                      {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 22}'}])
        assert follow.choices[0].finish_reason in ("stop", "length", "tool_calls")
        # tool_choice none: no tools rendered, no calls parsed; a forced call cannot be honoured: refused
        plain = client.chat.completions.create(**{**args, "tool_choice": "none"})
        assert not plain.choices[0].message.tool_calls
        with pytest.raises(openai.BadRequestError, match="cannot force a tool call"):
            client.chat.completions.create(**args, tool_choice="required")


def test_chat_shows_the_tool_call(tool_run):
    from rich.console import Console

    from ftune.tui.chat import run_chat
    from tests.runtime.test_chat import Recorder, scripted

    run, _ = tool_run
    out = Recorder()
    run_chat(run, temperature=0, max_new_tokens=96, tools=str(write_tools(run.project)),
             console=Console(file=out, width=100, color_system=None), read=scripted([QUESTION["content"]]))
    shown = out.getvalue()
    assert "get_weather" in shown and '"city": "Paris"' in shown and "tool call" in shown


def write_tools(folder: Path) -> Path:
    p = folder / "tools.json"
    p.write_text(json.dumps(TOOLS))
    return p


@pytest.mark.parametrize("template", ["qwen3", "llama3.1", "hermes2pro"])
def test_each_real_template_trains_on_tool_data(tiny_model, tmp_path, template):
    """The worker's own recipe prepares a tool row with the model's template and trains two steps on it."""
    model = tool_model(tiny_model, tmp_path / f"tiny-{template}", template)
    (tmp_path / "train.jsonl").write_text(json.dumps(ROW_A) + "\n")
    (tmp_path / "runs").mkdir()
    with recipe_builder(tmp_path, model, template.replace(".", "")) as build:
        r = build(data={"val_size": 0}, training={"max_steps": 2, "per_device_train_batch_size": 1})
        row = r.data.train[0]
        learnt = r.tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])
        assert "get_weather" in learnt and "temp_c" not in learnt and "The weather in a city now" not in learnt
        result = r.trainer.train()
    assert math.isfinite(result.training_loss) and result.global_step == 2
