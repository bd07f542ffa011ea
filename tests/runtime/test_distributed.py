"""Several processes: a real 2-process DDP run on CPU over gloo, and the generated launch configs."""

import math

import pytest
import yaml

from ftune.runtime import launch
from ftune.runtime.distributed import accelerate_config, worker_command
from ftune.runtime.events import EventReader, read_all
from ftune.runtime.rundir import RunDir
from ftune.runtime.spec import build_spec
from tests.runtime.helpers import make_run, of_type, train_to_end, wait_for

# the same global batch (8) either way; no shuffling so both see the same rows in the same order
SAME = {"max_steps": 4, "learning_rate": 3e-3, "gradient_accumulation_steps": 1, "save_steps": 4, "logging_steps": 1}


def test_two_cpu_processes_train_like_one(project, tiny_model):
    one = make_run(project, tiny_model, name="one", data={"shuffle": False, "val_size": 0},
                   training={**SAME, "per_device_train_batch_size": 8})
    two = make_run(project, tiny_model, name="two", data={"shuffle": False, "val_size": 0},
                   training={**SAME, "per_device_train_batch_size": 4},
                   resources={"gpus_per_node": 2, "strategy": "ddp"})
    e1, e2 = train_to_end(one), train_to_end(two, timeout=400)
    assert e2[-1]["type"] == "finished", two.log_path.read_text()[-4000:]
    started = of_type(e2, "started")
    assert len(started) == 1 and started[0]["world_size"] == 2 and started[0]["global_batch"] == 8
    steps = of_type(e2, "step")
    assert [s["step"] for s in steps] == [1, 2, 3, 4]  # counted once, not once per rank
    l1 = [s["loss"] for s in of_type(e1, "step")]
    l2 = [s["loss"] for s in steps]
    assert all(math.isclose(a, b, rel_tol=0.02) for a, b in zip(l1, l2)), (l1, l2)
    assert len(of_type(e2, "checkpoint")) == 1 and len(of_type(e2, "finished")) == 1
    assert (two.export_dir() / "adapter_config.json").is_file()
    log = two.log_path.read_text()
    assert "[rank0]:" in log and "[rank1]:" in log  # every rank's output, prefixed
    assert (two.path / "launch.sh").is_file() and (two.path / "accelerate.yaml").is_file()


def test_stop_and_resume_a_two_process_run(project, tiny_model):
    run = make_run(project, tiny_model, training={"max_steps": 100000, "save_steps": 100000, "logging_steps": 1},
                   resources={"gpus_per_node": 2})
    proc = launch.start(run)
    reader = EventReader(run.events_path)
    wait_for(lambda: [e for e in reader.read_new() if e["type"] == "step"], 300)
    asked = launch.checkpoint(run, wait=180)  # `ftune checkpoint`: rank 0 finds the request, both ranks save at one step
    assert asked["type"] == "checkpoint" and asked["requested"] and run.latest_checkpoint()[0] == asked["step"]
    final = launch.stop(run, wait=180)
    proc.wait(timeout=120)
    assert final["type"] == "stopped" and final["reason"] == "signal"
    at = final["step"]
    assert at > asked["step"]  # it trained on after the checkpoint asked for
    assert run.latest_checkpoint()[0] == at
    run.spec_path.write_text(run.spec_path.read_text().replace("max_steps: 100000", f"max_steps: {at + 2}"))
    events = train_to_end(run, timeout=400, resume=True)
    assert events[-1]["type"] == "finished", run.log_path.read_text()[-3000:]
    assert of_type(events, "started")[-1]["resumed_from"] == at
    assert [s["step"] for s in of_type(events, "step")][-2:] == [at + 1, at + 2]


BASE = {"name": "r", "model": {"name_or_path": "m"}, "data": {"train": "t.jsonl"}}


@pytest.mark.parametrize("strategy,offload", [("deepspeed-zero2", False), ("deepspeed-zero3", True), ("fsdp", True),
                                              ("ddp", False)])
