"""`ftune submit --slurm` against a real Slurm: a one-node cluster on this machine (.ci/slurm-up: munged, slurmctld,
slurmd, two CPUs, no cgroups). A tiny run of two processes is submitted, listed, stopped mid-run through Slurm (TERM
to the batch shell, which hands it on: a checkpoint is saved) and resumed to its end. Skips, saying why, where Slurm
cannot be started (not root, slurm-wlm/munge missing); CI installs them (.ci/run)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ftune.runtime import launch, slurm
from ftune.runtime.events import EventReader, read_all
from ftune.runtime.runs import run_rows
from tests.runtime.helpers import make_run, of_type, wait_for

UP = Path(__file__).resolve().parents[2] / ".ci" / "slurm-up"


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    if not shutil.which("sbatch") or not shutil.which("slurmctld", path="/usr/sbin:/usr/bin"):
        pytest.skip("Slurm is not installed here (Debian: apt-get install slurm-wlm munge; .ci/run does it)")
    done = subprocess.run([str(UP)], capture_output=True, text=True, timeout=90, check=False)
    if done.returncode != 0:
        pytest.skip(f"a one-node Slurm could not be started ({UP.name}): {(done.stderr or done.stdout).strip()}")


def status_of(run) -> str:
    return next(r["status"] for r in run_rows(run.root) if r["name"] == run.name)


@pytest.mark.real_spawn
def test_a_slurm_job_runs_stops_with_a_checkpoint_and_resumes(project, tiny_model, slurm_cluster):
    run = make_run(project, tiny_model, data={"shuffle": False, "val_size": 0},
                   training={"max_steps": 100000, "save_steps": 100000, "logging_steps": 1,
                             "per_device_train_batch_size": 4}, resources={"gpus_per_node": 2})
    job = launch.submit(run, gpus_per_node=0)  # a CPU job: two processes over gloo on the one node
    script = (run.path / "slurm.sbatch").read_text()
    for line in ("#SBATCH --signal=B:TERM@120", "#SBATCH --requeue", "#SBATCH --nodes=1", "--rdzv-backend c10d",
                 "--nproc-per-node 2", "--rdzv-endpoint \"$MASTER_ADDR:$MASTER_PORT\""):
        assert line in script, line
    assert "--gpus-per-node" not in script  # a CPU job asks for no GPUs
    assert run.read_status()["slurm_job"] == job
    assert status_of(run) in ("queued", "starting", "running")
    reader = EventReader(run.events_path)
    wait_for(lambda: [e for e in reader.read_new() if e["type"] == "step"], 240)
    assert status_of(run) == "running"
    final = launch.stop(run, wait=180)  # scancel --signal=TERM --batch: the batch shell hands it to every process
    assert final and final["type"] == "stopped", (run.path / "rank-logs" / f"slurm-{job}.out").read_text()[-3000:]
    at = final["step"]
    assert run.latest_checkpoint()[0] == at and status_of(run) == "stopped"
    assert slurm.job_state(job) not in slurm.RUNNING | slurm.QUEUED  # the job ended by itself, having saved

    run.spec_path.write_text(run.spec_path.read_text().replace("max_steps: 100000", f"max_steps: {at + 2}"))
    second = launch.submit(run, gpus_per_node=0, resume=True)
    assert second != job and "RESUME=--resume" in (run.path / "slurm.sbatch").read_text()
    wait_for(lambda: read_all(run.events_path)[-1]["type"] in ("finished", "error") and not run.is_locked(), 300,
             poll=0.5)
    events = read_all(run.events_path)
    assert events[-1]["type"] == "finished", (run.path / "rank-logs" / f"slurm-{second}.out").read_text()[-3000:]
    started = of_type(events, "started")[-1]
    assert started["resumed_from"] == at and started["world_size"] == 2
    assert [s["step"] for s in of_type(events, "step")][-2:] == [at + 1, at + 2]
    assert status_of(run) == "finished"
    assert (run.path / "rank-logs" / "node-0.log").is_file()


def test_the_batch_script_follows_the_options(project, tiny_model):
    from ftune.runtime.spec import load_spec

    run = make_run(project, tiny_model, resources={"gpus_per_node": "auto", "nodes": 4, "min_nodes": 3,
                                                    "max_restarts": 2})
    spec = load_spec(run.spec_path)
    with pytest.raises(launch.RunError, match="--gpus-per-node"):  # a login node cannot tell
        launch.slurm_job(spec)
    job = launch.slurm_job(spec, gpus_per_node=8, partition="gpu", time_limit="1-00:00:00", account="lab",
                           extras=("--qos=high --constraint='h100|a100'",))
    assert (job.nodes, job.processes_per_node, job.extras) == (4, 8, ["--qos=high", "--constraint=h100|a100"])
    text = slurm.script("run-01", job, output="/o/%j", workdir="/p", command=["torchrun", "X", "-m", "w"],
                        endpoint_at=1, resume=False, checkpoints="/p/runs/run-01/checkpoints", node_logs="/o/%N")
    for line in ("#SBATCH --nodes=4", "#SBATCH --gpus-per-node=8", "#SBATCH --partition=gpu",
                 "#SBATCH --time=1-00:00:00", "#SBATCH --account=lab", "#SBATCH --qos=high",
                 "#SBATCH --constraint=h100|a100", 'torchrun "$MASTER_ADDR:$MASTER_PORT" -m w $RESUME &'):
        assert line in text, line
    assert slurm.first_node("gpu[03-05,07]") == "gpu03" and slurm.first_node("a,b") == "a"
