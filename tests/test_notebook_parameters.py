"""Every chapter's ``parameters`` cell is one papermill can read whole: a line it cannot
parse is left out of ``make reproduce PROFILE=...`` overrides and warned about on every run."""
import re
from pathlib import Path

import nbformat
import pytest
from papermill.translators import PythonTranslator

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
ASSIGN = re.compile(r"^([A-Z_][A-Z0-9_]*)\s*=")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_parses_every_parameter(path):
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path.name}: one parameters cell expected"
    assigned = [m.group(1) for line in cells[0].source.splitlines() if (m := ASSIGN.match(line))]
    parsed = [p.name for p in PythonTranslator.inspect(cells[0])]
    assert assigned and parsed == assigned, f"{path.name}: papermill reads {parsed}, the cell sets {assigned}"
