"""What `ftune mcp` may touch, checked without a server: folders (symbolic links followed), the files runs name,
remote code, read-only, and the call log."""

from __future__ import annotations

import json

import pytest
import yaml

from ftune.agents.guard import Guard, Refused
from ftune.agents.tools import Tools


def test_paths_stay_inside_the_project_the_allowed_folders_and_what_runs_name(tmp_path):
    project, elsewhere, extra = tmp_path / "project", tmp_path / "elsewhere", tmp_path / "extra"
    for folder in (project / "runs", elsewhere, extra):
        folder.mkdir(parents=True)
    (elsewhere / "secret.jsonl").write_text("{}\n")
    (extra / "data.jsonl").write_text("{}\n")
    (project / "escape").symlink_to(elsewhere)
    guard = Guard(project / "runs", allow=[extra])

    assert guard.path("train.jsonl", "data") == (project / "train.jsonl").resolve()  # relative: the project's
    assert guard.path(str(extra / "data.jsonl"), "data") == (extra / "data.jsonl").resolve()
    for outside in (str(elsewhere / "secret.jsonl"), "escape/secret.jsonl", "../elsewhere/secret.jsonl"):
        with pytest.raises(Refused, match="outside the folders this server may read"):
            guard.path(outside, "data file")
    with pytest.raises(Refused, match="output.dir"):
        guard.spec_paths({"name": "a", "output": {"dir": str(elsewhere)}})
    guard.spec_paths({"model": {"name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"}, "stage": {"ref_model": "run-01"}})

    # a run file a person wrote may name a file elsewhere: that file, and only it, may be read
    (project / "runs" / "r").mkdir()
    (project / "runs" / "r" / "run.yaml").write_text(yaml.safe_dump({"data": {"train": [str(elsewhere / "secret.jsonl")]}}))
    assert guard.path(str(elsewhere / "secret.jsonl"), "data") == (elsewhere / "secret.jsonl").resolve()
    (elsewhere / "other.jsonl").write_text("{}\n")
    with pytest.raises(Refused):
        guard.path(str(elsewhere / "other.jsonl"), "data")


def test_remote_code_and_read_only_are_refused_and_every_call_is_logged(tmp_path):
    (tmp_path / "runs").mkdir()
    guard = Guard(tmp_path / "runs", read_only=True)
    with pytest.raises(Refused, match="--trust-remote-code"):
        guard.spec_paths({"model": {"name_or_path": "org/model", "trust_remote_code": True}})
    Guard(tmp_path / "runs", trust_remote_code=True).remote_code({"model": {"trust_remote_code": True}})
    tools = Tools(guard)
    for call in (lambda: tools.start_run("run-01"), lambda: tools.delete_run("run-01"),
                 lambda: tools.create_run(model="org/model", data="train.jsonl"), lambda: tools.stop_run("run-01")):
        with pytest.raises(Refused, match="read-only"):
            call()
    assert tools.list_runs().runs == []

    guard.log("create_run", {"spec": {"notes": "x" * 1000}, "name": "a"}, "refused", 0.01, "read-only\nhint")
    line = json.loads((tmp_path / "runs" / "mcp.log").read_text())
    assert line["tool"] == "create_run" and line["outcome"] == "refused" and line["message"] == "read-only"
    assert line["args"]["name"] == "a" and line["args"]["spec"].endswith("… (1013 chars)")  # long arguments cut
