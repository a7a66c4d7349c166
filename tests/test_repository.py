"""The repository's own housekeeping: what the README links, the license, the version."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pysnap

TOP = Path(__file__).resolve().parent.parent

# [text](target) links, and file names the text mentions (FOO.md, LICENSE...)
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_FILE_NAME = re.compile(r"\b[\w./-]+\.md\b|\bLICENSE\b")


def test_readme_links_only_files_in_the_repository() -> None:
    text = (TOP / "README.md").read_text()
    targets = {t.split("#")[0] for t in _LINK.findall(text) if "://" not in t}
    targets |= set(_FILE_NAME.findall(text))
    targets.discard("")
    assert targets  # the license link at least
    missing = sorted(t for t in targets if not (TOP / t).exists())
    assert not missing, f"README.md links or names files that are not in the repository: {missing}"


def test_license_is_the_declared_apache_2() -> None:
    meta = tomllib.loads((TOP / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "Apache-2.0"
    text = (TOP / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a notice


def test_one_source_for_the_version() -> None:
    meta = tomllib.loads((TOP / "pyproject.toml").read_text())
    assert "version" not in meta["project"]
    assert "version" in meta["project"]["dynamic"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "pysnap.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", pysnap.__version__)
