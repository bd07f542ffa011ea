"""Experiment trackers (`training.report_to`): which package each needs, where it writes, what may be shown.

Light: no tracker is imported here. The launcher checks the packages before anything detaches
(launch.hardware_problem); the worker sets each tracker's folder under the run directory unless the user's
environment names one (`tracker_env`) and hands the trackers to transformers' own integrations
(train/tracking.py). Keys and tokens stay in the environment: nothing here reads them, and a URL written to
an event loses any user:password it carries (`redact_url`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# tracker -> (the module it imports, the extra that installs it)
PACKAGES = {
    "tensorboard": ("tensorboard", "ftune[tensorboard]"),
    "wandb": ("wandb", "ftune[wandb]"),
    "swanlab": ("swanlab", "ftune[swanlab]"),
    "mlflow": ("mlflow", "ftune[mlflow]"),
    "trackio": ("trackio", "ftune[trackio]"),
}
PROJECT = "ftune"  # the W&B / SwanLab / MLflow / Trackio project (experiment) a run goes to unless the env says


def install_command(names: list[str]) -> str:
    return "pip install " + " ".join(f"'{PACKAGES[n][1]}'" for n in names)


def tracker_env(names: list[str], run_path: Path, environ: dict[str, str]) -> dict[str, str]:
    """Environment defaults for the trackers of a run: each writes under runs/<name>/ (not the project folder),
    into project "ftune". Only variables the user has not set are returned; the user's always win."""
    wanted: dict[str, str] = {}
    if "tensorboard" in names:
        wanted["TENSORBOARD_LOGGING_DIR"] = str(run_path / "tensorboard")
    if "wandb" in names:
        wanted.update(WANDB_DIR=str(run_path), WANDB_PROJECT=PROJECT, WANDB_SILENT="true")
    if "swanlab" in names:
        wanted.update(SWANLAB_LOG_DIR=str(run_path / "swanlog"), SWANLAB_PROJECT=PROJECT)
    if "mlflow" in names:
        wanted.update(MLFLOW_TRACKING_URI=(run_path / "mlruns").as_uri(), MLFLOW_EXPERIMENT_NAME=PROJECT)
        if (environ.get("MLFLOW_TRACKING_URI") or wanted["MLFLOW_TRACKING_URI"]).startswith("file:"):
            wanted["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow 3 refuses a file store without it; one was asked for
    if "trackio" in names:
        wanted["TRACKIO_DIR"] = str(run_path / "trackio")
    return {k: v for k, v in wanted.items() if not environ.get(k)}


_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")
_SECRET_QUERY = re.compile(r"(?i)([?&](?:token|key|api_key|apikey|access_token|password|secret)=)[^&\s]*")


def redact_url(url: str | None) -> str | None:
    """A URL without the user:password part or a token in its query, safe for events and logs."""
    if not url:
        return url
    url = _USERINFO.sub(r"\g<scheme>***@", str(url))
    return _SECRET_QUERY.sub(r"\1***", url)


_SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASS", "AUTH", "CREDENTIAL")


def scrub(text: str, environ: dict[str, str] | None = None) -> str:
    """`text` with the value of every secret-looking environment variable (WANDB_API_KEY, HF_TOKEN, ...) masked
    and URLs without their user:password: for a tracker's error that goes to an event or train.log."""
    for name, value in (os.environ if environ is None else environ).items():
        if len(value) >= 6 and any(w in name.upper() for w in _SECRET_WORDS) and value in text:
            text = text.replace(value, "***")
    return redact_url(text) or text