def test_generated_accelerate_config_follows_the_run_file(strategy, offload):
    spec = build_spec({**BASE, "training": {"gradient_accumulation_steps": 4, "max_grad_norm": 0.5,
                                            "precision": "bf16"},
                       "resources": {"gpus_per_node": 4, "nodes": 2, "strategy": strategy, "offload": offload,
                                     "master_addr": "10.0.0.1", "master_port": 29555}})
    c = accelerate_config(spec, node_rank=1, port=29555)
    assert (c["num_machines"], c["num_processes"], c["machine_rank"]) == (2, 8, 1)
    assert (c["main_process_ip"], c["main_process_port"], c["mixed_precision"]) == ("10.0.0.1", 29555, "bf16")
    if strategy.startswith("deepspeed"):
        ds = c["deepspeed_config"]
        assert c["distributed_type"] == "DEEPSPEED" and ds["zero_stage"] == (3 if "zero3" in strategy else 2)
        assert ds["gradient_accumulation_steps"] == 4 and ds["gradient_clipping"] == 0.5
        assert ds["offload_param_device"] == ("cpu" if offload else "none")
    elif strategy == "fsdp":
        assert c["distributed_type"] == "FSDP" and c["fsdp_config"]["fsdp_offload_params"] is True
    else:
        assert c["distributed_type"] == "MULTI_GPU"


def test_worker_command_shapes(tmp_path):
    run = RunDir(tmp_path, "r")
    run.path.mkdir()
    single = worker_command(build_spec({**BASE, "resources": {"gpus_per_node": 1}}), run, 5, resume=True)
    assert single[1:4] == ["-m", "ftune.runtime.train", str(run.path.resolve())] and single[-1] == "--resume"
    ddp = worker_command(build_spec({**BASE, "resources": {"gpus_per_node": 2}}), run, 5, resume=False)
    assert ddp[1:3] == ["-m", "torch.distributed.run"] and "--nproc-per-node" in ddp
    zero3 = worker_command(build_spec({**BASE, "resources": {"gpus_per_node": 2, "strategy": "deepspeed-zero3"}}),
                           run, 5, resume=False)
    assert zero3[1:5] == ["-m", "accelerate.commands.launch", "--config_file", str(run.path / "accelerate.yaml")]
    assert yaml.safe_load((run.path / "accelerate.yaml").read_text())["deepspeed_config"]["zero_stage"] == 3
    assert "accelerate.commands.launch --config_file" in (run.path / "launch.sh").read_text()


def test_fit_warning_accounts_for_gpus_and_strategy(project, tiny_model, monkeypatch):
    from ftune.runtime import sysmon

    h100 = {"index": 0, "name": "NVIDIA H100 80GB HBM3", "mem_used": 1 << 30, "mem_total": 80 << 30}
    monkeypatch.setattr(sysmon, "gpu_samples", lambda: [dict(h100, index=i) for i in range(8)])
    run = make_run(project, tiny_model, model={"name_or_path": "Qwen/Qwen2.5-72B-Instruct"}, method="full",
                   training={"per_device_train_batch_size": 1}, data={"max_length": 512})
    spec = build_spec(yaml.safe_load(run.spec_path.read_text()))
    assert "more than the" in launch.fit_warning(spec, run)  # DDP: every GPU holds all ~1.3 TB of states
    run.spec_path.write_text(run.spec_path.read_text() + "resources: {strategy: deepspeed-zero3, offload: true}\n")
    assert launch.fit_warning(build_spec(yaml.safe_load(run.spec_path.read_text())), run) is None
    assert launch.fit_warning(build_spec(yaml.safe_load(run.spec_path.read_text())
                                         | {"model": {"name_or_path": "unknown-model"}}), run) is None


