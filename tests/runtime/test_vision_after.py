"""After training a vision-language run: predictions on image test data, exports that reload with the same
logits, `ftune chat` with /image and --image, `ftune serve` with image_url parts (the openai client). One tiny
Qwen2-VL run, trained once per session through the launcher, shared by every test here."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import openai
import pytest
import torch
from rich.console import Console

from ftune.runtime.infer import export as exporting
from ftune.runtime.infer import formats
from ftune.runtime.infer.generate import Generation, Settings, prompt_inputs
from ftune.runtime.infer.loading import load_run_model
from ftune.runtime.rundir import RunDir
from ftune.tui.chat import ChatSession, run_chat
from tests.conftest import built_once, shared_root, write_colour_images
from tests.runtime.helpers import make_run, of_type, train_to_end
from tests.runtime.test_chat import Recorder, scripted


def train_vl_run(root: Path, model: Path) -> None:
    write_colour_images(root / "images", 8)
    test = root / "images" / "test.jsonl"
    test.write_text("".join(line + "\n" for line in (root / "images" / "colours.jsonl").read_text().splitlines()[:3]))
    (root / "runs").mkdir()
    run = make_run(root, model, data={"train": "images/colours.jsonl", "test": "images/test.jsonl", "val_size": 0,
                                      "max_length": 256, "image_max_pixels": 112 * 112},
                   training={"max_steps": 4, "save_steps": 4, "per_device_train_batch_size": 2,
                             "learning_rate": 1e-2, "predict_with_generate": True, "max_new_tokens": 4})
    events = train_to_end(run)
    assert events and events[-1]["type"] == "finished", run.log_path.read_text()[-3000:]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_vl_model) -> RunDir:
    """A copy of the session's trained vision-language run, in a project folder of this module's own."""
    template = built_once(shared_root(tmp_path_factory), "trained-vl-run", lambda root: train_vl_run(root, tiny_vl_model))
    project = tmp_path_factory.mktemp("vl")
    shutil.copytree(template, project, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".built"))
    run = RunDir(project / "runs", "run-01")
    for f in (run.events_path, run.status_path, run.spec_path):
        f.write_text(f.read_text().replace(str(template), str(project)))
    return run


@pytest.fixture(scope="module")
def rm(run):
    return load_run_model(run)


def picture(run: RunDir, i: int) -> Path:
    return run.project / "images" / f"{i}.png"


def test_training_predicted_on_the_image_test_file(run):
    from ftune.runtime.events import read_all

    events = read_all(run.events_path)
    finished = of_type(events, "finished")[0]
    assert "predict_bleu" in finished["metrics"]
    rows = [json.loads(line) for line in Path(finished["artifacts"]["predictions"]).read_text().splitlines()]
    assert len(rows) == 3 and all(r["messages"][-1]["images"] for r in rows)
    assert rows[0]["reference"] == "It is red."
    assert (run.export_dir() / "preprocessor_config.json").is_file()


def test_the_image_reaches_the_model(rm, run):
    """Different pictures give different next-token logits, and the prompt carries the image's pixels."""
    logits = []
    for i in (0, 1):  # red, blue
        messages = [{"role": "user", "content": "<image>What colour is this?", "images": [str(picture(run, i))]}]
        inputs = prompt_inputs(rm.tokenizer, messages, "cpu", rm.vision)
        assert "pixel_values" in inputs and "image_grid_thw" in inputs
        with torch.inference_mode():
            logits.append(rm.model(**inputs).logits[0, -1])
    assert not torch.allclose(logits[0], logits[1])


