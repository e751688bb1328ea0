"""How much does a teacher's test figure owe to its training seed? Each teacher, trained again.

    .venv/bin/python scripts/teacher_seeds.py [--profile quick] [--data-dir DIR] [--seeds 3]
        [--teachers densenet121 resnet18 ...] [--own-seed-from results/real/teachers.json]
        [--out teacher_seeds.json]

Trains every teacher once per training seed (the profile's own seed, then the next ones) on the
profile's fixed split: only the initial weights, the batch order and the augmentation draws
change (``pipeline.teacher_seeds``). The profile's own seed is chapter 02's teacher, reused when
it is already trained. Each teacher is measured on the test split as chapter 02 measures it
(threshold chosen on validation); the best teacher on validation of each seed is the one the
student's guide would be. Reports each teacher's mean ± SD over seeds and its paired difference
from the teacher the profile's own seed picks. Writes ``results/<profile>/<out>``; each finished
teacher is kept in its folder (``teachers/<arch>-seed<k>``), so a stopped run resumes; the
results file is rewritten after every seed, so a stopped run keeps the seeds it finished.

``--own-seed-from`` takes the profile's own seed's figures from the ``teachers.json`` that
chapter 02 wrote instead of training those teachers again (a whole teacher run saved). Use it
only with a file written by the same code. On the same machine it gives what retraining would;
from another machine it is another draw of the same seed (other CPUs have other kernels: README,
"What is exact and what varies"), which is still a fair member of the spread, and the results
file names where the row came from.
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
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--teachers", nargs="+", default=None, help="default: the profile's five")
    ap.add_argument("--own-seed-from", type=Path, default=None,
                    help="chapter 02's teachers.json: the profile's own seed's figures, not retrained")
    ap.add_argument("--out", default="teacher_seeds.json", help="file name under results/<profile>/")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    profile = config.get_profile(args.profile, data_dir=args.data_dir)
    prep = data.prepare(profile, progress=False)
    pipeline.lungs(profile, prep, progress=args.progress)
    seeds = pipeline.seed_list(profile, args.seeds)
    t0 = time.time()

    def line(r):
        took = "from " + str(args.own_seed_from) if r["seconds"] is None else f"{r['seconds']:.0f} s"
        print(f"seed {r['seed']} {r['teacher']}: kept epoch {r['best_epoch']} of {r['epochs']}, val AUC "
              f"{r['val_auc']}, test AUC (all) {r['test']['all']['auc']:.4f}, {took}", flush=True)

    known, teachers = {}, args.teachers or list(profile.teachers)
    if args.own_seed_from:
        ch02 = store.read_json(args.own_seed_from)
        if ch02.get("profile") != profile.name or ch02.get("seed") != profile.seed or \
                not set(teachers) <= set(ch02.get("teachers", {})):
            raise SystemExit(f"{args.own_seed_from}: not chapter 02's teachers.json of profile {profile.name!r}, "
                             f"seed {profile.seed}, with the teachers {', '.join(teachers)}")
        known = {a: {profile.seed: pipeline.teacher_seed_row(ch02["teachers"][a], profile.seed)} for a in teachers}
    path = profile.results / args.out

    def write(out):  # after every seed, so that a stopped run keeps the seeds it finished
        store.write_json(path, {"profile": profile.name, "chosen_on": "validation split",
                                "own_seed_from": str(args.own_seed_from) if args.own_seed_from else None,
                                **out, "seconds": round(time.time() - t0)})

    out = pipeline.teacher_seeds(profile, prep, seeds, teachers, progress=args.progress, on_run=line,
                                 on_seed=write, known=known)
    print(reports.teacher_seeds_table(out).to_string())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
