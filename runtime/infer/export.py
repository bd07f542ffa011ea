"""`ftune export`: write a run's model in a chosen format, then prove it loads and generates.

Formats are entries of infer/formats/ (lora, merged_16bit, merged_4bit, gguf): how each is written, loaded back and
judged, and what may be exported so. gguf has a pipeline of its own here: merged, then one .gguf file for
llama.cpp, Ollama and LM Studio, written by llama.cpp's own converter (`--quant` f16, bf16, q8_0; q4_k_m, q5_k_m,
q6_k through llama-quantize), with an Ollama Modelfile beside it (see `_export_gguf` and infer/gguf_export.py).

Every export gets its tokenizer with the chat template used in training, a model card (README.md)
and `ftune_export.json`. It is written to a hidden `.partial` folder, loaded back with plain
transformers/peft, and its logits compared with the run's model on a probe conversation; only
when that check passes is it moved into place, so a folder that exists is a working model.

Precision: on a CPU the run's model is loaded and merged in fp32 (merging in half precision there
is slow and rounds twice); on a GPU in bf16 (fp16 where bf16 is missing). Either way a merged
export is saved in bf16 (formats/merged_16bit.py) — the rule the training worker follows for its own
merged_16bit export too, so both paths write the same thing on any machine.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ftune.runtime import models
from ftune.runtime.errors import UserError
from ftune.runtime.files import publish_dir
from ftune.runtime.infer import formats, gguf_export, loading, modelcard, modelfile
from ftune.runtime.infer.formats.format import free_memory
from ftune.runtime.rundir import RunDir
from ftune.runtime.spec import load_spec

MARKER = "ftune_export.json"
PROBE = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Where is my order? 我的订单在哪里？"},
    {"role": "assistant", "content": "Open Orders and pick the order: the tracking link shows where it is."},
]
# What "the export matches the run's model" means (logits on the probe conversation, see `judge`): each format's
# max_rel_diff (formats/), and for a merge a difference far smaller than what the adapter itself changes (a merge
# that lost the adapter fails here).
MAX_SHARE_OF_ADAPTER_EFFECT = 0.25
# A GGUF file against the merged model, on the probe conversation and QUESTIONS: the largest logit difference as a
# share of the logits' range. Measured on SmolLM2-135M: f16 0.13%, bf16 0.85%, q8_0 3.1%; the k-quants are
# reported, not judged. f16 and q8_0 must also give the same greedy answers (but for near ties: `_export_gguf`).
GGUF_MAX_REL_DIFF = {"f16": 0.01, "bf16": 0.05, "q8_0": 0.08}
GGUF_SAME_ANSWERS = ("f16", "q8_0")
QUESTIONS = [[{"role": "user", "content": "Where is my order?"}],
             [{"role": "system", "content": "You are a helpful assistant."},
              {"role": "user", "content": "How do I reset my password?"}],
             [{"role": "user", "content": "Do you ship abroad? 你们发货到国外吗？"}]]

class ExportError(UserError):
    """An export that cannot be made or did not check out: one clear sentence."""


@dataclass
class ExportResult:
    path: Path
    format: str
    source: str  # "export" or "checkpoint-<step>"
    dtype: str
    check: dict[str, Any] = field(default_factory=dict)
    sample: str = ""  # what the exported model generated on the probe question
    gguf: dict[str, Any] = field(default_factory=dict)  # file, quant, bytes, sha256, ollama (the create line)


def default_out(run: RunDir, fmt: str, target: loading.Target) -> Path:
    name = fmt if target.step is None else f"{fmt}-step-{target.step}"
    return run.output_base() / "exports" / name


def _check_out(out: Path, run: RunDir, target: loading.Target) -> None:
    out = out.resolve()
    for taken in (run.export_dir().resolve(), run.checkpoints_dir().resolve()):
        if out == taken or taken in out.parents:
            raise ExportError(f"--out {out} is inside the run's own {taken.name}/: choose another folder")
    if out == run.path.resolve():
        raise ExportError(f"--out {out} is the run directory itself: choose another folder")
    if out == target.path.resolve():
        raise ExportError(f"--out {out} is the folder being exported from: choose another folder")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise ExportError(f"{out} exists and is not an earlier ftune export: choose an empty or new folder")


# --------------------------------------------------------------------------- checking
def probe_image():
    """A picture for a vision-language model's probe: a colour gradient, the same every time."""
    from PIL import Image

    img = Image.new("RGB", (96, 64))
    img.putdata([(4 * x % 256, 4 * y % 256, 128) for y in range(64) for x in range(96)])
    return img


