"""Method notes live in the repository: every `docs/methods/<note>.md [§N]` the code cites exists (and has that
section), and nothing cites the old out-of-repo METHODS.md / METHODS-VISION.md any more."""

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTES = REPO_ROOT / "docs" / "methods"
SCANNED = ("llmkit", "recipes", "eval", "benchmarks", "tests", "README.md", "Makefile", ".ci")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".txt", ""}
CITATION = re.compile(r"docs/methods/([\w.-]+\.md)(?:\s+(§\w+))?")
OLD = re.compile(r"METHODS(?:-VISION)?\.md")


def _files():
    for name in SCANNED:
        root = REPO_ROOT / name
        paths = [root] if root.is_file() else root.rglob("*") if root.is_dir() else []
        for path in paths:
            if path.is_file() and path.suffix in SUFFIXES and path.resolve() != Path(__file__).resolve():
                yield path


def _citations():
    for path in _files():
        text = path.read_text(errors="ignore")
        for match in CITATION.finditer(text):
            yield path, match.group(1), match.group(2)


def test_every_cited_method_note_exists_with_its_section():
    cited = list(_citations())
    assert len(cited) >= 20  # the code cites the notes; an empty scan would pass vacuously
    missing = [f"{p.relative_to(REPO_ROOT)}: {note}" for p, note, _ in cited if not (NOTES / note).is_file()]
    assert not missing, missing
    no_section = [
        f"{p.relative_to(REPO_ROOT)}: {note} {sec}"
        for p, note, sec in cited
        if sec and not re.search(rf"^#+ {re.escape(sec)}\b", (NOTES / note).read_text(), re.M)
    ]
    assert not no_section, no_section


def test_no_citation_of_the_out_of_repo_methods_files_remains():
    old = [
        f"{p.relative_to(REPO_ROOT)}:{i}"
        for p in _files()
        for i, line in enumerate(p.read_text(errors="ignore").splitlines(), 1)
        if OLD.search(line)
    ]
    assert not old, old


def test_the_index_lists_every_note():
    index = (NOTES / "README.md").read_text()
    notes = sorted(p.name for p in NOTES.glob("*.md") if p.name != "README.md")
    assert notes and all(f"({name})" in index for name in notes)
