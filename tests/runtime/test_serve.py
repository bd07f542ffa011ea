"""`ftune serve` on a tiny trained run, live on loopback, spoken to with the official openai client."""

import http.client
import json
import socket
import time
import urllib.error
import urllib.request

import openai
import pytest

from ftune.runtime.infer.serve import vllm_command
from tests.runtime.trained import cli, copy_of_trained_run, serving

KEY = "test-key-123"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    run, _ = copy_of_trained_run(tmp_path_factory, tiny_model)
    return run


@pytest.fixture(scope="module")
def server(trained):
    with serving(trained, KEY) as base:
        yield base


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def local(trained):
    """What the run's model answers, computed here without the server: greedy, or sampled with a seed."""
    from ftune.runtime.infer.generate import Generation, Settings
    from ftune.runtime.infer.loading import load_run_model

    rm = load_run_model(trained)

    def answer(messages, max_new_tokens, seed=None):
        settings = Settings(temperature=0 if seed is None else 1.0, top_p=1.0, max_new_tokens=max_new_tokens, seed=seed)
        return Generation(rm.model, rm.tokenizer, messages, settings).result()
    return answer


QUESTION = [{"role": "user", "content": "Where is my order?"}]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
CONVO = [{"role": "system", "content": "Be brief."}, *QUESTION, {"role": "assistant", "content": "Open Orders."},
         {"role": "user", "content": "Can I return a lamp?"}]


def test_models_lists_the_run(client):
    assert [m.id for m in client.models.list()] == ["run-01"]
    assert client.models.retrieve("run-01").owned_by == "ftune"


def test_chat_completion_answers_what_the_model_generates(client, local):
    r = client.chat.completions.create(model="run-01", messages=QUESTION, temperature=0, max_tokens=12)
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == local(QUESTION, 12)
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    # sampled with a seed: the same tokens as here, so template, history and settings all arrived intact
    sampled = client.chat.completions.create(model="run-01", messages=CONVO, temperature=1, top_p=1, seed=7,
                                             max_tokens=16)
    assert sampled.choices[0].message.content == local(CONVO, 16, seed=7)


