"""The student against DenseNet121 at batch 1, in PyTorch and ONNX Runtime, side by side.

For each input size (the profile's and 224 px) and each runtime, the median latency of a
forward pass of one image, and the ratio DenseNet121 / student (target: at least 10x).
The models take turns so that both see the same load, in two regimes:

- "cold": they alternate call by call (``--repeats`` calls each), so each call of the
  student follows DenseNet121's, which has pushed the student's weights out of the CPU's
  caches: a single ``tbkd predict`` after other work.
- "warm": they alternate in blocks of ``--block`` calls (``--repeats`` blocks each), and
  every call in a block is timed: the steady state of ``tbkd screen``, which runs the
  student image after image, and the state in which the FLOP limit's peak is measured. Both models go
through ``models.for_inference`` (torch's fused hard activations, BatchNorm folded into
the convolutions: the path ``tbkd predict``, ``tbkd screen`` and ``tbkd export`` use), and
the plain training-time model of the student is timed too, to show what that path buys.
"TorchScript" is that same model traced and frozen (``models.frozen_for_inference``): the
same kernels without Python's per-layer overhead.

The FLOP limit: the student's FLOPs (``models.model_info``, a multiply-add counted as 2)
divided by the machine's measured peak, the best of a few float32 matrix products
(1024 x 1024, the thread count of the run) in GFLOP/s: the time the arithmetic alone
would take if every operation ran as fast as a large, dense matrix product. Depthwise
convolutions and small layers cannot reach it; the target is the student within 3x.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_latency.py [--profile real] [--threads 1] [--repeats 30] [--block 10]

Prints a table and the verdicts; asserts nothing. ONNX Runtime rows are left out when it
is not installed.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tbkd_helpers import cli, config, models  # noqa: E402


def peak_gflops(threads: int, n: int = 1024, repeats: int = 5) -> float:
    a, b = torch.rand(n, n), torch.rand(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def alternate(fns: dict, repeats: int, block: int = 1) -> dict[str, float]:
    """Median seconds per call of each function: ``repeats`` rounds, in each of which every
    function runs ``block`` times in a row, each call timed."""
    for f in fns.values():
        for _ in range(3):
            f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            times[k].extend(_timed(f) for _ in range(block))
    return {k: statistics.median(v) for k, v in times.items()}


def onnx_session(model, size: int, threads: int):
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    path = Path(tempfile.mkdtemp(prefix="tbkd-bench-")) / "m.onnx"
    cli.export_model(model, size, path, "onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="real", choices=tuple(config.PROFILES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--block", type=int, default=10, help="calls in a row per model in the warm regime")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    prof = config.get_profile(args.profile)
    peak = peak_gflops(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s); measured peak {peak:.1f} GFLOP/s (float32 matmul)")
    print(f"{'size':>5} {'regime':>6} {'runtime':>14} {'student ms':>11} {'DenseNet ms':>12} {'ratio':>6} "
          f"{'FLOP limit ms':>14} {'student/limit':>14}")
    verdicts = []
    for size in dict.fromkeys((prof.image_size, 224)):
        student = models.build_model(prof.student, seed=0).eval()
        teacher = models.build_model("densenet121", seed=0).eval()
        fast_s, fast_t = models.for_inference(student), models.for_inference(teacher)
        frozen_s, frozen_t = models.frozen_for_inference(student, size), models.frozen_for_inference(teacher, size)
        ss, st = onnx_session(student, size, args.threads), onnx_session(teacher, size, args.threads)
        flops = models.model_info(student, size)["flops"]
        limit = flops / (peak * 1e9)
        x = torch.rand(1, 1, size, size)
        xn = x.numpy()
        for regime, block in (("cold", 1), ("warm", args.block)):
            with torch.inference_mode():
                t = alternate({"train-time student": lambda: student(x), "student": lambda: fast_s(x),
                               "densenet": lambda: fast_t(x), "frozen student": lambda: frozen_s(x),
                               "frozen densenet": lambda: frozen_t(x)}, args.repeats, block)
            rows = [("PyTorch", t["student"], t["densenet"]),
                    ("TorchScript", t["frozen student"], t["frozen densenet"])]
            print(f"{size:5d} {regime:>6} {'PyTorch (plain)':>14} {1e3 * t['train-time student']:11.2f} {'':>12} "
                  f"{'':>6} {1e3 * limit:14.3f} {t['train-time student'] / limit:14.1f}")
            if ss is not None:
                o = alternate({"student": lambda: ss.run(None, {"image": xn}),
                               "densenet": lambda: st.run(None, {"image": xn})}, args.repeats, block)
                rows.append(("ONNX Runtime", o["student"], o["densenet"]))
            for name, s, d in rows:
                print(f"{size:5d} {regime:>6} {name:>14} {1e3 * s:11.2f} {1e3 * d:12.2f} {d / s:6.1f} "
                      f"{1e3 * limit:14.3f} {s / limit:14.1f}")
                verdicts.append(f"{size} px, {regime}, {name}: DenseNet121 / student {d / s:.1f}x "
                                f"({'meets' if d / s >= 10 else 'misses'} 10x); student at {s / limit:.1f}x its "
                                f"FLOP limit ({'within' if s / limit <= 3 else 'beyond'} 3x)")
    print("\n".join(verdicts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
