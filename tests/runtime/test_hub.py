"""Hub data sets (hf://datasets/…), downloads you can watch, and every hub failure as one sentence.

No internet here: a hub data set is read from a Hugging Face cache the test writes in the standard layout
(blobs/, snapshots/, refs/) with HF_HUB_OFFLINE=1, and downloads go to a small hub on 127.0.0.1
(tests/runtime/hubserver.py) through huggingface_hub's own code. huggingface_hub reads HF_ENDPOINT when it is imported:
processes started here get it in their environment; in this process the test sets the library's constant.
ftune reads HF_HUB_CACHE and HF_HUB_OFFLINE from the environment when it needs them (hub.cache_dir, hub.offline).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ftune.cli import main
from ftune.runtime import hub
from ftune.runtime.events import phase_text, read_all
from tests.conftest import QA
from tests.runtime.helpers import make_run, of_type, train_to_end
from tests.runtime.hubserver import HubServer

SHA = "0123456789abcdef0123456789abcdef01234567"


def rows(n: int, bad_at: int | None = None) -> bytes:
    out = []
    for i in range(n):
        q, a = QA[i % len(QA)]
        row = {"messages": [{"role": "user", "content": f"{q} ({i})"}, {"role": "assistant", "content": a}]}
        if i + 1 == bad_at:
            row = {"messages": [{"role": "assistant", "content": a}]}  # no user turn
        out.append(json.dumps(row, ensure_ascii=False))
    return ("\n".join(out) + "\n").encode()


def write_cache(cache: Path, repo_id: str, files: dict[str, bytes], kind: str = "datasets") -> Path:
    """A repository in a Hugging Face cache, in the layout huggingface_hub writes: blobs named by their hash,
    the snapshot's files linking to them, and refs/main naming the commit. Returns the snapshot folder."""
    root = cache / f"{kind}--{repo_id.replace('/', '--')}"
    snap = root / "snapshots" / SHA
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        (snap / name).symlink_to(os.path.relpath(blob, (snap / name).parent))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(SHA)
    return snap


@pytest.fixture
def hf(tmp_path, monkeypatch):
    """An empty Hugging Face cache for this test, here and in the processes it starts."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    return cache


def serve_here(monkeypatch, server) -> None:
    """This process's huggingface_hub talks to the local hub."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setattr(constants, "ENDPOINT", server.url)


# --------------------------------------------------------------------------- names and files
def test_hub_names_and_which_files_are_read(tmp_path):
    ref = hub.parse("hf://datasets/org/set@v1/data/*.jsonl")
    assert (ref.repo_id, ref.revision, ref.files) == ("org/set", "v1", "data/*.jsonl")
    assert hub.parse("ms://org/set", split="test").hub == "ms"
    for bad, said in (("hf://org/set", "hf://datasets/ORG/NAME"), ("hf://datasets/justone", "ORG/NAME")):
        with pytest.raises(hub.HubError, match=said.replace("/", ".")):
            hub.parse(bad)

    files = ["README.md", "data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet",
             "data/test-00000-of-00001.parquet", "fr/train.jsonl", "notes.txt.bak"]
    assert hub.select(files, hub.parse("hf://datasets/o/s")) == files[1:3] + ["fr/train.jsonl"]
    assert hub.select(files, hub.parse("hf://datasets/o/s", split="test")) == ["data/test-00000-of-00001.parquet"]
    assert hub.select(files, hub.parse("hf://datasets/o/s", subset="fr")) == ["fr/train.jsonl"]
    assert hub.select(["all.jsonl"], hub.parse("hf://datasets/o/s")) == ["all.jsonl"]  # no split names: all train
    assert hub.select(["all.jsonl"], hub.parse("hf://datasets/o/s", split="test")) == []
    readme = tmp_path / "README.md"
    readme.write_text("---\nconfigs:\n- config_name: short\n  data_files:\n  - split: train\n    path: s/*.jsonl\n"
                      "---\n# a set\n")
    configs = hub.readme_configs(readme)
    assert configs == {"short": {"train": ["s/*.jsonl"]}}
    assert hub.select(["s/a.jsonl", "l/a.jsonl"], hub.parse("hf://datasets/o/s", subset="short"), configs) == \
        ["s/a.jsonl"]


