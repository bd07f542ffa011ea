"""The worker's recipe, read top to bottom:

    setup:  spec -> tokenizer -> data -> model -> stage models -> trainer     (every object, built once)
    train:  trainer.train() -> stopped, or export -> after-training -> finished

`setup(spec, run, ...)` returns a Recipe holding every object the run trains with, so tests look at exactly
what the worker builds. `train(recipe)` runs it. Every process runs both; only the lead (global rank 0)
writes status and the export.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftune.runtime import models, templates
from ftune.runtime.data.formats import DataError
from ftune.runtime.data.prepare import PreparedData, prepare_data
from ftune.runtime.events import EventWriter
from ftune.runtime.files import publish_dir
from ftune.runtime.infer import formats
from ftune.runtime.rundir import RunDir, RunError
from ftune.runtime.spec import RunSpec
from ftune.runtime.train import faults, frozen, tracking
from ftune.runtime.train.args import common_args
from ftune.runtime.train.callbacks import EventsCallback
from ftune.runtime.train.downloads import download
from ftune.runtime.train.host_memory import keep_freed_memory
from ftune.runtime.train.model import Kernels, Precision, hidden_size, kernels, load_model, precision_plan
from ftune.runtime.train.optim import adapt_to_badam, custom_optimizer
from ftune.runtime.train.phases import Phases
from ftune.runtime.train.stopper import Stopper


@dataclass
class Recipe:
    """Everything one run trains with, built by `setup`."""

    spec: RunSpec
    run: RunDir
    events: EventWriter
    stopper: Stopper
    lead: bool
    base: Path  # the project folder: relative paths in the run file start here
    resume_from: tuple[int, Path] | None  # (step, checkpoint folder)
    tokenizer: Any
    processor: Any  # a vision-language model's processor (images, tokenizer, template); None for text models
    data: PreparedData
    precision: Precision
    kernels: Kernels
    model: Any
    callback: EventsCallback
    trainer: Any


# --------------------------------------------------------------------------- steps of setup
def checkpoint_to_resume(spec: RunSpec, run: RunDir, resume: bool, events: EventWriter) -> tuple[int, Path] | None:
    """The newest complete checkpoint when resuming (asked, or training.auto_resume), else None. Newer ones that
    are incomplete (torn by a kill or a full disk) are passed over, and a warning says so."""
    if not (resume or spec.training.auto_resume):
        return None
    latest = run.latest_checkpoint()
    for step, path, problem in run.all_checkpoints():
        if problem and (latest is None or step > latest[0]):
            events.emit("warning", message=f"{path.name} is incomplete ({problem}): resuming from "
                                           f"{latest[1].name if latest else 'the start'} instead",
                        hint="A worker killed while saving leaves such a folder; it can be deleted.")
    if latest is None and resume:
        raise RunError(f"run '{run.name}' has no complete checkpoint to resume from")
    return latest


def load_stage_models(spec: RunSpec, run: RunDir, base: Path, plan: Precision):
    """The reference model (dpo/kto, when named) and the reward model (rl): other runs or paths."""
    s, stage = spec.stage, spec.stage.definition
    ref = reward = None
    if stage.takes_reference and s.ref_model:
        ref = frozen.load_reference(models.resolve_model_ref(s.ref_model, run.root, base), plan.dtype,
                                    spec.model.trust_remote_code, s.ref_model_quantization_bits)
    if stage.needs_reward_model:
        reward = frozen.load_reward_model(models.resolve_model_ref(s.reward_model, run.root, base), plan.dtype,
                                          spec.model.trust_remote_code, s.reward_model_quantization_bits)
    return ref, reward


def count_params(model) -> tuple[int, int]:
    """(trainable, total) parameters, as the started event reports them."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def build_trainer(spec: RunSpec, model, tokenizer, data: PreparedData, run: RunDir, plan: Precision, kern: Kernels,
                  callback, ref_model=None, reward_model=None, processor=None):
    """The TRL trainer for the stage: SFTTrainer (with the model's own loss) for the stages that train on token
    rows (sft, pt), the stage's own builder (train/stages/) for the rest."""
    batches = None  # with a token budget, the batches an epoch holds (for the evaluation and save plan)
    stage = spec.stage.definition
    if spec.training.tokens_per_batch and stage.trains_on_tokens and processor is None:
        from ftune.runtime.train.batching import TokenBudgetBatches, row_lengths

        batches = len(TokenBudgetBatches(row_lengths(data.train), spec.training.tokens_per_batch,
                                         seed=spec.training.seed, padded=not spec.data.padding_free))
    common = common_args(spec, run, plan, kern, data.num_train_rows, data.eval is not None, batches)
    optimizer = custom_optimizer(spec, model, common)
    if not stage.trains_on_tokens:
        inputs = dict(model=model, train_dataset=data.train, eval_dataset=data.eval, processing_class=tokenizer,
                      callbacks=[callback], optimizers=(optimizer, None))
        return stage.build_trainer(spec, common, inputs, ref_model, reward_model)
    from trl import SFTConfig

    from ftune.runtime.train.sft import PlainLossSFTTrainer

    if processor is not None:  # rows come tokenised with their image references; the collator opens the images
        from ftune.runtime.train.vision import VisionCollator

        callback.started_fields.update(batching="padded", batching_note="a vision-language model's rows are padded")
        config = SFTConfig(**common, max_length=spec.data.max_length, packing=False, remove_unused_columns=False,
                           dataset_kwargs={"skip_prepare_dataset": True})
        return PlainLossSFTTrainer(
            model=model, args=config, train_dataset=data.train, eval_dataset=data.eval, processing_class=processor,
            data_collator=VisionCollator(processor, spec.data.image_min_pixels, spec.data.image_max_pixels),
            callbacks=[callback], optimizers=(optimizer, None), compute_accuracy=spec.training.compute_accuracy)

    batching = batching_plan(spec, model, plan.cuda)
    callback.started_fields.update(batching)
    config = SFTConfig(
        **common,
        # rows come truncated from data/prepare.py; packing fills sequences of max_length
        max_length=spec.data.max_length if spec.data.packing else None,
        packing=spec.data.packing,  # best-fit decreasing: whole examples, attention kept within each
        packing_strategy="bfd",
        padding_free=batching["batching"] != "padded",
    )
    return PlainLossSFTTrainer(
        model=model, args=config, train_dataset=data.train, eval_dataset=data.eval,
        processing_class=tokenizer, callbacks=[callback], optimizers=(optimizer, None),
        compute_accuracy=spec.training.compute_accuracy, tokens_per_batch=spec.training.tokens_per_batch,
    )