def test_streaming_sends_the_same_answer_in_pieces(client):
    args = dict(model="run-01", messages=CONVO, temperature=1, top_p=1, seed=11, max_tokens=16)
    whole = client.chat.completions.create(**args).choices[0].message.content
    chunks = list(client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces) == whole
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_stop_sequences_end_the_answer_before_them(client):
    args = dict(model="run-01", messages=CONVO, temperature=1, top_p=1, seed=5, max_tokens=24)
    full = client.chat.completions.create(**args).choices[0].message.content
    assert len(full) >= 6, full
    stop = full[len(full) // 2: len(full) // 2 + 2]
    cut = client.chat.completions.create(**args, stop=[stop])
    assert cut.choices[0].message.content == full[: full.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(**args, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == full[: full.find(stop)]


@pytest.mark.parametrize("kwargs,param", [
    ({"temperature": 3}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"n": 2}, "n"),
    ({"messages": []}, "messages"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 10**6}, "max_tokens"),
    ({"stream": "yes"}, "stream"),  # OpenAI refuses a string for a boolean; so does this server
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    # tools: the tiny model's own ChatML cannot render them; a forced call; a call whose arguments are not JSON
    ({"tools": TOOLS}, "tools"),
    ({"tools": TOOLS, "tool_choice": "required"}, "tool_choice"),
    ({"messages": [*QUESTION, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{x"}}]}]}, "messages"),
    ({"messages": [*QUESTION, {"role": "tool", "tool_call_id": "c", "content": "r"}]}, "messages"),
])
def test_bad_requests_get_400_with_an_openai_error_body(client, kwargs, param):
    args = {"model": "run-01", "messages": QUESTION, **kwargs}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**args)
    body = err.value.body
    assert err.value.status_code == 400 and body["type"] == "invalid_request_error" and body["param"] == param
    assert body["message"]


def test_a_client_that_drops_a_stream_stops_the_generation(server, client, trained):
    # a seed whose answer runs to max_tokens, so the stream below cannot end on its own before it is dropped
    args = dict(model="run-01", messages=CONVO, temperature=1, top_p=1)
    seed = next(s for s in range(40) if client.chat.completions.create(
        **args, seed=s, max_tokens=48).choices[0].finish_reason == "length")
    conn = http.client.HTTPConnection(server.removeprefix("http://"), timeout=60)
    conn.request("POST", "/v1/chat/completions", json.dumps({**args, "seed": seed, "max_tokens": 1000, "stream": True}),
                 {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    reply = conn.getresponse()
    assert reply.status == 200
    for _ in range(3):  # the role chunk and two pieces of text
        assert reply.readline().startswith(b"data: ") and reply.readline() == b"\n"
    conn.sock.shutdown(socket.SHUT_RDWR)  # the client goes away mid-answer
    conn.close()
    log = trained.path / "serve.log"
    deadline = time.time() + 30
    while "generation stopped" not in log.read_text() and time.time() < deadline:
        time.sleep(0.2)
    line = next(x for x in log.read_text().splitlines() if "the client went away after" in x)
    assert int(line.split("after ")[1].split()[0]) < 48  # stopped long before the 1000 tokens it was asked for
    short = client.chat.completions.create(**args, seed=seed, max_tokens=2)  # the model is free again
    assert short.choices[0].finish_reason == "length"


def test_api_key_on_the_command_line_is_warned_about(trained):
    flagged = cli(trained, "serve", "no-such-run", "--api-key", "k")
    assert "--api-key on the command line shows in `ps`" in flagged.output and "FTUNE_API_KEY" in flagged.output
    from click.testing import CliRunner

    from ftune.cli import main

    quiet = CliRunner(env={"FTUNE_API_KEY": "k"}).invoke(main, ["--runs-dir", str(trained.root), "serve", "no-such-run"])
    assert "shows in `ps`" not in quiet.output and "no run named 'no-such-run'" in quiet.output


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert err.value.body["code"] == "model_not_found" and "'run-01'" in err.value.body["message"]


def test_wrong_or_missing_api_key_is_401(server):
    wrong = openai.OpenAI(base_url=f"{server}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        wrong.models.list()
    assert err.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="run-01", messages=QUESTION)
    with pytest.raises(urllib.error.HTTPError) as raw:
        urllib.request.urlopen(f"{server}/v1/models")
    assert raw.value.code == 401 and json.load(raw.value)["error"]["code"] == "invalid_api_key"


def test_malformed_json_and_unknown_paths(server):
    req = urllib.request.Request(f"{server}/v1/chat/completions", data=b"{not json", method="POST",
                                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req)
    assert err.value.code == 400 and "not valid JSON" in json.load(err.value)["error"]["message"]
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{server}/v1/completions")
    assert err.value.code == 404 and "/v1/chat/completions" in json.load(err.value)["error"]["message"]


def test_vllm_command_serves_the_adapter_on_its_base_with_the_run_tokenizer(trained, tiny_model):
    cmd = vllm_command(trained, None, "127.0.0.1", 8001, "k")
    assert cmd[1:3] == ["serve", str(tiny_model)]
    export = str(trained.export_dir())
    assert cmd[cmd.index("--tokenizer") + 1] == export and "--enable-lora" in cmd
    assert cmd[cmd.index("--lora-modules") + 1] == f"run-01={export}"
    assert cmd[cmd.index("--max-lora-rank") + 1] == "8" and cmd[cmd.index("--api-key") + 1] == "k"


def test_engine_vllm_without_vllm_or_cuda_is_refused(trained):
    import importlib.util

    import torch

    if importlib.util.find_spec("vllm") and torch.cuda.is_available():
        pytest.skip("vLLM can run here")
    result = cli(trained, "serve", "run-01", "--engine", "vllm")
    assert result.exit_code == 2 and "needs the vllm package and a CUDA GPU" in result.output