# --------------------------------------------------------------------------- several nodes (c10d rendezvous)
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_node_run(project, tiny_model, name: str, **training):
    """A run on two "nodes", each one CPU process over gloo, meeting on loopback."""
    return make_run(project, tiny_model, name=name, data={"shuffle": False, "val_size": 0},
                    training={**SAME, "per_device_train_batch_size": 4, **training},
                    resources={"gpus_per_node": 1, "nodes": 2, "master_addr": "127.0.0.1",
                               "master_port": _free_port()})


def start_nodes(run, **kwargs):
    """The same `ftune train RUN` on both nodes (here: twice on one machine): the rendezvous numbers them."""
    return [launch.start(run, **kwargs) for _ in range(2)]


def test_two_nodes_train_like_one_a_lost_node_is_named_and_the_run_resumes(project, tiny_model):
    """Two "nodes" (one CPU process each, on loopback) join one run; killing one ends the run with an error event
    naming it and the last step; `--resume` on both continues from the checkpoint. A constant learning rate, so the
    first steps' losses compare with a one-process run of the same global batch."""
    import os
    import signal

    constant = {"lr_scheduler_type": "constant", "save_steps": 2}
    one = make_run(project, tiny_model, name="one", data={"shuffle": False, "val_size": 0},
                   training={**SAME, **constant, "max_steps": 2, "per_device_train_batch_size": 8})
    run = two_node_run(project, tiny_model, "nodes", **constant, max_steps=100000)
    first, second = start_nodes(run)
    l1 = [s["loss"] for s in of_type(train_to_end(one), "step")]
    reader = EventReader(run.events_path)
    wait_for(lambda: [e for e in reader.read_new() if e["type"] == "checkpoint"], 400)
    # the second node is killed outright (its torchrun and its worker); the first hosts the rendezvous store
    records = [yaml.safe_load(p.read_text()) for p in (run.path / "rank-logs").glob("rank-*.json")]
    lost = next(r for r in records if r["launcher_pid"] == second.pid)
    for pid in (second.pid, lost["pid"]):
        os.kill(pid, signal.SIGKILL)
    second.wait(timeout=30)
    first.wait(timeout=180)
    events = read_all(run.events_path)
    assert [e["world_size"] for e in of_type(events, "started")] == [2]  # one writer: the rank-0 node
    steps = of_type(events, "step")
    assert [s["step"] for s in steps[:2]] == [1, 2]
    assert all(math.isclose(a, s["loss"], rel_tol=0.02) for a, s in zip(l1, steps)), (l1, steps)
    error = of_type(events, "error")
    assert error, run.log_path.read_text()[-3000:]
    message = error[-1]["message"]
    assert f"node {lost['node']} (" in message and "stopped answering after step" in message, message
    assert "--resume" in error[-1]["hint"]
    logs = run.path / "rank-logs"
    for node in (0, 1):  # each node's own log, linked under the number the rendezvous gave it
        text = (logs / f"node-{node}.log").read_text()
        assert f"[rank{node}]:" in text and "=== ftune train nodes" in text
    assert (logs / "node-0.log").resolve() != (logs / "node-1.log").resolve()
    assert run.log_path.resolve() == (logs / "node-0.log").resolve()
    cmd = (run.path / "launch.sh").read_text()
    assert "--rdzv-backend c10d" in cmd and "--rdzv-id nodes" in cmd and "--node-rank" not in cmd

    at = run.latest_checkpoint()[0]
    run.spec_path.write_text(run.spec_path.read_text().replace("max_steps: 100000", f"max_steps: {at + 2}"))
    for p in start_nodes(run, resume=True):
        assert p.wait(timeout=400) == 0, run.log_path.read_text()[-3000:]
    events = read_all(run.events_path)
    assert events[-1]["type"] == "finished", events[-3:]
    assert of_type(events, "started")[-1]["resumed_from"] == at
    assert [s["step"] for s in of_type(events, "step")][-2:] == [at + 1, at + 2]
