"""How fast is this CPU for the kit? One reference figure to compare hosts by.

    .venv/bin/python benchmarks/bench_host.py [--repeats 5] [--threads 1 2]

The kit's time budgets (the quick ``make reproduce`` in 5 minutes, the real profile in
about an hour on a 2-core CPU) were set on one host, whose ResNet18 training step at
224 px cost about 70 ms per image (``REFERENCE_MS``).
This script measures the same step here: ResNet18 from torchvision, 3 x 224 x 224 inputs,
batch 16, cross-entropy, SGD, the median of ``--repeats`` steps after one warm-up.
The ratio to 70 ms says roughly how much longer every training chapter takes on this
host. Not a test: other jobs on the cores change it; results go to
``benchmarks/out/host.json``.
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
REFERENCE_MS = 70.0  # ResNet18 training cost per image at 224 px on the host the budgets were set on


def step_ms(repeats: int, batch: int = 16, size: int = 224) -> float:
    """Median training-step cost per image (ms) of ResNet18 at ``size`` px."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 2, (batch,))

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        runs.append(time.perf_counter() - t0)
    return 1000 * statistics.median(runs) / batch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=None,
                    help="torch thread counts to measure (default: torch's choice)")
    args = ap.parse_args(argv)
    import torch

    out = {"torch": torch.__version__, "machine": platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count(), "reference_ms_per_image": REFERENCE_MS, "runs": []}
    for threads in args.threads or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        ms = step_ms(args.repeats)
        out["runs"].append({"threads": threads, "ms_per_image": round(ms, 1),
                            "vs_reference": round(ms / REFERENCE_MS, 2)})
        print(f"ResNet18 training step, 224 px, batch 16, {threads} thread(s): {ms:.0f} ms/image "
              f"= {ms / REFERENCE_MS:.2f}x the budget host's {REFERENCE_MS:.0f} ms")
    path = ROOT / "benchmarks" / "out" / "host.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"written to {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
