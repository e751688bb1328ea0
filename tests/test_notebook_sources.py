"""The committed notebooks are what their builders in ``tools/notebooks`` say.

A builder holds a chapter's cells as reviewable Python; the committed ``.ipynb`` holds the
same cells plus their quick-profile outputs. An edit made to one and not the other (a
changed sentence, a dropped ``# NBVAL_CHECK_OUTPUT`` marker) fails here.
"""
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
BUILDERS = sorted(p for p in (REPO / "tools" / "notebooks").glob("[0-9][0-9]_*.py"))


@pytest.mark.parametrize("builder", BUILDERS, ids=[b.stem for b in BUILDERS])
def test_notebook_matches_its_builder(builder, tmp_path):
    env = dict(os.environ, NBBUILD_OUT=str(tmp_path))
    subprocess.run([sys.executable, str(builder)], check=True, env=env, cwd=REPO,
                   capture_output=True, text=True)
    built = nbformat.read(tmp_path / f"{builder.stem}.ipynb", as_version=4)
    committed = nbformat.read(REPO / "notebooks" / f"{builder.stem}.ipynb", as_version=4)
    assert len(built.cells) == len(committed.cells), f"{builder.stem}: cell count differs"
    for i, (b, c) in enumerate(zip(built.cells, committed.cells)):
        assert b.cell_type == c.cell_type, f"{builder.stem} cell {i}: type differs"
        assert b.source == c.source, f"{builder.stem} cell {i}: source differs from the builder"
        if b.cell_type == "code":
            assert b.metadata.get("tags", []) == c.metadata.get("tags", []), \
                f"{builder.stem} cell {i}: tags differ"
    assert committed.metadata["kernelspec"]["name"] == "python3"


def test_every_notebook_has_a_builder():
    notebooks = {p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert notebooks == {b.stem for b in BUILDERS}