def probe_inputs(tokenizer, causal: bool = True, vision=None) -> dict[str, Any]:
    if vision is not None:  # the probe with a picture, so the export's vision tower is checked too
        text = vision.processor.apply_chat_template(vision_probe(), tokenize=False)
        return vision.processor(text=[text], images=[probe_image()], return_tensors="pt")
    text = tokenizer.apply_chat_template(PROBE, tokenize=False)
    return tokenizer(text, add_special_tokens=False, return_tensors="pt")


def vision_probe() -> list[dict[str, Any]]:
    return [PROBE[0], {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROBE[1]["content"]}]},
            PROBE[2]]


def logits_of(model, inputs: dict[str, Any]):
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model(**{k: v.to(device) for k, v in inputs.items()})
    return out.logits.float().cpu()


def compare(ref, got) -> dict[str, float]:
    """How close two sets of logits are: largest difference (absolute and relative to the logits' range)
    and how often the top next token is the same."""
    diff = (ref - got).abs()
    scale = float(ref.abs().max()) or 1.0
    agreement = float((ref.argmax(-1) == got.argmax(-1)).float().mean())
    return {"max_abs_diff": float(diff.max()), "rel_diff": float(diff.max()) / scale, "agreement": agreement}


def judge(fmt: str, check: dict[str, Any], causal: bool = True) -> str | None:
    """Why an export does not match the run's model (None when it does)."""
    import math

    if not math.isfinite(check["max_abs_diff"]):
        return "its logits are not finite"
    if causal and check.get("generated_tokens", 0) < 1:
        return "it generated nothing"
    f = formats.get(fmt)
    if f.max_rel_diff is None:
        return None
    if check["rel_diff"] > f.max_rel_diff:
        return f"its logits differ by up to {check['max_abs_diff']:.3g} ({check['rel_diff']:.1%} of their range)"
    effect = check.get("adapter_effect")
    if f.merged and effect and effect > 1e-3 * check["scale"] \
            and check["max_abs_diff"] > MAX_SHARE_OF_ADAPTER_EFFECT * effect:
        return (f"its logits differ from the run's by {check['max_abs_diff']:.3g}, against {effect:.3g} between the "
                f"run's model and its base: the adapter did not survive the merge")
    return None


def load_exported(path: Path, fmt: str, spec, run: RunDir, dtype, vision: bool = False):
    """The export as a user would load it: plain transformers, or peft for an adapter."""
    import transformers

    f = formats.get(fmt)
    causal = spec.stage.definition.causal_lm
    extra: dict[str, Any] = {} if causal else {"num_labels": 1}
    placement = loading.placement()
    if vision:  # peft has no auto class for image-text-to-text: the base, then the adapter on it
        if f.adapter:
            from peft import PeftModel

            return PeftModel.from_pretrained(loading.load_base_model(spec, run, dtype), path)
        kwargs = {} if f.quantized else {"dtype": dtype}
        return transformers.AutoModelForImageTextToText.from_pretrained(
            path, trust_remote_code=spec.model.trust_remote_code, **placement, **kwargs)
    if f.adapter:
        if spec.model.rope_scaling:  # the adapter's base needs the run's RoPE config
            from peft import PeftModel

            return PeftModel.from_pretrained(loading.load_base_model(spec, run, dtype), path)
        import peft

        cls = peft.AutoPeftModelForCausalLM if causal else peft.AutoPeftModelForSequenceClassification
        return cls.from_pretrained(path, dtype=dtype, trust_remote_code=spec.model.trust_remote_code, **placement,
                                   **extra)
    cls = transformers.AutoModelForCausalLM if causal else transformers.AutoModelForSequenceClassification
    kwargs = {} if f.quantized else {"dtype": dtype}  # a 4-bit model brings its own quantisation config
    return cls.from_pretrained(path, trust_remote_code=spec.model.trust_remote_code, **placement, **kwargs, **extra)


