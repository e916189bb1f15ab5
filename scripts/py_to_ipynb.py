"""Makes a Jupyter notebook from a jupytext "percent" script, with no dependency.

    python scripts/py_to_ipynb.py examples/quick_start.py            # writes quick_start.ipynb
    python scripts/py_to_ipynb.py examples/quick_start.py --check    # exit 1 if out of date

The script is the source of truth; the ``.ipynb`` is generated from it and
committed (``tests/test_quickstart.py`` checks that the two agree). The format
is jupytext's ``py:percent``: an optional ``# ---`` YAML header in comments,
then cells opened by ``# %%`` (code) or ``# %% [markdown]`` (markdown, each
line a ``#`` comment). With jupytext installed, ``jupytext --to ipynb`` gives
the same cells.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

_CELL = re.compile(r"^# %%(?:\s+\[(?P<kind>\w+)\])?\s*(?P<title>.*)$")


def _strip_blank(lines: list[str]) -> list[str]:
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def _uncomment(line: str) -> str:
    if line.startswith("# "):
        return line[2:]
    return line[1:] if line.startswith("#") else line


def _source(lines: list[str]) -> list[str]:
    """nbformat's multi-line string: every line but the last keeps its newline."""
    return [line + "\n" for line in lines[:-1]] + lines[-1:]


def convert(text: str) -> dict:
    """The notebook (nbformat 4.5 JSON) for a percent-format script."""
    lines = text.splitlines()
    if lines and lines[0] == "# ---":  # The jupytext header: kept out of the cells.
        end = lines.index("# ---", 1)
        lines = lines[end + 1:]
    cells, kind, body = [], None, []

    def flush() -> None:
        content = _strip_blank(body)
        if kind is None and not content:
            return
        if kind == "markdown":
            content = [_uncomment(line) for line in content]
        cell = {"cell_type": kind or "code", "id": f"cell-{len(cells)}", "metadata": {},
                "source": _source(content)}
        if cell["cell_type"] == "code":
            cell.update(execution_count=None, outputs=[])
        cells.append(cell)

    for line in lines:
        m = _CELL.match(line)
        if m:
            flush()
            kind, body = ("markdown" if m.group("kind") in ("markdown", "md") else "code"), []
        else:
            body.append(line)
    flush()
    return {
        "cells": cells,
        "metadata": {
            "jupytext": {"formats": "py:percent,ipynb"},
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def render(text: str) -> str:
    return json.dumps(convert(text), indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("script", help="the percent-format .py file")
    parser.add_argument("notebook", nargs="?", help="output (default: the script's name, .ipynb)")
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 when the notebook differs from the script")
    args = parser.parse_args(argv)
    out = args.notebook or re.sub(r"\.py$", "", args.script) + ".ipynb"
    with open(args.script, encoding="utf-8") as f:
        wanted = render(f.read())
    if args.check:
        try:
            with open(out, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = None
        if current != wanted:
            print(f"{out} is out of date; run: python scripts/py_to_ipynb.py {args.script}",
                  file=sys.stderr)
            return 1
        return 0
    with open(out, "w", encoding="utf-8") as f:
        f.write(wanted)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
