"""Carry prose edits from a builder into its committed notebook without re-executing it.

    python tools/notebooks/sync_prose.py 02_teachers [03_gradcam ...]

Builds the chapter into a temporary folder and, when its code cells are exactly the
committed notebook's code cells (same sources, same order), writes the committed notebook
again with the builder's markdown cells (added, removed or edited) around the committed
code cells and their outputs. A change to any code cell is refused: that needs a real
re-execution (``tools/execute_notebook.py``), or the outputs would not be the code's.
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def sync(name: str) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(HERE / f"{name}.py")], check=True, capture_output=True,
                       env=dict(os.environ, NBBUILD_OUT=tmp))
        built = nbformat.read(Path(tmp) / f"{name}.ipynb", as_version=4)
    path = REPO / "notebooks" / f"{name}.ipynb"
    committed = nbformat.read(path, as_version=4)
    new_code = [c for c in built.cells if c.cell_type == "code"]
    old_code = [c for c in committed.cells if c.cell_type == "code"]
    if [c.source for c in new_code] != [c.source for c in old_code]:
        print(f"{name}: code cells differ from the committed notebook; re-execute it instead", file=sys.stderr)
        return False
    it = iter(old_code)
    old_prose = {c.source: c for c in committed.cells if c.cell_type == "markdown"}  # keeps cell ids
    cells = [next(it) if c.cell_type == "code" else old_prose.get(c.source, c) for c in built.cells]
    if [c.source for c in cells] == [c.source for c in committed.cells]:
        print(f"{name}: prose already in sync")
        return True
    committed.cells = cells
    nbformat.write(committed, str(path))
    print(f"{name}: prose updated, code cells and outputs kept")
    return True


if __name__ == "__main__":
    sys.exit(0 if all([sync(n.removesuffix(".py")) for n in sys.argv[1:]]) else 1)