# --------------------------------------------------------------------------- writing
def unquantized(model, spec, run: RunDir, staging: Path):
    """A QLoRA model (its base in 4 or 8 bits) as the adapter on the base in full precision, ready to merge:
    merging into 4/8-bit weights rounds the adapter away, and a quantised model cannot be cast to 16 bits. The
    adapter goes through `staging` (deleted after). Any other model is returned as it is."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "is_quantized", False):
        return model
    model.save_pretrained(staging)
    try:
        return loading.load_weights(spec, run, loading.Target(staging, "export", None, True))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def export_run(run: RunDir, fmt: str | None = None, checkpoint: int | None = None, out: str | Path | None = None,
               say: Callable[[str], None] = lambda s: None, quant: str | None = None) -> ExportResult:
    """Write the run's model (its export, or checkpoint N) in `fmt` to `out`, checked; see the module doc.
    `quant` is for gguf (default: the run's output.gguf_quant)."""
    with loading.quiet():
        return _export(run, fmt, checkpoint, out, say, quant)


def _export(run: RunDir, fmt: str | None, checkpoint: int | None, out: str | Path | None,
            say: Callable[[str], None], quant: str | None = None) -> ExportResult:
    import torch
    from transformers import AutoTokenizer

    from ftune.runtime.infer.generate import Generation, Settings, Vision

    spec = load_spec(run.spec_path)
    fmt = fmt or spec.output.save_format
    if fmt not in formats.FORMATS:
        raise ExportError(f"unknown export format '{fmt}': use one of {', '.join(formats.NAMES)}")
    f = formats.get(fmt)
    problem = (f.problem() if f.problem else None) or spec.stage.definition.export_refusal(fmt)
    if problem:
        raise ExportError(problem)
    causal = spec.stage.definition.causal_lm
    pipeline = f.own_pipeline  # gguf: llama.cpp's converter, below
    if quant is not None and not pipeline:
        raise ExportError(f"--quant is for --format gguf; {fmt} has no quantisation to choose")
    if pipeline:
        quant = quant or spec.output.gguf_quant
        problem = gguf_export.problem(quant)
        if problem:
            raise ExportError(problem)
    target = loading.resolve_target(run, checkpoint)
    if f.adapter and not target.adapter:
        if spec.method.type != "lora":
            raise ExportError(f"run '{run.name}' trained the weights themselves (method {spec.method.type}): "
                              f"there is no adapter to export; use --format merged_16bit")
        steps = ", ".join(str(s) for s, _ in run.checkpoints()) or "none"
        raise ExportError(f"the run's {target.label} is a merged model; the adapter is in its checkpoints: "
                          f"pass --checkpoint STEP (checkpoints: {steps})")
    out = Path(out).expanduser().resolve() if out else default_out(run, f"{fmt}-{quant}" if pipeline else fmt,
                                                                      target)
    _check_out(out, run, target)

    cuda = torch.cuda.is_available()
    dtype = loading.inference_dtype() if cuda else torch.float32
    say(f"Loading {run.name} ({target.label}{', adapter on ' + spec.model.name_or_path if target.adapter else ''})")
    base = models.model_source(spec.model.name_or_path, run.project)
    vision = loading.load_vision(spec, target, run, base)
    problem = f.refusal(spec.stage.definition, vision is not None)
    if problem:
        raise ExportError(problem)
    tokenizer = vision.processor.tokenizer if vision else loading.load_tokenizer(spec, target, run, base)
    model = loading.load_weights(spec, run, target, dtype)
    model.eval()
    if getattr(model, "is_quantized", False):  # a merged_4bit export: rounded once already, and fixed in 4 bits
        steps = ", ".join(str(s) for s, _ in run.checkpoints()) or "none"
        raise ExportError(f"the run's {target.label} is quantised to 4 bits (merged_4bit) and cannot be written "
                          f"again as {fmt}: pass --checkpoint STEP to export from the adapter (checkpoints: {steps})")
    if pipeline:
        holder, model = [model], None  # _export_gguf lets go of it once it is merged and saved
        return _export_gguf(run, spec, target, holder, tokenizer, quant, out, say)
    inputs = probe_inputs(tokenizer, vision=vision)
    reference = logits_of(model, inputs)
    effect = None
    if target.adapter:  # how far the adapter moves the base: the yardstick for a merge
        with model.disable_adapter():
            effect = float((logits_of(model, inputs) - reference).abs().max())

    with publish_dir(out) as tmp:  # moved into place only once it has passed the check
        say(f"Writing {fmt} to {out}")
        holder, model = model, None  # the writer may let go of it (merged_4bit quantises from a staging folder)
        saved_dtype = f.write(holder, tmp, tokenizer, target.adapter, vision is not None,
                              spec.model.trust_remote_code)
        del holder
        tokenizer.save_pretrained(tmp)
        if vision is not None:
            vision.processor.save_pretrained(tmp)
        model = None  # the run's model is no longer needed: free it before loading the export
        free_memory()

        say("Checking that it loads with plain transformers/peft and generates")
        loaded = load_exported(tmp, fmt, spec, run, dtype, vision is not None)
        loaded.eval()
        tok = AutoTokenizer.from_pretrained(tmp, trust_remote_code=spec.model.trust_remote_code)
        if tok.chat_template != tokenizer.chat_template:
            raise ExportError("the exported tokenizer lost the run's chat template")
        saved_vision = None
        if vision is not None:  # the export's own processor, as a user would open it
            saved_vision = Vision(models.load_processor(str(tmp), trust_remote_code=spec.model.trust_remote_code,
                                                        model=base), vision.min_pixels, vision.max_pixels)
            tok = saved_vision.processor.tokenizer
        check = compare(reference, logits_of(loaded, probe_inputs(tok, vision=saved_vision)))
        check.update(scale=float(reference.abs().max()), adapter_effect=effect, generated_tokens=0)
        sample = ""
        if causal:
            gen = Generation(loaded, tok, PROBE[:2], Settings(temperature=0, max_new_tokens=16), vision=saved_vision)
            sample = gen.result()
            check["generated_tokens"] = gen.completion_tokens
        problem = judge(fmt, check, causal)
        if problem:
            raise ExportError(f"the exported model does not match the run's model: {problem}; nothing was "
                              f"written to {out}", hint="This is a bug in ftune or a library: please report it with the command.")
        del loaded
        free_memory()

        metrics = modelcard.run_metrics(run, target.step)
        modelcard.write(tmp, modelcard.render(spec, run, fmt, target.label, metrics, saved_dtype, check))
        (tmp / MARKER).write_text(json.dumps({
            "run": run.name, "format": fmt, "source": target.label, "step": target.step, "dtype": saved_dtype,
            "base_model": spec.model.name_or_path, "check": check, "created": time.time()}, indent=2) + "\n")
    return ExportResult(out, fmt, target.label, saved_dtype, check, sample)


# --------------------------------------------------------------------------- gguf
def _greedy(model, tokenizer, messages, stops: list[int], n: int = 16) -> tuple[list[int], list]:
    """The greedy answer's token ids and the raw logits of each step, with the same settings for any model (the
    model's own generation config aside, so only the weights differ)."""
    import torch
    from transformers import GenerationConfig

    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    config = GenerationConfig(do_sample=False, max_new_tokens=n, eos_token_id=stops,
                              pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0])
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model.generate(**{k: v.to(device) for k, v in inputs.items()}, generation_config=config,
                             output_logits=True, return_dict_in_generate=True)
    ids = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    return ids, [step[0].float().cpu() for step in out.logits]


