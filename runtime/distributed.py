"""Many processes, many machines: how the worker is launched for a run's `resources`.

One process per GPU (or N CPU processes over gloo on a machine without GPUs). DDP goes through
torchrun, DeepSpeed and FSDP through `accelerate launch` with a config generated from the run
file. Both files land in the run directory (`accelerate.yaml`, `launch.sh`) so a user can read and
reuse exactly what ran. Light: no torch import here.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
from typing import Any

import yaml

from ftune.runtime.files import write_atomic
from ftune.runtime.rundir import RunDir
from ftune.runtime.spec import RunSpec


def processes_per_node(spec: RunSpec) -> int:
    g = spec.resources.gpus_per_node
    if g == "auto":
        from ftune.runtime.sysmon import gpu_samples

        return max(1, len(gpu_samples()))
    return g


def world_size(spec: RunSpec) -> int:
    return processes_per_node(spec) * spec.resources.nodes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mixed_precision(spec: RunSpec) -> str:
    p = spec.training.precision
    return {"bf16": "bf16", "fp16": "fp16"}.get(p, "no")


def accelerate_config(spec: RunSpec, node_rank: int, port: int, host: str | None = None) -> dict[str, Any]:
    """An `accelerate launch` config for the run's strategy (what `accelerate config` would write)."""
    r, t = spec.resources, spec.training
    n = processes_per_node(spec)
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "num_machines": r.nodes,
        "num_processes": n * r.nodes,
        "machine_rank": node_rank,
        "main_process_ip": host or r.master_addr or "127.0.0.1",
        "main_process_port": port,
        "mixed_precision": mixed_precision(spec),
        "rdzv_backend": "c10d" if r.nodes > 1 else "static",  # several nodes: ranks from the rendezvous
        "same_network": True,
        "use_cpu": False,
    }
    if r.strategy.startswith("deepspeed"):
        stage = 3 if r.strategy.endswith("zero3") else 2
        config["distributed_type"] = "DEEPSPEED"
        config["deepspeed_config"] = {
            "zero_stage": stage,
            "gradient_accumulation_steps": t.gradient_accumulation_steps,
            "gradient_clipping": t.max_grad_norm,
            "offload_optimizer_device": "cpu" if r.offload else "none",
            "offload_param_device": "cpu" if r.offload and stage == 3 else "none",
            "zero3_init_flag": stage == 3,
            "zero3_save_16bit_model": stage == 3,
        }
    elif r.strategy == "fsdp":
        config["distributed_type"] = "FSDP"
        config["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_offload_params": r.offload,
            "fsdp_reshard_after_forward": True,  # FULL_SHARD: parameters, gradients and optimiser state
            "fsdp_state_dict_type": "FULL_STATE_DICT",
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_activation_checkpointing": t.gradient_checkpointing,
        }
    else:
        config["distributed_type"] = "MULTI_GPU"
    return config


def multi_node(spec: RunSpec) -> bool:
    """Several machines: each runs the same command and torchrun's c10d rendezvous numbers them."""
    return spec.resources.nodes > 1


def rendezvous_endpoint(spec: RunSpec, env: dict[str, str] | None = None) -> str:
    """HOST:PORT of the c10d rendezvous: the run file, else MASTER_ADDR/MASTER_PORT, else the Slurm job's first node.
    Raises RunError naming the setting when none says."""
    from ftune.runtime import slurm
    from ftune.runtime.rundir import RunError

    env = os.environ if env is None else env
    r = spec.resources
    host = r.master_addr or env.get("MASTER_ADDR") or slurm.first_node(env.get("SLURM_JOB_NODELIST"))
    if not host:
        raise RunError(f"run '{spec.name}' runs on {r.nodes} nodes and no rendezvous host is known: set "
                       f"resources.master_addr (one machine's address, reachable from the others) or MASTER_ADDR, "
                       f"or start it under Slurm (`ftune submit {spec.name} --slurm`)")
    return f"{host}:{r.master_port or env.get('MASTER_PORT') or 29500}"


def nnodes(spec: RunSpec) -> str:
    """torchrun's --nnodes: N, or MIN:MAX for an elastic run."""
    r = spec.resources
    low = r.min_nodes or r.nodes
    return str(r.nodes) if low == r.nodes else f"{low}:{r.nodes}"


def rendezvous_command(spec: RunSpec, run: RunDir, endpoint: str, worker: list[str]) -> list[str]:
    """torchrun on the c10d rendezvous, the same on every node: the rendezvous hands out the node ranks, the run's
    name is the rendezvous id. The worker is told so (`--rendezvous`): rank 0 takes the run's lock, each node
    links its log as rank-logs/node-N.log."""
    r = spec.resources
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", nnodes(spec),
            "--nproc-per-node", str(processes_per_node(spec)), "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
            "--rdzv-id", spec.name, "--max-restarts", str(r.max_restarts), "--role", "rank", "--tee", "3",
            "--log-dir", str(run.path / "rank-logs"), *worker, "--rendezvous"]


def worker_args(run: RunDir, lock_fd: int | None, resume: bool) -> list[str]:
    worker = ["-m", "ftune.runtime.train", str(run.path.resolve())]
    if lock_fd is not None:
        worker += ["--lock-fd", str(lock_fd)]
    return worker + (["--resume"] if resume else [])


def worker_command(spec: RunSpec, run: RunDir, lock_fd: int | None, resume: bool, node_rank: int = 0) -> list[str]:
    """The command that starts the worker(s); writes accelerate.yaml and launch.sh for multi-process runs."""
    worker = worker_args(run, lock_fd, resume)
    r = spec.resources
    n = processes_per_node(spec)
    if n * r.nodes == 1 and r.strategy in ("auto", "ddp"):
        return [sys.executable, *worker]
    endpoint = rendezvous_endpoint(spec) if multi_node(spec) else f"127.0.0.1:{r.master_port or _free_port()}"
    host, _, port = endpoint.rpartition(":")
    config_path = run.path / "accelerate.yaml"
    write_atomic(config_path, yaml.safe_dump(accelerate_config(spec, node_rank, int(port), host), sort_keys=False))
    if r.strategy in ("auto", "ddp") and multi_node(spec):
        cmd = rendezvous_command(spec, run, endpoint, worker)
    elif r.strategy in ("auto", "ddp"):  # torchrun: one process per GPU (or CPU process over gloo)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--nnodes", "1",
               "--master-addr", host, "--master-port", port, "--role", "rank", "--tee", "3",  # lines: [rankN]:
               "--log-dir", str(run.path / "rank-logs"), *worker]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_path), *worker]
    write_atomic(run.path / "launch.sh", "#!/bin/sh\n# how ftune started this run on "
                 f"{socket.gethostname()}; the lock fd is ftune's own\n" + shlex.join(cmd) + "\n")
    return cmd
