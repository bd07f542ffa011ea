"""`ftune new`, the guided setup, Ctrl+B back (answers kept), Ctrl+C cancels. A beginner answers four questions:

    model → data → preset → review: write it and start (or change the name, template, stage, method, validation)

Everything with a sound default (the run name, the model's own template, the stage the data suits, LoRA, 10% held
out) is shown on the review, not asked. `ftune new --full` asks each of them in turn, in nine steps:

    name → model → template → stage → method → data → preset → review (writes run.yaml) → start?

Each step is a `Step` in `STEPS`: its `ask` checks the answer through the run spec and stores it in `Answers`, and
returns BACK to go to the step before (or an Outcome to end); `applies` says whether the path being taken asks it.
The wizard is a loop over that list. Nothing is written before the review.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from prompt_toolkit.completion import WordCompleter
from prompt_toolkit.shortcuts import CompleteStyle
from rich.console import Group
from rich.panel import Panel
from rich.syntax import Syntax
from rich.text import Text

from ftune.runtime import memory_estimate
from ftune.runtime.catalog import ModelInfo, family, from_catalog, groups, inspect_local, local_problem, resolve
from ftune.runtime.catalog import templates as catalog_templates
from ftune.runtime.models import is_hub_id, local_path
from ftune.runtime.present import data_summary, gb, images_line
from ftune.runtime.present import value_text
from ftune.runtime.rundir import ACTIVE_STATES, RunDir, next_free_name, project_of
from ftune.runtime.spec import SpecError, apply_overrides, check_run_name
from ftune.wizard import advanced
from ftune.wizard.prompts import BACK, SEPARATOR, Option, Prompter
from ftune.runtime.spec.edit import get_path
from ftune.runtime.spec.schema import not_of_stage
from ftune.runtime.train import stages
from ftune.wizard.runfile import (
    METHODS,
    STAGES,
    Answers,
    Checked,
    as_written,
    check,
    estimate_for,
    estimate_line,
    lora_trainable_for,
    matched_template,
    model_as_written,
    params_text,
    plan_line,
    preset_summary,
    preset_values,
    refusal,
    run_file_text,
    setting_refusal,
    write_run,
)

LOCAL, HUB, OTHER = "__local__", "__hub__", "__other__"
KEEP, AGAIN, SKIP = "keep", "again", "skip"
START, LATER, CHANGE = "start", "later", "change"


@dataclass
class Outcome:
    run: RunDir
    start: bool
    interrupted: bool = False  # Ctrl+C after the run file was written


class Wizard:
    def __init__(self, prompter: Prompter, answers: Answers, root: Path, gpus: list[memory_estimate.Gpu] | None = None,
                 cwd: Path | None = None, quick: bool = True):
        self.p, self.ui, self.a = prompter, prompter.ui, answers
        self.quick = quick
        self.root = Path(root)
        self.project = project_of(self.root)
        self.cwd = cwd or Path.cwd()
        if gpus is None:
            from ftune.runtime.sysmon import gpu_samples

            gpus = memory_estimate.gpus_from_samples(gpu_samples())
        self.gpus = gpus
        self.info: ModelInfo | None = resolve(answers.model, self.project) if answers.model else None
        self.summary: Any = None
        self.overwrite_ok = False
        self.written: RunDir | None = None
        self.checked: Checked | None = None

    # ------------------------------------------------------------------ driver
    def run(self) -> Outcome:
        steps = [step for step in STEPS if step.applies(self)]
        if self.quick:
            self.a.name = self.a.name or next_free_name(self.root)
            self.ui.print("ftune new: model, data and preset, then a review of the rest. Ctrl+B goes back a step, "
                          "Ctrl+C cancels.", style="bold")
        else:
            self.ui.print("ftune new: a run file in nine steps. Ctrl+B goes back a step, Ctrl+C cancels.",
                          style="bold")
        i = 0
        try:
            while True:
                result = steps[i].ask(self)
                if result is BACK:
                    i = max(0, i - 1)
                    continue
                if isinstance(result, Outcome):
                    return result
                i += 1
        except (KeyboardInterrupt, EOFError):
            if self.written is None:
                raise KeyboardInterrupt from None
            return Outcome(self.written, start=False, interrupted=True)

    # ------------------------------------------------------------------ helpers
    def shown_path(self, written: str | None) -> str:
        """A run-file path as the user would type it here (relative to the current folder when inside it)."""
        if not isinstance(written, str) or not written:
            return ""  # several training files (from --from): the question starts empty
        full = local_path(written, self.project)
        rel = os.path.relpath(full, self.cwd)
        return written if rel.startswith("..") and not Path(written).is_absolute() else (
            str(full) if rel.startswith("..") else rel)

    def typed_path(self, text: str) -> Path:
        p = Path(text.strip()).expanduser()
        return p if p.is_absolute() else self.cwd / p

    def spec_now(self):
        """The spec as the answers stand, with missing answers put aside (for estimates)."""
        trial = copy.deepcopy(self.a)
        try:
            return check(trial, placeholders=True).spec
        except SpecError:
            trial.base, trial.settings, trial.overrides = {}, {}, []
            return check(trial, placeholders=True).spec

    def keep_or_again(self, what: str, keep_title: str) -> Any:
        return self.p.select(what, [Option("Choose again", AGAIN), Option(keep_title, KEEP)], default=AGAIN)

    # ------------------------------------------------------------------ 1. name
    def step_name(self) -> Any:
        default = self.a.name or next_free_name(self.root)
        while True:
            def validate(text: str) -> bool | str:
                problem = check_run_name(text.strip())
                if problem:  # the prompt's error line is one line of the screen: the rule in short
                    return problem if len(problem) < 76 else "not a run name: use a-z, 0-9 and '-' inside, e.g. run-01"
                run = RunDir(self.root, text.strip())
                if run.exists() and run.state() in ACTIVE_STATES:
                    return f"run '{text.strip()}' is {run.state()}: choose another name"
                return True

            answer = self.p.text("Run name", default, validate, instruction="(a-z, 0-9 and -; Ctrl+B back)")
            if answer is BACK:
                continue  # the first step: nothing before it
            name = answer.strip()
            run = RunDir(self.root, name)
            if run.exists():
                ok = self.p.confirm(f"{name} already exists ({run.state()}). Replace its run.yaml? "
                                    f"Its checkpoints and history stay.", default=False)
                if ok is BACK or not ok:
                    default = next_free_name(self.root)
                    continue
                self.overwrite_ok = True
            else:
                self.overwrite_ok = False
            self.a.name = name
            return None

    # ------------------------------------------------------------------ 2. model
    def step_model(self) -> Any:
        info = self.info
        fam = family(info.family) if info and info.source == "catalog" else None
        start = LOCAL if info and info.source == "local" else HUB if info and info.source == "hub" else (
            fam.group if fam else None)
        options = []
        for group, fams in groups().items():
            sizes = _span([m for f in fams for m in f.models])
            versions = ", ".join(f.name for f in fams) if len(fams) > 1 else ""
            remote = all(m.trust_remote_code for f in fams for m in f.models)
            options.append(Option(f"{group:<20} {sizes:<12}" + ("  ships its own code" if remote else ""), group,
                                  (f"{versions}. " if versions else "")
                                  + f"e.g. {_typical(fams[-1])} · template {fams[-1].template}"))
        options += [SEPARATOR, Option("A local folder…", LOCAL,
                                      "A model folder on this machine (with config.json), or a .gguf file."),
                    Option("Another hub id…", HUB,
                           "Any Hugging Face hub id, e.g. HuggingFaceTB/SmolLM2-135M-Instruct.")]
        while True:
            choice = self.p.select("Base model", options, default=start, search=True)
            if choice is BACK:
                return BACK
            start = choice
            got = self.ask_local() if choice == LOCAL else self.ask_hub() if choice == HUB else self.ask_family(choice)
            if got is BACK:
                continue
            if got.trust_remote_code:
                ok = self.p.confirm(f"{got.name_or_path} ships its own model code, which runs when it loads "
                                    f"(model.trust_remote_code). Allow it?", default=True)
                if ok is BACK:
                    continue
                if not ok:
                    self.ui.warn("Without it this model cannot load: choose another.")
                    continue
            if not got.params_b:
                size = self.p.text("Its size, in billions of parameters", "",
                                   lambda s: True if not s.strip() or _positive(s) else "a number, e.g. 7 or 0.5",
                                   instruction="(for the memory estimate; Enter skips)")
                if size is BACK:
                    continue
                got.params_b = float(size) if size.strip() else None
            self.info, self.a.model, self.a.trust_remote_code = got, got.name_or_path, got.trust_remote_code
            self.show_model(got)
            if self.quick and self.a.template_choice is None:  # the model's own template, shown on the review
                self.a.template = matched_template(self.a, got)
            return None

    def ask_family(self, group: str) -> Any:
        fams = groups()[group]
        current = self.info.family if self.info else None
        while True:
            if len(fams) == 1:
                name = fams[0].name
            else:
                current = current if current in [f.name for f in fams] else fams[-1].name
                name = self.p.select(f"{group}: which version?", [
                    Option(f"{f.name:<12} {f.sizes:<12} context {f.models[0].context // 1024}K", f.name,
                           f"template {f.template} · e.g. {_typical(f)}") for f in fams], default=current)
                if name is BACK:
                    return BACK
            current = name
            got = self.ask_size(name)
            if got is BACK and len(fams) > 1:
                continue
            return got

    def ask_size(self, family_name: str) -> Any:
        fam = family(family_name)
        spec = self.spec_now()
        options = []
        for m in fam.models:
            est = estimate_for(from_catalog(m), spec, self.gpus, "lora")
            lora = f" · LoRA ~{gb(est[0].total_gb)}" if est else ""
            options.append(Option(f"{m.size:<16} {m.id}", m.id,
                                  description=f"{m.params_b:g}B parameters · context {m.context} · "
                                              f"template {m.template}{lora}"
                                              + (" · ships its own code" if m.trust_remote_code else "")))
        current = self.info.name_or_path if self.info else None
        choice = self.p.select(f"{fam.name}: which size?", options, default=current)
        if choice is BACK:
            return BACK
        return resolve(choice)

    def ask_local(self) -> Any:
        default = self.shown_path(self.a.model) if self.info and self.info.source == "local" else ""

        def validate(text: str) -> bool | str:
            if not text.strip():
                return "the model's folder (it holds config.json), or a .gguf file"
            return local_problem(self.typed_path(text)) or True

        answer = self.p.path("Model folder or .gguf file", default, validate)
        if answer is BACK:
            return BACK
        folder = self.typed_path(answer)
        if folder.is_file():  # a .gguf file: converted once, then read like a folder
            from ftune.runtime import gguf

            try:
                gguf.ensure(folder, say=self.ui.note)
            except gguf.GGUFError as e:
                self.ui.warn(str(e))
                return self.ask_local()
            return resolve(model_as_written(folder, self.project, self.cwd), self.project)
        return inspect_local(folder.resolve(), model_as_written(folder, self.project, self.cwd))

    def ask_hub(self) -> Any:
        default = self.a.model if self.info and self.info.source == "hub" else ""

        def validate(text: str) -> bool | str:
            text = text.strip()
            if self.typed_path(text).is_dir() and text:
                return local_problem(self.typed_path(text)) or True
            if not is_hub_id(text):
                return "a hub id looks like owner/name, e.g. Qwen/Qwen2.5-7B-Instruct (or a bare name such as gpt2)"
            return True

        answer = self.p.text("Hub id", default, validate, instruction="(owner/name; Ctrl+B back)")
        if answer is BACK:
            return BACK
        text = answer.strip()
        if self.typed_path(text).is_dir():
            folder = self.typed_path(text)
            return inspect_local(folder.resolve(), model_as_written(folder, self.project, self.cwd))
        return resolve(text)

    def show_model(self, info: ModelInfo) -> None:
        facts = [info.family or "family not in the catalog"]
        if info.params_b:
            facts.append(f"{params_text(info.params_b)} parameters")
        if info.context:
            facts.append(f"context {info.context}")
        facts.append(f"template {info.template or 'unknown'}")
        self.ui.note(f"{info.name_or_path}: {', '.join(facts)}")
        if info.lora_targets:
            self.ui.note(f"LoRA targets: {', '.join(info.lora_targets)}")
        for n in info.notes:
            self.ui.note(n)

    # ------------------------------------------------------------------ 3. template
    def template_names(self) -> list[str]:
        """Named templates the run spec accepts today (none while only 'auto' is wired)."""
        names = set(catalog_templates())
        try:
            from ftune.runtime.templates import NAMES

            names |= set(NAMES)
        except ImportError:
            pass
        return sorted(n for n in names if n != "auto" and refusal(self.a, "model.template", template=n) is None)

    def step_template(self) -> Any:
        info = self.info
        matched = info.template if info else None
        accepted = self.template_names()
        auto_desc = "The chat template that ships with the tokenizer (ChatML when it has none)."
        if matched:
            auto_desc += f" For this model that is {matched}'s."
        options = []
        if matched:
            options.append(Option(f"{matched:<12} matched to {info.family}", matched,
                                  f"The template {info.family} was trained with: keep it."))
        options.append(Option(f"{'auto':<12} the tokenizer's own", "auto", auto_desc))
        others = [t for t in accepted if t != matched]
        if others:
            options.append(Option("Another template…", OTHER, f"{len(others)} more: {', '.join(others[:8])}…"))
        self.ui.note(f"Template matched to the model: {matched or 'none (the tokenizer decides)'}.")
        previous = self.a.template_choice
        while True:
            start = OTHER if previous and previous not in ("auto", matched) else previous or matched or "auto"
            choice = self.p.select("Chat template", options, default=start)
            if choice is BACK:
                return BACK
            if choice == OTHER:
                choice = self.p.text("Template name", previous if previous in others else "",
                                     lambda s: True if s.strip() in others
                                     else "not a template this ftune knows (Tab lists them)",
                                     instruction="(Tab lists them; Ctrl+B back)",
                                     completer=WordCompleter(others), complete_while_typing=False,
                                     complete_style=CompleteStyle.READLINE_LIKE)
                if choice is BACK:
                    continue
                choice = choice.strip()
            if choice not in ("auto", matched) and info and info.kind == "instruct":
                self.ui.warn(f"{info.name_or_path} is a chat model trained with {matched or 'its own template'}: "
                             f"instruct and chat models need their own template, another one makes it answer badly.")
                ok = self.p.confirm(f"Use {choice} anyway?", default=False)
                if ok is BACK or not ok:
                    continue
            self.a.template_choice = choice
            why = refusal(self.a, "model.template", template=choice) if choice != "auto" else None
            if why:
                self.a.template = "auto"
                if choice == matched:
                    self.ui.note(f"The run file says 'auto': this ftune takes the chat template from the tokenizer, "
                                 f"which for this model is {matched}'s.")
                else:
                    self.ui.warn(f"This ftune cannot use the template {choice} ({why}): the run file keeps 'auto', "
                                 f"the tokenizer's own template.")
            else:
                self.a.template = choice
            return None

    # ------------------------------------------------------------------ 4. stage
    def step_stage(self) -> Any:
        options = [Option(f"{label:<13} {what}", key, sentence) for key, (label, what, sentence) in STAGES.items()]
        while True:
            choice = self.p.select("Training stage", options, default=self.a.stage)
            if choice is BACK:
                return BACK
            label = STAGES[choice][0]
            needs_reward = stages.stage(choice).needs_reward_model
            staged = [k.removeprefix("stage.") for k in self.a.settings if k.startswith("stage.")]
            for key in not_of_stage(choice, staged):  # the settings of the stage chosen before
                self.a.settings.pop(f"stage.{key}")
            self.a.stage = choice
            if needs_reward and self.ask_reward_model() is BACK:
                continue
            why = refusal(self.a, "stage")
            if why:
                self.ui.warn(f"{label} does not fit the other answers: {why}")
                continue
            return None

    def ask_reward_model(self) -> Any:
        """RL learns against a reward model: a finished rm run or a model folder."""
        def validate(text: str) -> bool | str:
            if not text.strip():
                return "the name of a finished rm run, or a reward model's folder"
            return setting_refusal(self.a, "stage.reward_model", text.strip()) or True

        given = get_path(apply_overrides(self.a.base, self.a.overrides), "stage.reward_model")  # --from, --set
        answer = self.p.text("Reward model (an rm run's name or a model folder)",
                             self.a.settings.get("stage.reward_model", given or ""), validate)
        if answer is BACK:
            return BACK
        self.a.settings["stage.reward_model"] = answer.strip()
        return None

    # ------------------------------------------------------------------ 5. method
    def step_method(self) -> Any:
        spec = self.spec_now()
        if self.info and self.info.params_b:
            gpus = ", ".join(f"{g.name} ({g.free_gb:.0f} of {g.total_gb:.0f} GB free)" for g in self.gpus)
            batch = spec.training.per_device_train_batch_size
            self.ui.note(f"Memory for {spec.data.max_length} tokens × batch {batch}"
                         f" (preset {self.a.preset or 'none'}); GPUs here: {gpus or 'none found'}.")
            lora = estimate_for(self.info, spec, self.gpus, "lora")
            gc = spec.training.gradient_checkpointing
            if lora and lora[0].activations_gb > max(lora[0].weights_gb, 4) and not gc:
                self.ui.note("Activations are most of it: gradient checkpointing (advanced, Precision) or a smaller "
                             "batch cuts them.")
        options = []
        for key, sentence in METHODS.items():
            est = estimate_for(self.info, spec, self.gpus, key)
            title = f"{memory_estimate.LABELS[key]:<17}"
            if est:
                title += f"{'~' + gb(est[0].total_gb):>8}"
                title += f"  {est[1].label:<7}" if est[1].label != memory_estimate.NO_GPU else " " * 9
            desc = sentence
            if not est:
                desc += "\nModel size unknown: no memory estimate."
            elif est[1].label != memory_estimate.NO_GPU:
                desc += f"\n{est[1].text}"
            # pure bf16 without a bf16 GPU is slow and imprecise (QLoRA's bitsandbytes runs on a CPU too)
            gpu_only = key == "full-bf16" and not self.gpus
            options.append(Option(title.rstrip(), key, desc,
                                  disabled="needs a CUDA GPU; none found here" if gpu_only else None))
        while True:
            choice = self.p.select("Method", options, default=self.a.method)
            if choice is BACK:
                return BACK
            why = refusal(self.a, "method", "training.precision", method=choice)
            if why:
                self.ui.warn(f"{memory_estimate.LABELS[choice]} does not fit the other answers: {why}")
                continue
            self.a.method = choice
            est = estimate_for(self.info, self.spec_now(), self.gpus, choice)
            if est:
                self.ui.note(f"{memory_estimate.LABELS[choice]}: ~{gb(est[0].total_gb)}, {est[1].text}")
            return None

    # ------------------------------------------------------------------ 6. data
    def show_summary(self, s: Any) -> None:
        name = self.ui.t(os.path.relpath(s.path, self.cwd) if not os.path.relpath(s.path, self.cwd).startswith("..")
                         else s.path)
        for level, line in data_summary(s, name):
            (self.ui.warn if level == "warn" else self.ui.note)(line)

    def show_images(self, s: Any) -> None:
        if images_line(s):
            self.ui.note(images_line(s))

    def data_issues(self, s: Any) -> list[str]:
        issues = []
        if s.format is None:
            issues.append(f"the format was not recognised ({s.reason})")
        else:
            if s.stages and self.a.stage not in s.stages:
                issues.append(f"{s.format} data suits {', '.join(s.stages)}, not {STAGES[self.a.stage][0]}")
        info = self.info
        if getattr(s, "images", 0) and info is not None and info.family and info.vision is None:
            issues.append(f"it has images, and {info.name_or_path} reads text only: choose a vision-language model "
                          f"(Qwen-VL) or data without images")
        return issues

    def step_data(self) -> Any:
        default = self.shown_path(self.a.data)
        while True:
            def validate(text: str) -> bool | str:
                path = self.typed_path(text)
                if not text.strip():
                    return "the training data file (JSONL)"
                if not path.is_file():
                    return f"{path} is not a file" if path.exists() else f"{path} does not exist"
                return True

            answer = self.p.path("Training data file", default, validate)
            if answer is BACK:
                return BACK
            default = answer
            from ftune.runtime.data.load import summarize_file

            path = self.typed_path(answer)
            names = None
            if path.name == "dataset_info.json":  # LLaMA-Factory's registry: pick data sets from it by name
                picked = self.ask_registry(path)
                if picked is BACK:
                    continue
                names, s = picked
            else:
                s = summarize_file(path)
                self.show_summary(s)
            if s.fatal or not s.valid:
                continue
            on_invalid = None
            if s.invalid and s.valid:
                nxt = self.p.select(f"{s.invalid} of {s.total} rows are invalid. What now?", [
                    Option(f"Skip the {s.invalid} invalid rows when training", SKIP,
                           "data.on_invalid: skip: training counts and reports the rows it drops."),
                    Option("Choose another file", AGAIN),
                    Option("Keep them: training refuses the file until they are fixed", KEEP),
                ], default=SKIP if self.a.on_invalid == "skip" else AGAIN)
                if nxt is BACK or nxt == AGAIN:
                    continue
                on_invalid = "skip" if nxt == SKIP else None
            if self.quick and s.stages and self.a.stage not in s.stages:  # e.g. preference data: dpo
                self.a.stage = s.stages[0]
                self.ui.note(f"This is {s.kind} data: the stage is {STAGES[self.a.stage][0]} (change it on the "
                             f"review).")
            issues = self.data_issues(s)
            if issues:
                self.ui.warn("; ".join(issues) + ".")
                nxt = self.keep_or_again("Choose another file, or keep this one?",
                                         "Keep it: training may refuse it")
                if nxt is BACK or nxt == AGAIN:
                    continue
            if names:
                self.a.data = names if len(names) > 1 else names[0]
                self.a.base.setdefault("data", {})["dataset_dir"] = as_written(path.parent, self.project, self.cwd)
            else:
                self.a.data = as_written(path, self.project, self.cwd)
                self.a.base.get("data", {}).pop("dataset_dir", None)  # a file now, not a key of a dataset_info.json
            self.a.on_invalid, self.summary = on_invalid, s
            if not self.quick and self.ask_validation() is BACK:
                continue
            return None

    def ask_registry(self, info_path: Path) -> Any:
        """(names, their summaries added up) of the data sets chosen from a dataset_info.json; BACK to type
        another path. Only entries whose files are here and readable are offered; one kind of data at a time."""
        from ftune.runtime.data.check import check_registry
        from ftune.runtime.data.formats import DataError
        from ftune.runtime.data.load import FileSummary

        try:
            entries = [(n, r.summary) for n, r, _ in check_registry(info_path) if r and not r.fatal and r.summary.valid]
        except DataError as e:
            self.ui.warn(str(e))
            return BACK
        if not entries:
            self.ui.warn(f"{info_path} names no data set whose file is here: choose a data file")
            return BACK
        current = self.a.data if isinstance(self.a.data, list) else [self.a.data]
        options = [Option(f"{n:<24} {s.format}, {s.kind}, {s.valid} rows" + (", images" if s.images else ""), n,
                          f"Suits {', '.join(s.stages)}."
                          + (f" {s.invalid} invalid rows." if s.invalid else "")) for n, s in entries]
        while True:
            names = self.p.checkbox(f"Data sets in {info_path.name}", options, checked=current)
            if names is BACK:
                return BACK
            chosen = [s for n, s in entries if n in names]
            kinds = {s.kind for s in chosen}
            if not chosen or len(kinds) > 1:
                self.ui.warn("choose at least one data set" if not chosen else
                             f"these hold different kinds of data ({', '.join(sorted(kinds))}): one kind per run")
                continue
            total = FileSummary(str(info_path), chosen[0].format, f"{len(chosen)} data sets from {info_path.name}",
                                chosen[0].stages, chosen[0].kind, sum(s.total for s in chosen),
                                sum(s.valid for s in chosen), [e for s in chosen for e in s.errors][:5],
                                image_rows=sum(s.image_rows for s in chosen), images=sum(s.images for s in chosen))
            with_images = [s for s in chosen if s.images]
            if with_images:
                sizes = [r for s in with_images for r in (s.resolutions["smallest"], s.resolutions["largest"])]
                def area(size: str) -> int:
                    width, height = size.split("x")
                    return int(width) * int(height)

                total.resolutions = {"smallest": min(sizes, key=area), "median": "", "largest": max(sizes, key=area)}
            self.ui.note(f"{', '.join(names)}: {total.valid} rows of {total.kind} data; suits "
                         f"{', '.join(total.stages)}")
            self.show_images(total)
            return names, total

    def ask_validation(self) -> Any:
        share = self.a.val_size if self.a.val_size not in (None, 0.0) else 0.1
        rows = self.summary.valid if self.summary else 0
        options = [
            Option(f"Hold out {share:.0%} of the training rows", "share",
                   f"About {round(rows * share)} of {rows} rows are kept for evaluation, the rest trains."),
            Option("Hold out another share…", "other"),
            Option("A separate validation file…", "file"),
            Option("No validation", "none", "No evaluation loss: you only see the training loss."),
        ]
        current = "file" if self.a.validation else "none" if self.a.val_size == 0 else "share"
        while True:
            choice = self.p.select("Validation", options, default=current)
            if choice is BACK:
                return BACK
            if choice == "share":
                self.a.validation, self.a.val_size = None, (share if share != 0.1 else None)
                return None
            if choice == "none":
                self.a.validation, self.a.val_size = None, 0.0
                return None
            if choice == "other":
                def validate(text: str) -> bool | str:
                    value = _share(text)
                    if value is None:
                        return "a share like 0.05 or 5%"
                    return setting_refusal(self.a, "data.val_size", value) or True

                answer = self.p.text("Share of the rows to hold out", f"{share:g}", validate,
                                     instruction="(e.g. 0.05 or 5%; Ctrl+B back)")
                if answer is BACK:
                    continue
                self.a.validation, self.a.val_size = None, _share(answer)
                return None
            answer = self.p.path("Validation file", self.shown_path(self.a.validation),
                                 lambda t: True if self.typed_path(t).is_file() else "a file with validation rows")
            if answer is BACK:
                continue
            from ftune.runtime.data.load import summarize_file

            s = summarize_file(self.typed_path(answer))
            self.show_summary(s)
            if s.fatal or s.format is None or not s.valid:
                continue
            self.a.validation, self.a.val_size = as_written(self.typed_path(answer), self.project, self.cwd), None
            return None

    # ------------------------------------------------------------------ 7. preset
    def step_preset(self) -> Any:
        from ftune.presets import NAMES, describe

        values = {n: preset_values(n) for n in NAMES}
        common = {k for k in values[NAMES[0]] if all(values[n].get(k) == values[NAMES[0]][k] for n in NAMES)}
        options = [Option(f"{n:<9} {preset_summary(n, skip=common)}", n, f"{describe(n)}\nSets {preset_summary(n)}.")
                   for n in NAMES]
        options.append(Option(f"{'advanced':<9} every setting, grouped", "advanced",
                              "Start from a preset, then change the training, LoRA, precision, saving and "
                              "evaluation settings one by one (their defaults shown)."))
        current = "advanced" if self.a.settings else self.a.preset
        while True:
            choice = self.p.select("Scenario preset", options, default=current)
            if choice is BACK:
                return BACK
            if choice != "advanced":
                self.a.preset = choice
                return None
            base = self.p.select("Start from which preset?", options[:-1], default=self.a.preset)
            if base is BACK:
                continue
            self.a.preset = base
            if advanced.edit(advanced.Context(self.a, self.p, self.spec_now)) is BACK:
                continue
            return None

    # ------------------------------------------------------------------ 8. review
    def review_panel(self, checked: Checked) -> Any:
        """The run file as it will be written (without its comment header), and what it means."""
        run = RunDir(self.root, checked.raw["name"])
        body = "\n".join(line for line in run_file_text(checked).splitlines() if not line.startswith("#"))
        syntax = Syntax(self.ui.t(body), "yaml", theme="ansi_dark", background_color="default", word_wrap=True)
        spec = checked.spec
        t = spec.training
        facts = [f"lr {value_text(t.learning_rate)}", f"{value_text(t.num_train_epochs)} epochs",
                 f"batch {t.per_device_train_batch_size}", f"{spec.data.max_length} tokens"]
        if spec.method.type == "lora":
            trainable = lora_trainable_for(self.info, spec)
            facts.append(f"LoRA r{spec.method.lora.rank} α{value_text(spec.method.lora.alpha)}"
                         + (f" ({trainable:,} trainable parameters)" if trainable else ""))
        lines = [" · ".join(facts)]
        if self.summary is not None and not self.summary.fatal:
            lines.append(plan_line(spec, self.summary.valid, self.root, spec.model.name_or_path, self.gpus))
        lines.append(estimate_line(self.info, spec, self.gpus, self.a.method))
        footer = Text("\n".join(self.ui.t(x) for x in lines), style="dim")
        title = self.ui.t(os.path.relpath(run.spec_path, self.cwd))
        return Panel(Group(syntax, Text(""), footer), title=title, box=self.ui.box, expand=True)

    def step_review(self) -> Any:
        try:
            checked = check(self.a)
        except SpecError as e:
            self.ui.warn(self.ui.t(str(e)))
            nxt = self.p.select("The answers have mistakes", [Option("Go back and change them", AGAIN),
                                                              Option("Cancel", "cancel")])
            if nxt == "cancel":
                raise KeyboardInterrupt from None
            return BACK
        self.checked = checked
        self.ui.print(self.review_panel(checked))
        run = RunDir(self.root, checked.raw["name"])
        if self.quick:
            return self.quick_review(checked, run)
        while True:
            choice = self.p.select("Write it?", [
                Option(f"Write {os.path.relpath(run.spec_path, self.cwd)}", "write"),
                Option("Go back and change something", "back"),
                Option("Cancel", "cancel"),
            ], default="write")
            if choice is BACK or choice == "back":
                return BACK
            if choice == "cancel":
                raise KeyboardInterrupt
            if run.exists() and not self.overwrite_ok:
                ok = self.p.confirm(f"{run.spec_path} exists. Replace it?", default=False)
                if ok is BACK or not ok:
                    continue
            if run.exists() and run.state() in ACTIVE_STATES:
                self.ui.warn(f"{run.name} is {run.state()}: not touching its run file. Go back and pick another name.")
                continue
            self.written = write_run(self.root, checked)
            self.overwrite_ok = True  # ours now: going back and writing again replaces it
            self.ui.good(f"Wrote {os.path.relpath(self.written.spec_path, self.cwd)}")
            return None

    def quick_review(self, checked: Checked, run: RunDir) -> Any:
        """The beginner's last question: write and start, write only, or change one of the answers not asked."""
        choice = self.p.select("Go?", [
            Option("Write it and start training", START, f"Writes {os.path.relpath(run.spec_path, self.cwd)}, "
                   f"then `ftune train {run.name}` in the background."),
            Option("Write it; start later", LATER, f"Then: ftune train {run.name}"),
            Option("Change something first…", CHANGE, "The run name, template, stage, method or validation."),
            Option("Cancel", "cancel"),
        ], default=START)
        if choice is BACK:
            return BACK
        if choice == "cancel":
            raise KeyboardInterrupt
        if choice == CHANGE:
            self.change_one()
            return self.step_review()
        if run.exists() and not self.overwrite_ok:
            ok = self.p.confirm(f"{run.spec_path} exists. Replace it?", default=False)
            if ok is BACK or not ok:
                return self.step_review()
        if run.exists() and run.state() in ACTIVE_STATES:
            self.ui.warn(f"{run.name} is {run.state()}: not touching its run file. Change the run name.")
            return self.step_review()
        self.written = write_run(self.root, checked)
        self.ui.good(f"Wrote {os.path.relpath(self.written.spec_path, self.cwd)}")
        return Outcome(self.written, start=choice == START)

    def change_one(self) -> None:
        """One of the answers the quick path took as its default, asked as the full path asks it."""
        spec = self.spec_now()
        now = {"name": self.a.name, "template": self.a.template, "stage": STAGES[self.a.stage][0],
               "method": memory_estimate.LABELS.get(self.a.method, self.a.method),
               "validation": (f"file {self.a.validation}" if self.a.validation
                              else "none" if spec.data.val_size == 0 else f"{spec.data.val_size:.0%} held out")}
        choice = self.p.select("Change which?", [Option(f"{step.label:<16} {now[step.name]}", step.name)
                                                 for step in CHANGEABLE], default="name")
        if choice is BACK:
            return
        self.a.template_choice = self.a.template_choice or self.a.template
        next(step for step in CHANGEABLE if step.name == choice).ask(self)

    # ------------------------------------------------------------------ 9. start
    def step_start(self) -> Any:
        run = self.written
        ok = self.p.confirm("Start training now?", default=True)
        if ok is BACK:
            return BACK
        return Outcome(run, start=bool(ok))


