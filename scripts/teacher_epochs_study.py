"""How long must a teacher train? One teacher, several epoch counts, compared over seeds on validation.

    .venv/bin/python scripts/teacher_epochs_study.py --profile real [--data-dir DIR]
        --teacher mobilenet_v3_large [--epochs 10 20 30] [--seeds 3] [--out teacher_epochs.json]

Trains ``--teacher`` once per seed for each of ``--epochs`` (the first is the reference; the
one-cycle schedule stretches over each count; the recipe's other settings as chapter 02 uses
them), on the profile's fixed split, and reports each run's **validation** AUC and kept epoch,
with each count's difference from the first paired by seed (``pipeline.teacher_epochs_study``).
The test split is never read. Each run is kept in ``teachers/study/<arch>-e<n>-seed<k>``, so a
stopped study resumes; ``results/<profile>/<out>`` is rewritten after every run. What it chose:
``recipes.TEACHER.epochs_by_arch``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    from tbkd_helpers import config, data, pipeline, reports, store

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick", choices=tuple(config.PROFILES))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--epochs", type=int, nargs="+", default=None,
                    help="epoch counts, the reference first (default: the profile's, twice and three times it)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="teacher_epochs.json", help="file name under results/<profile>/")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    profile = config.get_profile(args.profile, data_dir=args.data_dir)
    if args.teacher not in profile.teachers:
        raise SystemExit(f"--teacher {args.teacher}: not one of the profile's teachers ({', '.join(profile.teachers)})")
    epochs = args.epochs or [profile.teacher_epochs * k for k in (1, 2, 3)]
    prep = data.prepare(profile, progress=False)
    pipeline.lungs(profile, prep, progress=args.progress)
    seeds = pipeline.seed_list(profile, args.seeds)
    path, rows, t0 = profile.results / args.out, [], time.time()
    head = {"profile": profile.name, "chosen_on": "validation split", "seeds": seeds, "epochs": epochs}

    def row(r):  # the file after every run, so that a stopped study keeps what it finished
        rows.append(r)
        print(f"seed {r['seed']} {r['teacher']}, {r['epochs']} epochs: kept epoch {r['best_epoch']}, "
              f"val AUC {r['val_auc']}, {r['seconds']:.0f} s", flush=True)
        store.write_json(path, {**head, "runs": rows, "seconds": round(time.time() - t0)})

    out = pipeline.teacher_epochs_study(profile, prep, args.teacher, seeds, epochs, on_row=row,
                                        progress=args.progress)
    store.write_json(path, {**head, **out, "seconds": round(time.time() - t0)})
    for line in reports.study_paired_lines(out):
        print(line)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
