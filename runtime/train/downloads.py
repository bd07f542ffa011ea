"""The worker's downloads, before it reads anything: hub data sets and a hub model that are not in the cache yet,
each in its phase ("downloading the data", "downloading the model") with bytes done and total, speed and time left
in `phase` events at most once a second (runtime/hub.py polls the cache). A download that was cut off resumes from
its `.incomplete` file on the next try; one that fails or stalls ends the run with an `error` saying what to do.

Light on purpose (no torch): the tests run it on its own against a local hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftune.runtime import hub, models
from ftune.runtime.data.load import hub_sets
from ftune.runtime.events import EventWriter
from ftune.runtime.spec import RunSpec
from ftune.runtime.train.phases import Phases


def download(spec: RunSpec, base: Path, events: EventWriter, phases: Phases, lead: bool = True) -> None:
    """Hub data sets and a hub model that are not in the cache yet, downloaded (a cut-off download resumes) in the
    phases "downloading the data" and "downloading the model", with bytes done and total once a second."""
    def reporter(phase: str, what: str):
        def report(**progress: Any) -> None:
            if lead:
                events.emit("phase", phase=phase, unit="bytes", what=what, **progress)
        return report

    missing = [ref for ref in hub_sets(spec.data, base) if hub.cached_files(ref) is None]
    if missing:
        phases.begin("downloading the data")
    for ref in missing:
        hub.download_dataset(ref, reporter("downloading the data", ref.url))
    name, m = spec.model.name_or_path, spec.model
    if not models.is_hub_id(name) or models.local_path(name, base).exists() or hub.offline():
        return
    try:
        plan = hub.plan_model(name, m.revision, m.trust_remote_code)
    except hub.HubError:
        import huggingface_hub

        if isinstance(huggingface_hub.try_to_load_from_cache(name, "config.json", revision=m.revision), str):
            return  # the hub is out of reach but the model is cached: from_pretrained reads the cache
        raise
    if hub.bytes_done(plan) < plan.total:
        phases.begin("downloading the model")
        hub.fetch(plan, f"model {name}", reporter("downloading the model", name))
