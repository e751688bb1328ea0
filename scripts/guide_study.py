"""Which teacher should guide the student? The guides compared over seeds, on validation.

    .venv/bin/python scripts/guide_study.py [--profile real] [--data-dir DIR] [--seeds 3]
        [--variants kd+cam] [--guides best fusion lungs] [--out guides.json]

The map term teaches the student to look where its guide looks, so the guide's maps set
where the student can look. Chapter 04's guide follows the profile's rule (``Profile.guide``:
``best`` on quick, ``lungs`` on real); this script trains each ``--variants`` student once per seed with every
``--guides`` (``best``; ``fusion``, all teachers weighted by validation AUC; ``lungs``,
the teacher whose validation maps are most inside the lungs; a teacher's name; or two of
these joined by a comma, maps then logits: ``lungs,best``), with
the teachers of the fixed split, and reports **validation** figures only, each guide's
difference from the first one paired by seed (``pipeline.guide_study``). It also lists
each teacher's validation AUC and in-lung share. The test split is never read. Writes
``results/<profile>/guides.json`` (or ``--out``) after every run, so a stopped study keeps what it measured.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    from tbkd_helpers import config, data, distill, pipeline, reports, store

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="real", choices=tuple(config.PROFILES))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--variants", nargs="+", default=["kd+cam"], choices=distill.VARIANTS)
    ap.add_argument("--guides", nargs="+", default=["best", "fusion", pipeline.LUNGS_GUIDE],
                    help="the first is the reference of the paired differences")
    ap.add_argument("--out", default="guides.json", help="file name under results/<profile>/")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    profile = config.get_profile(args.profile, data_dir=args.data_dir)
    known = {"best", "fusion", pipeline.LUNGS_GUIDE, *profile.teachers}
    bad = [g for g in args.guides for h in g.split(distill.GUIDE_SEP) if h not in known]
    if bad:
        ap.error(f"unknown guide {bad[0]!r}; choose from {', '.join(sorted(known))}")
    if "ce" in args.variants:
        ap.error("the ce student has no guide; compare it with scripts/patience_study.py")
    prep = data.prepare(profile, progress=False)
    head = {"profile": profile.name, "chosen_on": "validation split", "teachers_note": "trained once, on the fixed split",
            "seeds": pipeline.seed_list(profile, args.seeds)}
    path = profile.results / args.out
    t0 = time.time()
    aucs = pipeline.teacher_val_auc(profile, prep)
    att = pipeline.teacher_val_attention(profile, prep)
    for a in profile.teachers:
        print(f"teacher {a:>20}: val AUC {aucs[a]:.3f}, in-lung share of its val maps {att[a]}", flush=True)
    rows, resolved = [], {}

    def save(row):
        rows.append(row)
        resolved[row["guide"]] = row["teacher"]
        print(reports.study_row_line(row, f"guide {row['guide']:>8} ({row['teacher']})"), flush=True)
        store.write_json(path, {**head, **pipeline.summarize_guides(rows, args.guides, args.variants, resolved,
                                                                    aucs, att),
                                "seconds": round(time.time() - t0)})

    out = pipeline.guide_study(profile, prep, head["seeds"], args.guides, args.variants, on_row=save,
                               progress=args.progress, aucs=aucs, att=att)
    for line in reports.study_paired_lines(out, "guide "):
        print(line)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