def _parting(want: tuple[list[int], list], got: tuple[list[int], list], stop: int) -> tuple[int, float, float] | None:
    """Where two greedy answers part: (step, the merged model's margin between its token and the GGUF's there, the
    largest logit difference between the two at that step); None when they are the same."""
    (a, ra), (b, rb) = want, got
    if a == b:
        return None
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    if k >= len(ra) or k >= len(rb):  # one reached its length limit: the same as far as both go
        return None
    x, y = (a[k] if k < len(a) else stop), (b[k] if k < len(b) else stop)
    return k, float(ra[k][x] - ra[k][y]), float((ra[k] - rb[k]).abs().max())


def _data_system(spec, run: RunDir) -> str | None:
    """The system prompt the run's training data used most (None when it had none or cannot be read)."""
    from ftune.runtime.data.formats import read_rows

    rows: list = []
    for name in spec.data.train:
        path = Path(name).expanduser()
        path = path if path.is_absolute() else run.project / path
        try:
            for _, _, row in read_rows(path):
                rows.append(row)
                if len(rows) >= 2000:
                    break
        except (UserError, OSError, ValueError):
            continue
    return modelfile.data_system_prompt(rows)


def _first_difference(a: list[int], b: list[int], tokenizer) -> str:
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    show = lambda ids: repr(tokenizer.convert_ids_to_tokens(ids[i]) if i < len(ids) else "the end")  # noqa: E731
    return f"token {i}: {show(a)} in the GGUF, {show(b)} in the run's"


