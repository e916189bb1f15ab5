"""Every Python block of docs/*.md runs (in order, one namespace per page); the site builds."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md"))
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def test_docs_exist():
    assert {p.name for p in PAGES} >= {"index.md", "differences.md", "migration.md"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_snippets_run(page, monkeypatch):
    monkeypatch.chdir(ROOT)  # pages refer to tests/fixtures relative to the repository root
    blocks = BLOCK.findall(page.read_text())
    assert blocks, f"{page.name} has no Python blocks"
    namespace: dict = {}
    out = io.StringIO()
    with redirect_stdout(out):
        for i, code in enumerate(blocks):
            exec(compile(code, f"{page.name}[block {i}]", "exec"), namespace)  # noqa: S102
    if page.name == "migration.md":
        assert "[[3 7 5 3 2 4]]" in out.getvalue()


def test_mkdocs_build_is_strict(tmp_path):
    mkdocs = shutil.which("mkdocs") or shutil.which("mkdocs", path=os.path.dirname(sys.executable))
    assert mkdocs, "mkdocs is in the dev extra; pip install -e '.[dev]'"
    result = subprocess.run([mkdocs, "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "index.html").exists()
