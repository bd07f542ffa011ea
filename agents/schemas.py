"""The tools' answers as pydantic models: what an agent is told each tool returns (its output JSON Schema).

Kept small on purpose: an agent pays for every token of an answer. Unset values are left out of what is sent.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def _untitled(schema: dict[str, Any]) -> None:
    """Property titles ('Best Eval Loss') repeat the names: left out of the schema an agent reads."""
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)


class Answer(BaseModel):
    """Every answer: its fields, nothing unset."""

    model_config = ConfigDict(json_schema_extra=_untitled)


class RunFacts(Answer):
    """What a run is and where it stands: a row of list_runs, the head of show_run."""

    name: str
    status: str = Field(description="not started, starting, running, stalled, stopping, finished, stopped, failed, "
                                    "crashed")
    phase: str | None = Field(None, description="while starting: what the worker does ('tokenising 40%')")
    stage: str
    method: str | None = None
    model: str
    step: int = 0
    max_steps: int | None = None
    best_eval_loss: float | None = None


class RunRow(RunFacts):
    last_loss: float | None = None
    checkpoint_step: int | None = Field(None, description="the newest checkpoint's step")
    error: str | None = None


class RunList(Answer):
    runs_dir: str
    runs: list[RunRow]


class Problem(Answer):
    kind: str = Field(description="warning or error")
    message: str
    hint: str | None = None
    count: int = Field(1, description="how many times it came (messages that differ only in numbers are one)")
    step: int | None = None


class Checkpoint(Answer):
    step: int
    path: str


class RunSummary(RunFacts):
    epoch: float | None = None
    loss: float | None = Field(None, description="the last training loss")
    first_loss: float | None = None
    eval: dict[str, float] | None = Field(None, description="the last evaluation's metrics")
    tokens_per_s: float | None = None
    elapsed_s: float | None = None
    eta_s: float | None = Field(None, description="seconds left, from the recent pace (while running)")
    checkpoint: Checkpoint | None = Field(None, description="the newest complete checkpoint")
    problems: list[Problem] = Field(default_factory=list, description="the newest warnings and errors")
    ended: str | None = Field(None, description="finished, stopped or error: how the last attempt ended")
    message: str | None = Field(None, description="the final event's message (an error's sentence)")
    settings: dict[str, Any] = Field(default_factory=dict,
                                     description="the run file as written (dotted keys), defaults left out")
    cursor: str = Field(description="where this summary's events end: pass it to read_events to follow the run")


class SpecProblem(Answer):
    path: str = Field(description="the field, dotted (training.learning_rate); empty for the whole file")
    message: str


class Validation(Answer):
    valid: bool
    problems: list[SpecProblem] = Field(default_factory=list, description="every mistake at once")
    name: str | None = None


class Created(Answer):
    name: str
    run_file: str
    memory: str = Field(description="the memory estimate for the GPUs here, in one sentence")
    next: str


class DataCheck(Answer):
    path: str
    format: str | None = None
    reason: str | None = Field(None, description="why this format was detected (or none was)")
    kind: str | None = None
    stages: list[str] = Field(default_factory=list, description="the stages this data suits")
    total: int = 0
    valid: int = 0
    invalid: int = 0
    errors: list[str] = Field(default_factory=list, description="the first invalid rows, each with its line")
    fatal: str | None = Field(None, description="why the file cannot be read at all")
    placeholders: dict[str, int] | None = Field(None, description="unfilled {{placeholders}} and the rows holding "
                                                                   "each")
    tokens: dict[str, Any] | None = Field(None, description="with a model: token lengths, truncation, samples")


class MemoryEstimate(Answer):
    text: str = Field(description="the estimate and its verdict in one sentence")
    need_gb: float | None = None
    verdict: str | None = Field(None, description="fits, tight, exceeds or no-gpu")
    gpus: list[str] = Field(default_factory=list)


class Started(Answer):
    name: str
    pid: int
    resumed: bool
    warnings: list[str] = Field(default_factory=list)
    cursor: str = Field(description="pass to read_events to follow this attempt from its start")


class Stopped(Answer):
    name: str
    ended: str | None = Field(None, description="stopped, or how it ended when it could not stop")
    step: int | None = None
    checkpoint: str | None = None
    message: str | None = None


class Checkpointed(Answer):
    name: str
    step: int | None = None
    path: str | None = Field(None, description="the checkpoint saved; training goes on")
    ended: str | None = Field(None, description="how the run ended when it ended before it saved")
    message: str | None = None


class Events(Answer):
    events: list[dict[str, Any]] = Field(description="events (docs/events.md), oldest first")
    cursor: str = Field(description="pass back to read from here")
    status: str
    ended: bool = Field(description="the attempt has ended (finished, stopped or error) and every event is read")
    more: bool = Field(False, description="more events are waiting: call again at once")
    reset: bool = Field(False, description="the run was started over: these events are its new history")


class Comparison(Answer):
    differing_settings: list[str]
    runs: list[dict[str, Any]] = Field(description="each run's differing settings and its figures")


class Exported(Answer):
    path: str
    format: str
    source: str
    dtype: str
    check: dict[str, Any] = Field(default_factory=dict, description="how the written model compared with the run's")
    gguf: dict[str, Any] | None = None


class Evaluated(Answer):
    metrics: dict[str, Any]
    predictions: str
    metrics_path: str


class Deleted(Answer):
    name: str
    kept: str | None = Field(None, description="a linked run folder: the folder it pointed at, left in place")
