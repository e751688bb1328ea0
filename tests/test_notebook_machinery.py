"""The notebook regression machinery itself: nbval compares marked outputs only, and a
changed checked output fails; papermill failures name the notebook and the cell."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from tbkd_helpers import notebooks

ROOT = Path(__file__).resolve().parents[1]
NBVAL = ["--nbval-lax", "--nbval-current-env", "--nbval-sanitize-with", str(ROOT / "tests" / "nbval_sanitize.cfg")]


def _notebook(path: Path, cells: list[tuple[str, str | None]]) -> Path:
    """cells: (source, stored stdout or None)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for i, (src, out) in enumerate(cells, 1):
        c = nbformat.v4.new_code_cell(src, execution_count=i)
        if out is not None:
            c.outputs = [nbformat.v4.new_output("stream", name="stdout", text=out)]
        nb.cells.append(c)
    nbformat.write(nb, str(path))
    return path


def _nbval(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path), *NBVAL],
                          capture_output=True, text=True, cwd=path.parent, timeout=300)


@pytest.mark.parametrize("stored, passes", [("n = 3\n", True), ("n = 4\n", False)])
def test_checked_output_is_compared(tmp_path, stored, passes):
    nb = _notebook(tmp_path / "nb.ipynb", [
        ("# NBVAL_CHECK_OUTPUT\nprint('n =', 1 + 2)", stored),
        ("import time\nprint(time.time())", "12345.6\n"),  # unchecked: may differ freely
        ("print('took 3.2 s')", None),
    ])
    res = _nbval(nb)
    assert (res.returncode == 0) is passes, res.stdout[-2000:]


def test_durations_are_sanitised_in_checked_cells(tmp_path):
    nb = _notebook(tmp_path / "nb.ipynb", [
        ("# NBVAL_CHECK_OUTPUT\nimport random\nprint(f'trained in {random.random()*9:.1f} s')",
         "trained in 1.3 s\n"),
    ])
    res = _nbval(nb)
    assert res.returncode == 0, res.stdout[-2000:]


def test_failure_names_notebook_and_cell(tmp_path):
    src = _notebook(tmp_path / "01_bad.ipynb", [("x = 1", None), ("raise ValueError('bad input here')", None)])
    with pytest.raises(notebooks.NotebookFailure) as err:
        notebooks.run_notebook(src, tmp_path / "out" / "01_bad.ipynb", {}, log_output=False)
    msg = str(err.value)
    assert "01_bad.ipynb" in msg and "cell 2" in msg and "ValueError: bad input here" in msg


def test_failure_cell_counts_the_source_notebook_not_papermills_injected_cell(tmp_path):
    """make reproduce always injects PROFILE: the cell number must still be the one a
    reader of the committed notebook counts (papermill adds a cell after ``parameters``)."""
    src = _notebook(tmp_path / "02_bad.ipynb", [("PROFILE = 'quick'", None), ("x = 1", None),
                                                ("raise ValueError(f'bad {PROFILE}')", None)])
    nb = nbformat.read(str(src), as_version=4)
    nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, str(src))
    out = tmp_path / "out" / "02_bad.ipynb"
    with pytest.raises(notebooks.NotebookFailure) as err:
        notebooks.run_notebook(src, out, {"PROFILE": "real"}, log_output=False)
    executed = nbformat.read(str(out), as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    assert "cell 3" in str(err.value) and "ValueError: bad real" in str(err.value), str(err.value)


def test_committed_notebooks_are_runnable_documents():
    """Every committed notebook: python3 kernel, a parameters cell with the fixed names,
    outputs stored with execution counts (they are what nbval compares)."""
    nbs = notebooks.numbered_notebooks()
    assert nbs, "no notebooks found"
    for path in nbs:
        nb = nbformat.read(str(path), as_version=4)
        assert nb.metadata["kernelspec"]["name"] == "python3", path
        params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1, f"{path}: needs exactly one cell tagged 'parameters'"
        for name in ("PROFILE", "DATA_DIR", "SEED"):
            assert f"{name} =" in params[0].source, f"{path}: parameters cell lacks {name}"
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.execution_count for c in code), f"{path}: not executed (no execution counts)"
        assert not any(o.get("output_type") == "error" for c in code for o in c.outputs), path
        assert any(c.source.startswith("# NBVAL_CHECK_OUTPUT") for c in code), f"{path}: checks nothing"
