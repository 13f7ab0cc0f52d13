"""The dashboard's files, read without a browser: what the browser tests cannot see at a
glance (no HTML parsing of strings, no inline script, nothing missing from the package)."""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import conveyor.http

STATIC = Path(conveyor.http.__file__).parent / "static"
OURS = sorted(p for p in STATIC.glob("*.js"))
SINKS = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function")


def test_no_script_builds_html_from_strings() -> None:
    assert len(OURS) >= 12
    for path in OURS:
        text = path.read_text("utf-8")
        assert not SINKS.search(text), f"{path.name}: {SINKS.search(text)}"


def test_the_page_has_no_inline_script_and_every_file_it_names_exists() -> None:
    html = (STATIC / "index.html").read_text("utf-8")
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert scripts and all("src=" in tag for tag in scripts)
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers either
    assert "http://" not in html and "https://" not in html  # no CDN
    for ref in re.findall(r'(?:href|src)="/static/([^"]+)"', html):
        assert (STATIC / ref).is_file(), ref


def test_every_module_import_resolves() -> None:
    for path in OURS:
        for ref in re.findall(r'from "\./([^"]+)"', path.read_text("utf-8")):
            assert (STATIC / ref).is_file(), f"{path.name} imports {ref}"


def test_the_package_data_ships_every_static_file() -> None:
    root = Path(__file__).parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["conveyor"]
    package = STATIC.parent.parent
    for path in STATIC.rglob("*"):
        if path.is_file():
            relative = path.relative_to(package).as_posix()
            assert any(
                fnmatch(relative, p) and relative.count("/") == p.count("/") for p in patterns
            ), relative