def _export_gguf(run: RunDir, spec, target: loading.Target, holder: list, tokenizer, quant: str, out: Path,
                 say: Callable[[str], None]) -> ExportResult:
    """Merge, convert with llama.cpp's converter, read it back with transformers and compare with the merged model
    (tokenizer metadata, tokens, logits, greedy answers), write the Modelfile and the card; then publish."""
    from ftune.runtime.templates import stop_token_ids

    model = holder.pop()
    inner = model.get_base_model() if target.adapter else model
    gguf_export.check_architecture({"architectures": [type(inner).__name__]})
    texts = [tokenizer.apply_chat_template(PROBE, tokenize=False)]
    texts += [tokenizer.apply_chat_template(q, tokenize=False, add_generation_prompt=True) for q in QUESTIONS]
    prompts = [tokenizer(t, add_special_tokens=False, return_tensors="pt") for t in texts]
    say("Computing the merged model's logits and greedy answers to compare the file with")
    reference = [logits_of(model, p) for p in prompts]
    stops = stop_token_ids(tokenizer, inner)
    answers = [_greedy(model, tokenizer, q, stops) for q in QUESTIONS]
    nothing = f"nothing was written to {out}"
    timings: dict[str, float] = {}
    with publish_dir(out) as tmp:
        staging = tmp.with_name(tmp.name + ".merged")
        shutil.rmtree(staging, ignore_errors=True)
        file = tmp / f"{run.name}-{quant}.gguf"
        try:
            merged = model.merge_and_unload() if target.adapter else model
            merged.save_pretrained(staging)  # at the loaded precision: the converter rounds once, to `quant`
            tokenizer.save_pretrained(staging)
            del merged, model, inner
            free_memory()
            say(f"Writing {file.name} with llama.cpp's converter ({quant})")
            t0 = time.time()
            gguf_export.convert(staging, file, quant, say)
            timings["convert_s"] = round(time.time() - t0, 2)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

        say("Checking it: tokenizer metadata, tokens, logits and greedy answers, read back with transformers")
        t0 = time.time()
        meta = gguf_export.read_metadata(file)
        problems = gguf_export.metadata_problems(meta, tokenizer, stops)
        if problems:
            raise ExportError(f"the GGUF file does not match the run's tokenizer: {'; '.join(problems)}; {nothing}")
        loaded, gtok = gguf_export.load(file)
        for text, p in zip(texts, prompts):
            got = gtok(text, add_special_tokens=False)["input_ids"]
            if got != p["input_ids"][0].tolist():
                raise ExportError(f"the GGUF file's tokenizer splits the probe text differently from the run's "
                                  f"({_first_difference(got, p['input_ids'][0].tolist(), tokenizer)}); {nothing}")
        checks = [compare(ref, logits_of(loaded, p)) for ref, p in zip(reference, prompts)]
        worst = max(range(len(checks)), key=lambda i: checks[i]["rel_diff"])
        check: dict[str, Any] = {
            "quant": quant, "max_abs_diff": max(c["max_abs_diff"] for c in checks),
            "rel_diff": checks[worst]["rel_diff"], "agreement": min(c["agreement"] for c in checks),
            "scale": max(float(r.abs().max()) for r in reference), "max_abs_diff_per_prompt":
                [c["max_abs_diff"] for c in checks], "tolerance": GGUF_MAX_REL_DIFF.get(quant)}
        import math

        if not math.isfinite(check["max_abs_diff"]):
            raise ExportError(f"the GGUF file's logits are not finite; {nothing}")
        tol = GGUF_MAX_REL_DIFF.get(quant)
        if tol is not None and check["rel_diff"] > tol:
            raise ExportError(f"the GGUF file ({quant}) does not match the merged model: its logits differ by up to "
                              f"{checks[worst]['max_abs_diff']:.3g} ({check['rel_diff']:.1%} of their range, "
                              f"{tol:.0%} allowed for {quant}) on prompt {worst + 1}; {nothing}",
                              hint="This is a bug in ftune or a library: please report it with the command.")
        got_answers = [_greedy(loaded, tokenizer, q, stops) for q in QUESTIONS]
        check["generated_tokens"] = sum(len(ids) for ids, _ in got_answers)
        if check["generated_tokens"] < 1:
            raise ExportError(f"the GGUF file's model generated nothing; {nothing}")
        # The same greedy answers, where the merged model has a clear choice: two answers may part only at a near
        # tie, where the merged model's two best tokens are closer than the difference the logit check allows.
        check["same_answers"], check["near_ties"], check["answers"] = 0, [], []
        for q, want, got in zip(QUESTIONS, answers, got_answers):
            said = (tokenizer.decode(want[0], skip_special_tokens=True),
                    tokenizer.decode(got[0], skip_special_tokens=True))
            check["answers"].append({"question": q[-1]["content"], "merged": said[0], "gguf": said[1]})
            parting = _parting(want, got, stops[0])
            if parting is None:
                check["same_answers"] += 1
                continue
            step, margin, noise = parting
            if quant in GGUF_SAME_ANSWERS and (tol is None or noise > tol * check["scale"]):
                raise ExportError(f"the GGUF file ({quant}) answers {q[-1]['content']!r} with {said[1]!r}, the "
                                  f"merged model with {said[0]!r} (they part at token {step + 1}, where the logits "
                                  f"differ by {noise:.3g}); {nothing}",
                                  hint="This is a bug in ftune or a library: please report it with the command.")
            check["near_ties"].append({"question": q[-1]["content"], "token": step + 1, "margin": margin,
                                       "logit_diff": noise, "merged": said[0], "gguf": said[1]})
        sample = tokenizer.decode(got_answers[0][0], skip_special_tokens=True)
        timings["check_s"] = round(time.time() - t0, 2)
        del loaded
        free_memory()

        tr = modelfile.translate(lambda msgs, gen: tokenizer.apply_chat_template(msgs, tokenize=False,
                                                                                 add_generation_prompt=gen),
                                 tokenizer.bos_token, bool(meta.add_bos))
        if tr.template is None:
            say(f"The chat template cannot be translated for Ollama ({tr.reason}): the Modelfile leaves TEMPLATE to "
                f"Ollama's default")
        system = _data_system(spec, run) or tr.default_system
        stop_texts = [t for t in tokenizer.convert_ids_to_tokens(stops) if t]
        modelfile.write(tmp, modelfile.build(file.name, tr.template, stop_texts, system, tr.reason))
        size = file.stat().st_size
        info = {"file": file.name, "quant": quant, "bytes": size, "sha256": gguf_export.sha256(file),
                "architecture": meta.architecture, "template_translated": tr.template is not None,
                "ollama": f"ollama create {run.name} -f {out / 'Modelfile'}"}
        metrics = modelcard.run_metrics(run, target.step)
        modelcard.write(tmp, modelcard.render(spec, run, "gguf", target.label, metrics, f"{quant} GGUF", check,
                                              gguf=info))
        (tmp / MARKER).write_text(json.dumps({
            "run": run.name, "format": "gguf", "source": target.label, "step": target.step, "dtype": quant,
            "base_model": spec.model.name_or_path, "gguf": info, "check": check, "timings": timings,
            "created": time.time()}, indent=2) + "\n")
    return ExportResult(out, "gguf", target.label, quant, check, sample, info)
