"""The run file's JSON Schema, for editors that complete and check YAML as people type (the YAML language server
in VS Code, Neovim, Helix, Zed...), and the modeline that points a run file at it.

Every run file ftune writes starts with `# yaml-language-server: $schema=../run.schema.json`; the schema itself is
kept beside the runs (`runs/run.schema.json`), so it works offline and travels with the runs folder. The language
server reads a relative path from the YAML file's own folder.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from ftune.runtime.files import write_atomic
from ftune.runtime.spec import shorthand
from ftune.runtime.spec.schema import RunSpec

SCHEMA_FILE = "run.schema.json"
MODELINE = f"# yaml-language-server: $schema=../{SCHEMA_FILE}"


def run_schema() -> dict[str, Any]:
    """The JSON Schema of a run file, as pydantic makes it, widened to what the run file may also say:
    `stage: sft` / `method: lora` (the shorthand) and `data.train: one-file.jsonl`."""
    schema = copy.deepcopy(RunSpec.model_json_schema())
    defs = schema["$defs"]
    props = schema["properties"]
    for section, field in shorthand.SHORTHAND.items():
        target = props[section]
        if "oneOf" in target:  # stage: one section per stage, told apart by its type (the default's may be left out)
            members = [defs[ref["$ref"].rsplit("/", 1)[-1]] for ref in target["oneOf"]]
            tags = [m["properties"][field]["const"] for m in members]
            for member, tag in zip(members, tags):
                if tag != RunSpec.model_fields[section].get_default(call_default_factory=True).type:
                    member["required"] = sorted({*member.get("required", []), field})
            short = {"type": "string", "enum": tags, "description": members[0]["properties"][field].get("description")}
            props[section] = {"anyOf": [{"oneOf": target["oneOf"]}, short],
                              "description": members[0].get("description")}
            continue
        name = target["$ref"].rsplit("/", 1)[-1]
        short = {k: v for k, v in defs[name]["properties"][field].items() if k in ("enum", "type", "description")}
        props[section] = {"anyOf": [{"$ref": target["$ref"]}, short], "description": defs[name].get("description")}
    train = defs["DataSpec"]["properties"]["train"]
    defs["DataSpec"]["properties"]["train"] = {"anyOf": [{"type": "string"}, {k: v for k, v in train.items()
                                                                             if k in ("items", "type")}],
                                               "description": train.get("description"), "title": train.get("title")}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def schema_text() -> str:
    return json.dumps(run_schema(), indent=2, ensure_ascii=False) + "\n"


def write_schema(path: str | Path) -> Path:
    """Write the schema to `path` unless it already holds this text (a run file written often stays cheap)."""
    path = Path(path)
    text = schema_text()
    try:
        if path.read_text(encoding="utf-8") == text:
            return path
    except OSError:
        pass
    write_atomic(path, text)
    return path


def schema_path_for(run_file: str | Path) -> Path:
    """Where the modeline of `runs/<name>/run.yaml` points: `runs/run.schema.json`."""
    return Path(run_file).resolve().parent.parent / SCHEMA_FILE