def test_a_download_phase_is_a_bar_with_speed_and_time_left():
    e = {"phase": "downloading the model", "done": 3 * 2**30, "total": 12 * 2**30, "unit": "bytes",
         "bytes_per_s": 50 * 2**20, "eta_s": 184.0}
    assert phase_text(e) == "downloading the model ██░░░░░░░░ 25% of 12.0 GB, 50.0 MB/s, 3:04 left"
    assert phase_text(e, short=True) == "downloading the model ██░░░░░░░░ 25%, 3:04 left"  # ftune ls, the runs list
    assert phase_text({"phase": "tokenising", "done": 40, "total": 100}) == "tokenising 40%"


# --------------------------------------------------------------------------- failures, before anything detaches
def test_every_hub_failure_is_one_sentence_before_anything_detaches(project, tiny_model, hf, monkeypatch):
    with HubServer() as server:
        server.add("datasets/org/gated", {"train.jsonl": rows(4)}, gated=True)
        server.add("datasets/org/secret", {"train.jsonl": rows(4)}, private=True)
        server.add("datasets/org/open", {"data/train.jsonl": rows(4)})
        serve_here(monkeypatch, server)
        cases = [
            ("hf://datasets/org/gated", "is gated on the hub: accept its terms on its page, then log in"),
            ("hf://datasets/org/secret", "is not on the hub (or is private: log in"),
            ("hf://datasets/org/typo", "is not on the hub"),
            ("hf://datasets/org/open@v9", "has no revision 'v9' on the hub"),
            ("hf://datasets/org/open/*.csv", "no data files for hf://datasets/org/open (*.csv)"),
            ("ms://org/open", "pip install 'ftune[modelscope]'"),
        ]
        for i, (name, said) in enumerate(cases):
            run = make_run(project, tiny_model, name=f"run-{i}", data={"train": name})
            result = CliRunner().invoke(main, ["train", run.name], prog_name="ftune")
            assert result.exit_code == 2 and said in result.output, (name, result.output)
            assert "Traceback" not in result.output and not run.events_path.exists()  # nothing detached
    # no network at all: the hub's address answers nothing
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")
    run = make_run(project, tiny_model, name="run-net", data={"train": "hf://datasets/org/open"})
    result = CliRunner().invoke(main, ["train", run.name], prog_name="ftune")
    assert result.exit_code == 2 and "the hub cannot be reached" in result.output, result.output
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(main, ["train", run.name], prog_name="ftune")
    assert "is not in the local Hugging Face cache, and HF_HUB_OFFLINE is set" in result.output, result.output
    assert not run.events_path.exists()


def test_a_model_folder_without_weights_is_refused_naming_it(project, tiny_model, tmp_path):
    folder = tmp_path / "no-weights"
    folder.mkdir()
    for f in tiny_model.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".bin")):
            (folder / f.name).write_bytes(f.read_bytes())  # config.json and the tokenizer, no weights
    run = make_run(project, folder)
    result = CliRunner().invoke(main, ["train", run.name], prog_name="ftune")
    assert result.exit_code == 2, result.output
    assert f"{folder} has a config.json but no weights" in result.output and not run.events_path.exists()
    (folder / "model-00001-of-00002.safetensors").write_bytes((tiny_model / "model.safetensors").read_bytes())
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    result = CliRunner().invoke(main, ["train", run.name], prog_name="ftune")
    assert f"{folder} is missing 1 of the 2 weight files model.safetensors.index.json names" in result.output


# --------------------------------------------------------------------------- training from the cache
def test_a_hub_data_set_trains_from_the_cache_offline_with_row_errors_by_file_and_line(project, tiny_model, hf,
                                                                                        monkeypatch):
    snap = write_cache(hf, "org/support", {"README.md": b"# support\n", "data/train.jsonl": rows(40, bad_at=7),
                                           "data/test.jsonl": rows(4)})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_ftune_test")  # where huggingface_hub finds it: never in the run
    run = make_run(project, tiny_model, data={"train": "hf://datasets/org/support", "val_size": 0},
                   training={"max_steps": 2})
    result = CliRunner().invoke(main, ["train", run.name], prog_name="ftune")
    assert result.exit_code == 2 and f"{snap / 'data' / 'train.jsonl'}:7: " in result.output, result.output
    assert "turn 1 should be user" in result.output

    run = make_run(project, tiny_model, data={"train": "hf://datasets/org/support", "val_size": 0,
                                              "on_invalid": "skip"}, training={"max_steps": 2})
    events = train_to_end(run)
    assert events[-1]["type"] == "finished", run.log_path.read_text()[-3000:]
    started = of_type(events, "started")[0]
    assert started["num_train_rows"] == 39 and started["skipped_rows"] == 1  # data/test.jsonl is not train
    assert any("data/train.jsonl:7:" in w["message"] + w.get("hint", "") for w in of_type(events, "warning"))
    assert not [e for e in of_type(events, "phase") if e["phase"].startswith("downloading")]  # it was cached
    assert not [p for p in run.path.rglob("*") if p.is_file() and b"hf_secret_ftune_test" in p.read_bytes()]


