"""What the worker does once the final model is exported: model card, predictions, loss plot, and the GGUF file
when output.save_format is gguf.

Each step is worth having but none is worth failing a finished run for: a step that fails becomes a
`warning` event (message and hint), and the run still ends `finished`.
"""

from __future__ import annotations

from typing import Any

from ftune.runtime.events import EventWriter
from ftune.runtime.infer import formats
from ftune.runtime.rundir import RunDir
from ftune.runtime.spec import RunSpec


def _warn(events: EventWriter, spec: RunSpec, what: str, exc: BaseException) -> None:
    import traceback

    from ftune.runtime.train import hints

    traceback.print_exc()  # the details go to train.log
    message, hint = hints.explain(exc, spec)
    events.emit("warning", message=f"{what}: {message}", hint=hint)


def after_training(spec: RunSpec, run: RunDir, events: EventWriter, model, tokenizer, metrics: dict[str, Any],
                   artifacts: dict[str, Any], processor=None) -> dict[str, Any]:
    """Predictions on data.test (with training.predict_with_generate), the model card in export/ and
    runs/<name>/loss.png. Adds predict_* scores to `metrics`; returns the new artifacts."""
    out: dict[str, Any] = {}
    if spec.training.predict_with_generate and spec.data.test:
        try:
            from ftune.runtime.infer.evaluate import evaluate_run
            from ftune.runtime.infer.generate import Vision

            vision = Vision(processor, spec.data.image_min_pixels, spec.data.image_max_pixels) if processor else None
            result = evaluate_run(run, model=model, tokenizer=tokenizer, label="export", vision=vision)
            metrics.update({k: v for k, v in result.metrics.items() if k.startswith("predict_")})
            out.update(predictions=str(result.predictions), eval_metrics=str(result.metrics_path))
        except Exception as e:  # noqa: BLE001 - reported as a warning; the model is trained and exported
            _warn(events, spec, "predicting on the test file failed", e)
    try:
        from ftune.runtime.infer import modelcard

        modelcard.write(run.export_dir(), modelcard.render(spec, run, artifacts.get("format", "lora"), "export",
                                                           metrics))
    except Exception as e:  # noqa: BLE001
        _warn(events, spec, "writing the model card failed", e)
    if formats.get(spec.output.save_format).worker_saves:  # gguf: written from the adapter in export/
        out.update(export_gguf(spec, run, events))
    try:
        from ftune.runtime.infer.plot import plot_run

        out["plot"] = str(plot_run(run))
    except Exception as e:  # noqa: BLE001
        _warn(events, spec, "drawing the loss plot failed", e)
    return out


def export_gguf(spec: RunSpec, run: RunDir, events: EventWriter) -> dict[str, Any]:
    """output.save_format gguf: `ftune export RUN --format gguf` from the export just written (checked the same
    way). A failure is a warning that says how to try again; the adapter in export/ is kept either way."""
    try:
        from ftune.runtime.infer.export import export_run

        result = export_run(run, spec.output.save_format, quant=spec.output.gguf_quant)
        return {"gguf": str(result.path / result.gguf["file"]), "modelfile": str(result.path / "Modelfile"),
                "ollama": result.gguf["ollama"]}
    except Exception as e:  # noqa: BLE001 - reported as a warning; the model is trained and exported
        _warn(events, spec, f"writing the GGUF file failed (try again: ftune export {run.name} --format gguf)", e)
        return {}
