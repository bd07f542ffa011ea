"""train/args.py: the evaluation plan counts an epoch's batches as the run makes them."""

import pytest

pytest.importorskip("torch")

from ftune.runtime.rundir import RunDir
from ftune.runtime.spec import build_spec
from ftune.runtime.train.args import common_args
from ftune.runtime.train.model import Kernels, Precision

BASE = {"name": "run-01", "model": {"name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"}, "data": {"train": "train.jsonl"},
        "training": {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "num_train_epochs": 1,
                     "save_steps": 10_000}}


def eval_every(tmp_path, batches=None, **training):
    spec = build_spec({**BASE, "training": {**BASE["training"], **training}})
    args = common_args(spec, RunDir(tmp_path, "run-01"), Precision("fp32", None, False, False, False),
                       Kernels(None, False), num_train_rows=1000, has_eval=True, batches=batches)
    return args["eval_steps"]


def test_evaluation_comes_five_times_an_epoch_of_the_batches_made(tmp_path):
    assert eval_every(tmp_path) == 125 // 5  # 1,000 rows in batches of 8
    # a token budget of 4,096 at max_length 1,024 made 40 batches of these rows: every 8, not every 25
    assert eval_every(tmp_path, batches=40, tokens_per_batch=4096) == 8
    assert eval_every(tmp_path, batches=40, eval_steps=3) == 3  # the run file's own value wins
