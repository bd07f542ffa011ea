"""The model card (README.md) written next to an exported model: what it is and how it was made.

Base model, data, stage, method, preset, the training settings that matter, final metrics, the
chat template, and how to load it. Plain text from the run file and the events: no torch here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftune import __version__
from ftune.runtime.events import read_all
from ftune.runtime.infer import formats
from ftune.runtime.present import cell
from ftune.runtime.rundir import RunDir
from ftune.runtime.spec import RunSpec

CARD_METRICS = ("step", "epoch", "train_loss", "eval_loss", "train_runtime", "num_input_tokens_seen")


def run_metrics(run: RunDir, step: int | None = None) -> dict[str, Any]:
    """Final metrics of a run (its `finished` event), or the last logged values up to checkpoint `step`."""
    events = read_all(run.events_path)
    if step is None:
        final = next((e for e in reversed(events) if e.get("type") == "finished"), None)
        if final is not None:
            return dict(final.get("metrics") or {})
    out: dict[str, Any] = {}
    for e in events:
        if step is not None and (e.get("step") or 0) > step:
            continue
        if e.get("type") == "step" and e.get("loss") is not None:
            out["train_loss"] = e["loss"]  # the last logged loss at this step
        elif e.get("type") == "eval" and e.get("eval_loss") is not None:
            out["eval_loss"] = e["eval_loss"]
    if step is not None:
        out["step"] = step
    return out


def _data_rows(run: RunDir) -> dict[str, Any]:
    started = [e for e in read_all(run.events_path) if e.get("type") == "started"]
    if not started:
        return {}
    s = started[-1]
    return {k: s.get(k) for k in ("num_train_rows", "num_eval_rows", "skipped_rows", "format") if s.get(k) is not None}


def card_data(spec: RunSpec, fmt: str, metrics: dict[str, Any], gguf: bool = False):
    """The card's metadata as huggingface_hub's ModelCardData: the base model and data sets where they are hub ids
    (the Hub links them; a local path would not validate there, so it stays in the text), the library, tags,
    the final losses and the ftune version."""
    from huggingface_hub import ModelCardData

    from ftune.runtime import hub
    from ftune.runtime.models import is_hub_id

    name = spec.model.name_or_path
    datasets = [hub.parse(n).repo_id for n in [*spec.data.train, spec.data.validation or ""]
                if hub.is_hub_data(n) and n.startswith(hub.PREFIXES["hf"])]
    losses = {k: round(v, 6) for k, v in metrics.items() if k in ("train_loss", "eval_loss")
              and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return ModelCardData(
        base_model=name if is_hub_id(name) else None, datasets=datasets or None,
        library_name="peft" if formats.is_adapter(fmt) else "transformers",
        tags=["ftune", spec.stage.type, spec.method_label, *(["gguf"] if gguf else [])],
        ftune={"version": __version__, "stage": spec.stage.type, "method": spec.method_label, "format": fmt,
               "base_model": name, **losses},
    )


def render(spec: RunSpec, run: RunDir, fmt: str, source_label: str, metrics: dict[str, Any],
           dtype: str | None = None, check: dict[str, Any] | None = None, gguf: dict[str, Any] | None = None) -> str:
    """README.md text for an export in `fmt` (lora, merged_16bit, merged_4bit, full, gguf: with `gguf` the file's
    name, quant, bytes, sha256 and the `ollama create` line)."""
    m, t, d = spec.method, spec.training, spec.data
    adapter = formats.is_adapter(fmt)
    front = ["---", card_data(spec, fmt, metrics, gguf is not None).to_yaml(), "---", ""]
    lines = [f"# {spec.name}", "",
             f"Fine-tuned with ftune from `{spec.model.name_or_path}`"
             f"{' (revision ' + spec.model.revision + ')' if spec.model.revision else ''}.", "",
             "| | |", "|---|---|",
             f"| base model | `{spec.model.name_or_path}` |",
             f"| stage | {spec.stage.type} |",
             f"| method | {spec.method_label} |",
             f"| preset | {spec.preset or '-'} |",
             f"| format | {fmt}{' (' + dtype + ')' if dtype else ''} |",
             f"| weights from | {source_label} |",
             f"| ftune | {__version__} |",
             f"| chat template | {spec.model.template if spec.model.template != 'auto' else 'the base tokenizer’s own'}"
             " (saved with the tokenizer) |"]
    rows = _data_rows(run)
    data = ", ".join(f"`{p}`" for p in d.train)
    extra = f" ({rows.get('num_train_rows')} training rows, {rows.get('num_eval_rows')} held out)" if rows else ""
    lines.append(f"| data | {data}{extra} |")
    if d.validation:
        lines.append(f"| validation | `{d.validation}` |")
    if d.test:
        lines.append(f"| test | `{d.test}` |")
    lines += ["", "## Training", "", "| setting | value |", "|---|---|"]
    settings = {"learning_rate": t.learning_rate, "epochs": t.num_train_epochs, "max_steps": t.max_steps,
                "batch size (per device)": t.per_device_train_batch_size,
                "gradient accumulation": t.gradient_accumulation_steps, "scheduler": t.lr_scheduler_type,
                "precision": t.precision, "max_length": d.max_length, "seed": t.seed}
    if m.type == "lora":
        settings.update({"lora rank": m.lora.rank, "lora alpha": m.lora.alpha, "lora dropout": m.lora.dropout,
                         "lora targets": m.lora.target_modules})
    if m.quantization.bits:
        settings["quantization"] = f"{m.quantization.bits}-bit {m.quantization.method}"
    lines += [f"| {k} | {cell(v)} |" for k, v in settings.items() if v is not None]
    shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
             and (k in CARD_METRICS or k.startswith("predict_"))}
    if shown:
        lines += ["", "## Final metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {cell(v)} |" for k, v in shown.items()]
    reward = not spec.stage.definition.causal_lm
    if check:
        did = "it generated {} tokens".format(check["generated_tokens"]) if not reward else "it scores"
        lines += ["", "## Checked on export", "",
                  f"Loaded back with plain {'peft' if adapter else 'transformers'}: next-token agreement with the "
                  f"run's model {check['agreement']:.0%}, largest logit difference {check['max_abs_diff']:.3g}, "
                  f"and {did}."]
    if gguf:
        lines += ["", "## GGUF", "", "| file | quant | size | sha256 |", "|---|---|---|---|",
                  f"| `{gguf['file']}` | {gguf['quant']} | {gguf['bytes'] / 1e6:.1f} MB ({gguf['bytes']} bytes) | "
                  f"`{gguf['sha256']}` |", "",
                  "Written by llama.cpp's converter and read back with transformers before it was handed over.", "",
                  "## Use", "", "```bash", f"llama-cli -m {gguf['file']} -cnv       # llama.cpp",
                  f"ollama create {spec.name} -f Modelfile   # Ollama: the Modelfile beside this card",
                  f"ollama run {spec.name}", "```", ""]
        return "\n".join(front + lines)
    kind = "SequenceClassification" if reward else "CausalLM"
    lines += ["", "## Use", "", "```python"]
    if adapter:
        lines += [f"from peft import AutoPeftModelFor{kind}", "from transformers import AutoTokenizer", "",
                  f"model = AutoPeftModelFor{kind}.from_pretrained(PATH)  # loads the base model, then this adapter"]
    else:
        lines += [f"from transformers import AutoModelFor{kind}, AutoTokenizer", "",
                  f"model = AutoModelFor{kind}.from_pretrained(PATH)"]
    lines += ["tokenizer = AutoTokenizer.from_pretrained(PATH)  # carries the chat template used in training"]
    if reward:
        lines += ["text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)",
                  "score = model(**tokenizer(text, return_tensors=\"pt\")).logits[0, 0]  # higher: a better answer",
                  "```", ""]
    else:
        lines += ["ids = tokenizer.apply_chat_template([{\"role\": \"user\", \"content\": \"Hello\"}],",
                  "                                    add_generation_prompt=True, return_tensors=\"pt\", return_dict=True)",
                  "print(tokenizer.decode(model.generate(**ids, max_new_tokens=64)[0]))", "```", "",
                  f"Or with ftune: `ftune chat {spec.name}`, `ftune serve {spec.name}` (an OpenAI-compatible API).", ""]
    if adapter and spec.model.rope_scaling:
        lines += [f"Note: trained with RoPE scaling ({spec.model.rope_scaling}, factor {spec.model.rope_factor}); "
                  "load the base with the same `rope_parameters` in its config.", ""]
    return "\n".join(front + lines)


def write(folder: Path, text: str) -> Path:
    path = Path(folder) / "README.md"
    path.write_text(text, encoding="utf-8")
    return path
