"""Every reference to the repository's documents resolves inside the repository.

Checked in the code, configs, notebooks and Markdown pages:
* a path `docs/...` names a file that exists;
* a relative Markdown link `[text](path)` names a file that exists (relative to the page);
* a section reference `§N` or `§N.M` (ranges `§N.M-N.K` check both ends) names a section of
  the document it refers to: the document named right before it (`docs/METHODS.md §5.6`); else,
  inside a page of `docs/`, the page itself; else the nearest document named before it in the
  same file (`docs/METHODS.md §5.6 ... §5.4`). `§N.M` exists when the document has a heading
  `N.M`, or a numbered item `M.` under its heading `N` (`§11.4`: item 4 of §11).
"""

from __future__ import annotations

import os
import re

from tests import helpers

SKIP_DIRS = {".git", ".venv", "workdirs", "build", "dist", "__pycache__", ".pytest_cache"}
TEXT_EXTENSIONS = (".py", ".md", ".ipynb", ".toml", ".cfg", ".txt")
THIS_FILE = os.path.relpath(os.path.abspath(__file__), helpers.REPO)

DOCS_PATH = re.compile(r"(?<![\w/.-])docs/[\w./-]*\w")
MARKDOWN_LINK = re.compile(r"\]\(([^()\s#]+)(?:#[^()\s]*)?\)")
DOCUMENT = re.compile(r"(?<![\w.-])((?:[\w.-]+/)*[A-Z][A-Za-z_]*\.md)\b")
SECTION = re.compile(r"§\s?(\d+(?:\.\d+)*)(?:\s?-\s?(\d+(?:\.\d+)*))?")
HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s", re.M)
NUMBERED_ITEM = re.compile(r"^(\d+)\.\s", re.M)


def repository_files() -> list[str]:
    """Paths (relative to the repository) of every text file worth checking."""
    found = []
    for root, dirs, files in os.walk(helpers.REPO):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in files:
            if name.endswith(TEXT_EXTENSIONS):
                path = os.path.relpath(os.path.join(root, name), helpers.REPO)
                if path != THIS_FILE:
                    found.append(path)
    return sorted(found)


def read(path: str) -> str:
    with open(os.path.join(helpers.REPO, path), encoding="utf-8") as f:
        return f.read()


def sections(document: str) -> set[str]:
    """The section numbers of a Markdown page: its numbered headings, and `N.M` for item `M.` of
    a numbered list under heading `N`."""
    text = read(document)
    found = set()
    headings = list(HEADING.finditer(text))
    for i, heading in enumerate(headings):
        number = heading.group(1)
        found.add(number)
        end = headings[i + 1].start() if i + 1 < len(headings) else len(text)
        for item in NUMBERED_ITEM.finditer(text, heading.end(), end):
            found.add(f"{number}.{item.group(1)}")
    return found


def resolve_document(name: str, referrer: str) -> str | None:
    """`name` as written in `referrer`: relative to the referrer's folder, else to the repository
    root, else a page of `docs/`."""
    candidates = [
        os.path.normpath(os.path.join(os.path.dirname(referrer), name)),
        os.path.normpath(name),
        os.path.join("docs", os.path.basename(name)) if "/" not in name else None,
    ]
    for candidate in candidates:
        if candidate and os.path.isfile(os.path.join(helpers.REPO, candidate)):
            return candidate
    return None


def broken_references(path: str) -> list[str]:
    text = read(path)
    problems = []
    for match in DOCS_PATH.finditer(text):
        if not os.path.exists(os.path.join(helpers.REPO, match.group(0))):
            problems.append(f"{path}: {match.group(0)} does not exist")
    if path.endswith(".md"):
        for match in MARKDOWN_LINK.finditer(text):
            target = match.group(1)
            if "://" in target or target.startswith("mailto:"):
                continue
            if not os.path.exists(os.path.join(helpers.REPO, os.path.dirname(path), target)):
                problems.append(f"{path}: link ({target}) does not exist")
    documents = [(m.end(), m.group(1)) for m in DOCUMENT.finditer(text)]
    for match in SECTION.finditer(text):
        named = [(end, name) for end, name in documents if end <= match.start()]
        right_before = named and match.start() - named[-1][0] <= 2
        if not right_before and path.startswith("docs/") and path.endswith(".md"):
            document = path
        elif named:
            document = resolve_document(named[-1][1], path)
            if document is None:
                problems.append(f"{path}: {match.group(0)} refers to {named[-1][1]}, not found")
                continue
        else:
            problems.append(f"{path}: {match.group(0)} names no document before it")
            continue
        available = sections(document)
        for number in filter(None, match.groups()):
            if number not in available:
                problems.append(f"{path}: {match.group(0)}: {document} has no section {number}")
    return problems


def test_the_checks_catch_what_they_are_for(tmp_path, monkeypatch):
    # A throwaway repository: one page with sections 1, 1.1 and list items under 2.
    monkeypatch.setattr(helpers, "REPO", str(tmp_path))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "SPEC.md").write_text("# Spec\n## 1. One\n### 1.1 Sub\n## 2. Two\n1. a\n")
    good = "x = 1  # docs/SPEC.md §1.1, §1 and §2.1; see [it](docs/SPEC.md)\n"
    (tmp_path / "good.md").write_text(good)
    assert broken_references("good.md") == []
    bad = "docs/MISSING.md; docs/SPEC.md §1.2 and §3-1.1; a bare §1 in [x](nowhere.md)\n"
    (tmp_path / "bad.md").write_text(bad)
    problems = broken_references("bad.md")
    assert any("docs/MISSING.md does not exist" in p for p in problems)
    assert any("no section 1.2" in p for p in problems)
    assert any("no section 3" in p for p in problems)
    assert any("(nowhere.md) does not exist" in p for p in problems)
    (tmp_path / "code.py").write_text("# a bare §1 with no document\n")
    assert "names no document" in broken_references("code.py")[0]


def test_the_specification_pages_are_in_the_repository():
    for page in ("docs/METHODS.md", "docs/DESIGN.md", "docs/ARCHITECTURE.md"):
        assert os.path.isfile(os.path.join(helpers.REPO, page)), page
    # Sections the code cites most; the numbering is the one the code was written against.
    assert {"0", "1.4", "1.7", "5.6", "6.3", "6.5", "7.2", "9", "11.4"} <= sections(
        "docs/METHODS.md"
    )


def test_every_reference_resolves():
    problems = [p for path in repository_files() for p in broken_references(path)]
    assert problems == []


def test_nothing_points_outside_the_repository():
    outside = re.compile(r"\.\./shared|\.\./seeds|/work/shared")
    offenders = [path for path in repository_files() if outside.search(read(path))]
    assert offenders == []
