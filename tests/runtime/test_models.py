"""One rule for where a model comes from, the same in the wizard, the launcher and the worker."""

import pytest
from click.testing import CliRunner

from ftune.cli import main
from ftune.runtime import catalog, launch
from ftune.runtime.errors import UserError
from ftune.runtime.models import is_hub_id, looks_local, model_source
from ftune.runtime.spec import load_spec
from tests.runtime.helpers import make_run


@pytest.mark.parametrize("name,local,hub", [
    ("gpt2", False, True),  # a legacy hub id without an owner
    ("Qwen/Qwen2.5-0.5B-Instruct", False, True),
    ("./gpt2", True, False),
    ("models/tiny/v2", True, False),
    ("~/models/tiny", True, False),
    ("/abs/model", True, False),
    ("model.Q4_K_M.gguf", True, False),
    ("not a hub id", False, False),
])
def test_local_or_hub(name, local, hub):
    assert (looks_local(name), is_hub_id(name)) == (local, hub)


def test_gpt2_is_a_hub_id_for_the_wizard_and_the_launcher_alike(project, tiny_model, monkeypatch):
    result = CliRunner().invoke(main, ["new", "--model", "gpt2", "--data", "train.jsonl", "--name", "g", "--yes"])
    assert result.exit_code == 0, result.output
    run = make_run(project, tiny_model, name="g2", model={"name_or_path": "gpt2"})
    spec = load_spec(run.spec_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # this machine reaches no hub: the launcher looks in the cache
    with pytest.raises(UserError, match="'gpt2' is not in the local Hugging Face cache"):  # not "folder not found"
        launch.preflight(spec, run)
    assert catalog.resolve("gpt2", project).source == "hub" and model_source("gpt2", project) == "gpt2"


def test_a_folder_named_like_a_hub_id_is_the_folder(project, tiny_model):
    import shutil

    shutil.copytree(tiny_model, project / "gpt2")
    assert model_source("gpt2", project) == str(project / "gpt2")
    assert catalog.resolve("gpt2", project).source == "local"
