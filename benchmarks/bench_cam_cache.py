"""Batched vs per-image Grad-CAM (tbkd_helpers.cam.compute_cams), side by side.

For each model: the same N random gray images at S px, Grad-CAM for class 1, once with
batch_size=32 and once one image at a time (batch_size=1), alternating the two for
--rounds rounds after a warm-up; the best round of each is reported (least disturbed by
other work on the machine). Prints images/s of each and the ratio; asserts nothing.

    .venv/bin/python benchmarks/bench_cam_cache.py [--n 64] [--size 64] [--rounds 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import time

import torch

from tbkd_helpers import cam, models


def _rate(model, layer, x, batch_size: int) -> float:
    t0 = time.perf_counter()
    cam.compute_cams(model, layer, x, target_class=1, batch_size=batch_size)
    return len(x) / (time.perf_counter() - t0)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=["resnet18", "mobilenet_v3_small"])
    ap.add_argument("--n", type=int, default=64, help="images")
    ap.add_argument("--size", type=int, default=64, help="image side in px")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's own choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    x = torch.rand(args.n, 1, args.size, args.size, generator=torch.Generator().manual_seed(0))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.n} images at {args.size} px, Grad-CAM, best of {args.rounds} rounds")
    print(f"{'model':<20} {'batch ' + str(args.batch) + ' img/s':>14} {'batch 1 img/s':>14} {'ratio':>7}")
    for arch in args.archs:
        model = models.build_model(arch, seed=0).eval()
        layer = models.target_layer(model, arch)
        _rate(model, layer, x[:8], args.batch)  # warm-up (first-call costs)
        _rate(model, layer, x[:8], 1)
        batched, single = [], []
        for _ in range(args.rounds):  # alternate, so both see the same machine load
            batched.append(_rate(model, layer, x, args.batch))
            single.append(_rate(model, layer, x, 1))
        b, s = max(batched), max(single)
        print(f"{arch:<20} {b:>14.1f} {s:>14.1f} {b / s:>6.2f}x")


if __name__ == "__main__":
    main()