# --------------------------------------------------------------------------- downloads you can watch
DOWNLOAD = """
import sys
from pathlib import Path
from ftune.runtime.events import EventWriter
from ftune.runtime.rundir import RunDir
from ftune.runtime.spec import load_spec
from ftune.runtime.train.downloads import download
from ftune.runtime.train.phases import Phases

run = RunDir(Path(sys.argv[1]), sys.argv[2])
events = EventWriter(run.events_path)
try:
    download(load_spec(run.spec_path), run.project, events, Phases(events))
except Exception as e:
    print(f"FAILED {type(e).__name__}: {e}")
events.close()
"""


def test_downloads_report_bytes_once_a_second_and_resume(project, tiny_model, hf):
    # 11 MB served 512 KB at a time, 0.15 s apart (~3.3 s); cut off once after 10.5 MB. huggingface_hub 2.x writes
    # what it reads in 10 MB chunks and resumes a dropped connection from the last one it wrote, with a Range request
    big = (rows(64) * 1200)[: 11 * 2**20]
    weights = (tiny_model / "model.safetensors").read_bytes()
    with HubServer() as server:
        server.add("datasets/org/support", {"data/train.jsonl": big, "README.md": b"# s\n"}, lfs=("data/train.jsonl",))
        model_files = {f.name: f.read_bytes() for f in tiny_model.iterdir() if f.is_file()}
        server.add("models/org/tiny", model_files, lfs=("model.safetensors",))
        server.delay_s = 0.15
        server.cut_after = 21 * 2**19
        make_run(project, "org/tiny", data={"train": "hf://datasets/org/support"})
        env = dict(os.environ, HF_ENDPOINT=server.url, HF_HUB_CACHE=str(hf), HF_HUB_DISABLE_XET="1")
        out = subprocess.run([sys.executable, "-c", DOWNLOAD, str(project / "runs"), "run-01"], env=env,
                             capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 0 and "FAILED" not in out.stdout, out.stdout + out.stderr
        # a download that fails (the hub answers 500 for the file, again and again): one sentence, what to do
        server.add("datasets/org/broken", {"train.jsonl": rows(8)})
        server.broken.add("train.jsonl")
        make_run(project, tiny_model, name="run-02", data={"train": "hf://datasets/org/broken"})
        failed = subprocess.run([sys.executable, "-c", DOWNLOAD, str(project / "runs"), "run-02"], env=env,
                                capture_output=True, text=True, timeout=120, check=False)
        assert "FAILED HubError: the download of data set hf://datasets/org/broken failed: " in failed.stdout, \
            failed.stdout + failed.stderr[-2000:]
        ranged = [h.get("Range") or h.get("range") for m, p, h in server.requests
                  if m == "GET" and "/resolve/" in p and "train.jsonl" in p]
    assert any(r and r.startswith(f"bytes={10 * 2**20}-") for r in ranged), ranged  # the cut-off download resumed
    events = read_all(project / "runs" / "run-01" / "events.jsonl")
    data = [e for e in of_type(events, "phase") if e["phase"] == "downloading the data"]
    model = [e for e in of_type(events, "phase") if e["phase"] == "downloading the model"]
    assert data and model, [e["phase"] for e in of_type(events, "phase")]
    progress = [e for e in data if e.get("unit") == "bytes"]
    assert progress[-1]["done"] == progress[-1]["total"] == len(big) + len(b"# s\n")  # the file and README.md
    assert any(0 < e["done"] < len(big) and e["bytes_per_s"] > 0 for e in progress), progress  # seen on its way
    times = [e["t"] for e in progress[1:-1]]
    assert all(b - a >= 0.9 for a, b in itertools.pairwise(times)), times  # at most one a second
    assert [e for e in model if e.get("unit") == "bytes"][-1]["done"] >= len(weights)
    cached = hub.cached_files(hub.parse("hf://datasets/org/support"))
    assert cached and cached[0].read_bytes() == big
    assert "downloading the data" in phase_text(progress[-1]) and "100% of" in phase_text(progress[-1])


# --------------------------------------------------------------------------- LLaMA-Factory's hub entries
def test_dataset_info_hub_entries_import_and_read_from_the_cache(tmp_path, hf, monkeypatch):
    from ftune.runtime.data.formats import DataError, load_source, registry_hub_sets, registry_sources
    from ftune.runtime.importers import import_config

    alpaca = "".join(json.dumps({"q": q, "a": a}, ensure_ascii=False) + "\n" for q, a in QA).encode()
    snap = write_cache(hf, "llamafactory/alpaca_zh", {"train.jsonl": alpaca, "test.jsonl": alpaca})
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps({
        "alpaca_zh": {"hf_hub_url": "llamafactory/alpaca_zh", "ms_hub_url": "llamafactory/alpaca_zh_ms",
                      "columns": {"prompt": "q", "response": "a"}},
        "ms_only": {"ms_hub_url": "AI-ModelScope/sharegpt_gpt4", "formatting": "sharegpt", "split": "test"},
        "scripted": {"script_url": "x"},
    }))
    hub_sets = registry_hub_sets(tmp_path / "data", ["alpaca_zh", "ms_only"])
    assert [(r.hub, r.repo_id, r.split) for r in hub_sets] == [("hf", "llamafactory/alpaca_zh", "train"),
                                                              ("ms", "AI-ModelScope/sharegpt_gpt4", "test")]
    monkeypatch.setenv("USE_MODELSCOPE_HUB", "1")  # as in LLaMA-Factory: ms_hub_url wins where there is one
    assert registry_hub_sets(tmp_path / "data", ["alpaca_zh"])[0].repo_id == "llamafactory/alpaca_zh_ms"
    monkeypatch.delenv("USE_MODELSCOPE_HUB")

    (src,) = registry_sources(tmp_path / "data", ["alpaca_zh"])  # from the cache, with the entry's columns
    assert src.path == snap / "train.jsonl" and src.columns == {"prompt": "q", "response": "a"}
    loaded = load_source(src)
    assert loaded.total == len(QA) and not loaded.problems and loaded.examples[0].messages[0]["content"] == QA[0][0]
    with pytest.raises(hub.NotCached):
        registry_sources(tmp_path / "data", ["ms_only"])
    with pytest.raises(DataError, match="script data set"):
        registry_sources(tmp_path / "data", ["scripted"])

    cfg = tmp_path / "lf.yaml"
    cfg.write_text("model_name_or_path: Qwen/Qwen2.5-0.5B\nstage: sft\nfinetuning_type: lora\n"
                   "dataset: alpaca_zh,ms_only\n")
    imported = import_config(cfg, project=tmp_path, gpu=False)
    assert imported.spec.data.train == ["alpaca_zh", "ms_only"] and imported.spec.data.dataset_dir == "data"
    carried = next(c for c in imported.carried if c.target == "data.train")
    assert "on a hub: hf://datasets/llamafactory/alpaca_zh" in carried.note and "ms://AI-ModelScope" in carried.note


