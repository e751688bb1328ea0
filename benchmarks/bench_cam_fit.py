"""Can the map term be learned at all? Each gradient order, fitting the guide's maps of one batch.

A sanity check of the Grad-CAM term beneath ``benchmarks/bench_cam_order.py``: a fresh
student (the profile's, from its seed) is trained on **the map term alone** (beta 1, no
cross-entropy, no soft predictions) on one fixed batch of training views and the guide's
maps of those views, for ``--steps`` AdamW steps at the recipe's learning rate. A term the
student can learn falls towards 0 on that batch (``2 - 2 cos`` between L2-normalised maps:
0 when the shapes agree, about 1 for unrelated ones). Printed for both ``cam_order``
settings, from the same start. Training images only; the test split is not read.

    .venv/bin/python benchmarks/bench_cam_fit.py [--profile quick] [--steps 60] [--batch 16]

Prints the term every 10 steps; asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def fit_one_batch(profile, prep, orders, steps: int = 60, batch: int = 16) -> dict:
    """``{order: [term after each step]}``: the map term alone, fitted on one batch."""
    import torch

    from tbkd_helpers import distill, models, pipeline, recipes, train

    aucs = pipeline.teacher_val_auc(profile, prep)
    views = pipeline.guide_views(profile, prep)
    build = (lambda a: pipeline.view_cache(profile, a, prep, progress=False)) if views is not None else \
        (lambda a: pipeline.cam_cache(profile, a, prep, "train", progress=False))
    mode = pipeline.guide_mode(profile, prep)  # the profile's guide
    caches = {a: build(a) for a, w in distill.teacher_weights(aucs, mode).items() if w > 0}
    guide = distill.make_guide(caches, aucs, mode)
    ds = distill.DistillDataset(pipeline.classifier_dataset(profile, prep, profile.student, "train"), guide,
                                augment=True, views=views)
    torch.manual_seed(profile.seed)
    x, y, g_maps, g_logits = next(iter(torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True)))
    no_ce = lambda logits, labels: logits.sum() * 0  # noqa: E731 - the map term alone
    out = {}
    for order in orders:
        model = models.build_model(profile.student, seed=profile.seed).train()
        layer = models.target_layer(model, profile.student, stride=profile.cam_stride)
        opt = train.adamw(model.parameters(), recipes.STUDENT.lr, recipes.STUDENT.weight_decay)
        step = distill.make_step_loss(layer, distill.variant_settings("cam", cam_order=order))
        terms = []
        for _ in range(steps):
            loss, _ = step(model, (x, y, g_maps, g_logits), no_ce, torch.device("cpu"))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            terms.append(loss.item())
        out[order] = terms
    return {"guide": guide.source, "tb_images": int(y.sum()), "batch": int(len(y)), "steps": steps, "terms": out}


def main(argv=None) -> int:
    from tbkd_helpers import config, data, distill

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick", choices=tuple(config.PROFILES))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args(argv)
    profile = config.get_profile(args.profile, data_dir=args.data_dir)
    prep = data.prepare(profile, progress=False)
    res = fit_one_batch(profile, prep, distill.CAM_ORDERS, args.steps, args.batch)
    print(f"map term alone on one batch of {res['batch']} training views ({res['tb_images']} TB, whose maps "
          f"count), guide {res['guide']}, CAM at stride {profile.cam_stride}")
    for order, terms in res["terms"].items():
        marks = ", ".join(f"{i + 1}: {terms[i]:.3f}" for i in range(0, len(terms), 10))
        print(f"  {order:>6}-order: step {marks}; last ({len(terms)}): {terms[-1]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
