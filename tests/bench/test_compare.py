"""Smoke test of bench/compare.py's pieces: a 2-step job through ftune and through plain TRL, timed by the probe.

LLaMA-Factory is left out (it needs its own virtual environment of a few GB); the benchmark itself is not run here.
"""

from __future__ import annotations

import importlib.util
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_compare():
    spec = importlib.util.spec_from_file_location("ftune_bench_compare", REPO / "bench" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


compare = load_compare()
needs_data = pytest.mark.skipif(not compare.DEFAULT_DATA.is_file(),
                                reason=f"the shared data set is not here: {compare.DEFAULT_DATA}")


def test_missing_data_is_a_clear_exit(tmp_path):
    with pytest.raises(SystemExit) as e:
        compare.find_data(tmp_path / "nope.json")
    assert "alpaca_en_demo.json" in str(e.value) and "--data" in str(e.value)


def test_steady_rate_is_the_median_and_skips_the_first_steps():
    points = [(1, 0.0), (2, 10.0), (3, 11.0), (4, 12.0), (5, 30.0), (6, 31.0)]  # step 1->2 slow, 4->5 starved
    assert compare.steady_rate(points, skip=2) == 1.0
    assert compare.mean_rate(points, skip=2) == pytest.approx(4 / 21)
    assert compare.steady_rate(points, skip=2, amounts=[0, 100, 200, 300, 400, 500]) == 100.0
    assert compare.steady_rate([(1, 0.0)], skip=1) is None


def test_doc_section_is_replaced_and_the_rest_kept(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Start-up\n\nkept\n")
    compare.write_doc(f"{compare.BEGIN}\nfirst\n{compare.END}\n", doc)
    compare.write_doc(f"{compare.BEGIN}\nsecond\n{compare.END}\n", doc)
    text = doc.read_text()
    assert "kept" in text and "second" in text and "first" not in text
    assert text.count(compare.BEGIN) == 1


@needs_data
@pytest.mark.timeout(180)
def test_two_steps_through_ftune_and_plain_trl(tmp_path, tiny_model):
    job = compare.Job(steps=2, batch=2, grad_accum=1, cutoff=256, logging_steps=1)
    data = compare.find_data(compare.DEFAULT_DATA)
    with ThreadPoolExecutor(2) as pool:  # each run is a child process; the two overlap
        futures = {tool: pool.submit(compare.run_one, tool, 1, tmp_path / tool, tiny_model, data, job, 1)
                   for tool in ("ftune", "trl")}
        results = {tool: f.result() for tool, f in futures.items()}
    for tool, r in results.items():
        log = Path(r.log).read_text(errors="replace")[-2000:]
        assert r.rc == 0, f"{tool} failed:\n{log}"
        assert r.steps == 2, tool
        # the adapter was written after step 1 and before the process ended
        assert 0 < r.first_step < r.wall <= r.exit, (tool, r)
        assert r.steps_per_s and r.steps_per_s > 0 and r.tokens_per_s > 0, (tool, r)
        assert r.prep and 0 < r.prep < r.first_step, (tool, r)
        assert r.rss > 50e6 and r.rss >= r.rss_largest > 0, (tool, r)
    assert (tmp_path / "ftune" / "runs" / "bench" / "export" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "trl" / "adapter" / "adapter_model.safetensors").is_file()
    own = results["ftune"].own  # ftune's events.jsonl tells the same story as the probe
    assert 0 < own["started"] < own["first_step"] < own["finished"]
    assert own["first_step"] == pytest.approx(results["ftune"].first_step, abs=0.5)
    table, stats = compare.table(list(results.values()), ["ftune", "trl"])
    assert "ftune / plain TRL" in table and stats["trl"]["wall"][0] == results["trl"].wall
