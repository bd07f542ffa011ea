"""Slurm, the scheduler that starts a run on a cluster: the batch script `ftune submit --slurm` writes, its submission,
and what squeue/scontrol/sacct say of the job. Slurm starts the processes (sbatch → srun → torchrun's c10d rendezvous);
ftune writes the script and asks Slurm, and never imitates it. Light: subprocess calls only.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field

from ftune.runtime.errors import UserError

# Slurm's job states (squeue %T, scontrol JobState) in ftune's words for a job whose worker has not said more
QUEUED = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED"}
RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
ENDED = {"COMPLETED": "finished", "CANCELLED": "stopped", "PREEMPTED": "stopped", "TIMEOUT": "stopped"}
SIGNAL_LEAD_S = 120  # --signal=B:TERM@120: the warning before the time limit (or a preemption) leaves a checkpoint


class SlurmError(UserError):
    """Slurm is missing here or refused the job: one sentence with what it said."""


@dataclass
class SlurmJob:
    """What `ftune submit --slurm` asks of Slurm (the run file's resources give the defaults)."""

    nodes: int
    gpus_per_node: int  # 0: a CPU job; the run's processes per node come from resources.gpus_per_node
    processes_per_node: int
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    extras: list[str] = field(default_factory=list)  # free sbatch options, e.g. --qos=high --constraint=h100


def _run(cmd: list[str], timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def available() -> bool:
    return shutil.which("sbatch") is not None


def require() -> None:
    """A clear error, before anything is written, where Slurm's commands are missing."""
    if not available():
        raise SlurmError("sbatch is not on this machine's PATH: submit from a Slurm login node (where `sinfo` "
                         "answers), or train here with `ftune train`")


def first_node(nodelist: str | None) -> str | None:
    """The first host of a Slurm node list ('gpu[03-05,07]' → 'gpu03'): scontrol's expansion, else the first
    bracket read by hand."""
    if not nodelist:
        return None
    if shutil.which("scontrol"):
        try:
            out = _run(["scontrol", "show", "hostnames", nodelist], timeout=10).stdout.split()
        except (OSError, subprocess.TimeoutExpired):
            out = []
        if out:
            return out[0]
    m = re.match(r"([^,\[]+)(?:\[([^\],-]+))?", nodelist)
    return (m.group(1) + (m.group(2) or "")) if m else None


def script(run_name: str, job: SlurmJob, *, output: str, workdir: str, command: list[str], endpoint_at: int,
           resume: bool, checkpoints: str, node_logs: str) -> str:
    """The batch script: one srun task per node, each starting torchrun on the c10d rendezvous at the job's first
    node. `command[endpoint_at]` becomes "$MASTER_ADDR:$MASTER_PORT"; a TERM to the batch shell (ftune stop, the
    time limit's warning, a preemption) goes on to every process, which saves a checkpoint and leaves; a requeued job
    resumes from the newest complete checkpoint."""
    lines = ["#!/bin/bash",
             f"# Written by `ftune submit {run_name} --slurm`; submit it again with the same command.",
             f"#SBATCH --job-name=ftune-{run_name}",
             f"#SBATCH --nodes={job.nodes}",
             "#SBATCH --ntasks-per-node=1",
             f"#SBATCH --cpus-per-task={max(1, job.processes_per_node)}"]
    if job.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={job.gpus_per_node}")
    lines += [f"#SBATCH --{k}={v}" for k, v in (("partition", job.partition), ("time", job.time),
                                               ("account", job.account)) if v]
    lines += [f"#SBATCH --output={output}",
              "#SBATCH --open-mode=append",
              f"#SBATCH --signal=B:TERM@{SIGNAL_LEAD_S}",
              "#SBATCH --requeue"]
    lines += [f"#SBATCH {x}" for x in job.extras]
    parts = [shlex.quote(x) for x in command]
    parts[endpoint_at] = '"$MASTER_ADDR:$MASTER_PORT"'
    lines += ["",
              f"cd {shlex.quote(workdir)}",
              'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
              'export MASTER_PORT="${MASTER_PORT:-29500}"',
              f"RESUME={'--resume' if resume else ''}",
              "# a requeued job (preemption, node failure) goes on from the newest complete checkpoint",
              ('if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] && '
               f"ls {shlex.quote(checkpoints)}/checkpoint-*/ftune_checkpoint.json >/dev/null 2>&1; then"),
              "  RESUME=--resume",
              "fi",
              "echo \"ftune: job $SLURM_JOB_ID on $SLURM_JOB_NODELIST, rendezvous $MASTER_ADDR:$MASTER_PORT $RESUME\"",
              f"srun --ntasks-per-node=1 --kill-on-bad-exit=1 --output={shlex.quote(node_logs)} "
              + " ".join(parts) + " $RESUME &",
              "step=$!",
              "# TERM (ftune stop, the time limit's warning, a preemption) goes on to every process of the step (this",
              "# script's one srun: step 0), which agree a step, save a checkpoint there and leave. Not to srun itself:",
              "# srun ends its step at once on TERM.",
              "trap 'scancel --signal=TERM \"$SLURM_JOB_ID.0\"' TERM",
              "code=0",
              'while kill -0 "$step" 2>/dev/null; do wait "$step"; code=$?; done',
              'exit "$code"',
              ""]
    return "\n".join(lines)


def submit(path: str, hold: bool = False) -> str:
    """sbatch --parsable PATH → the job id (held until `release` with hold); SlurmError with sbatch's own words when
    it refuses."""
    try:
        done = _run(["sbatch", "--parsable", *(["--hold"] if hold else []), path], timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SlurmError(f"sbatch could not be run: {e}") from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().replace("sbatch: error: ", "")
        raise SlurmError(f"sbatch refused {path}: {said or f'exit status {done.returncode}'}")
    return done.stdout.strip().split(";")[0]


def release(job_id: str) -> None:
    done = _run(["scontrol", "release", job_id])
    if done.returncode != 0:
        raise SlurmError(f"scontrol release {job_id} failed: {(done.stderr or done.stdout).strip()}")


def job_state(job_id: str) -> str | None:
    """Slurm's state of a job (PENDING, RUNNING, COMPLETED, CANCELLED, …): squeue while it is known there, then
    scontrol (a finished job stays MinJobAge seconds), then sacct (clusters with accounting); None when no one knows."""
    for cmd, parse in ((["squeue", "-h", "-j", job_id, "-o", "%T"], lambda s: s.split()[0] if s.split() else None),
                       (["scontrol", "show", "job", "-o", job_id], _scontrol_state),
                       (["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"],
                        lambda s: s.split()[0].split()[0] if s.split() else None)):
        if not shutil.which(cmd[0]):
            continue
        try:
            done = _run(cmd, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        state = parse(done.stdout) if done.returncode == 0 else None
        if state:
            return state.upper()
    return None


def _scontrol_state(text: str) -> str | None:
    m = re.search(r"\bJobState=(\S+)", text)
    return m.group(1) if m else None


def shown_state(job_id: str) -> str:
    """A submitted run that no worker has spoken for yet, in ftune's words: queued, starting (the job runs, the
    worker is on its way), finished, stopped or failed."""
    state = job_state(job_id)
    if state is None or state in QUEUED:
        return "queued" if state else "failed"
    if state in RUNNING:
        return "starting"
    return ENDED.get(state, "failed")


def cancel(job_id: str, *, graceful: bool) -> None:
    """graceful: TERM to the batch shell (`scancel --signal=TERM --batch`), which hands it to every process, so the
    run saves a checkpoint; else the job is cancelled outright (a queued job has nothing to save)."""
    cmd = ["scancel", "--signal=TERM", "--batch", job_id] if graceful else ["scancel", job_id]
    try:
        done = _run(cmd)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SlurmError(f"scancel could not be run: {e}") from None
    if done.returncode != 0:
        raise SlurmError(f"scancel refused job {job_id}: {(done.stderr or done.stdout).strip()}")


def wait_gone(job_id: str, timeout: float, on_wait=None) -> bool:
    """Wait until Slurm no longer runs the job (it ended or left the queue)."""
    end = time.time() + timeout
    while time.time() < end:
        state = job_state(job_id)
        if state is None or not (state in QUEUED or state in RUNNING):
            return True
        if on_wait:
            on_wait()
        time.sleep(0.5)
    return False