def batching_plan(spec: RunSpec, model, cuda: bool = False) -> dict[str, Any]:
    """How sft/pt rows are batched, for the started event: packed, padding-free, or padded (with the reason); the
    attention that keeps the rows apart is chosen here (batching.padding_free_attention, by device)."""
    from ftune.runtime.train.batching import padding_free_attention, padding_free_blocker

    blocker = padding_free_blocker(model) if spec.data.packing or spec.data.padding_free else None
    if spec.data.packing or spec.data.padding_free:
        if blocker and spec.data.packing:
            raise RunError(f"data.packing needs attention that keeps packed rows apart, and here {blocker}",
                           hint="Set data.packing: false; the rows are then padded.")
        if blocker:
            return {"batching": "padded", "batching_note": f"padding-free is not possible: {blocker}"}
        blocker = padding_free_attention(model, cuda, spec.data.packing)
        if blocker:
            return {"batching": "padded", "batching_note": f"padding-free is not possible: {blocker}",
                    "attn_implementation": model.config._attn_implementation}
        return {"batching": "packed" if spec.data.packing else "padding-free",
                "attn_implementation": model.config._attn_implementation}
    return {"batching": "padded", "batching_note": "data.padding_free is off"}


def check_trainer_rows(spec: RunSpec, trainer, data: PreparedData, events: EventWriter) -> None:
    """TRL's preference trainers drop rows longer than max_length on their own: count them, never silently."""
    if spec.stage.definition.trains_on_tokens or not hasattr(trainer.train_dataset, "__len__"):
        return
    kept = len(trainer.train_dataset)
    dropped = data.num_train_rows - kept
    if kept == 0:
        raise DataError(f"all {data.num_train_rows} training rows are longer than data.max_length "
                        f"({spec.data.max_length} tokens) and were dropped", hint="Raise data.max_length.")
    if dropped > 0:
        events.emit("warning", message=f"{dropped} of {data.num_train_rows} rows are longer than "
                                       f"data.max_length ({spec.data.max_length}) and were dropped",
                    hint="Raise data.max_length to keep them.")
        data.num_train_rows, data.skipped_rows = kept, data.skipped_rows + dropped


def load_vision_processor(spec: RunSpec, source: str):
    """A vision-language model's processor, or None for a text model. Its own chat template renders images,
    so a named text template does not apply."""
    m = spec.model
    if not models.is_vision(source, m.revision, m.trust_remote_code):
        return None
    problem = models.vision_problem(spec)
    if problem:
        raise RunError(problem)
    processor = models.load_processor(source, m.revision, m.trust_remote_code)
    if m.template != "auto":  # a template that renders images, named: processor and tokenizer alike
        processor.chat_template = templates.get(m.template)
    models.prepare_tokenizer(processor.tokenizer, m.template)  # a pad token where it has none
    return processor


