"""BatchNorm recalibrated from a subset of the training images: what does it change?

    .venv/bin/python scripts/bn_subset_study.py [--profile real] [--data-dir DIR] [--images 256]
        [--draws 3] [--out bn_subset.json]

Before every validation the classifiers' BatchNorm statistics are recomputed from the
training images (``recipes``: ``bn_recalibrate="epoch"``), a no-grad pass that costs a
fifth to a quarter of an epoch on real data. The recipes take a fixed random
``bn_images`` of them instead of all. This script measures, on the finished teachers and
students of the profile's artifacts, how far the validation AUC and accuracy move when
the statistics come from ``--images`` images (``--draws`` different subsets) rather than
from all of them, and what each pass costs (``pipeline.bn_subset_study``). Train and
validation images only. Writes ``results/<profile>/bn_subset.json`` (or ``--out``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    from tbkd_helpers import config, data, pipeline, store

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="real", choices=tuple(config.PROFILES))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--out", default="bn_subset.json", help="file name under results/<profile>/")
    args = ap.parse_args(argv)

    profile = config.get_profile(args.profile, data_dir=args.data_dir)
    root = Path(profile.artifacts)
    dirs = sorted(p.parent for p in [*root.glob("teachers/*/best.pt"), *root.glob("students/*/best.pt")])
    if not dirs:
        print(f"no finished teacher or student under {root}: run chapters 02 and 04 first", file=sys.stderr)
        return 1
    prep = data.prepare(profile, progress=False)
    rows = pipeline.bn_subset_study(profile, prep, dirs, args.images, args.draws)
    print(f"{'model':34s} {'val AUC':>8s} {'AUC change per draw':>28s} {'acc change per draw':>26s}  seconds all/subset")
    for r in rows:
        print(f"{r['model']:34s} {r['val_auc']:8.4f} {' '.join(f'{v:+.4f}' for v in r['d_auc']):>28s} "
              f"{' '.join(f'{v:+.3f}' for v in r['d_acc']):>26s}  {r['seconds_all']:.1f}/{r['seconds_subset']:.1f}")
    worst = max(abs(v) for r in rows for v in r["d_auc"])
    print(f"largest validation-AUC change: {worst:.4f}")
    out = config.results_dir(profile.name) / args.out
    store.write_json(out, {"profile": profile.name, "images": args.images, "draws": args.draws,
                           "largest_auc_change": round(worst, 4), "models": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
