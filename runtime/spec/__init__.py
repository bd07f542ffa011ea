"""The run spec: `runs/<name>/run.yaml` as one pydantic schema, and everything that reads or writes it.

    schema.py     the sections and their fields (what docs/run-file.md is generated from)
    keys.py       names from other tools (cutoff_len, lora_r, ...) and their ftune homes
    problems.py   every mistake at once, with its field, line and a did-you-mean
    shorthand.py  `stage: sft` / `method: lora`, dotted paths
    edit.py       get/set/delete by path, KEY=VALUE values, key order, compact: every face edits through it
    overrides.py  `--set` and the merge order: defaults < preset < run file < --set
    io.py         load, build, save
    editors.py    the JSON Schema for editors (`ftune schema`) and the line that points run files at it
    docgen.py     docs/run-file.md from the schema

The names below are the spec's public API; import them from here.
"""

from ftune.runtime.spec.io import build_spec, load_spec, save_spec, spec_to_dict, spec_to_yaml
from ftune.runtime.spec.keys import FOREIGN_KEYS
from ftune.runtime.spec.overrides import apply_overrides, deep_merge
from ftune.runtime.spec.problems import Problem, SpecError
from ftune.runtime.spec.schema import NAME_RULE, RunSpec, check_run_name, iter_fields

__all__ = ["FOREIGN_KEYS", "NAME_RULE", "Problem", "RunSpec", "SpecError", "apply_overrides", "build_spec",
           "check_run_name", "deep_merge", "iter_fields", "load_spec", "save_spec", "spec_to_dict", "spec_to_yaml"]
