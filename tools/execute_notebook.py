"""Execute notebooks in place on the quick profile: the outputs that get committed.

    python tools/execute_notebook.py notebooks/00_data.ipynb [...]

Artifacts go to a fresh temporary folder, as in `make test`, so the committed outputs
are those of a run from nothing.
"""
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(paths):
    from tbkd_helpers.notebooks import NotebookFailure, run_notebook

    base = os.environ.get("TBKD_ARTIFACTS_BASE") or tempfile.mkdtemp(prefix="tbkd-nb-")
    os.environ.setdefault("TBKD_ARTIFACTS", os.path.join(base, "artifacts"))
    os.environ.setdefault("TBKD_RESULTS", os.path.join(base, "results"))
    # committed copies carry no progress bars (a frozen bar teaches nothing); a reader who
    # runs a chapter in JupyterLab, and `make reproduce`, still see them
    os.environ.setdefault("TBKD_PROGRESS", "off")
    # and their figures inline as JPEG (a fraction of PNG's size for galleries of X-rays)
    os.environ.setdefault("TBKD_FIGURE_FORMAT", "jpeg")
    for p in sorted(map(Path, paths)):
        try:
            sec = run_notebook(p, p, parameters={}, log_output=False)
        except NotebookFailure as err:
            print(err, file=sys.stderr)
            return 1
        print(f"{p}: executed in {sec:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