@dataclass(frozen=True)
class Step:
    """One question of the wizard. `ask(wizard)` returns None to go on, BACK for the step before, or an Outcome to
    end; `applies(wizard)` is False where the path being taken does not ask it (the quick path shows it on the
    review instead); `label` names the ones the quick review offers to change."""

    name: str
    ask: Callable[[Wizard], Any]
    applies: Callable[[Wizard], bool] = lambda wizard: True
    label: str = ""


def _full_only(wizard: Wizard) -> bool:
    return not wizard.quick


NAME = Step("name", Wizard.step_name, _full_only, "Run name")
TEMPLATE = Step("template", Wizard.step_template, _full_only, "Chat template")
STAGE = Step("stage", Wizard.step_stage, _full_only, "Training stage")
METHOD = Step("method", Wizard.step_method, _full_only, "Method")
# in order: the full path asks every one, the quick path model, data, preset and review
STEPS = (NAME, Step("model", Wizard.step_model), TEMPLATE, STAGE, METHOD, Step("data", Wizard.step_data),
         Step("preset", Wizard.step_preset), Step("review", Wizard.step_review),
         Step("start", Wizard.step_start, _full_only))
# "Change something first…" on the quick review: the steps it skipped, and the data step's validation question
CHANGEABLE = (NAME, TEMPLATE, STAGE, METHOD, Step("validation", Wizard.ask_validation, label="Validation"))


def _span(models: list) -> str:
    """'0.5B-72B': the smallest and the largest size."""
    by_size = sorted(models, key=lambda m: m.params_b)
    first, last = by_size[0].size.split()[0], by_size[-1].size.split()[0]
    return first if first == last else f"{first}-{last}"


def _typical(fam: Any) -> str:
    """A family's middle model, as an example."""
    return fam.models[len(fam.models) // 2].id


def _positive(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def _share(text: str) -> float | None:
    text = text.strip()
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        return None
