"""The TrainingArguments every stage shares, straight from the run file."""

from __future__ import annotations

import math
from typing import Any

from ftune.runtime.rundir import RunDir
from ftune.runtime.spec import RunSpec
from ftune.runtime.tracker_registry import PROJECT
from ftune.runtime.train.model import Kernels, Precision
from ftune.runtime.train.optim import optimizer_args


def eval_plan(spec: RunSpec, has_eval: bool, steps_estimate: int) -> dict[str, Any]:
    t = spec.training
    strategy = t.eval_strategy
    if strategy == "auto":
        strategy = "steps" if has_eval else "no"
    if not has_eval:
        strategy = "no"
    every = t.eval_steps or min(t.save_steps, max(1, steps_estimate // 5))
    return {"eval_strategy": strategy, "eval_steps": every if strategy == "steps" else None}


def common_args(spec: RunSpec, run: RunDir, plan: Precision, kern: Kernels, num_train_rows: int,
                has_eval: bool, batches: int | None = None) -> dict[str, Any]:
    """TrainingArguments every stage shares, straight from the run file; `batches`: an epoch's batches where
    they are not rows / batch size (a token budget)."""
    t = spec.training
    batches = batches or math.ceil(num_train_rows / t.per_device_train_batch_size)
    steps_estimate = t.max_steps or math.ceil(batches / t.gradient_accumulation_steps * t.num_train_epochs)
    return dict(
        output_dir=str(run.checkpoints_dir()),
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps or -1,
        learning_rate=t.learning_rate,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        warmup_steps=t.warmup_steps or t.warmup_ratio,  # transformers 5: a float below 1 is a ratio
        lr_scheduler_type=t.lr_scheduler_type,
        **optimizer_args(spec),
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        data_seed=t.seed,
        bf16=plan.bf16,
        fp16=plan.fp16,
        # transformers 5 name for gradient checkpointing; setting it also overrides TRL's default of True
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        neftune_noise_alpha=t.neftune_noise_alpha,
        logging_strategy=t.logging_strategy,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN loss must reach the events, not be averaged away
        save_strategy=t.save_strategy,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        dataloader_num_workers=t.dataloader_num_workers,
        dataloader_pin_memory=plan.cuda,
        use_cpu=not plan.cuda,  # several CPU processes then train as DDP over gloo
        use_liger_kernel=kern.liger,
        train_sampling_strategy="random" if spec.data.shuffle else "sequential",
        include_num_input_tokens_seen="non_padding",
        # trackers through transformers' own integrations (train/tracking.py guards them); ours, the events
        # callback, is added explicitly: the default of report_to differs between releases
        report_to=list(t.report_to) or "none",
        run_name=spec.name,  # the tracker's run is called as ours
        project=PROJECT,  # Trackio's project (W&B, SwanLab and MLflow take theirs from the environment)
        disable_tqdm=True,
        **eval_plan(spec, has_eval, steps_estimate),
    )
