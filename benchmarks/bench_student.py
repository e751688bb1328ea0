"""The student against the DenseNet121 teacher, and the cost of the Grad-CAM term, in one run.

Measured side by side in this one process, at the input size of a profile (default
``full``: the paper's 224 px):

1. CPU latency at batch 1 (eval mode, no gradients): median of ``--repeats`` forward
   passes of each model, the two models alternating so that both see the same load
   on the machine; the ratio teacher / student (the target: at least 10×);
2. parameter count (and FLOPs) ratio teacher / student (target: at least 4×);
3. one distillation training step of the student with the Grad-CAM term (the "kd+cam"
   loss of chapter 04: cross-entropy + logit distillation + the differentiable Grad-CAM
   against a guide map) against one plain cross-entropy step of the same student on
   the same batch, each with backward and optimiser step; median of alternating
   repeats; the ratio (target: at most 1.25×). Measured with the Grad-CAM layer the
   profile uses (``cam_stride``: 8 in quick, 16 in real, 32 in full) and with the other
   one (32, the classic last feature map, or 16 for full), each with both orders of the
   map term's gradient (``cam_order``): "second" backpropagates through the Grad-CAM
   weights, a second-order pass through every layer after the CAM layer (so an earlier
   layer costs more); "first" holds the weights constant (what that does to the student
   is measured on validation by ``benchmarks/bench_cam_order.py``);
4. the student's accuracy against the best teacher's on Shenzhen, read from
   ``results/<profile>/results.json`` when chapter 05 has written it (target: within
   1 percentage point).

Prints the ratios and whether each target is met; asserts nothing.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_student.py [--profile full] [--repeats 15]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tbkd_helpers import config, distill, models  # noqa: E402


def _forward_time(model, x) -> float:
    t0 = time.perf_counter()
    model(x)
    return time.perf_counter() - t0


def latency(student, teacher, size: int, repeats: int) -> tuple[float, float]:
    """Median seconds of one batch-1 forward pass of each, alternating."""
    x = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(0))
    ts, tt = [], []
    with torch.inference_mode():
        for _ in range(2):  # warm-up
            student(x), teacher(x)
        for _ in range(repeats):
            ts.append(_forward_time(student, x))
            tt.append(_forward_time(teacher, x))
    return statistics.median(ts), statistics.median(tt)


def train_steps(arch: str, profile, batch: int, repeats: int,
                strides: tuple[int, ...] = (16, 32), orders: tuple[str, ...] = ("second",)
                ) -> tuple[float, dict[tuple[int, str], float]]:
    """Median seconds of one plain CE step and of one kd+cam distillation step of the
    student, the latter with the Grad-CAM layer at each of ``strides`` and the map term's
    gradient of each ``cam_order`` (``distill.DistillSettings``); all alternating.
    Returns ``(ce, {(stride, order): seconds})``."""
    model = models.build_model(arch, seed=0).train()
    g = torch.Generator().manual_seed(0)
    size = profile.size_for(arch)
    x = torch.rand(batch, 1, size, size, generator=g)
    y = torch.arange(batch) % 2
    guide_maps = torch.rand(batch, profile.cam_size, profile.cam_size, generator=g)
    guide_logits = torch.randn(batch, 2, generator=g)
    kinds = [(s, o) for s in strides for o in orders]
    losses = {(s, o): distill.make_step_loss(
        models.target_layer(model, arch, stride=s),
        distill.variant_settings("kd+cam", alpha=profile.kd_alpha, beta=profile.cam_beta,
                                 temperature=profile.kd_temperature, cam_order=o)) for s, o in kinds}
    criterion = torch.nn.CrossEntropyLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    device = torch.device("cpu")

    def ce_step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def cam_step(kind):
        loss, _ = losses[kind](model, (x, y, guide_maps, guide_logits), criterion, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def timed(fn, *a):
        t0 = time.perf_counter()
        fn(*a)
        return time.perf_counter() - t0

    for _ in range(2):  # warm-up
        ce_step()
        for k in kinds:
            cam_step(k)
    ce, cam = [], {k: [] for k in kinds}
    for _ in range(repeats):
        ce.append(timed(ce_step))
        for k in kinds:
            cam[k].append(timed(cam_step, k))
    return statistics.median(ce), {k: statistics.median(v) for k, v in cam.items()}


def accuracy_line(profile_name: str) -> str:
    from tbkd_helpers import results

    prof = config.get_profile(profile_name)
    try:
        res = results.load(prof)
    except ValueError as err:
        return f"accuracy: {err}"
    sv = res.get("student_vs_teacher")
    if not sv:
        return f"accuracy: no student/teacher comparison in {results.results_path(prof)}"
    verdict = ("MET" if sv["within"] else f"missed by {sv['gap_pp'] - sv['tolerance_pp']:.1f} points")
    return (f"accuracy on {sv['dataset']} ({profile_name} profile, test split): student "
            f"{100 * sv['student_accuracy']:.1f} % vs best teacher {sv['teacher']} "
            f"{100 * sv['teacher_accuracy']:.1f} %: gap {sv['gap_pp']:+.1f} points "
            f"(target: within {sv['tolerance_pp']:g}) {verdict}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="full", choices=tuple(config.PROFILES),
                    help="whose input size and batch size (default full: the paper's 224 px)")
    ap.add_argument("--teacher", default="densenet121")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--batch", type=int, default=None, help="training batch (default: the profile's)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--results-profile", default=None,
                    help="profile whose results.json gives the accuracy line (default: --profile)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    profile = config.get_profile(args.profile)
    s_arch, t_arch = profile.student, args.teacher
    size = profile.size_for(s_arch)
    t_size = profile.size_for(t_arch)
    batch = args.batch or profile.batch_size
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); profile {profile.name}: "
          f"{size} px, training batch {batch}; medians of {args.repeats} alternating repeats")

    student = models.build_model(s_arch, seed=0).eval()
    teacher = models.build_model(t_arch, seed=0).eval()
    si, ti = models.model_info(student, size), models.model_info(teacher, t_size)
    ls, lt = latency(student, teacher, size, args.repeats)
    lat_ratio, par_ratio = lt / ls, ti["params"] / si["params"]
    print(f"{'model':<20} {'parameters':>12} {'GFLOPs':>8} {'latency b1 (ms)':>16}")
    print(f"{s_arch:<20} {si['params']:>12,} {si['flops'] / 1e9:>8.3f} {ls * 1e3:>16.2f}")
    print(f"{t_arch:<20} {ti['params']:>12,} {ti['flops'] / 1e9:>8.3f} {lt * 1e3:>16.2f}")
    print(f"latency ratio {t_arch} / student at batch 1: {lat_ratio:.1f}x (target >= 10x) "
          f"{'MET' if lat_ratio >= 10 else 'MISSED'}")
    print(f"parameter ratio {t_arch} / student: {par_ratio:.1f}x (target >= 4x) "
          f"{'MET' if par_ratio >= 4 else 'MISSED'}; FLOPs ratio {ti['flops'] / si['flops']:.1f}x")

    strides = (profile.cam_stride, 32 if profile.cam_stride != 32 else 16)  # the profile's layer first
    ce, cams = train_steps(s_arch, profile, batch, args.repeats, strides, distill.CAM_ORDERS)
    print(f"student training step, batch {batch}: plain CE {ce * 1e3:.1f} ms")
    for (stride, order), cam in cams.items():
        ratio = cam / ce
        which = "the profile's Grad-CAM layer" if stride == profile.cam_stride else "the other Grad-CAM layer"
        mark = " (the profile's)" if stride == profile.cam_stride and order == profile.cam_order else ""
        print(f"  kd+cam step, CAM at stride {stride} ({which}), {order}-order map gradient{mark}: "
              f"{cam * 1e3:.1f} ms: ratio {ratio:.2f}x (target <= 1.25x) {'MET' if ratio <= 1.25 else 'MISSED'}")
    print(accuracy_line(args.results_profile or args.profile))


if __name__ == "__main__":
    main()
