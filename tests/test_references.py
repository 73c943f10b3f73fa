"""References in code and docs point at something a reader can open: ``docs/method.md`` sections that exist, and no
design notes that live outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers.paths import REPO_ROOT

METHOD = REPO_ROOT / "docs" / "method.md"
SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", "node_modules", ".pytest_cache", ".ruff_cache", "models"}
SUFFIXES = {".py", ".md", ".toml", ".txt", ".json", ".yaml", ".yml", ".cfg"}
# outside design material the repository must not cite (spelled in two parts so this file does not match itself)
DANGLING = ("GAS_" + "SPEC", "sigma_of_" + "u(")


def project_files() -> list[Path]:
    out = []
    for path in REPO_ROOT.rglob("*"):
        rel = path.relative_to(REPO_ROOT)
        if path.is_file() and path.suffix in SUFFIXES and not SKIP_DIRS.intersection(rel.parts):
            out.append(path)
    return out


def method_sections() -> dict[int, str]:
    headings = re.findall(r"^## (\d+)\. (.+)$", METHOD.read_text(), flags=re.MULTILINE)
    return {int(number): title.strip() for number, title in headings}


def test_no_reference_to_design_notes_outside_the_repository() -> None:
    hits = [f"{p.relative_to(REPO_ROOT)}: {needle}" for p in project_files() for needle in DANGLING
            if needle in p.read_text(errors="replace")]
    assert hits == []


def test_references_to_docs_method_name_existing_sections() -> None:
    sections = method_sections()
    assert sorted(sections) == list(range(1, len(sections) + 1)), "sections are numbered 1..n"
    titles = set(sections.values())
    cited = 0
    for path in project_files():
        text = path.read_text(errors="replace")
        for number in re.findall(r"docs/method\.md,? sections? (\d+)", text):
            assert int(number) in sections, f"{path.relative_to(REPO_ROOT)} cites missing section {number}"
            cited += 1
        for title in re.findall(r'docs/method\.md``?, "([^"]+)"', text):
            assert title in titles, f"{path.relative_to(REPO_ROOT)} cites missing section {title!r}"
            cited += 1
    assert cited >= 5  # the trainer's recipe, the schedules, the sigma fit
