"""The export-format registry: one `ExportFormat` per format, each in its own file here (lora.py, ...), listed
once in ORDER. The worker's end-of-run export (train/recipe.py), `ftune export` (infer/export.py), the schema and
the CLI read it. Adding a format is its file plus its name below.

Importing this imports no torch or transformers."""

from __future__ import annotations

import importlib

from ftune.runtime.infer.formats.format import ExportFormat

ORDER = ("lora", "merged_16bit", "merged_4bit", "gguf")

FORMATS: dict[str, ExportFormat] = {n: importlib.import_module(f"{__name__}.{n}").FORMAT for n in ORDER}
NAMES = tuple(FORMATS)


def get(name: str) -> ExportFormat:
    """The format called `name` (the schema or the CLI has already checked it is one)."""
    return FORMATS[name]


def is_adapter(name: str) -> bool:
    """An export that is the adapter alone (`name` may also be "full", a full fine-tune's whole model)."""
    return name in FORMATS and FORMATS[name].adapter


__all__ = ["FORMATS", "NAMES", "ORDER", "ExportFormat", "get", "is_adapter"]
