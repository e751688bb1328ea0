"""Where training runs part: the student's gradient under other thread counts and kernels.

The same seed on two machines gave the plain (ce) and logit-distilled (kd) students to the
last digit, but not the students trained with the Grad-CAM term. This script measures, in
one process on one machine, how much one training step's gradient changes when only the
number of threads or the convolution kernels (oneDNN on or off) change, for the ce loss
and for the kd+cam loss (cross-entropy + logit distillation + the differentiable Grad-CAM,
whose double backward runs through the layers after the CAM layer), and how far the
weights drift apart after ``--steps`` SGD steps from the same start.

    .venv/bin/python benchmarks/bench_divergence.py [--profile real] [--steps 5]

It prints, per loss and per variant of the kernels, the gradient's relative difference
(||g - g_ref|| / ||g_ref||, reference: 1 thread with oneDNN) and the weights' relative
difference after the steps; an exact 0 means bit-identical. Asserts nothing.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tbkd_helpers import config, distill, models  # noqa: E402


def batch(size: int, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g)
    y = torch.arange(n) % 2
    guide_maps = torch.rand(n, 16, 16, generator=g)
    guide_logits = torch.randn(n, 2, generator=g)
    return x, y, guide_maps, guide_logits


def loss_fn(kind: str, model, layer, data, stride_settings):
    x, y, gm, gl = data
    if kind == "ce":
        return F.cross_entropy(model(x), y)
    step = distill.make_step_loss(layer, stride_settings)
    loss, _ = step(model, (x, y, gm, gl), torch.nn.CrossEntropyLoss(), torch.device("cpu"))
    return loss


def flat_grad(model) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


def flat_weights(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def run(kind, base, arch, stride, data, threads, mkldnn, steps, settings):
    torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = mkldnn
    model = copy.deepcopy(base).train()
    torch.manual_seed(0)  # the same dropout masks in every run: only the kernels differ
    layer = models.target_layer(model, arch, stride=stride)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    grad = None
    for i in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn(kind, model, layer, data, settings).backward()
        if i == 0:
            grad = flat_grad(model).clone()
        opt.step()
    torch.backends.mkldnn.enabled = True
    return grad, flat_weights(model)


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="real", choices=tuple(config.PROFILES))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args(argv)
    prof = config.get_profile(args.profile)
    arch, size, stride = prof.student, prof.image_size, prof.cam_stride
    settings = distill.variant_settings("kd+cam", alpha=prof.kd_alpha, beta=prof.cam_beta,
                                        temperature=prof.kd_temperature)
    settings = distill.DistillSettings(**{**settings.to_dict(), "cam_images": "all"})
    base = models.build_model(arch, seed=0)
    data = batch(size, args.batch)
    # oneDNN off sends the convolutions to ATen's reference kernels: much slower, so 1 thread only
    variants = [("1 thread, oneDNN", 1, True), ("1 thread, again", 1, True), ("2 threads, oneDNN", 2, True),
                ("1 thread, oneDNN off", 1, False)]
    print(f"{arch} at {size} px, Grad-CAM layer of stride {stride}, batch {args.batch}, "
          f"{args.steps} SGD steps; torch {torch.__version__}")
    print(f"{'loss':>7} {'kernels':>22} {'gradient rel. diff':>19} {'weights after':>14}")
    for kind in ("ce", "kd+cam"):
        ref_g, ref_w = run(kind, base, arch, stride, data, 1, True, args.steps, settings)
        for name, threads, mkl in variants[1:]:
            g, w = run(kind, base, arch, stride, data, threads, mkl, args.steps, settings)
            print(f"{kind:>7} {name:>22} {rel(g, ref_g):19.2e} {rel(w, ref_w):14.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