def test_a_failed_download_ends_the_run_with_what_to_do():
    from ftune.runtime.train.hints import explain

    err = hub.HubError("the download of data set hf://datasets/org/x failed: the hub cannot be reached (ReadTimeout)",
                       hint="Run the same command again: the files already downloaded are kept.")
    assert explain(err) == (str(err), err.hint)  # the worker's error event says it in these words


def test_data_check_reads_a_hub_set_from_the_cache_and_says_what_to_do_when_it_cannot(tmp_path, hf):
    """`ftune data check hf://datasets/ORG/NAME`: it reads (never downloads) the cached file, line numbers and all;
    an uncached set, or one of several files, is one sentence (a path of "hf:/datasets/..." not found, before)."""
    snap = write_cache(hf, "org/support", {"README.md": b"# support\n", "data/train.jsonl": rows(12, bad_at=5)})
    out = CliRunner().invoke(main, ["data", "check", "hf://datasets/org/support"], prog_name="ftune")
    shown = f"{snap / 'data' / 'train.jsonl'}:5"
    assert out.exit_code == 1 and "12: 11 valid, 1 invalid" in out.output and shown in out.output, out.output
    out = CliRunner().invoke(main, ["data", "check", "hf://datasets/org/elsewhere"], prog_name="ftune")
    assert out.exit_code == 2 and "is not in the local cache" in out.output and "`ftune train` downloads it" in \
        out.output, out.output
    write_cache(hf, "org/split", {"a.jsonl": rows(2), "b.jsonl": rows(2)})
    out = CliRunner().invoke(main, ["data", "check", "hf://datasets/org/split"], prog_name="ftune")
    assert out.exit_code == 2 and "has 2 files in the cache; check them one at a time" in out.output, out.output
