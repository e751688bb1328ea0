"""Screening throughput: ``tbkd screen`` (batches) against the per-image path, in one run.

Both paths do the whole job for every image: read it, predict its lung mask with the
U-Net, cut out the lungs, run the student with its Grad-CAM map of the TB class, and
write the overlay. The per-image path is what ``tbkd predict IMAGE --cam OUT`` does for
one file (``screen.Predictor.predict``, one U-Net and one student pass per image, the
training-time model); ``tbkd screen`` streams the folder in batches through the fast
inference model (``models.for_inference``) and writes the CSV and the HTML report too.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_screen.py --data-dir ../shared/data [--limit 800] [--batch 32]

The profile's trained U-Net and kd+cam student are used when ``artifacts/<profile>/``
holds them; otherwise fresh, untrained models of the same architectures and sizes are
saved in a temporary folder and timed instead (the arithmetic does not depend on the
weights; the lung check then falls back to the whole image more often, alike in both
paths). The run says which. Prints images per second for both paths and their ratio
(target: at least 3x); asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from tbkd_helpers import config, models, pipeline, screen, store  # noqa: E402
from tbkd_helpers import segmentation as seg  # noqa: E402
from tbkd_helpers.data import DataError  # noqa: E402


def checkpoints(profile, tmp: Path) -> tuple[Path, Path, str]:
    """(student checkpoint, U-Net checkpoint, which): the trained ones, or untrained stand-ins."""
    student, unet = pipeline.student_dir(profile, "kd+cam") / "best.pt", seg.checkpoint_path(profile)
    if student.is_file() and unet.is_file():
        return student, unet, "trained"
    net = pipeline.new_model(profile, profile.student)
    student = models.save_checkpoint(tmp / "student.pt", net, profile.student,
                                     settings={"extra": {"size": profile.size_for(profile.student),
                                                         "cam_stride": profile.cam_stride}})
    u = seg.build_unet(profile.seg_encoder, False, profile.seg_decoder_channels)
    settings = {"arch": seg.ARCH, "encoder": profile.seg_encoder, "pretrained": False,
                "decoder_channels": list(profile.seg_decoder_channels), "seg_size": profile.seg_size}
    unet = store.save_torch({"arch": seg.ARCH, "settings": settings, "state_dict": u.state_dict()}, tmp / "unet.pt")
    return student, unet, "untrained stand-ins (no trained models in artifacts/)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="real", choices=tuple(config.PROFILES))
    ap.add_argument("--data-dir", type=Path, default=os.environ.get("TBKD_DATA_DIR"),
                    help="a folder of X-rays (default: $TBKD_DATA_DIR)")
    ap.add_argument("--limit", type=int, default=800, help="images per path (default 800)")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args(argv)
    if not args.data_dir or not Path(args.data_dir).is_dir():
        print(f"bench_screen: {args.data_dir}: not a folder (give --data-dir or set TBKD_DATA_DIR)", file=sys.stderr)
        return 1
    profile = config.get_profile(args.profile)
    files = [p for p, err in seg.expand_inputs([Path(args.data_dir)]) if err is None and "mask" not in str(p).lower()]
    files = sorted(files)[:args.limit]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "xrays"
        folder.mkdir()
        for i, p in enumerate(files):  # one flat folder of links: both paths read the same files
            (folder / f"{i:04d}_{p.name}").symlink_to(p.resolve())
        student, unet, which = checkpoints(profile, tmp)
        print(f"profile {profile.name}: {len(files)} images from {args.data_dir}; models: {which}; "
              f"{torch.get_num_threads()} thread(s)")

        pred = screen.Predictor(profile, student, unet)
        links = sorted(folder.iterdir())
        (tmp / "single").mkdir()
        t0, done = time.perf_counter(), 0
        for p in links:
            try:
                r = pred.predict(p)
            except (DataError, OSError, ValueError) as err:
                print(f"per-image: {err}", file=sys.stderr)
                continue
            screen.write_overlay(r["_image"], r["_cam"], tmp / "single" / f"{p.stem}.png")
            done += 1
        single = time.perf_counter() - t0

        t0 = time.perf_counter()
        out = screen.screen(folder, tmp / "report", profile, student, unet, batch_size=args.batch, progress=False)
        batched = time.perf_counter() - t0

    rate_1, rate_b = done / single, out["new"] / batched
    print(f"{'path':<34} {'images':>7} {'seconds':>9} {'images/s':>9}")
    print(f"{'per image (tbkd predict --cam)':<34} {done:>7} {single:>9.1f} {rate_1:>9.2f}")
    print(f"{f'tbkd screen, batches of {args.batch}':<34} {out['new']:>7} {batched:>9.1f} {rate_b:>9.2f}")
    ratio = rate_b / rate_1
    print(f"throughput ratio screen / per image: {ratio:.2f}x (target: at least 3x) -> "
          f"{'met' if ratio >= 3 else 'missed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
