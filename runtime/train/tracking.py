"""`training.report_to` in the worker: transformers' own tracker integrations, kept from stopping a run.

`apply_env` gives each tracker its folder under the run directory (unless the user's environment names one)
before the trainer builds the integrations from TrainingArguments.report_to. `guard` then wraps every
integration callback the trainer holds: a tracker that raises (a bad key, no network, a full disk) becomes one
`warning` event and is switched off, and training goes on; events.jsonl stays the source of truth. `describe`
says where each tracker writes (run name, URL, folder) for the `started` event. No key or token is read here;
a message or URL that reaches an event or train.log is scrubbed of the environment's secrets first.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ftune.runtime.events import EventWriter
from ftune.runtime.rundir import RunDir
from ftune.runtime.spec import RunSpec
from ftune.runtime.tracker_registry import redact_url, scrub, tracker_env

_EVENTS = [name for name in vars(TrainerCallback) if name.startswith("on_")]


def apply_env(spec: RunSpec, run: RunDir) -> dict[str, str]:
    """Set the trackers' folder and project defaults in this process's environment; what was set."""
    env = tracker_env(spec.training.report_to, run.path, dict(os.environ))
    os.environ.update(env)
    return env


class Guarded(TrainerCallback):
    """One tracker's integration callback; the first exception it raises is a warning event, then it is off."""

    def __init__(self, name: str, inner: TrainerCallback, events: EventWriter):
        self.name, self.inner, self.events = name, inner, events
        self.failed: str | None = None

    def _call(self, event: str, args, state, control, **kwargs):
        if self.failed:
            return None
        try:
            return getattr(self.inner, event)(args, state, control, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a tracker never ends a run
            self.failed = scrub(f"{type(exc).__name__}: {exc}")
            print(scrub("".join(traceback.format_exception(exc))), file=sys.stderr)
            if state.is_world_process_zero:
                self.events.emit("warning", step=state.global_step, tracker=self.name,
                                 message=f"the {self.name} tracker failed ({self.failed[:300]}); training goes on "
                                         f"without it",
                                 hint=HINTS.get(self.name, "") + " events.jsonl still has every figure "
                                      "(`ftune watch`, `ftune plot`, `ftune compare`).")
            return None

    def describe(self) -> dict[str, Any]:
        """Where this tracker writes, for the `started` event: run name, URL, folder, mode (what is known)."""
        info: dict[str, Any] = {"name": self.name}
        if self.failed:
            return {**info, "failed": self.failed}
        try:
            info.update(DESCRIBE[self.name](self.inner))
        except Exception:  # noqa: BLE001 - a description is a courtesy
            pass
        if info.get("url"):
            info["url"] = redact_url(str(info["url"]))
        return {k: v for k, v in info.items() if v not in (None, "")}


def _make(event: str):
    def method(self, args, state, control, **kwargs):
        return self._call(event, args, state, control, **kwargs)
    method.__name__ = event
    return method


for _event in _EVENTS:
    setattr(Guarded, _event, _make(_event))


def guard(trainer, spec: RunSpec, events: EventWriter) -> list[Guarded]:
    """Wrap the trainer's tracker callbacks (those transformers built from report_to) in `Guarded`."""
    if not spec.training.report_to:
        return []
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    by_class = {cls: name for name, cls in INTEGRATION_TO_CALLBACK.items() if name in spec.training.report_to}
    handler = trainer.callback_handler
    guards = []
    for i, cb in enumerate(handler.callbacks):
        name = by_class.get(type(cb))
        if name:
            handler.callbacks[i] = Guarded(name, cb, events)
            guards.append(handler.callbacks[i])
    return guards


# --------------------------------------------------------------------------- what each tracker says about itself
HINTS = {
    "wandb": "Check WANDB_API_KEY (`wandb login`) and the network, or train with WANDB_MODE=offline and "
             "`wandb sync` later.",
    "swanlab": "Check SWANLAB_API_KEY (`swanlab login`) and the network, or train with SWANLAB_MODE=local.",
    "mlflow": "Check MLFLOW_TRACKING_URI (a server that answers, or file:/path for a local store).",
    "tensorboard": "Check that TENSORBOARD_LOGGING_DIR (default runs/<name>/tensorboard) can be written.",
    "trackio": "Check TRACKIO_DIR, or the Space and HF_TOKEN when logging to a Hugging Face Space.",
}


def _tensorboard(cb) -> dict[str, Any]:
    writer = cb.tb_writer
    return {"dir": getattr(writer, "log_dir", None) or cb.logging_dir}


def _wandb(cb) -> dict[str, Any]:
    import wandb

    r = wandb.run
    if r is None:
        return {}
    offline = bool(getattr(r, "offline", False)) or getattr(r.settings, "mode", "") in ("offline", "dryrun")
    return {"run": r.name, "id": r.id, "project": r.project, "mode": "offline" if offline else "online",
            "url": None if offline else r.url, "dir": str(Path(r.dir).parent)}


def _mlflow(cb) -> dict[str, Any]:
    import mlflow

    active = mlflow.active_run()
    if active is None:
        return {}
    uri = mlflow.get_tracking_uri()
    info: dict[str, Any] = {"run": active.info.run_name, "id": active.info.run_id,
                            "tracking_uri": redact_url(uri)}
    if uri.startswith("file:"):
        from urllib.parse import unquote, urlparse

        info["dir"] = str(Path(unquote(urlparse(uri).path)) / active.info.experiment_id / active.info.run_id)
    elif uri.startswith(("http://", "https://")):
        info["url"] = f"{uri.rstrip('/')}/#/experiments/{active.info.experiment_id}/runs/{active.info.run_id}"
    return info


def _swanlab(cb) -> dict[str, Any]:
    import swanlab

    r = swanlab.get_run()
    if r is None:
        return {}
    public = r.public
    info: dict[str, Any] = {"run": getattr(public.cloud, "experiment_name", None) or os.environ.get("SWANLAB_PROJECT"),
                            "mode": getattr(public, "mode", None), "dir": str(getattr(public, "run_dir", "") or "")}
    try:
        info["url"] = public.cloud.experiment_url
    except Exception:  # noqa: BLE001 - local mode has no URL
        pass
    return info


def _trackio(cb) -> dict[str, Any]:
    space = getattr(cb, "_space_id", None)
    return {"project": os.environ.get("TRACKIO_PROJECT_NAME") or "ftune",
            "url": f"https://huggingface.co/spaces/{space}" if space else None,
            "dir": None if space else os.environ.get("TRACKIO_DIR")}


DESCRIBE = {"tensorboard": _tensorboard, "wandb": _wandb, "mlflow": _mlflow, "swanlab": _swanlab,
            "trackio": _trackio}
