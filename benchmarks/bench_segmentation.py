"""Lung-segmentation inference throughput on this machine (images per second).

    .venv/bin/python benchmarks/bench_segmentation.py [--profile real] [--batch-sizes 1 16]
        [--repeats 5] [--checkpoint PATH] [--threads 1 2] [--image-size 299]

Measures, at the profile's ``seg_size`` and with its encoder:

- ``unet``: the U-Net's forward pass alone (input already resized, no gradients);
- ``pipeline``: what ``run_extraction`` does per image after decoding the file: resize,
  U-Net, probability back to the mask's resolution, post-processing, plausibility,
  lung extraction to ``extract_size`` — on ``--image-size``² inputs (299 px: the data
  copy in ../shared/data).

The weights do not change the cost: the profile's trained checkpoint is used when it
exists, else an untrained U-Net of the same shape. Results are printed and written to
``benchmarks/out/segmentation_<profile>.json``. Not a test: numbers depend on the machine
and on what else runs on it (the median of ``--repeats`` timed runs is reported). With
other jobs on the cores, two torch threads can be much slower than one (OpenMP threads
wait for each other): compare ``--threads 1 2`` before trusting a number.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, lazy initialisation)
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="real")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--threads", type=int, nargs="+", default=None,
                    help="torch thread counts to measure, e.g. 1 2 (default: torch's choice)")
    ap.add_argument("--image-size", type=int, default=299, help="side of the input images of the pipeline run")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from tbkd_helpers import config, segmentation as seg

    profile = config.get_profile(args.profile, device="cpu")
    ckpt = args.checkpoint or seg.checkpoint_path(profile)
    if ckpt.is_file():
        model, s = seg.load_unet(ckpt)
        size, weights = s["seg_size"], str(ckpt)
    else:
        model = seg.build_unet(profile.seg_encoder, decoder_channels=profile.seg_decoder_channels).eval()
        size, weights = profile.seg_size, "untrained (no checkpoint)"
    rng = np.random.default_rng(0)
    results = {"profile": profile.name, "encoder": profile.seg_encoder, "seg_size": size,
               "decoder_channels": list(profile.seg_decoder_channels), "weights": weights,
               "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
               "cpu_count": os.cpu_count(), "runs": []}
    print(f"U-Net ({profile.seg_encoder}) at {size} px, weights: {weights}")
    for threads in args.threads or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        print(f" {threads} torch thread(s):")
        _measure(model, size, profile, args, rng, results, threads)
    out = ROOT / "benchmarks" / "out" / f"segmentation_{profile.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out.relative_to(ROOT)}")
    return 0


def _measure(model, size, profile, args, rng, results, threads) -> None:
    import numpy as np
    import torch

    from tbkd_helpers import segmentation as seg

    for bs in args.batch_sizes:
        x = torch.rand(bs, 1, size, size)

        def forward():
            with torch.no_grad():
                model(x)

        sec = _time(forward, args.repeats)
        results["runs"].append({"what": "unet", "threads": threads, "batch": bs, "seconds_per_batch": sec,
                                "images_per_s": bs / sec})
        print(f"  unet      batch {bs:3d}: {bs / sec:7.1f} images/s ({1000 * sec / bs:6.1f} ms/image)")
        imgs = [rng.random((args.image_size, args.image_size), dtype=np.float32) * 0.3 + 0.35 for _ in range(bs)]

        def pipeline():
            probs = seg.predict_probs(model, imgs, size, batch_size=bs)
            for im, p in zip(imgs, probs):
                seg.process_image(im, p, profile)

        sec = _time(pipeline, args.repeats)
        results["runs"].append({"what": "pipeline", "threads": threads, "batch": bs, "image_size": args.image_size,
                                "seconds_per_batch": sec, "images_per_s": bs / sec})
        print(f"  pipeline  batch {bs:3d}: {bs / sec:7.1f} images/s ({1000 * sec / bs:6.1f} ms/image, "
              f"{args.image_size} px inputs)")


if __name__ == "__main__":
    sys.exit(main())
