"""Choose the distillation loss's settings on the validation split.

    .venv/bin/python scripts/tune_student.py [--profile real] [--data-dir DIR]

Trains the kd+cam student once per setting of ``pipeline.TUNING_GRID`` (the profile's
own, then one change at a time: temperature, map weight, map loss) and writes each one's validation AUC to ``results/<profile>/tuning.json``. The
test split is never read. Chapter 04 prints the table; the profile's ``kd_alpha``,
``cam_beta``, ``kd_temperature`` and ``cam_loss`` are set from it (``config.py`` says so).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    from tbkd_helpers import config, data, pipeline, store

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="real", choices=tuple(config.PROFILES))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    profile = config.get_profile(args.profile, data_dir=args.data_dir)
    prep = data.prepare(profile, progress=False)
    t0 = time.time()
    rows = pipeline.tune_student(profile, prep, progress=args.progress)
    path = store.write_json(profile.results / "tuning.json",
                            {"profile": profile.name, "variant": "kd+cam", "chosen_on": "validation split",
                             "seed": profile.seed, "rows": rows, "seconds": round(time.time() - t0)})
    for r in rows:
        print(f"alpha {r['alpha']:g} beta {r['beta']:g} T {r['temperature']:g} {r['cam_loss']:>4} "
              f"{r['guide']:>7}: val AUC {r['val_auc']}, kept epoch {r['best_epoch']}, {r['seconds']:.0f} s")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
