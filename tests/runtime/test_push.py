"""`ftune export RUN --push ORG/NAME`: a checked export goes up to a hub with its model card; one that failed its
check, or a folder that is not an export, does not. The hub is tests/runtime/hubserver.py on 127.0.0.1 (no
internet here): huggingface_hub's own create_repo and upload_folder talk to it."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from ftune.runtime.infer.push import PushError, push
from tests.runtime.hubserver import HubServer
from tests.runtime.trained import cli, copy_of_trained_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    run, _ = copy_of_trained_run(tmp_path_factory, tiny_model)
    return run


@pytest.fixture
def hub(monkeypatch):
    from huggingface_hub import constants

    with HubServer() as server:
        monkeypatch.setattr(constants, "ENDPOINT", server.url)  # read when huggingface_hub was imported
        monkeypatch.setenv("HF_TOKEN", "hf_secret_push_test")
        yield server


def test_a_checked_lora_export_is_pushed_with_its_model_card(trained, hub, tmp_path):
    result = cli(trained, "export", "run-01", "--format", "lora", "--push", "me/tiny-support", "--private")
    assert result.exit_code == 0, result.output
    assert "Pushed:" in result.output and "me/tiny-support" in result.output
    repo = hub.repos["models/me/tiny-support"]
    assert repo.private  # created private
    (commit,) = hub.commits
    out = trained.path / "exports" / "lora"
    assert set(commit["files"]) == {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert commit["files"]["adapter_model.safetensors"] == (out / "adapter_model.safetensors").read_bytes()
    assert "run-01" in commit["header"]["summary"]
    card = commit["files"]["README.md"].decode()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "peft" and "ftune" in meta["tags"]
    assert "base_model" not in meta  # a local folder is no hub id: named in the text and the ftune block only
    assert meta["ftune"]["version"] and meta["ftune"]["format"] == "lora" and meta["ftune"]["train_loss"] > 0
    assert "| learning_rate |" in card
    auth = [h.get("Authorization") or h.get("authorization") for m, p, h in hub.requests if m == "POST"]
    assert auth and all(a == "Bearer hf_secret_push_test" for a in auth)
    assert not [p for p in trained.path.rglob("*") if p.is_file() and b"hf_secret_push_test" in p.read_bytes()]

    # a folder whose recorded check fails, and one that is no export: refused, nothing sent
    failed = tmp_path / "failed"
    shutil.copytree(out, failed)
    record = json.loads((failed / "ftune_export.json").read_text())
    record["check"]["rel_diff"] = 0.5
    (failed / "ftune_export.json").write_text(json.dumps(record))
    sent = len(hub.requests)
    with pytest.raises(PushError, match="failed its check .*nothing was pushed"):
        push(failed, "me/tiny-support")
    (failed / "ftune_export.json").unlink()
    with pytest.raises(PushError, match="is not a checked ftune export"):
        push(failed, "me/tiny-support")
    with pytest.raises(PushError, match="ORG/NAME"):
        push(out, "no-owner")
    assert len(hub.requests) == sent


def test_a_push_without_write_access_is_one_sentence(trained, hub):
    out = trained.path / "exports" / "lora"
    if not out.is_dir():
        assert cli(trained, "export", "run-01", "--format", "lora").exit_code == 0
    hub.add("models/them/theirs", {})
    hub.forbidden.add("models/them/theirs")  # answers 403 to this token's commit, as a hub does to a stranger
    with pytest.raises(PushError, match=r"not allowed to write to them/theirs on the hub \(HTTP 403\).*nothing was "
                                        r"pushed"):
        push(out, "them/theirs")
    assert not [c for c in hub.commits if c["repo"] == "models/them/theirs"]
