"""Is the second-order Grad-CAM gradient worth its cost? The kd+cam student both ways, on validation.

The map term of the kd+cam loss reaches the student's weights by two paths: through the
activations ``A`` of the Grad-CAM layer, and through the Grad-CAM weights (the gradient of
the class score with respect to ``A``), which needs a second-order backward pass through
every layer after ``A`` (``cam_order="second"``, the profile's default). Holding the
weights constant (``"first"``) leaves only the first path and costs about a plain step.

This script trains the kd+cam student of ``--profile`` both ways for each of ``--seeds``
seeds (the same seed gives both the same initial weights, batches and views: the runs are
paired), with the teachers and guide of the fixed split, and reports **validation** figures
only: the kept epoch's AUC, and where the student's maps lie on the validation images
(in-lung share; on phantoms also the pointing game and the lesion share, which have a
truth). It also times one training step of each, side by side with a plain
cross-entropy step. The test split is not read. Writes ``results/<profile>/cam_order.json``.

    .venv/bin/python benchmarks/bench_cam_order.py [--profile quick] [--seeds 3] [--data-dir DIR]

Prints the figures and the paired differences (first minus second); asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

FIGURES = ("val_auc", "in_lung", "pointing", "lesion_share", "agreement")


def run(profile, prep, seeds, progress: bool = False) -> dict:
    """Both orders' kd+cam students over ``seeds``; validation figures and paired differences."""
    from tbkd_helpers import distill, metrics, pipeline

    records = pipeline.classifier_records(profile, prep, "val")
    size = profile.size_for(profile.student)
    lungs = pipeline.lung_masks(profile, records, size, "lung")
    lesions = pipeline.lung_masks(profile, records, size, "lesion")
    guide = pipeline.guide_for_part(profile, prep, None, "val")  # the profile's guide
    runs = {o: [] for o in distill.CAM_ORDERS}
    for seed in seeds:
        for order in distill.CAM_ORDERS:
            p = profile.replace(cam_order=order)
            # the profile's own order trains where chapter 04's seeds run lives (and reuses it)
            ckpt = None if order == profile.cam_order else \
                Path(profile.artifacts) / "students" / f"kd+cam-{order}-order" / f"seed{seed}"
            t0 = time.perf_counter()
            model, hist, _ = pipeline.train_student(p, "kd+cam", prep, progress=progress, seed=seed, ckpt_dir=ckpt)
            maps, _ = pipeline.student_maps(p, model, prep, "val")
            att = pipeline.attention_figures(maps, lungs, lesions, guide.cams, n_boot=0)
            row = {"seed": seed, "best_epoch": hist.best_epoch,
                   "val_auc": (hist.final or {}).get("val_auc"),
                   "train_seconds": round(float(sum(hist.seconds)), 1),
                   **{k: att[k]["mean"] for k in FIGURES[1:]}}
            runs[order].append(row)
            print(f"seed {seed} {order:>6}-order: " + ", ".join(
                f"{k} {row[k]:.3f}" for k in FIGURES if row[k] is not None) +
                f" (kept epoch {row['best_epoch']}, {time.perf_counter() - t0:.0f} s)", flush=True)
    summary = {o: {k: metrics.mean_sd([r[k] for r in rs]) for k in FIGURES + ("train_seconds",)}
               for o, rs in runs.items()}
    paired = {k: metrics.paired_difference([r[k] for r in runs["first"]], [r[k] for r in runs["second"]])
              for k in FIGURES + ("train_seconds",)}
    chance = pipeline.attention_chance(lungs, lesions)
    return {"profile": profile.name, "part": "val", "n_images": len(records), "seeds": list(seeds),
            "guide": guide.source, "cam_stride": profile.cam_stride, "chance": chance,
            "teachers": "trained once, on the fixed split", "runs": runs, "summary": summary,
            "paired_first_minus_second": paired}


def _fmt(d: dict) -> str:
    if d.get("mean") is None:
        return "n/a"
    if d.get("lo") is None:
        return f"{d['mean']:+.3f}"
    return f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"


def main(argv=None) -> int:
    import torch

    from bench_student import train_steps
    from tbkd_helpers import config, data, distill, pipeline, store

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick", choices=tuple(config.PROFILES))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=9, help="timed repeats of each training step")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    profile = config.get_profile(args.profile, data_dir=args.data_dir)
    prep = data.prepare(profile, progress=False)

    ce, steps = train_steps(profile.student, profile, profile.batch_size, args.repeats,
                            (profile.cam_stride,), distill.CAM_ORDERS)
    step = {o: round(steps[(profile.cam_stride, o)] / ce, 3) for o in distill.CAM_ORDERS}
    print(f"{torch.get_num_threads()} thread(s), batch {profile.batch_size}, CAM at stride {profile.cam_stride}: "
          f"plain CE step {ce * 1e3:.1f} ms; kd+cam step " +
          ", ".join(f"{o}-order {r:.2f}x" for o, r in step.items()), flush=True)

    out = run(profile, prep, pipeline.seed_list(profile, args.seeds), progress=args.progress)
    out["step_ratio_to_ce"] = step
    print(f"\nvalidation, {out['n_images']} images, {len(out['seeds'])} seeds (mean ± sd); chance: " +
          ", ".join(f"{k} {v:.3f}" for k, v in out["chance"].items() if v is not None))
    for o, s in out["summary"].items():
        print(f"  {o:>6}-order: " + ", ".join(
            f"{k} {v['mean']:.3f} ± {v['sd'] or 0:.3f}" for k, v in s.items() if v["mean"] is not None))
    print("  first - second (paired by seed, 95 % t interval): " + ", ".join(
        f"{k} {_fmt(v)}" for k, v in out["paired_first_minus_second"].items()))
    path = store.write_json(profile.results / "cam_order.json", out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
