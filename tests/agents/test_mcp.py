"""`ftune mcp` driven by the MCP SDK's own client against the real server process (a subprocess): over stdio a tiny
run end to end (list, validate, create, check data, start, follow the events to the end, show, compare, the loss
resource) with the refusals (a bad spec, paths outside the folder, remote code); over streamable HTTP the bearer
token and read-only mode. One training run in all."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from tests.conftest import ftune_env, write_messages

pytest.importorskip("mcp", reason="ftune mcp needs the agents extra: pip install 'ftune[agents]'")

from mcp import ClientSession, StdioServerParameters, stdio_client

pytestmark = pytest.mark.real_spawn  # the server is its own process: its workers start as `ftune train` starts them


async def call(session: ClientSession, tool: str, **args):
    """(structured answer, None) or (None, the error text)."""
    result = await session.call_tool(tool, args)
    text = result.content[0].text if result.content else ""
    if result.is_error:
        return None, text
    assert json.loads(text) == result.structured_content  # the text is the same answer, compact
    return result.structured_content, None


def server_env(project: Path, **extra: str) -> dict[str, str]:
    return ftune_env(FTUNE_RUNS_DIR=str(project / "runs"), OMP_NUM_THREADS="1", **extra)


def test_a_tiny_run_end_to_end_over_stdio(project, tiny_model, tmp_path_factory):
    outside = write_messages(tmp_path_factory.mktemp("elsewhere") / "secret.jsonl", 4)
    params = StdioServerParameters(command=sys.executable, args=["-m", "ftune", "mcp", "--allow", str(tiny_model)],
                                   env=server_env(project), cwd=str(project))
    sizes = {}

    async def session_run():
        async with stdio_client(params) as (read, write), ClientSession(read, write) as s:
            await s.initialize()
            tools = {t.name: t for t in (await s.list_tools()).tools}
            assert {"list_runs", "show_run", "validate_spec", "create_run", "check_data", "estimate_memory",
                    "start_run", "checkpoint_run", "stop_run", "resume_run", "read_events", "compare_runs",
                    "export_run", "eval_run", "delete_run"} <= set(tools)
            assert tools["show_run"].output_schema["properties"]["cursor"]["type"] == "string"  # typed answers
            assert tools["list_runs"].annotations.read_only_hint and tools["delete_run"].annotations.destructive_hint

            listed, _ = await call(s, "list_runs")
            assert listed["runs"] == []

            # a bad spec: every mistake, each with its path; nothing written
            bad = {"name": "run-01", "model": {"name_or_path": str(tiny_model)}, "data": {"train": "train.jsonl"},
                   "training": {"learning_rate": "lots", "lr": 1e-4}, "method": {"type": "lora", "lora": {"rank": 0}}}
            checked, _ = await call(s, "validate_spec", spec=bad)
            paths = {p["path"]: p["message"] for p in checked["problems"]}
            assert checked["valid"] is False
            assert set(paths) == {"training.learning_rate", "training.lr", "method.lora.rank"}, paths
            assert "learning_rate" in paths["training.lr"]  # the did-you-mean
            assert not (project / "runs" / "run-01").exists()

            # paths outside the project folder and --allow: refused, with the folders that are allowed
            _, refused = await call(s, "check_data", path=str(outside))
            assert "outside the folders this server may read" in refused and "--allow" in refused
            _, refused = await call(s, "check_data", path="../" + outside.parent.name + "/secret.jsonl")
            assert "outside the folders" in refused
            _, refused = await call(s, "create_run", model=str(tiny_model), data=str(outside), preset="fast")
            assert "outside the folders" in refused and not (project / "runs" / "run-01").exists()
            _, refused = await call(s, "validate_spec", spec={**bad, "training": {}, "method": "lora",
                                                              "model": {"name_or_path": str(tiny_model),
                                                                        "trust_remote_code": True}})
            assert "--trust-remote-code" in refused

            data, _ = await call(s, "check_data", path="train.jsonl")
            assert data["format"] == "messages" and data["invalid"] == 0 and "sft" in data["stages"]

            settings = ["training.max_steps=100000", "training.learning_rate=3e-3", "training.logging_steps=1",
                        "training.save_steps=100000", "training.eval_steps=2"]  # long: it is stopped, then resumed
            created, _ = await call(s, "create_run", model=str(tiny_model), data="train.jsonl", preset="fast",
                                    overrides=settings)
            assert created["name"] == "run-01" and Path(created["run_file"]).is_file()
            assert created["memory"].startswith("memory")
            memory, _ = await call(s, "estimate_memory", name="run-01")
            assert memory["text"] == created["memory"]
            again, _ = await call(s, "validate_spec", spec={"name": "x", "preset": "fast",
                                                            "model": {"name_or_path": str(tiny_model)},
                                                            "data": {"train": "train.jsonl"}})
            assert again == {"valid": True, "problems": [], "name": "x"}

            async def follow(cursor: str, until) -> tuple[list[dict], str]:
                seen, deadline = [], time.monotonic() + 240
                while time.monotonic() < deadline:
                    got, _ = await call(s, "read_events", name="run-01", cursor=cursor, wait_s=20)
                    seen += got["events"]
                    cursor = got["cursor"]
                    if got["ended"] or until(seen):
                        return seen, cursor
                raise AssertionError((seen, (project / "runs" / "run-01" / "train.log").read_text()[-2000:]))

            started, _ = await call(s, "start_run", name="run-01")
            seen, cursor = await follow(started["cursor"], lambda seen: any(e["type"] == "eval" for e in seen))
            assert seen[0]["type"] == "phase" and "step" in [e["type"] for e in seen]  # from this attempt's start
            saved, _ = await call(s, "checkpoint_run", name="run-01")  # at the step's end; training goes on
            assert saved["step"] >= 2 and Path(saved["path"]).is_dir() and "ended" not in saved
            stopped, _ = await call(s, "stop_run", name="run-01")
            at = stopped["step"]
            assert stopped["ended"] == "stopped" and at >= saved["step"] and Path(stopped["checkpoint"]).is_dir()
            shown, _ = await call(s, "show_run", name="run-01")
            assert shown["status"] == "stopped" and shown["checkpoint"]["step"] == at
            _, refused = await call(s, "start_run", name="run-01")
            assert "has checkpoints" in refused and "resume" in refused

            resumed, _ = await call(s, "resume_run", name="run-01", overrides=[f"training.max_steps={at + 3}"])
            assert resumed["resumed"] is True
            seen, cursor = await follow(resumed["cursor"], lambda seen: False)
            types = [e["type"] for e in seen]
            assert types[-1] == "finished", types
            assert next(e for e in seen if e["type"] == "started")["resumed_from"] == at
            assert [e["step"] for e in seen if e["type"] == "step"] == [at + 1, at + 2, at + 3]
            tail, _ = await call(s, "read_events", name="run-01", cursor=cursor)
            assert tail["events"] == [] and tail["ended"] and tail["status"] == "finished"
            finals, _ = await call(s, "read_events", name="run-01", types=["stopped", "finished"], limit=500)
            assert [e["type"] for e in finals["events"]] == ["stopped", "finished"]  # the whole history, filtered

            shown, _ = await call(s, "show_run", name="run-01")
            result = await s.call_tool("show_run", {"name": "run-01"})
            sizes["show_run"] = len(result.content[0].text.encode())
            assert shown["status"] == "finished" and shown["ended"] == "finished" and shown["step"] == at + 3
            assert shown["loss"] > 0 and shown["best_eval_loss"] > 0 and shown["eval"]["eval_loss"] > 0
            assert shown["checkpoint"]["step"] == at + 3 and shown["settings"]["training.max_steps"] == at + 3
            assert shown["cursor"] == cursor

            loss = json.loads((await s.read_resource("ftune://runs/run-01/loss")).contents[0].text)
            assert [x for x, _ in loss["loss"]] == list(range(1, at + 4)) and loss["eval_loss"]
            run_yaml = (await s.read_resource("ftune://runs/run-01/files/run.yaml")).contents[0].text
            assert f"max_steps: {at + 3}" in run_yaml

            await call(s, "create_run", model=str(tiny_model), data="train.jsonl", preset="fast", name="run-02",
                       overrides=["training.learning_rate=1e-3"])
            compared, _ = await call(s, "compare_runs", names=["run-01", "run-02"])
            assert "training.learning_rate" in compared["differing_settings"]
            assert [r["status"] for r in compared["runs"]] == ["finished", "not started"]
            _, mistake = await call(s, "compare_runs", names=["run-01", "run-09"])
            assert "no run named 'run-09'" in mistake and "Traceback" not in mistake
            listed, _ = await call(s, "list_runs")
            assert [(r["name"], r["status"]) for r in listed["runs"]] == [("run-01", "finished"),
                                                                          ("run-02", "not started")]
            deleted, _ = await call(s, "delete_run", name="run-02")
            assert deleted == {"name": "run-02"} and not (project / "runs" / "run-02").exists()

    anyio.run(session_run)
    log = [json.loads(line) for line in (project / "runs" / "mcp.log").read_text().splitlines()]
    assert log[0]["tool"] == "serve" and log[0]["args"]["transport"] == "stdio"
    called = [(x["tool"], x["outcome"]) for x in log[1:]]
    assert ("start_run", "ok") in called and ("check_data", "refused") in called
    assert ("validate_spec", "ok") in called and ("resource", "ok") in called
    assert sizes["show_run"] < 1200, sizes  # agents pay per token: a finished run's summary stays small
    print(f"show_run answer: {sizes['show_run']} bytes")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_needs_the_token_and_read_only_refuses_a_start(project, tiny_model):
    import httpx2
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    from tests.runtime.helpers import make_run

    make_run(project, tiny_model)
    token = "t0ken-for-the-tests-only"
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    proc = subprocess.Popen([sys.executable, "-m", "ftune", "mcp", "--http", str(port), "--read-only"],
                            env=server_env(project, FTUNE_MCP_TOKEN=token), cwd=project,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = httpx2.post(url, json={}, timeout=5)
                break
            except httpx2.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
                time.sleep(0.3)
        assert answer.status_code == 401  # no token: nothing reaches the server
        assert httpx2.post(url, json={}, headers={"Authorization": "Bearer wrong"}).status_code == 401

        async def session_run():
            client = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
            async with client, streamable_http_client(url, http_client=client) as (read, write), \
                    ClientSession(read, write) as s:
                await s.initialize()
                listed, _ = await call(s, "list_runs")
                assert [r["name"] for r in listed["runs"]] == ["run-01"]
                for tool, args in (("start_run", {"name": "run-01"}), ("delete_run", {"name": "run-01"}),
                                   ("create_run", {"model": str(tiny_model), "data": "train.jsonl"})):
                    _, refused = await call(s, tool, **args)
                    assert "read-only" in refused and "hint:" in refused, refused
                shown, _ = await call(s, "show_run", name="run-01")
                assert shown["status"] == "not started" and "cursor" in shown

        anyio.run(session_run)
        assert not (project / "runs" / "run-01" / "status.json").exists()  # never started
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    log = [json.loads(line) for line in (project / "runs" / "mcp.log").read_text().splitlines()]
    assert log[0]["args"]["transport"] == "http" and log[0]["args"]["read_only"] is True
    assert [x["outcome"] for x in log if x["tool"] == "start_run"] == ["refused"]


def test_without_the_sdk_ftune_mcp_says_how_to_install_it(tmp_path):
    code = ("import sys, importlib.util\n"
            "real = importlib.util.find_spec\n"
            "importlib.util.find_spec = lambda name, *a: None if name == 'mcp' else real(name, *a)\n"
            "from ftune.cli import main\n"
            "main(['mcp'], prog_name='ftune')\n")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=tmp_path,
                         env=dict(os.environ, FTUNE_RUNS_DIR=str(tmp_path / "runs")))
    assert out.returncode == 2 and "pip install 'ftune[agents]'" in out.stderr and "Traceback" not in out.stderr