def setup(spec: RunSpec, run: RunDir, events: EventWriter, stopper: Stopper, resume: bool = False,
          lead: bool = True, phases: Phases | None = None) -> Recipe:
    """Build every object the run trains with, in the order the worker needs them; each step is a phase
    (the worker's began with "importing"), and the started event carries their seconds."""
    phases = phases or Phases(events, lead)
    from transformers import set_seed

    base = run.project
    download(spec, base, events, phases, lead)
    phases.begin("loading the tokenizer")
    resume_from = checkpoint_to_resume(spec, run, resume, events)
    set_seed(spec.training.seed)
    source = models.model_source(spec.model.name_or_path, base)
    processor = load_vision_processor(spec, source)
    tokenizer = processor.tokenizer if processor is not None else models.load_tokenizer(
        spec, source, on_fallback=lambda: events.emit(
            "warning", message="the tokenizer has no chat template; using ChatML",
            hint="Fine for a base model. For an instruct model, name its template in model.template."))
    phases.begin("tokenising")
    data = prepare_data(spec, tokenizer, base, events, run, lead, processor)
    phases.begin("loading the model")
    plan = precision_plan(spec.training.precision, spec.method.type,
                          hidden_size(spec, source) if spec.training.precision == "auto" else None)
    host_memory_kept = not plan.cuda and keep_freed_memory()  # before the model's weights are allocated
    kern = kernels(spec, plan)
    model = load_model(spec, source, plan, kern, tokenizer, run, base, is_vision=processor is not None)
    ref_model, reward_model = load_stage_models(spec, run, base, plan)
    trainable, total = count_params(model)
    callback = EventsCallback(events, run, {
        "run": spec.name, "stage": spec.stage.type, "method": spec.method_label, "model": spec.model.name_or_path,
        **data.counts(), "data_cached": data.cached,
        "trainable_params": trainable, "total_params": total, "precision": plan.name,
        "attn_implementation": model.config._attn_implementation, "liger": kern.liger,
        "vision": processor is not None, "host_memory_kept": host_memory_kept,
        "resumed_from": resume_from[0] if resume_from else None,
        **{f"{what}_bits": frozen.quantized_bits(m) for what, m in (("ref_model", ref_model),
                                                                     ("reward_model", reward_model)) if m is not None},
    }, stopper)
    phases.begin("building the trainer")
    tracking.apply_env(spec, run)  # the trackers' folders, before the trainer builds their integrations
    trainer = build_trainer(spec, model, tokenizer, data, run, plan, kern, callback, ref_model, reward_model,
                            processor)
    if hasattr(trainer, "rows_seen"):
        callback.rows_seen = lambda: trainer.rows_seen
    t = spec.training
    callback.max_time, callback.rollback_on_blowup = t.max_time, t.on_blowup == "rollback"
    for fault in faults.callbacks():  # FTUNE_FAULTS: the long-run tests' deterministic hang and blow-up
        trainer.add_callback(fault)
    callback.trackers = tracking.guard(trainer, spec, events)  # a failing tracker is a warning, not the end
    if spec.method.badam is not None:
        adapt_to_badam(trainer)
    check_trainer_rows(spec, trainer, data, events)
    a = trainer.args
    callback.started_fields.update(trainer=type(trainer).__name__,  # what runs, e.g. RLOOTrainer for stage rl
                                   num_train_rows=data.num_train_rows, skipped_rows=data.skipped_rows,
                                   world_size=a.world_size,
                                   global_batch=a.world_size * a.per_device_train_batch_size
                                   * a.gradient_accumulation_steps)
    phases.begin("starting training")  # the trainer's own preparations, until its first step begins
    callback.phases = phases
    return Recipe(spec, run, events, stopper, lead, base, resume_from, tokenizer, processor, data, plan, kern, model,
                  callback, trainer)


# --------------------------------------------------------------------------- training and what follows
def export(spec: RunSpec, trainer, tokenizer, run: RunDir, processor=None) -> dict[str, Any]:
    """Write the final model to export/ (built aside and swapped in, so a half export never looks done)."""
    model = trainer.model
    # gguf: export/ keeps the adapter (the format's worker_saves); after.py writes the GGUF file from it into exports/
    saved = None if spec.method.type == "full" else formats.get(formats.get(spec.output.save_format).saved_by_worker)
    with publish_dir(run.export_dir()) as tmp:
        if saved is None:  # full fine-tuning: the whole model
            model.save_pretrained(tmp)
        else:  # the writers `ftune export` uses, so both give the same model
            if saved.merged:
                from ftune.runtime.infer.export import unquantized

                model = unquantized(model, spec, run, tmp.with_name(tmp.name + ".adapter"))  # QLoRA: a 16-bit base
            saved.write(model, tmp, tokenizer, True, processor is not None, spec.model.trust_remote_code)
        tokenizer.save_pretrained(tmp)
        if processor is not None:  # the image processor (and template) chat, serve and eval open it with
            processor.save_pretrained(tmp)
    return {"export": str(run.export_dir()), "format": saved.name if saved else "full"}


