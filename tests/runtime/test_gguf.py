"""GGUF files as a model source: bad files get one sentence and leave nothing behind; a real one converts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ftune.cli import main
from ftune.runtime import gguf


def write_gguf(path, arch="llama", tensors=2):
    """A small, well-formed GGUF file (gguf's own writer): an architecture and a few float32 tensors."""
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_file_type(0)  # ALL_F32
    for i in range(tensors):
        w.add_tensor(f"blk.{i}.ffn_up.weight", np.ones((8, 16), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FTUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def leftovers(cache):
    folder = cache / "gguf"
    return [p.name for p in folder.iterdir() if p.name != ".lock"] if folder.is_dir() else []


def test_inspect_reads_architecture_quantisation_and_size(tmp_path):
    info = gguf.inspect(write_gguf(tmp_path / "m.gguf"))
    assert (info.architecture, info.quantisation, info.params, info.quantised) == ("llama", "F32", 256, False)
    assert info.describe() == "m.gguf (llama, 0M parameters, F32 weights)"


def test_a_file_that_is_not_gguf(tmp_path, cache):
    bad = tmp_path / "model.gguf"
    bad.write_text("hello")
    with pytest.raises(gguf.GGUFError, match=r"model.gguf is not a GGUF file"):
        gguf.ensure(bad)
    assert leftovers(cache) == []


def test_a_file_cut_short(tmp_path, cache):
    whole = write_gguf(tmp_path / "whole.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[: len(whole) - 200])
    with pytest.raises(gguf.GGUFError, match=r"cut\.gguf is cut short"):
        gguf.ensure(cut)
    assert leftovers(cache) == []


def test_an_architecture_transformers_cannot_load(tmp_path, cache):
    odd = write_gguf(tmp_path / "odd.gguf", arch="nosucharch")
    with pytest.raises(gguf.GGUFError, match=r"odd\.gguf holds a nosucharch model, which transformers cannot load"):
        gguf.ensure(odd)  # the conversion runs in a child process; its sentence comes back
    assert leftovers(cache) == []


@pytest.mark.parametrize("command", [
    ["new", "--model", "{bad}", "--data", "train.jsonl", "--yes"],
    ["data", "check", "train.jsonl", "--model", "{bad}"],
])
def test_the_cli_says_one_sentence_and_exits_2(project, cache, command):
    bad = project / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 10)
    result = CliRunner().invoke(main, [c.replace("{bad}", str(bad)) for c in command])
    assert result.exit_code == 2, result.output
    assert "broken.gguf is cut short or damaged" in result.output and "Traceback" not in result.output
    assert leftovers(cache) == []


def test_the_cache_is_keyed_by_the_contents_not_the_path(tmp_path, cache, monkeypatch):
    import json
    import shutil

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir(), (tmp_path / "c").mkdir()
    a = write_gguf(tmp_path / "a" / "m.gguf")
    b = Path(shutil.copy(a, tmp_path / "b" / "m.gguf"))  # e.g. the package in another checkout's environment
    renamed = Path(shutil.copy(a, tmp_path / "b" / "smollm2-copy.gguf"))  # the same file under another name
    other = write_gguf(tmp_path / "c" / "m.gguf", tensors=3)
    assert gguf.cache_dir(a) == gguf.cache_dir(b) == gguf.cache_dir(renamed) != gguf.cache_dir(other)
    gguf._remember(b)  # a complete conversion remembers the file, so the next process need not read it
    assert list(json.loads((cache / "gguf" / "files.json").read_text())) == [gguf._stamp(b.resolve())]
    gguf._digests.clear(), gguf._indexed.clear()

    def unread(*args, **kwargs):
        raise AssertionError("the file was read again")

    monkeypatch.setattr(gguf, "open", unread, raising=False)
    assert gguf.cache_dir(b) == gguf.cache_dir(a.parent.parent / "b" / "m.gguf")
    with pytest.raises(AssertionError, match="read again"):  # a file the index does not know is read
        gguf.cache_dir(a)
