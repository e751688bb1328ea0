"""Helpers for the notebook builder scripts in this folder.

A builder holds a chapter's cells as Python data, so the source of a notebook can be
read and reviewed as text; ``build`` writes the ``.ipynb`` (without outputs) with the
``python3`` kernelspec that papermill and nbval need. Then execute it:
``python tools/execute_notebook.py notebooks/NN_name.ipynb``.

``NBBUILD_OUT=DIR`` writes the notebook into DIR instead of ``notebooks/``: the test
``tests/test_notebook_sources.py`` builds there and checks that every committed notebook's
cells are what its builder says.
"""
import os
from pathlib import Path
from textwrap import dedent

import nbformat

REPO = Path(__file__).resolve().parents[2]
CHECK = "# NBVAL_CHECK_OUTPUT"


def md(text: str):
    return nbformat.v4.new_markdown_cell(dedent(text).strip())


def code(src: str, tags: tuple[str, ...] = (), check: bool = False):
    src = dedent(src).strip()
    if check:
        src = f"{CHECK}\n{src}"
    cell = nbformat.v4.new_code_cell(src)
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def parameters(src: str):
    return code(src, tags=("parameters",))


def build(name: str, cells) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    path = Path(os.environ.get("NBBUILD_OUT") or REPO / "notebooks") / f"{name}.ipynb"
    nbformat.validate(nb)
    nbformat.write(nb, str(path))
    print(f"wrote {path}")
    return path
