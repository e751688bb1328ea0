"""How do the students fare under other settings of the profile? Compared over seeds, on validation.

    .venv/bin/python scripts/settings_study.py [--profile quick] [--data-dir DIR] [--seeds 3]
        [--variants ce kd+cam] --change cam_beta=4 [--change cam_order=first,student_epochs=30 ...]
        [--out settings.json]

Trains each ``--variants`` student once per seed with the profile's own settings and with
every ``--change`` (one or more of the profile's student settings, ``pipeline.STUDY_FIELDS``,
joined by commas), side by side, with the teachers of the fixed split (trained once), and reports **validation** figures only:
AUC, accuracy, in-lung share, agreement with the guide's maps and, on phantoms, the share of
the maps' mass on the known lesions and the pointing game. Two comparisons, both paired by
seed (``pipeline.settings_study``): each setting against the profile's own, and within each
setting each variant against ``ce``. The test split is never read. Writes
``results/<profile>/<out>`` when the students are trained (each run is kept in its folder, so a
stopped study resumes where it stopped).
"""
from __future__ import annotations

import argparse
import ast
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def parse_change(text: str) -> dict:
    """``"cam_beta=4,cam_order=first"`` -> ``{"cam_beta": 4, "cam_order": "first"}`` (the
    student's settings, ``pipeline.STUDY_FIELDS``; a value is read as a Python literal when it
    is one, else as a string)."""
    from tbkd_helpers import pipeline

    fields = pipeline.STUDY_FIELDS
    out = {}
    for part in text.split(","):
        key, sep, raw = part.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise argparse.ArgumentTypeError(f"{part!r}: expected FIELD=VALUE, FIELD one of the student's settings: "
                                             f"{', '.join(sorted(fields))}")
        try:
            out[key] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            out[key] = raw.strip()
    return out


def main(argv=None) -> int:
    from tbkd_helpers import config, data, distill, pipeline, reports, store

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick", choices=tuple(config.PROFILES))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--variants", nargs="+", default=["ce", "kd+cam"], choices=distill.VARIANTS)
    ap.add_argument("--change", type=parse_change, action="append", default=[],
                    help="FIELD=VALUE[,FIELD=VALUE...] of the student's settings (repeatable)")
    ap.add_argument("--out", default="settings.json", help="file name under results/<profile>/")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    profile = config.get_profile(args.profile, data_dir=args.data_dir)
    prep = data.prepare(profile, progress=False)
    seeds = pipeline.seed_list(profile, args.seeds)
    t0 = time.time()
    out = pipeline.settings_study(profile, prep, seeds, args.variants, args.change, progress=args.progress,
                                  on_row=lambda r: print(reports.study_row_line(r, r["setting"]), flush=True))
    path = store.write_json(profile.results / args.out,
                            {"profile": profile.name, "chosen_on": "validation split",
                             "teachers_note": "trained once, on the fixed split", "seeds": seeds, **out,
                             "seconds": round(time.time() - t0)})
    for line in reports.study_paired_lines(out) + reports.study_paired_lines(
            {"reference": "ce", "paired": out["versus_ce"]}, by="setting"):
        print(line)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
