"""Smoke test of bench/side_by_side.py's pieces: an epoch over 4 rows (2 steps) with 2 held-out rows through ftune and
through plain TRL, timed by the probe; the arguments of each tool variant, and the probe's arithmetic.

LLaMA-Factory is left out (it needs its own virtual environment of a few GB); the benchmark itself is not run here.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def load_compare():
    spec = importlib.util.spec_from_file_location("ftune_bench_compare", REPO / "bench" / "side_by_side.py")
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
def test_an_epoch_of_four_rows_through_ftune_and_plain_trl(tmp_path, tiny_model):
    data, held_out = compare.split_rows(compare.find_data(compare.DEFAULT_DATA), 4, 2, tmp_path / "data")
    job = compare.Job(epochs=1, batch=2, grad_accum=1, cutoff=256, logging_steps=1, eval_data=str(held_out))
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
        assert r.examples_per_s > 0 and 0 < r.real_tokens_per_s <= r.tokens_per_s * 2, (tool, r)
        assert r.train_loss > 0 and r.eval_loss > 0, (tool, r)
    # the same held-out rows through the same (barely trained) model: the same eval loss
    assert results["ftune"].eval_loss == pytest.approx(results["trl"].eval_loss, rel=0.02)
    assert (tmp_path / "ftune" / "runs" / "bench" / "export" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "trl" / "adapter" / "adapter_model.safetensors").is_file()
    own = results["ftune"].own  # ftune's events.jsonl tells the same story as the probe
    assert 0 < own["started"] < own["first_step"] < own["finished"]
    assert own["first_step"] == pytest.approx(results["ftune"].first_step, abs=0.5)
    table, stats = compare.table(list(results.values()), ["ftune", "trl"])
    assert "ftune / plain TRL" in table and stats["trl"]["wall"][0] == results["trl"].wall


def test_each_variant_asks_its_tool_for_its_batching(tmp_path):
    job = compare.Job(epochs=1, eval_data=str(tmp_path / "eval.json"), lf_template="smollm2", default_system="Hi")
    from ftune.runtime.spec.io import load_spec

    want = {"ftune": {}, "ftune-padded": {"padding_free": False}, "ftune-packing": {"packing": True}}
    for tool, data in want.items():
        run = compare.write_ftune_run(tmp_path / tool, Path("model"), Path("train.json"), job, tool)
        spec = yaml.safe_load((run / "run.yaml").read_text())
        assert spec["data"] | data == spec["data"] and spec["data"]["validation"] == job.eval_data, tool
        assert spec["training"]["num_train_epochs"] == 1 and "max_steps" not in spec["training"], tool
        checked = load_spec(run / "run.yaml")  # ftune itself accepts the run file
        assert checked.data.padding_free is data.get("padding_free", True), tool
        assert checked.data.packing is data.get("packing", False), tool
    for tool, extra in [("lf", {}), ("lf-packing", {"packing": True}), ("lf-neat", {"neat_packing": True})]:
        (tmp_path / tool).mkdir()
        cfg = yaml.safe_load(compare.write_lf_job(tmp_path / tool, Path("m"), Path("t.json"), job, tool).read_text())
        assert cfg | extra == cfg and cfg["num_train_epochs"] == 1 and "max_steps" not in cfg, tool
        assert cfg["eval_dataset"] == "held_out" and cfg["template"] == "smollm2" and cfg["default_system"] == "Hi"
        info = json.loads((tmp_path / tool / "lf-data" / "dataset_info.json").read_text())
        assert info["held_out"]["file_name"] == job.eval_data
        assert ("packing" in cfg) is (tool == "lf-packing") and ("neat_packing" in cfg) is (tool == "lf-neat")
    assert compare.trl_args("trl-padding-free", job)["padding_free"] is True
    assert compare.trl_args("trl-packing", job)["packing"] is True
    assert not {"packing", "padding_free"} & set(compare.trl_args("trl", job))
    steps = compare.trl_args("trl", compare.Job(steps=7))
    assert steps["max_steps"] == 7 and "eval_strategy" not in steps
    # precision: the fixed job's fp32 for every ftune variant but ftune-auto, which leaves it to ftune; lf-bf16
    auto = yaml.safe_load((compare.write_ftune_run(tmp_path / "a", Path("m"), Path("t.json"), job, "ftune-auto")
                           / "run.yaml").read_text())
    assert auto["training"]["precision"] == "auto" and spec["training"]["precision"] == "fp32"
    (tmp_path / "lf-bf16").mkdir()
    lf = yaml.safe_load(compare.write_lf_job(tmp_path / "lf-bf16", Path("m"), Path("t.json"), job, "lf-bf16").read_text())
    assert lf["bf16"] is True and lf["use_cpu"] is True  # transformers takes bf16 on a CPU only with use_cpu


def test_the_matrix_takes_the_shorter_or_longer_half_and_reports_ratios_per_round(tmp_path):
    rows = [{"instruction": "x" * n, "input": "", "output": "y"} for n in (5, 50, 6, 60, 7, 70)]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    short = json.loads(compare.matrix_rows(tmp_path / "d.json", "short", 2, tmp_path / "s.json").read_text())
    long = json.loads(compare.matrix_rows(tmp_path / "d.json", "long", 3, tmp_path / "l.json").read_text())
    assert [len(r["instruction"]) for r in short] == [5, 6] and [len(r["instruction"]) for r in long] == [50, 60, 70]
    with pytest.raises(SystemExit, match="only 3 short rows"):
        compare.matrix_rows(tmp_path / "d.json", "short", 4, tmp_path / "s.json")
    shape = compare.MATRIX[0]
    got = [(shape, compare.Result(tool=t, round=n, rc=0, wall=w, first_step=w / 4))
           for n, t, w in [(1, "ftune-auto", 10.0), (1, "lf", 30.0), (2, "ftune-auto", 20.0), (2, "lf", 30.0)]]
    table = compare.matrix_markdown(got, ["ftune-auto", "lf"]).splitlines()
    assert len(table) == 3  # the header, its rule, the one shape measured
    assert table[2].startswith("| 2 | short | en | 15.0 (10.0–20.0) | 30.0 (30.0–30.0) |")
    assert table[2].endswith("| 2.25× (1.50–3.00) |")  # 30/10 and 30/20: the ratio per round, then its median


def test_probe_figures_rates_and_losses():
    t = 100.0
    events = [{"ev": "train_begin", "t": t + 10, "step": 0},
              {"ev": "step", "t": t + 12, "step": 1, "tokens": 600, "real_tokens": 500},
              {"ev": "log", "t": t + 12, "step": 1, "loss": 3.0},
              {"ev": "step", "t": t + 14, "step": 2, "tokens": 1200, "real_tokens": 1000},
              {"ev": "log", "t": t + 14, "step": 2, "loss": 2.5},
              {"ev": "log", "t": t + 15, "step": 2, "eval_loss": 2.75},
              {"ev": "log", "t": t + 15, "step": 2, "train_loss": 2.6},
              {"ev": "call", "t": t + 5, "t0": t + 4, "t1": t + 5}]
    r = compare.Result(tool="ftune", round=1, rc=0)
    compare.probe_figures(r, events, t, 0, 16, 8)
    assert (r.first_step, r.steps, r.prep) == (12, 2, 1)
    assert r.examples_per_s == 16 / 4 and r.real_tokens_per_s == 1000 / 4  # over train begin -> the last step
    assert (r.train_loss, r.eval_loss, r.epoch_loss) == (2.5, 2.75, 2.6)
    r = compare.Result(tool="lf", round=1, rc=0)
    compare.probe_figures(r, events, t, 0, None, 8)  # a steps job: each step took 8 rows
    assert r.examples_per_s == 2 * 8 / 4


def test_the_probe_counts_real_tokens_in_each_tools_masks(tmp_path):
    import torch

    (tmp_path / "bench_probe.py").write_text(compare.PROBE)
    spec = importlib.util.spec_from_file_location("bench_probe", tmp_path / "bench_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)  # without FTUNE_BENCH_PROBE_OUT it records and wraps nothing
    real = vars(probe)["_real_tokens"]
    ids = torch.tensor([[5, 6, 7, 0], [5, 0, 0, 0]])  # 0: the pad token
    assert real(ids, None) == 8  # padding-free: no mask, no padding
    assert real(ids, torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])) == 5
    assert real(ids, torch.tensor([[1, 1, 2, 0], [1, 2, 3, 3]])) == 7  # packed rows numbered in the mask
    labels = torch.tensor([[-100, 6, 7, -100], [5, 0, -100, -100]])  # the second row learns a pad (eos) token
    assert real(ids, torch.ones(2, 4), labels, pad=0) == 3 + 2  # LLaMA-Factory's packing: the tail pads unmasked
    assert real(ids, torch.ones(2, 1, 4, 4), labels, pad=0) == 5  # neat_packing's 4-D mask: the same tails


def test_rows_split_template_system_and_bad_models(tmp_path):
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"instruction": str(i), "output": "x"} for i in range(10)]))
    train, held_out = compare.split_rows(data, 6, 3, tmp_path / "split")
    assert [r["instruction"] for r in json.loads(train.read_text())] == list("012345")
    assert [r["instruction"] for r in json.loads(held_out.read_text())] == list("678")
    with pytest.raises(SystemExit, match="--rows 8 plus --eval-rows 3"):
        compare.split_rows(data, 8, 3, tmp_path / "split")
    model = tmp_path / "m"
    model.mkdir()
    (model / "chat_template.jinja").write_text("{{ '<|im_start|>system\nYou are SmolLM<|im_end|>\n' }}")
    assert compare.template_system(model) == "You are SmolLM"
    with pytest.raises(SystemExit, match="neither a model folder"):
        compare.given_model(model)  # no config.json
    with pytest.raises(SystemExit, match="--tools: unknown lf-fast"):
        compare.main(["--tools", "ftune,lf-fast"])
