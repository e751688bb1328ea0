"""The ``tbkd`` command.

    tbkd reproduce [--profile quick|real|full] [--data-dir DIR]   run every notebook headlessly
    tbkd check-data DIR [--skip-bad]                                read a data folder, report it
    tbkd phantoms OUTDIR [--shenzhen N] [--montgomery N] [--size PX] [--seed S]

Every failure is one line on stderr that names the file, and a non-zero exit status.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _reproduce(args) -> int:
    from .notebooks import NotebookFailure, reproduce

    try:
        times = reproduce(args.profile, data_dir=args.data_dir, out_dir=args.out)
    except NotebookFailure as err:
        print(f"tbkd reproduce: {err}", file=sys.stderr)
        return 1
    out = args.out or Path("runs") / args.profile
    print(f"executed {len(times)} notebooks in {sum(times.values()) / 60:.1f} min; "
          f"executed copies in {out}/")
    for name, sec in times.items():
        print(f"  {name:32s} {sec:7.1f} s")
    return 0


def _check_data(args) -> int:
    from .data import DataError, count_table, scan

    try:
        result = scan(args.folder, skip_bad=args.skip_bad)
    except DataError as err:
        print(f"tbkd check-data: {err}", file=sys.stderr)
        return 1
    print(result.report())
    for row in count_table(result.records):
        print(f"  {row['dataset']:12s} normal {row['normal']:4d}  tb {row['tb']:4d}  "
              f"total {row['total']:4d}  with lung masks {row['lung_masks']:4d}")
    return 1 if result.skipped else 0


def _phantoms(args) -> int:
    from .phantom import write_phantom_sets

    counts = {k: v for k, v in (("shenzhen", args.shenzhen), ("montgomery", args.montgomery)) if v}
    root = write_phantom_sets(args.outdir, counts=counts, size=args.size, seed=args.seed,
                              difficulty=args.difficulty)
    print(f"phantom chest X-rays in {root}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tbkd", description="Grad-CAM knowledge distillation for TB detection: "
                                "the tbkd teaching kit's command line")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("reproduce", help="execute every numbered notebook headlessly (papermill)")
    r.add_argument("--profile", default="quick", choices=("quick", "real", "full"))
    r.add_argument("--data-dir", default=None, help="NLM data folder (default: $TBKD_DATA_DIR)")
    r.add_argument("--out", type=Path, default=None, help="folder for executed copies (default runs/<profile>)")
    r.set_defaults(func=_reproduce)

    c = sub.add_parser("check-data", help="read a data folder in any supported layout and report it")
    c.add_argument("folder", type=Path)
    c.add_argument("--skip-bad", action="store_true", help="skip bad files and list them instead of stopping")
    c.set_defaults(func=_check_data)

    ph = sub.add_parser("phantoms", help="write synthetic chest X-rays in the official NLM layouts")
    ph.add_argument("outdir", type=Path)
    ph.add_argument("--shenzhen", type=int, default=160)
    ph.add_argument("--montgomery", type=int, default=80)
    ph.add_argument("--size", type=int, default=128)
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--difficulty", type=float, default=0.5)
    ph.set_defaults(func=_phantoms)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
