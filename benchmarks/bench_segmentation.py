"""Lung-segmentation inference throughput on this machine (images per second).

    .venv/bin/python benchmarks/bench_segmentation.py [--profile real] [--batch-sizes 1 16]
        [--repeats 5] [--checkpoint PATH] [--threads 1 2] [--image-size 299]

Measures, at the profile's ``seg_size`` and with its encoder:

- ``unet``: the U-Net's forward pass alone (input already resized, no gradients);
- ``pipeline``: what ``run_extraction`` does per image after decoding the file: resize,
  U-Net, probability back to the mask's resolution, post-processing, plausibility,
  lung extraction to ``extract_size``.

The pipeline runs on chest X-rays, not noise: a mask judged implausible skips the
dilation and the crop (the whole image is resized instead), so noise would time the
cheap path. Inputs are the profile's own images when its data folder is there (real
and full: ``TBKD_DATA_DIR`` or ../shared/data, 299 px in that copy), else phantom X-rays
of ``--image-size`` px; the share of inputs that fell back is printed and saved with
the figures. The U-Net's weights do not change the network's cost, but they decide
that share: the profile's trained checkpoint is used when it exists, else an untrained
U-Net of the same shape (then nearly every mask falls back: train it first, with
notebook 01 or ``make reproduce``). Results are printed and written to
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
    ap.add_argument("--image-size", type=int, default=299,
                    help="side of the phantom X-rays used when the profile's data are absent")
    args = ap.parse_args(argv)

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
    images, source = _inputs(profile, max(args.batch_sizes), args.image_size)
    results = {"profile": profile.name, "encoder": profile.seg_encoder, "seg_size": size,
               "decoder_channels": list(profile.seg_decoder_channels), "weights": weights,
               "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
               "cpu_count": os.cpu_count(), "inputs": source, "runs": []}
    print(f"U-Net ({profile.seg_encoder}) at {size} px, weights: {weights}")
    print(f"pipeline inputs: {source}")
    for threads in args.threads or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        print(f" {threads} torch thread(s):")
        _measure(model, size, profile, args, images, results, threads)
    out = ROOT / "benchmarks" / "out" / f"segmentation_{profile.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out.relative_to(ROOT)}")
    return 0


def _inputs(profile, n: int, phantom_size: int) -> tuple[list, str]:
    """``n`` chest X-rays as float images: the profile's own data when present, else phantoms."""
    import numpy as np

    from tbkd_helpers import data, phantom

    if profile.data == "real" and profile.data_dir and Path(profile.data_dir).is_dir():
        records = data.discover(profile.data_dir, check_images=False)
        step = max(1, len(records) // n)  # spread over the data sets and both classes
        picked = records[::step][:n]
        images = [data.read_image(r.path) for r in picked]
        shapes = sorted({im.shape for im in images})
        return images, f"{len(images)} images of {profile.data_dir} (shapes {shapes})"
    rng = np.random.default_rng(0)
    images = [phantom.make_phantom(rng, size=phantom_size, label=i % 2).image for i in range(n)]
    return images, f"{n} phantom X-rays of {phantom_size} px (no data folder for profile {profile.name})"


def _measure(model, size, profile, args, images, results, threads) -> None:
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
        imgs = images[:bs]
        fallbacks = []

        def pipeline():
            probs = seg.predict_probs(model, imgs, size, batch_size=bs)
            fallbacks[:] = [seg.process_image(im, p, profile)[2]["fallback"] for im, p in zip(imgs, probs)]

        sec = _time(pipeline, args.repeats)
        results["runs"].append({"what": "pipeline", "threads": threads, "batch": bs,
                                "image_shape": list(imgs[0].shape), "seconds_per_batch": sec,
                                "images_per_s": bs / sec, "fallbacks": int(sum(fallbacks))})
        print(f"  pipeline  batch {bs:3d}: {bs / sec:7.1f} images/s ({1000 * sec / bs:6.1f} ms/image, "
              f"{imgs[0].shape[0]}x{imgs[0].shape[1]} px inputs; {sum(fallbacks)} of {bs} fell back "
              "to the whole image)")


if __name__ == "__main__":
    sys.exit(main())
