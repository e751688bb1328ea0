"""Does the student need more patience? Longer training on more fixed views, on validation.

    .venv/bin/python scripts/patience_study.py [--profile real] [--data-dir DIR] [--seeds 2]
        [--variants kd kd+cam] [--setting 60x16 ...] [--teachers resnet18 ...]

"A good teacher is patient and consistent" (Beyer et al., CVPR 2022): a student distilled
on the very views its teacher saw learns more the longer it trains and the more views it
gets. This script trains each ``--variants`` student with the profile's own epochs and
views (``student_epochs`` x ``guide_views``) and with every ``--setting`` (EPOCHSxVIEWS),
once per seed, with the same teachers and guide (trained once, on the fixed split), and
reports **validation** figures only, with each setting's difference from the profile's
own, paired by seed (``pipeline.patience_study``). The test split is never read.
``--teachers`` limits the teachers the guide is chosen from (to save their training when
they are not there yet; say so when you report). Writes ``results/<profile>/patience.json``
after every run, so a stopped study keeps what it measured.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _setting(text: str) -> tuple[int, int]:
    try:
        epochs, views = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected EPOCHSxVIEWS, for example 60x16") from None
    if epochs < 1 or views < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: epochs and views must be at least 1")
    return epochs, views


def main(argv=None) -> int:
    from tbkd_helpers import config, data, distill, pipeline, reports, store

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="real", choices=tuple(config.PROFILES))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--variants", nargs="+", default=["kd", "kd+cam"], choices=distill.VARIANTS)
    ap.add_argument("--setting", type=_setting, action="append", default=None,
                    help="EPOCHSxVIEWS to compare with the profile's own (repeatable; default 60x16)")
    ap.add_argument("--teachers", nargs="+", default=None)
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    overrides = {"teachers": tuple(args.teachers)} if args.teachers else {}
    profile = config.get_profile(args.profile, data_dir=args.data_dir, **overrides)
    prep = data.prepare(profile, progress=False)
    grid = args.setting or list(pipeline.PATIENCE_GRID)
    own = (profile.student_epochs, profile.guide_views)
    head = {"profile": profile.name, "chosen_on": "validation split", "teachers": list(profile.teachers),
            "teachers_note": "trained once, on the fixed split", "seeds": pipeline.seed_list(profile, args.seeds)}
    path = profile.results / "patience.json"
    rows, t0 = [], time.time()

    def save(row):
        rows.append(row)
        print(reports.study_row_line(row, f"{row['epochs']:>3} epochs x {row['views']:>2} views"), flush=True)
        store.write_json(path, {**head, **pipeline.summarize_patience(rows, own, args.variants),
                                "seconds": round(time.time() - t0)})

    out = pipeline.patience_study(profile, prep, head["seeds"], args.variants, grid, on_row=save,
                                  progress=args.progress)
    for line in reports.study_paired_lines(out):
        print(line)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
