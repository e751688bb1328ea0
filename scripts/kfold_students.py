"""Are the distilled and the plain student told apart over the k folds? Each fold with its own teachers.

    .venv/bin/python scripts/kfold_students.py [--profile quick] [--data-dir DIR]
        [--variants ce kd+cam] [--teachers densenet121 vgg16_bn] [--folds 1 2] [--progress]
        [--out kfold_students.json]

Chapter 05's k-fold run trains the plain student only, and chapter 04 compares the students
over seeds on the fixed split: a distilled student measured on a fold must learn from teachers
that never saw that fold's held-out images, that is a teacher run per fold. This script pays for
it (``results.kfold_students``): on each of the profile's k folds (the k-fold run's folds) it
trains ``--teachers`` (default: the profile's five) on the fold's train part, chooses the guide
by the profile's rule on the fold's validation part (among those teachers), trains every
variant with the profile's seed and measures it on the fold's held-out images, threshold chosen
on validation. The variants are paired by fold: the report gives each one's mean ± SD over the
folds and its paired difference from ``ce`` with a 95 % t-interval.

Each fold is a folder of its own, ``artifacts/<profile>/kfold-students/fold<i>/`` (its split,
teachers, maps and students; the lung extraction is the profile's), so a stopped run resumes
where it stopped, and ``--folds`` runs some folds now and the others later. The results file,
``results/<profile>/<out>``, is rewritten after every fold with the folds of this call finished
so far; a last call without ``--folds`` gathers every fold (from the cache) for
``scripts/results_table.py``, which puts it in the README's results block.

Cost on the ``real`` profile, per fold: the teachers as in chapter 02 (DenseNet121 and VGG16-BN
are about two thirds of the five), their maps of the fixed views, and the students as in
chapter 04.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    from tbkd_helpers import config, data, pipeline, reports, results, store

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick", choices=tuple(config.PROFILES))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--variants", nargs="+", default=["ce", "kd+cam"], help="student variants (ce is the reference)")
    ap.add_argument("--teachers", nargs="+", default=None, help="each fold's teachers (default: the profile's five)")
    ap.add_argument("--folds", nargs="+", type=int, default=None, help="run only these folds (1-based)")
    ap.add_argument("--out", default="kfold_students.json", help="file name under results/<profile>/")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    profile = config.get_profile(args.profile, data_dir=args.data_dir)
    prep = data.prepare(profile, progress=False)
    pipeline.lungs(profile, prep, progress=args.progress)
    path = profile.results / args.out
    t0 = time.time()

    def write(out):  # after every fold, so that a stopped run keeps the folds it finished
        store.write_json(path, {"profile": profile.name, **out, "seconds": round(time.time() - t0)})
        f = out["folds"][-1]
        teachers = ", ".join(f"{a} {t['test']['all']['auc']:.3f}" for a, t in f["teachers"].items())
        students = ", ".join(f"{v} {r['test']['all']['accuracy']:.3f} / {r['test']['all']['auc']:.3f}"
                             for v, r in f["runs"].items())
        print(f"fold {f['fold']} ({f['n_test']} held-out images, {time.time() - t0:.0f} s): guide {f['guide']}; "
              f"teachers' test AUC {teachers}; students' test accuracy / AUC {students}", flush=True)

    out = results.kfold_students(profile, prep, variants=args.variants, teachers=args.teachers, folds=args.folds,
                                 on_fold=write, progress=args.progress)
    if not out["folds"]:
        print("kfold_students: no fold to run", file=sys.stderr)
        return 1
    for ds in out["summary"][args.variants[0]]:
        print(f"\n{ds}, {len(out['folds'])} folds:")
        print(reports.seeds_table(out, ds).to_string())
        for line in reports.seeds_verdicts(out, ds, over="folds"):
            print(line)
    print(f"wrote {path}")
    if args.folds:
        print(f"{path.name} holds folds {', '.join(map(str, sorted(set(args.folds))))} only: once every fold has run, "
              "run again without --folds to gather them all (the folds already run are read from their folders, "
              "nothing is trained again); scripts/results_table.py puts the file beside results.json in the README")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
