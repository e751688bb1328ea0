"""Print the README's results table, made from ``results/<profile>/results.json``.

    .venv/bin/python scripts/results_table.py [--profile real] [--update-readme]

With ``--update-readme`` the table replaces what stands between the markers
``<!-- results:begin -->`` and ``<!-- results:end -->`` in README.md; without the markers
the README is left alone (and the script says so). Nothing here is typed by hand: the
numbers come from the JSON that notebook 05 writes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    from tbkd_helpers import config, results
    from tbkd_helpers.data import DataError

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="real", choices=tuple(config.PROFILES))
    ap.add_argument("--results", type=Path, default=None, help="results.json (default: results/<profile>/results.json)")
    ap.add_argument("--update-readme", action="store_true", help="write the table into README.md between the markers")
    ap.add_argument("--readme", type=Path, default=REPO / "README.md")
    args = ap.parse_args(argv)
    import datetime
    import json

    path = args.results or results.results_path(config.get_profile(args.profile))
    try:
        res = results.load(path)
    except (DataError, ValueError) as err:
        print(f"results_table: {err}", file=sys.stderr)
        return 1
    # the day the run wrote it (kept in timings.json), else the file's modification date
    timings = Path(path).with_name(results.TIMINGS_FILE)
    written = (json.loads(timings.read_text()).get("written") if timings.is_file() else None) \
        or datetime.date.fromtimestamp(Path(path).stat().st_mtime).isoformat()
    def beside(name):  # a study's file written beside results.json for the same profile, else None
        f = Path(path).with_name(name)
        doc = json.loads(f.read_text()) if f.is_file() else None
        if doc and doc.get("profile") != res["profile"]:
            print(f"results_table: {f}: written for profile {doc.get('profile')!r}, not {res['profile']!r}; "
                  "left out", file=sys.stderr)
            return None
        return doc

    # the teachers over training seeds (scripts/teacher_seeds.py), the students over folds
    # (scripts/kfold_students.py), when written beside it
    teacher_seeds, kfold_students = beside(results.TEACHER_SEEDS_FILE), beside(results.KFOLD_STUDENTS_FILE)
    table = results.readme_table(res, written=written, teacher_seeds=teacher_seeds,
                                 kfold_students=kfold_students)
    print(table, end="")
    if args.update_readme:
        if results.update_readme(args.readme, table):
            print(f"results_table: updated {args.readme}", file=sys.stderr)
        else:
            print(f"results_table: {args.readme}: no {results.BEGIN} ... {results.END} markers; "
                  "printed only", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
