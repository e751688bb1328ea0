"""Run the numbered notebooks headlessly with papermill (``make reproduce``).

Each ``notebooks/NN_*.ipynb`` is executed in numeric order with the profile injected
into its ``parameters`` cell; the executed copy goes to ``runs/<profile>/`` and the
committed notebook is never touched. The run stops at the first failing notebook and
says which cell failed and why.
"""
from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .config import REPO_ROOT

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
_NUMBERED = re.compile(r"^(\d\d)_.+\.ipynb$")


def numbered_notebooks(folder: Path = NOTEBOOK_DIR) -> list[Path]:
    """``NN_name.ipynb`` files in numeric order."""
    return sorted((p for p in Path(folder).iterdir() if _NUMBERED.match(p.name)),
                  key=lambda p: (int(_NUMBERED.match(p.name)[1]), p.name))


@dataclass
class NotebookFailure(Exception):
    notebook: Path
    cell: int | None
    error: str

    def __str__(self) -> str:
        where = f"cell {self.cell}" if self.cell is not None else "before any cell ran"
        return f"{self.notebook}: failed in {where}: {self.error}"


def _ipc_kernel_manager():
    """A kernel manager that talks to the kernel over local IPC sockets (files in Jupyter's
    runtime folder) instead of TCP on localhost: nothing listens on a port, and ipykernel
    has nothing to warn about ("Kernel is running over TCP without encryption")."""
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kw):
            kw.setdefault("transport", "ipc")
            super().__init__(**kw)

    return IPCKernelManager


def run_notebook(src: Path, dst: Path, parameters: dict, log_output: bool = True,
                 cwd: Path | None = None) -> float:
    """Execute one notebook with papermill; return its wall time in seconds."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    dst.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(str(src), str(dst), parameters=parameters, kernel_name="python3",
                            log_output=log_output, progress_bar=True,
                            cwd=str(cwd or src.parent), kernel_manager_class=_ipc_kernel_manager())
    except PapermillExecutionError as err:
        cell = _failed_cell(dst)
        raise NotebookFailure(src, cell, f"{err.ename}: {err.evalue}".splitlines()[0]) from None
    return time.perf_counter() - t0


def _failed_cell(executed: Path) -> int | None:
    """The 1-based position among the *source* notebook's code cells of the cell papermill
    marked as failed. The executed copy also holds papermill's ``injected-parameters``
    cell, which the reader of the source notebook never sees: it is not counted."""
    import nbformat

    try:
        nb = nbformat.read(str(executed), as_version=4)
    except Exception:  # noqa: BLE001 - the report is best effort
        return None
    code = [c for c in nb.cells if c.cell_type == "code"
            and "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    for i, c in enumerate(code, 1):
        if any(o.get("output_type") == "error" for o in c.get("outputs", [])):
            return i
    return None


def declared_parameters(path: Path) -> set[str]:
    """Names assigned in a notebook's ``parameters`` cell."""
    import ast

    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            tree = ast.parse(cell.source)
            return {t.id for node in tree.body if isinstance(node, ast.Assign)
                    for t in node.targets if isinstance(t, ast.Name)}
    return set()


def reproduce(profile: str = "quick", data_dir: str | None = None, out_dir: Path | None = None,
              notebooks: list[Path] | None = None, log_output: bool = True,
              skip_bad: bool = False) -> dict[str, float]:
    """Execute every numbered notebook for ``profile``; return {notebook: seconds}.

    ``skip_bad`` sets ``TBKD_SKIP_BAD=1``, which the kernels inherit: bad data files are
    left out and listed (``artifacts/<profile>/skipped.json``) instead of stopping the run.
    Raises :class:`NotebookFailure` at the first notebook that fails.
    """
    import os

    from .config import get_profile

    out_dir = Path(out_dir) if out_dir else REPO_ROOT / "runs" / get_profile(profile).run_name
    os.environ.setdefault("TBKD_PROGRESS", "text")  # the kernels inherit it: text progress bars
    if skip_bad:
        os.environ["TBKD_SKIP_BAD"] = "1"
    params = {"PROFILE": profile}
    if data_dir:
        params["DATA_DIR"] = str(Path(data_dir).expanduser().absolute())
    times: dict[str, float] = {}
    for nb in notebooks or numbered_notebooks():
        print(f"[tbkd] {nb.name} ({profile}) ...", file=sys.stderr, flush=True)
        # a headless run shows every training's progress bar (chapters that keep them off
        # for readers, like 02, declare PROGRESS in their parameters cell)
        nb_params = {**params, "PROGRESS": True} if "PROGRESS" in declared_parameters(nb) else params
        times[nb.name] = run_notebook(nb, out_dir / nb.name, nb_params, log_output=log_output)
        print(f"[tbkd] {nb.name} done in {times[nb.name]:.0f} s -> {out_dir / nb.name}",
              file=sys.stderr, flush=True)
    return times


# --------------------------------------------------------------------------- prose against outputs

#: figures a chapter may state in prose without printing them: they are not the run's
#: (the paper's claims, the public anchors, published settings), in the form prose cites them
EXTERNAL_FIGURES = frozenset({
    "91.2", "85.7",  # the paper
    "0.893", "0.870", "0.905", "0.946", "0.948", "0.979", "0.984",  # bob.med.tb anchors (AUC)
    "0.982", "0.95", "0.978", "0.97",  # published lung-segmentation Dice
    "0.455", "0.80", "0.85", "0.01", "0.99",  # the BatchNorm-momentum story of chapter 02's prose
    "0.5", "0.90", "0.70", "0.9", "1.0", "0.0", "1.5", "2.0",  # chance, the WHO target, plain constants
    "1.07", "1.75", "1.25",  # measured ratios quoted from the benchmarks' documentation
})
_NUMBER = re.compile(r"(?<![\w.\-/])(\d+\.\d+)(?![\w.]*\d)")


def _output_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if "text" in out:
            parts.append("".join(out["text"]) if isinstance(out["text"], list) else out["text"])
        for kind in ("text/plain", "text/markdown", "text/html"):
            value = out.get("data", {}).get(kind)
            if value:
                parts.append("".join(value) if isinstance(value, list) else value)
    return "\n".join(parts)


def unbacked_prose_numbers(nb, allowed=EXTERNAL_FIGURES) -> list[tuple[int, str]]:
    """Decimal numbers in a notebook's markdown cells that neither its outputs nor its code
    show, nor ``allowed`` lists: ``[(cell index, number)]``. A chapter whose prose says
    "an AUC of 0.93" while its table prints 0.85 is caught here; a number the prose cites
    must be printed by a cell, or be a figure from outside the run (``allowed``). Numbers
    in formulas (``$...$``) and inline code (examples of notation) are not claims."""
    cells = nb["cells"] if isinstance(nb, dict) else nb.cells
    shown = "\n".join(_output_text(c) + "\n" + "".join(c.get("source", "")) for c in cells
                      if c.get("cell_type") == "code")
    backed = set(_NUMBER.findall(shown))
    out = []
    for i, c in enumerate(cells):
        if c.get("cell_type") != "markdown":
            continue
        text = "".join(c.get("source", ""))
        text = re.sub(r"\$[^$]*\$", " ", text)  # formulas
        text = re.sub(r"`[^`]*`", " ", text)  # code and examples of notation
        for num in _NUMBER.findall(text):
            if num not in backed and num not in allowed:
                out.append((i, num))
    return out
