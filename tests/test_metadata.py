"""Package metadata agrees with itself: the ComfyUI version the README names is the one pyproject declares, and the
registry icon is a file of this repository, addressed under the declared repository URL."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from tests.conftest import REPO_ROOT

tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
README = (REPO_ROOT / "README.md").read_text()


def declared_comfyui_minimum() -> str:
    spec = PYPROJECT["tool"]["comfy"]["requires-comfyui"]
    match = re.fullmatch(r">=\s*([0-9]+(?:\.[0-9]+)*)", spec)
    assert match, f"requires-comfyui should be a plain minimum version, got {spec!r}"
    return match.group(1)


def test_readme_names_the_declared_comfyui_minimum():
    named = re.findall(r"needs ComfyUI ([0-9.]*[0-9]) or newer", README)
    assert named == [declared_comfyui_minimum()]


def test_registry_icon_is_a_repository_file_under_the_repository_url():
    icon_url = PYPROJECT["tool"]["comfy"]["Icon"]
    repository = PYPROJECT["project"]["urls"]["Repository"]
    owner_repo = repository.removeprefix("https://github.com/").strip("/")
    prefix = f"https://raw.githubusercontent.com/{owner_repo}/main/"
    assert icon_url.startswith(prefix), icon_url
    path = REPO_ROOT / icon_url.removeprefix(prefix)
    assert path.is_file(), f"{icon_url} names {path.relative_to(REPO_ROOT)}, which is not in the repository"
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    assert root.get("width") == root.get("height"), "the registry shows the icon square"
