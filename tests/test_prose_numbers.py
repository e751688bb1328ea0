"""The chapters' prose states no number about a run that the run did not print.

Every decimal number in a committed chapter's markdown must be shown by one of its code
cells (output or source), or be a figure from outside the run (the paper's, the public
anchors': ``notebooks.EXTERNAL_FIGURES``). A re-run that changes a printed figure while
the prose still cites the old one fails here.
"""
from pathlib import Path

import nbformat
import pytest

from tbkd_helpers import notebooks

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _nb(prose: str, printed: str):
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("print(report)")
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text=printed)]
    nb.cells = [nbformat.v4.new_markdown_cell(prose), code]
    return nb


def test_a_planted_contradiction_is_caught():
    nb = _nb("The guide's AUC is about 0.93, and the student reaches 0.72.",
             "guide AUC 0.85 [0.78, 0.91]\nstudent AUC 0.72 [0.61, 0.82]\n")
    assert notebooks.unbacked_prose_numbers(nb) == [(0, "0.93")]


def test_prose_that_cites_what_is_printed_or_external_passes():
    nb = _nb("The student reaches 0.72 (the paper: 91.2 %); the formula $x^{0.5}$ is not a figure.",
             "student AUC 0.72 [0.61, 0.82]\n")
    assert notebooks.unbacked_prose_numbers(nb) == []


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_committed_chapters_cite_only_their_outputs(path):
    nb = nbformat.read(path, as_version=4)
    bad = notebooks.unbacked_prose_numbers(nb)
    assert not bad, f"{path.name}: prose numbers not printed by the chapter: " + ", ".join(
        f"cell {i}: {n}" for i, n in bad)