def train(r: Recipe) -> None:
    """Train (rolling back a blow-up where training.on_blowup asks); then end the stream with `stopped`, or export
    and end it with `finished`."""
    spec, run, events = r.spec, r.run, r.events
    status = run.update_status if r.lead else (lambda **fields: None)
    result = r.trainer.train(resume_from_checkpoint=str(r.resume_from[1]) if r.resume_from else None)
    while r.callback.blowup is not None and not r.stopper.requested:
        result = r.trainer.train(resume_from_checkpoint=str(roll_back(r)))
    metrics = {**r.callback.metrics, **(result.metrics or {})}
    metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    step = r.trainer.state.global_step
    if r.stopper.requested:  # the checkpoint this step saved (none when the same step blew up: the one before it)
        ckpt = (run.latest_checkpoint() or (step, run.checkpoints_dir() / f"checkpoint-{step}"))[1]
        reason = r.stopper.reason or "signal"
        said = (f"training.max_time ({spec.training.max_time:g} s) was reached" if reason == "max_time" else
                f"{r.stopper.signal or 'a signal'} asked for a stop (ftune stop, Ctrl+C or a scheduler)")
        events.emit("stopped", step=step, metrics=metrics, artifacts={"checkpoint": str(ckpt)}, reason=reason,
                    message=said)
        status(state="stopped", step=step, ended_at=time.time())
        return
    if r.callback.rollbacks:
        metrics["rollbacks"] = r.callback.rollbacks
    if not r.lead:  # the export is written once
        return
    artifacts = export(spec, r.trainer, r.tokenizer, run, r.processor)
    artifacts["checkpoints"] = [str(p) for _, p in run.checkpoints()]
    from ftune.runtime.train.after import after_training  # predictions on data.test, model card, loss plot

    artifacts.update(after_training(spec, run, events, r.trainer.model, r.tokenizer, metrics, artifacts,
                                    r.processor))
    events.emit("finished", step=step, metrics=metrics, artifacts=artifacts)
    status(state="finished", step=step, ended_at=time.time(), export=artifacts["export"])


def roll_back(r: Recipe) -> Path:
    """training.on_blowup rollback, after the loop stopped on a blow-up: the newest complete checkpoint at or before
    the last good logged step, the batches trained since it skipped, the learning rate scaled; a `rollback` event.
    Raises RunError when the rollbacks are spent or no checkpoint comes before the blow-up."""
    cb, t = r.callback, r.spec.training
    bad = cb.blowup
    good = [(s, p) for s, p in r.run.checkpoints() if s <= cb.last_good_step and s < bad["step"]]
    if cb.rollbacks >= t.max_rollbacks:
        raise RunError(f"the loss blew up at step {bad['step']} ({bad['reason']}) after {cb.rollbacks} rollbacks "
                       f"(training.max_rollbacks: {t.max_rollbacks})",
                       hint="Lower the learning rate, or look at the data around these steps; resume from a "
                            "checkpoint with `ftune train RUN --resume`.")
    if not good:
        raise RunError(f"the loss blew up at step {bad['step']} ({bad['reason']}) and no checkpoint was saved before "
                       f"it to roll back to", hint="Save more often (training.save_steps), or lower the learning rate.")
    step, path = good[-1]
    skip = bad["step"] - step  # optimiser steps trained since the checkpoint: their batches are not trained again
    cb.rollbacks += 1
    cb.lr_scale *= t.rollback_lr_scale
    skip_batches(r.trainer, skip * t.gradient_accumulation_steps)
    if r.lead:
        r.events.emit("rollback", step=bad["step"], to_step=step, path=str(path), reason=bad["reason"],
                      skipped_batches=skip * r.trainer.args.world_size * t.gradient_accumulation_steps,
                      lr_scale=cb.lr_scale, rollback=cb.rollbacks, max_rollbacks=t.max_rollbacks)
        r.run.update_status(step=step)
    cb.blowup = None
    return path


def skip_batches(trainer, batches: int) -> None:
    """The next resume also skips `batches` more batches of the epoch it resumes in (within that epoch), on top of
    those the checkpoint's own step skips: transformers works out its skip in _init_training_state, wrapped here
    for one call."""
    original = trainer._init_training_state

    def once(*args, **kwargs):
        trainer._init_training_state = original
        epochs, done = original(*args, **kwargs)
        per_epoch = args[1] if len(args) > 1 else kwargs.get("num_update_steps_per_epoch")
        room = (per_epoch * trainer.args.gradient_accumulation_steps - done) if isinstance(per_epoch, int) else batches
        return epochs, done + max(0, min(batches, room - trainer.args.gradient_accumulation_steps))

    trainer._init_training_state = once
