from pathlib import Path

from ftune.runtime.spec import iter_fields
from ftune.runtime.spec.docgen import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "run-file.md"


def test_run_file_doc_is_generated_from_the_schema():
    assert DOC.read_text(encoding="utf-8") == render(), "regenerate: python -m ftune.runtime.spec.docgen docs/run-file.md"


def test_every_field_is_documented():
    text = render()
    for path, info, _ in iter_fields():
        leaf = path.split(".", 1)[1] if "." in path else path
        assert f"| `{leaf}` |" in text, path
        assert info.description, f"{path} has no description"