@pytest.mark.parametrize("fmt", ["lora", "merged_16bit"])
def test_exports_reload_with_the_same_logits(run, rm, fmt):
    result = exporting.export_run(run, fmt)
    assert (result.path / "preprocessor_config.json").is_file()
    assert result.check["rel_diff"] <= formats.get(fmt).max_rel_diff and result.check["generated_tokens"] > 0
    # and once more, by hand, on a picture of the test's own: the export as a user opens it, against the run's model
    spec = rm.spec
    loaded = exporting.load_exported(result.path, fmt, spec, run, torch.float32, vision=True).eval()
    messages = [{"role": "user", "content": "<image>What colour is this?", "images": [str(picture(run, 2))]}]
    inputs = prompt_inputs(rm.tokenizer, messages, "cpu", rm.vision)
    with torch.inference_mode():
        want, got = rm.model(**inputs).logits, loaded(**inputs).logits
    tolerance = 1e-4 if fmt == "lora" else 0.05 * float(want.abs().max())  # merged_16bit is saved in bf16
    assert float((want - got).abs().max()) <= tolerance


def test_chat_takes_images_by_command_and_flag(rm, run, monkeypatch):
    monkeypatch.chdir(run.project)
    out = Recorder()
    console = Console(file=out, width=100, highlight=False, color_system=None)
    settings = Settings(temperature=0, max_new_tokens=4)
    session = ChatSession([("run-01", rm.model, rm.tokenizer, False)], settings, console, scripted([
        "/image images/missing.png", "/image images/0.png", "What colour is this?", "And now?",
    ]), vision=rm.vision)
    session.loop()
    text = out.getvalue()
    assert f"image 'images/missing.png' not found (looked in {run.project})" in text
    assert f"{picture(run, 0)} (56x56) goes with your next message." in text
    first, _, second, _ = session.conversations[0].turns
    assert first == {"role": "user", "content": "<image>What colour is this?", "images": [str(picture(run, 0))]}
    assert second == {"role": "user", "content": "And now?"}  # an image goes with one message only
    # the answer is the one the model gives to that picture and question, greedy
    alone = Generation(rm.model, rm.tokenizer, [first], settings, vision=rm.vision).result()
    assert session.conversations[0].turns[1]["content"] == alone

    out = Recorder()
    chat = run_chat(run, temperature=0, max_new_tokens=4, images=("images/1.png",),
                    console=Console(file=out, width=100, color_system=None), read=scripted(["What colour is this?"]))
    assert chat.conversations[0].turns[0]["images"] == [str(picture(run, 1))]
    assert "It reads images: /image PATH" in out.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client(rm, run):
    """`ftune serve`'s app on loopback (in this process: the model is loaded already), images from images/."""
    import uvicorn

    from ftune.runtime.infer.serve import TransformersEngine, create_app

    port = free_port()
    app = create_app(TransformersEngine(rm), "run-01", image_dir=str(run.project / "images"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0, timeout=60)
    server.should_exit = True
    thread.join(timeout=10)


def ask(client, url: str, **kw):
    return client.chat.completions.create(model="run-01", max_tokens=4, temperature=0, **kw, messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                     {"type": "text", "text": "What colour is this?"}]}])


def test_serve_reads_image_url_parts(client, rm, run):
    png = picture(run, 1)
    data_url = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    want = Generation(rm.model, rm.tokenizer, [{"role": "user", "content": "<image>What colour is this?",
                                                "images": [str(png)]}], Settings(temperature=0, max_new_tokens=4),
                      vision=rm.vision).result()
    by_data = ask(client, data_url)
    assert by_data.choices[0].message.content == want and by_data.usage.prompt_tokens > 20  # the image's tokens
    assert ask(client, str(png)).choices[0].message.content == want  # a path under --image-dir
    assert ask(client, png.as_uri()).choices[0].message.content == want
    outside = run.project / "elsewhere.png"
    shutil.copy(png, outside)
    for url, said in [(str(outside), f"is outside the image folder {run.project / 'images'}"),
                      (str(run.project / "images" / "../images/nope.png"), "not found"),
                      ("https://example.com/a.png", "image URLs are not fetched"),
                      ("data:image/png;base64,@@", "base64 does not decode")]:
        with pytest.raises(openai.BadRequestError) as e:
            ask(client, url)
        assert said in str(e.value)
