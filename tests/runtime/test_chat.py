"""`ftune chat` on a tiny trained run: answers stream, turns accumulate, commands work, the base compares."""

import io
import subprocess
import sys

import pytest
import torch
from rich.cells import cell_len
from rich.console import Console

from ftune.runtime.infer.generate import Generation, Settings
from ftune.runtime.infer.loading import load_run_model
from ftune.tui.chat import ChatSession, run_chat
from tests.runtime.trained import copy_of_trained_run


class Recorder(io.StringIO):
    """A terminal stand-in that remembers every write."""

    def __init__(self):
        super().__init__()
        self.writes: list[str] = []

    def write(self, s):
        self.writes.append(s)
        return super().write(s)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    run, _ = copy_of_trained_run(tmp_path_factory, tiny_model)
    return run


@pytest.fixture(scope="module")
def rm(trained):
    return load_run_model(trained)


def scripted(lines):
    it = iter(lines)

    def read(prompt):
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None
    return read


def hf_generate(model, tokenizer, messages, max_new_tokens, seed=None):
    """Plain transformers decoding of the same prompt, for comparison: greedy, or sampled after seeding."""
    from ftune.runtime.infer.generate import stop_token_ids

    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    enc = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    sampling = {"do_sample": False} if seed is None else {"do_sample": True, "temperature": 1.0, "top_p": 1.0}
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=stop_token_ids(tokenizer, model),
                             pad_token_id=tokenizer.pad_token_id, **sampling)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def test_generation_streams_pieces_that_add_up_to_plain_greedy_decoding(rm):
    messages = [{"role": "user", "content": "Where is my order?"}]
    gen = Generation(rm.model, rm.tokenizer, messages, Settings(temperature=0, max_new_tokens=16))
    assert "".join(gen) == gen.text == hf_generate(rm.model, rm.tokenizer, messages, 16)
    assert gen.completion_tokens == 16 and gen.finish_reason == "length"
    # sampled (words, not one run of punctuation the streamer sends whole): several pieces, the same text
    sampled = Generation(rm.model, rm.tokenizer, messages, Settings(temperature=1, top_p=1, max_new_tokens=16, seed=3))
    pieces = list(sampled)
    assert len(pieces) > 1 and "".join(pieces) == hf_generate(rm.model, rm.tokenizer, messages, 16, seed=3)


def test_chat_session_streams_keeps_turns_and_obeys_commands(rm):
    out = Recorder()
    console = Console(file=out, width=100, highlight=False, color_system=None)
    settings = Settings(temperature=1.0, top_p=1.0, max_new_tokens=20, seed=3)  # sampled, but reproducible
    session = ChatSession([("run-01", rm.model, rm.tokenizer, False)], settings, console, scripted([
        "/set max_new_tokens 10", "/set top_p 7", "/set temperature warm", "/system Be brief.",
        "Where is my order?", "Can I return a lamp?", "/settings", "/bogus",
    ]))
    session.loop()  # ends at end of input, like Ctrl+D
    text = out.getvalue()
    assert "top_p must be greater than 0 and at most 1" in text and "temperature needs a number" in text
    assert "temperature 1.0, top_p 1.0, max_new_tokens 10; system prompt: Be brief." in text
    assert "unknown command /bogus" in text
    turns = session.conversations[0].turns
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
    # the second answer saw the system prompt and the first turn: plain transformers, same seed, same tokens
    history = [{"role": "system", "content": "Be brief."}, *turns[:3]]
    answer = turns[3]["content"]
    assert answer == hf_generate(rm.model, rm.tokenizer, history, 10, seed=3)
    # streamed: the answer reached the terminal in several writes, not at once
    start = max(i for i, w in enumerate(out.writes) if "run-01 ›" in w) + 1
    pieces = []
    while len("".join(pieces)) < len(answer):
        pieces.append(out.writes[start + len(pieces)])
    assert "".join(pieces) == answer and len(pieces) > 1

    session.command("/reset")
    assert session.conversations[0].turns == [] and session.system == "Be brief."
    assert session.command("/exit") is False


def test_compare_base_answers_with_the_base_model_side_by_side(trained, tiny_model):
    from transformers import AutoModelForCausalLM

    out = Recorder()
    console = Console(file=out, width=120, highlight=False, color_system=None)
    session = run_chat(trained, compare_base=True, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=5,
                       console=console, read=scripted(["Where is my order?", "/exit"]))
    tuned, base = (c.turns[1]["content"] for c in session.conversations)
    rm = load_run_model(trained)
    plain_base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    question = [{"role": "user", "content": "Where is my order?"}]
    assert tuned == hf_generate(rm.model, rm.tokenizer, question, 8, seed=5)
    assert base == hf_generate(plain_base, rm.tokenizer, question, 8, seed=5)  # the adapter was really off
    assert tuned != base
    screen = out.getvalue()
    frame = screen[screen.rindex("┏"):].splitlines()  # the live view's last frame: one table, two columns
    frame = frame[:next(i for i, line in enumerate(frame) if line.startswith("└")) + 1]
    head = " ".join(frame[:frame.index(next(line for line in frame if line.startswith("┡")))])
    assert "run-01 (export)" in head and f"{tiny_model})" in head  # the titles whole, wrapped not cropped
    assert len({cell_len(line) for line in frame}) == 1 and frame[0].count("┳") == 1  # side by side, one height


def test_cli_chat_reads_a_pipe(trained):
    proc = subprocess.run(
        [sys.executable, "-m", "ftune", "--runs-dir", str(trained.root), "chat", "run-01", "--temperature", "0",
         "--max-new-tokens", "6", "--system", "Be brief."],
        input="Where is my order?\n/settings\n/exit\n", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Chatting with run-01 (export, adapter on" in proc.stdout
    assert "run-01 (export) ›" in proc.stdout and "system prompt: Be brief." in proc.stdout


def test_chat_refuses_a_missing_checkpoint(trained):
    from tests.runtime.trained import cli

    result = cli(trained, "chat", "run-01", "--checkpoint", "99")
    assert result.exit_code == 2 and "no complete checkpoint at step 99" in result.output
