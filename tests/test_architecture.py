"""The house rules of docs/architecture.md, read from the code as text (nothing is imported):

- no import circles between the project's modules, counting the lazy imports inside functions;
- no private name (`_x`) imported from another module;
- each module imports only from its own layer or the layers below it;
- runtime/ never imports wizard/, tui/, Textual or questionary; wizard/ and tui/ never import torch or the HF
  stack at module level (tests/ftune/test_imports.py checks the same at run time);
- runtime/present.py (how runs read to a person) imports only the standard library and PyYAML.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ROOTS = {"ftune": "ftune", "ftune.runtime": "runtime", "ftune.wizard": "wizard", "ftune.tui": "tui",
         "ftune.presets": "presets", "ftune.agents": "agents"}

# Bottom to top: a module may import its own layer and those below it, never one above.
LAYERS = [
    ("base", ["ftune", "ftune.presets", "ftune.runtime", "ftune.runtime.errors", "ftune.runtime.files",
              "ftune.runtime.templates", "ftune.runtime.names", "ftune.runtime.present",
              # the stage and export-format registries: data that the schema, data, CLI and faces read
              "ftune.runtime.train.stages", "ftune.runtime.infer.formats"]),
    ("spec", ["ftune.runtime.spec"]),
    ("core", ["ftune.runtime.models", "ftune.runtime.gguf", "ftune.runtime.events", "ftune.runtime.rundir",
              "ftune.runtime.runs", "ftune.runtime.run_diff", "ftune.runtime.sysmon", "ftune.runtime.catalog",
              "ftune.runtime.memory_estimate", "ftune.runtime.history", "ftune.runtime.tail", "ftune.runtime.train_log",
              "ftune.runtime.tinymodel", "ftune.runtime.demo", "ftune.runtime.tracker_registry", "ftune.runtime.slurm",
              "ftune.runtime.hub"]),
    ("data", ["ftune.runtime.data"]),
    ("import", ["ftune.runtime.importers"]),
    ("launch", ["ftune.runtime.launch", "ftune.runtime.distributed"]),
    ("infer", ["ftune.runtime.infer"]),
    ("train", ["ftune.runtime.train"]),
    ("faces", ["ftune.wizard", "ftune.tui", "ftune.agents"]),
    ("cli", ["ftune.cli", "ftune.__main__"]),
]
EXACT = {"ftune", "ftune.runtime"}  # these name the package modules alone, not everything under them
HEAVY = ("torch", "transformers", "trl", "datasets", "peft", "accelerate")


def modules() -> dict[str, Path]:
    found = {}
    for pkg, folder in ROOTS.items():
        for p in (REPO / folder).rglob("*.py"):
            parts = [x for x in p.relative_to(REPO / folder).with_suffix("").parts if x != "__init__"]
            found[".".join([pkg, *parts])] = p
    return found


MODULES = modules()
TREES = {name: ast.parse(p.read_text(encoding="utf-8")) for name, p in MODULES.items()}


def resolve(name: str, node: ast.ImportFrom) -> str | None:
    """The module an ImportFrom reads (relative imports resolved)."""
    if node.level:
        base = name.split(".")[: -node.level + (1 if MODULES[name].name == "__init__.py" else 0) or None]
        return ".".join([*base, *([node.module] if node.module else [])])
    return node.module


def imports(name: str):
    """(imported module, names taken from it, at module level?) for every import statement in a module."""
    tree = TREES[name]
    top = {id(n) for n in tree.body} | {id(n) for s in tree.body if isinstance(s, ast.If) for n in s.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            mod = resolve(name, node)
            if mod:
                yield mod, [a.name for a in node.names], id(node) in top
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], id(node) in top


def project_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for name in MODULES:
        for mod, names, _ in imports(name):
            targets = [f"{mod}.{n}" if f"{mod}.{n}" in MODULES else mod for n in names] or [mod]
            for t in targets:
                if t in MODULES and t != name:
                    edges.setdefault(name, set()).add(t)
    return edges


def layer_of(module: str) -> int:
    best, index = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            inside = module.startswith(prefix + ".") and prefix not in EXACT
            if (module == prefix or inside) and len(prefix) > best:
                best, index = len(prefix), i
    assert index is not None, f"{module} is in no layer: add it to LAYERS here and to docs/architecture.md"
    return index


def test_every_module_is_in_a_layer():
    for name in MODULES:
        layer_of(name)


def test_no_import_circles():
    edges = project_edges()
    index, low, stack, on, circles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                circles.append(" <-> ".join(sorted(group)))

    for v in MODULES:
        if v not in index:
            visit(v)
    assert circles == []


def test_no_private_names_cross_modules():
    crossing = [f"{name} takes {n} from {mod}" for name in MODULES for mod, names, _ in imports(name)
                if mod.startswith("ftune") and mod != name for n in names
                if n.startswith("_") and not n.endswith("__") and f"{mod}.{n}" not in MODULES]
    assert crossing == []


def test_layers_import_only_downwards():
    upward = []
    for name, targets in project_edges().items():
        for t in targets:
            if layer_of(t) > layer_of(name):
                upward.append(f"{name} ({LAYERS[layer_of(name)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})")
    assert upward == []


@pytest.mark.parametrize("face", ["ftune.wizard", "ftune.tui", "ftune.agents"])
def test_faces_never_import_torch_at_module_level(face):
    heavy = [f"{name}: {mod}" for name in MODULES if name.startswith(face) for mod, _, top in imports(name)
             if top and mod.split(".")[0] in HEAVY]
    assert heavy == []


def test_the_runtime_never_imports_the_faces():
    faces = [f"{name}: {mod}" for name in MODULES if name.startswith("ftune.runtime") for mod, _, _ in imports(name)
             if mod.startswith(("ftune.wizard", "ftune.tui", "ftune.agents"))
             or mod.split(".")[0] in ("textual", "questionary", "mcp")]
    assert faces == []


def test_run_presentation_is_light():
    """runtime/present.py is the one home of how runs read (every face and the runtime's own messages import it):
    the standard library and PyYAML only, so that it costs `ftune --help` nothing."""
    import sys

    taken = {mod.split(".")[0] for mod, _, _ in imports("ftune.runtime.present")}
    assert taken <= set(sys.stdlib_module_names) | {"yaml", "__future__"}, taken


# --------------------------------------------------------------------------- stages are a registry
STAGE_FILES = "ftune.runtime.train.stages"  # the registry and one file per stage: the only place a stage is named
FOREIGN = ("ftune.runtime.importers",)  # other tools' configs, in their own words (LLaMA-Factory's stage: pt, dpo)


def stage_names() -> set[str]:
    """The registry's ORDER, read from its source."""
    tree = ast.parse((REPO / "runtime" / "train" / "stages" / "__init__.py").read_text(encoding="utf-8"))
    order = next(n.value for n in tree.body if isinstance(n, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "ORDER" for t in n.targets))
    return {e.value for e in order.elts}


def stage_comparisons(tree: ast.AST, names: set[str]) -> list[str]:
    """Comparisons of something about a stage with a stage's name (`spec.stage.type == "rm"`, `stage in ("sft",
    "pt")`): decisions that belong in the stage's StageDef."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        literals = {c.value for o in operands
                    for c in (o.elts if isinstance(o, (ast.Tuple, ast.List, ast.Set)) else [o])
                    if isinstance(c, ast.Constant) and isinstance(c.value, str)}
        about_a_stage = any("stage" in ast.unparse(o).lower() for o in operands if not isinstance(o, ast.Constant))
        if literals & names and about_a_stage:
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_stage_rule_sees_a_stage_compared_by_name():
    names = stage_names()
    code = "if spec.stage.type == 'rm' or stage in ('sft', 'pt') or spec.stage.name != \"simpo\": pass\nkind == 'kto'"
    assert len(stage_comparisons(ast.parse(code), names)) == 3  # each comparison; the data kind is not a stage
    assert stage_comparisons(ast.parse("if spec.stage.definition.causal_lm: pass"), names) == []


def test_stages_are_compared_by_name_only_in_the_stage_registry():
    names = stage_names()
    found = [f"{name} {hit}" for name, tree in TREES.items()
             if not name.startswith((STAGE_FILES, *FOREIGN)) for hit in stage_comparisons(tree, names)]
    assert found == [], "ask the stage's StageDef (ftune.runtime.train.stages) instead of comparing its name"
