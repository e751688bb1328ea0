"""Every figure of the kit. Each function returns a matplotlib Figure; notebooks show it
and ``save_figure`` writes it under ``results/<profile>/figures/``.

Sections follow the stages (data, segmentation, teachers, Grad-CAM, distillation,
results). Figures are drawn with fixed sizes and fonts so that re-runs look alike.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np

from . import data as _data
from . import store

LABEL_NAMES = {0: "normal", 1: "TB"}
plt.rcParams.update({"figure.dpi": 90, "savefig.dpi": 110, "font.size": 9,
                     "axes.titlesize": 9, "image.cmap": "gray"})


def _inline_format_from_env() -> None:
    """``TBKD_FIGURE_FORMAT=jpeg`` (set when the committed chapters are executed,
    ``tools/execute_notebook.py``): a notebook's inline figures as JPEG, a fraction of the
    size of PNG for galleries of X-rays, so the committed files stay small. A reader's own
    run keeps PNG; the figure files in ``results/`` are always PNG."""
    import os

    fmt = os.environ.get("TBKD_FIGURE_FORMAT", "").lower()
    if fmt not in ("jpeg", "png"):
        return
    try:
        from IPython import get_ipython
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:
        return
    if get_ipython() is not None:
        set_matplotlib_formats(fmt, **({"pil_kwargs": {"quality": 80}} if fmt == "jpeg" else {}))


_inline_format_from_env()


def save_figure(fig, profile, name: str) -> Path:
    """Write ``fig`` as ``results/<profile>/figures/<name>.png`` (atomically) and return the path."""
    path = Path(profile.results) / "figures" / f"{name}.png"
    with store.atomic_path(path) as tmp:
        fig.savefig(tmp, bbox_inches="tight", format="png")
    return path


def _grid(n: int, ncols: int, cell: float = 1.9):
    nrows = max(1, int(np.ceil(n / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols, cell * nrows + 0.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes


# ------------------------------------------------------------------------ stage 0: data

def example_grid(records: Sequence[_data.Record], per_class: int = 4, seed: int = 0,
                 title: str | None = None):
    """A few X-rays of each class and data set: one row per (data set, class)."""
    rng = np.random.default_rng(seed)
    groups = sorted({(r.dataset, r.label) for r in records})
    fig, axes = _grid(len(groups) * per_class, per_class)
    for gi, (ds, lab) in enumerate(groups):
        pool = [r for r in records if (r.dataset, r.label) == (ds, lab)]
        pick = [pool[i] for i in sorted(rng.choice(len(pool), min(per_class, len(pool)), replace=False))]
        for j, rec in enumerate(pick):
            ax = axes[gi, j]
            ax.imshow(_data.read_image(rec.path), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{ds} · {LABEL_NAMES[lab]}\n{rec.path.name}", fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def mask_overlays(records: Sequence[_data.Record], n: int = 4, show_lesions: bool = True):
    """X-rays with their lung masks (left lung in one colour, right in another) and,
    for phantoms, the ground-truth lesions outlined."""
    recs = [r for r in records if r.has_lung_mask][:n]
    fig, axes = _grid(len(recs), len(recs) or 1, cell=2.6)
    for ax, rec in zip(axes.flat, recs):
        img = _data.read_image(rec.path)
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        if rec.left_mask is not None:
            for side, colour in (("left", "tab:orange"), ("right", "tab:cyan")):
                ax.contour(_data.lung_mask(rec, img.shape, side), levels=[0.5], colors=colour, linewidths=1)
        else:
            ax.contour(_data.lung_mask(rec, img.shape), levels=[0.5], colors="tab:cyan", linewidths=1)
        if show_lesions and rec.lesion_mask is not None:
            les = _data.lesion_mask(rec, img.shape)
            if les.any():
                ax.contour(les, levels=[0.5], colors="red", linewidths=1)
        ax.set_title(f"{rec.dataset} · {LABEL_NAMES[rec.label]}", fontsize=8)
    fig.suptitle("lung masks (orange: patient's left lung, cyan: right lung; red: lesions)", fontsize=8)
    fig.tight_layout()
    return fig


def intensity_histograms(records: Sequence[_data.Record], max_per_group: int = 40, bins: int = 50):
    """Pixel-intensity histograms per data set and class (a sample of images each)."""
    groups = sorted({(r.dataset, r.label) for r in records})
    datasets = sorted({g[0] for g in groups})
    fig, axes = plt.subplots(1, len(datasets), figsize=(3.6 * len(datasets), 2.6), squeeze=False)
    for ax, ds in zip(axes.flat, datasets):
        for lab in (0, 1):
            pool = [r for r in records if (r.dataset, r.label) == (ds, lab)][:max_per_group]
            if not pool:
                continue
            vals = np.concatenate([_data.read_image(r.path).ravel()[::7] for r in pool])
            ax.hist(vals, bins=bins, range=(0, 1), density=True, histtype="step", lw=1.5,
                    label=f"{LABEL_NAMES[lab]} (n={len(pool)})")
        ax.set_title(ds)
        ax.set_xlabel("intensity")
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("density")
    fig.tight_layout()
    return fig


def side_by_side(left: Sequence[_data.Record], right: Sequence[_data.Record],
                 titles: tuple[str, str] = ("phantom", "real"), n: int = 3):
    """Two sources of X-rays next to each other (e.g. phantoms and real images)."""
    fig, axes = _grid(2 * n, n * 2, cell=2.0)
    for col, (recs, name) in enumerate(((left, titles[0]), (right, titles[1]))):
        for i, rec in enumerate(list(recs)[:n]):
            ax = axes[0, col * n + i]
            ax.imshow(_data.read_image(rec.path), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{name} · {LABEL_NAMES[rec.label]}", fontsize=8)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------ stage 1: segmentation

def _seg_grid(n: int, ncols: int, cell: float, title_lines: int = 1):
    """A grid of image axes with room above each for ``title_lines`` lines of title (constrained layout)."""
    nrows = max(1, int(np.ceil(n / ncols)))
    head = 0.16 * title_lines + 0.08
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols, (cell + head) * nrows + 0.25),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes


def unet_diagram(size: int, encoder_channels: Sequence[int], decoder_channels: Sequence[int],
                 encoder: str = "encoder"):
    """A U-Net drawn as its letter: the encoder going down (halving the resolution, adding
    channels), the decoder going up, and the skip connections across."""
    from matplotlib.patches import FancyArrowPatch, Rectangle

    enc = list(encoder_channels)[1:]  # smp lists the input's channels first
    dec = list(decoder_channels)
    depth = len(enc)
    fig, ax = plt.subplots(figsize=(7.6, 3.4))
    ax.set_xlim(-0.5, 2 * depth + 1.2)
    ax.set_ylim(-depth - 1.2, 0.8)
    ax.axis("off")

    def block(x, y, ch, res, colour):
        h = 0.35 + 0.45 * np.log2(max(ch, 2)) / np.log2(1024)
        ax.add_patch(Rectangle((x - 0.38, y - h / 2), 0.76, h, color=colour, alpha=0.85))
        ax.text(x, y, f"{ch} ch\n{res}×{res}", ha="center", va="center", fontsize=6.5)

    ax.text(-0.45, 0.55, f"input: 1 channel, {size}×{size}", ha="left", fontsize=7)
    for i, ch in enumerate(enc):  # down
        block(i, -i, ch, max(1, size // 2 ** (i + 1)), "tab:blue")
        if i:
            ax.add_patch(FancyArrowPatch((i - 1 + 0.3, -(i - 1) - 0.3), (i - 0.3, -i + 0.3), arrowstyle="->",
                                         mutation_scale=8))
    for j, ch in enumerate(dec):  # up
        lvl = depth - 2 - j
        x = depth + j
        res = size // 2 ** (lvl + 1) if lvl >= 0 else size
        block(x, -max(lvl, -1) if lvl >= 0 else 0.0, ch, res, "tab:orange")
        if lvl >= 0:
            start, end = (x - 1 + 0.3, -(lvl + 1) + 0.3), (x - 0.3, -lvl - 0.3)
        else:  # the last step stays at full resolution's row
            start, end = (x - 1 + 0.4, 0.0), (x - 0.4, 0.0)
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="->", mutation_scale=8))
        if lvl >= 0:  # skip connection from the encoder block at the same resolution
            ax.add_patch(FancyArrowPatch((lvl + 0.4, -lvl), (x - 0.4, -lvl), arrowstyle="->", mutation_scale=8,
                                         color="tab:green", ls="--"))
    ax.text(2 * depth - 1 + 0.5, 0.0, f"→ 1 lung logit\n   per pixel", ha="left", va="center", fontsize=7)
    ax.text(0.2, -depth - 0.6, f"encoder ({encoder}): each step halves the resolution and adds channels — "
            "what is there", fontsize=7, color="tab:blue")
    ax.text(0.2, -depth - 1.05, "decoder: each step doubles the resolution — where it is; "
            "green: skip connections bring back the fine detail", fontsize=7, color="tab:orange")
    fig.tight_layout()
    return fig


def seg_training_curve(history: Sequence[dict], title: str = "U-Net training"):
    """Loss (train and validation) and validation Dice per epoch; the kept epoch is marked."""
    ep = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(7.2, 2.6))
    a1.plot(ep, [h["train_loss"] for h in history], "o-", ms=3, label="train")
    a1.plot(ep, [h["val_loss"] for h in history], "s-", ms=3, label="validation")
    a1.set_yscale("log")
    a1.set_xlabel("epoch")
    a1.set_ylabel("Dice + BCE loss (log scale)")
    a1.legend(fontsize=7)
    dice = [h["val_dice"] for h in history]
    a2.plot(ep, dice, "o-", ms=3, color="tab:green")
    if dice and not all(np.isnan(dice)):
        best = int(np.nanargmax(dice))
        for ax in (a1, a2):
            ax.axvline(ep[best], color="grey", ls=":", lw=1)
        a2.annotate(f"kept: epoch {ep[best]}\nDice {dice[best]:.3f}", (ep[best], dice[best]),
                    textcoords="offset points", xytext=(-8, -30), ha="right", fontsize=7,
                    arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.6})
        a2.set_ylim(max(0.0, np.nanmin(dice) - 0.05), 1.0)
    a2.set_xlabel("epoch")
    a2.set_ylabel("validation Dice")
    from matplotlib.ticker import MaxNLocator

    for ax in (a1, a2):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def segmentation_overlays(cases: Sequence[dict], ncols: int = 4, title: str | None = None, cell: float = 2.3,
                          legend: str | None = None):
    """X-rays with the predicted lung outline (orange) and, where known, the manual one (cyan).

    ``cases``: dicts with ``image``, ``pred`` (bool mask of the image's shape), ``truth``
    (bool mask or None), ``title``, and optionally ``plausible`` (a red title if False).
    ``legend`` replaces the explanation of the colours.
    """
    fig, axes = _seg_grid(len(cases), min(ncols, max(1, len(cases))), cell,
                          title_lines=max([str(c.get("title", "")).count("\n") + 1 for c in cases] or [1]))
    for ax, c in zip(axes.flat, cases):
        ax.imshow(c["image"], cmap="gray", vmin=0, vmax=1)
        if c.get("truth") is not None and c["truth"].any():
            ax.contour(c["truth"], levels=[0.5], colors="cyan", linewidths=1.0)
        if c["pred"].any():
            ax.contour(c["pred"], levels=[0.5], colors="orange", linewidths=1.0, linestyles="--")
        ax.set_title(c.get("title", ""), fontsize=7, color="black" if c.get("plausible", True) else "red")
    has_truth = any(c.get("truth") is not None for c in cases)
    legend = legend or ("orange dashed: U-Net" + (", cyan: manual mask" if has_truth else " (no manual mask)"))
    fig.suptitle(f"{title} — {legend}" if title else legend, fontsize=8)
    return fig


def dice_distribution(table, title: str = "Dice and IoU per test image"):
    """Each test image's Dice and IoU as dots, one row per data set, with the means marked."""
    groups = sorted(table["dataset"].unique())
    measures = [m for m in ("dice", "iou") if m in table]
    fig, axes = plt.subplots(1, len(measures), figsize=(4.2 * len(measures), 0.8 + 0.55 * max(1, len(groups))),
                             sharey=True, squeeze=False)
    labels = {"dice": "Dice", "iou": "IoU"}
    for ax, m in zip(axes[0], measures):
        rng = np.random.default_rng(0)  # the same jitter in both panels: a dot is one image
        for i, ds in enumerate(groups):
            d = table.loc[table["dataset"] == ds, m].to_numpy()
            ax.scatter(d, i + rng.uniform(-0.15, 0.15, len(d)), s=12, alpha=0.7, color=f"C{i}")
            ax.plot([d.mean()] * 2, [i - 0.3, i + 0.3], color="black", lw=1.5)
            ax.annotate(f"mean {d.mean():.3f}", (d.mean(), i + 0.32), fontsize=7, ha="center")
        ax.set_xlabel(f"{labels[m]} (1 = perfect overlap with the manual mask)", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_yticks(range(len(groups)), groups)
    axes[0, 0].set_ylim(-0.6, len(groups) - 0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def postprocess_steps(steps: dict):
    """One prediction through post-processing: X-ray, probability, thresholded, cleaned.

    ``steps``: dict with ``image``, ``prob``, ``raw`` (thresholded) and ``clean``
    (post-processed) arrays of one shape, and ``title``.
    """
    from scipy import ndimage

    fig, axes = plt.subplots(1, 4, figsize=(8.4, 2.4))
    axes[0].imshow(steps["image"], cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("X-ray")
    im = axes[1].imshow(steps["prob"], cmap="magma", vmin=0, vmax=1)
    axes[1].set_title("U-Net probability")
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.02)
    for ax, key, name in ((axes[2], "raw", "thresholded"), (axes[3], "clean", "post-processed")):
        lab, n = ndimage.label(steps[key])
        shown = np.ma.masked_where(lab == 0, lab)
        ax.imshow(np.zeros_like(lab), cmap="gray", vmin=0, vmax=1)
        ax.imshow(shown, cmap="tab10", vmin=1, vmax=10, interpolation="nearest")
        ax.set_title(f"{name}: {n} region{'s' if n != 1 else ''}")
    for ax in axes:
        ax.axis("off")
    fig.suptitle(steps.get("title", ""), fontsize=8)
    fig.tight_layout()
    return fig


def extraction_pairs(pairs: Sequence[dict], ncols: int = 2, cell: float = 2.2):
    """Before and after lung extraction, side by side: the X-ray with its predicted mask
    outlined, and the lung-extracted image the classifiers will see.

    ``pairs``: dicts with ``image``, ``mask`` (same shape), ``extracted``, ``title`` and
    ``fallback`` (True when the mask was implausible and the whole image was kept).
    """
    ncols = max(1, min(ncols, len(pairs)))
    fig, axes = _seg_grid(2 * len(pairs), 2 * ncols, cell, title_lines=1)
    for i, p in enumerate(pairs):
        a, b = axes[i // ncols, 2 * (i % ncols)], axes[i // ncols, 2 * (i % ncols) + 1]
        a.imshow(p["image"], cmap="gray", vmin=0, vmax=1)
        if p["mask"].any():
            a.contour(p["mask"], levels=[0.5], colors="orange", linewidths=1.0)
        a.set_title(p["title"], fontsize=7)
        b.imshow(p["extracted"], cmap="gray", vmin=0, vmax=1)
        fb = p.get("fallback", False)
        b.set_title("whole image (mask implausible)" if fb else "lungs extracted", fontsize=7,
                    color="red" if fb else "black")
    fig.suptitle("before → after lung extraction (orange: predicted lung mask)", fontsize=8)
    return fig


# ------------------------------------------------------------------------ stage 2: teachers

def model_colours(names: Sequence[str]) -> dict:
    """One fixed colour per model, by position: a model keeps its colour in every figure
    of a chapter when the figures get the names in the same order."""
    cmap = plt.get_cmap("tab10")
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def _history_dict(h) -> dict:
    return h.to_dict() if hasattr(h, "to_dict") else dict(h)


def training_curves(histories: dict, title: str = "training curves"):
    """Training loss, validation loss and validation AUC per epoch, one line per model.

    ``histories``: ``{name: train.History}`` (or its ``to_dict()``). The epoch each model
    kept (its best validation AUC) is ringed. Each panel holds one line per model (the
    AUC panel also a dotted chance line at 0.5); the legend is below the panels.
    """
    from matplotlib.ticker import MaxNLocator

    names = list(histories)
    colours = model_colours(names)
    panels = (("train_loss", "training loss\n(class-weighted cross-entropy)"),
              ("val_loss", "validation loss\n(cross-entropy)"), ("val_auc", "validation AUC"))
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 2.9))
    for name in names:
        h = _history_dict(histories[name])
        ep, best = list(h["epoch"]), h.get("best_epoch")
        for ax, (key, _) in zip(axes, panels):
            ax.plot(ep, h[key], "o-", ms=3, lw=1.3, color=colours[name], label=name)
            if best in ep:
                ax.scatter([best], [h[key][ep.index(best)]], s=70, facecolors="none",
                           edgecolors=[colours[name]], linewidths=1.4, zorder=3)
    for ax, (key, label) in zip(axes, panels):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if key != "val_auc":
            vals = np.array([v for n in names for v in _history_dict(histories[n])[key]], float)
            vals = vals[np.isfinite(vals) & (vals > 0)]
            if len(vals) and vals.max() / vals.min() > 20:
                ax.set_yscale("log")
                ax.set_ylabel(label + " (log)")
    axes[2].axhline(0.5, color="grey", ls=":", lw=1)
    axes[2].set_ylim(min(0.4, np.nanmin([np.nanmin(_history_dict(histories[n])["val_auc"] or [1.0])
                                         for n in names] or [1.0])) - 0.02, 1.02)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(names), 5), fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, -0.01))
    fig.suptitle(f"{title} (ring: the epoch kept, best validation AUC)", fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def roc_curves(curves: dict, title: str | None = None):
    """ROC curves of several models on one axis per data set.

    ``curves``: ``{dataset: {model: {"fpr", "tpr", "auc"[, "point", "n_pos", "n_neg"]}}}``
    (``reports.roc_by_dataset`` builds it). Each model is one line, labelled with its AUC;
    ``point`` (false-positive rate, sensitivity) — the operating point at the threshold
    chosen on validation — is drawn as a dot on the line. A dotted diagonal is chance.
    """
    datasets = list(curves)
    names = list(dict.fromkeys(m for d in curves.values() for m in d))
    colours = model_colours(names)
    fig, axes = plt.subplots(1, len(datasets), figsize=(3.4 * len(datasets), 4.1), squeeze=False)
    for ax, ds in zip(axes.flat, datasets):
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
        info = {}
        for m, c in curves[ds].items():
            ax.plot(c["fpr"], c["tpr"], lw=1.4, color=colours[m], label=f"{m}  {c['auc']:.2f}")
            if c.get("point") is not None:
                ax.scatter(*c["point"], s=22, color=colours[m], edgecolors="black", linewidths=0.5, zorder=3)
            info = c
        head = ds
        if "n_pos" in info:
            head += f" (n = {info['n_pos'] + info['n_neg']}: {info['n_pos']} TB, {info['n_neg']} normal)"
        ax.set_title(head, fontsize=8)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        ax.set_xlabel("1 − specificity (false-positive rate)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False,
                  title="model, test AUC", title_fontsize=7)
    axes[0, 0].set_ylabel("sensitivity (true-positive rate)")
    fig.suptitle(title or "ROC curves on the test split (dot: the threshold chosen on validation)", fontsize=9)
    fig.tight_layout()
    return fig


def confusion_grid(rows, models: Sequence[str] | None = None, datasets: Sequence[str] | None = None,
                   cell: float = 1.55):
    """Confusion matrices as small multiples: one row per data set, one column per model.

    ``rows``: dicts (or a DataFrame) with ``model``, ``dataset``, ``tn``, ``fp``, ``fn``,
    ``tp``. Each matrix has the true class down and the predicted class across; a cell
    shows its count, shaded by its share of the true class: blue for the correct cells
    (their shades are specificity and sensitivity), red for the mistakes.
    """
    rows = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)
    models = list(models or dict.fromkeys(r["model"] for r in rows))
    datasets = list(datasets or dict.fromkeys(r["dataset"] for r in rows))
    by = {(r["model"], r["dataset"]): r for r in rows}
    fig, axes = plt.subplots(len(datasets), len(models), figsize=(cell * len(models) + 0.6,
                                                                  cell * len(datasets) + 0.6), squeeze=False)
    for i, ds in enumerate(datasets):
        for j, m in enumerate(models):
            ax = axes[i, j]
            ax.set_xticks([0, 1], ["normal", "TB"] if i == len(datasets) - 1 else ["", ""], fontsize=7)
            ax.set_yticks([0, 1], ["normal", "TB"] if j == 0 else ["", ""], fontsize=7)
            ax.tick_params(length=0)
            if i == 0:
                ax.set_title(m, fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{ds}\ntrue", fontsize=8)
            if i == len(datasets) - 1:
                ax.set_xlabel("predicted", fontsize=7)
            r = by.get((m, ds))
            if r is None:
                ax.imshow(np.zeros((2, 2)), cmap="Blues", vmin=0, vmax=1)
                continue
            counts = np.array([[r["tn"], r["fp"]], [r["fn"], r["tp"]]], float)
            share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
            rgb = np.array([[(plt.get_cmap("Blues") if a == b else plt.get_cmap("Reds"))(0.05 + 0.85 * share[a, b])
                             for b in range(2)] for a in range(2)])
            ax.imshow(rgb)
            for a in range(2):
                for b in range(2):
                    ax.text(b, a, f"{int(counts[a, b])}", ha="center", va="center", fontsize=8,
                            color="white" if share[a, b] > 0.6 else "black")
    fig.suptitle("confusion matrices on the test split (blue: correct, red: mistakes; "
                 "shade: share of the true class)", fontsize=9)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------ stage 3: Grad-CAM

def _cam_axes(ax, image, cam=None, alpha: float = 0.5, lungs=None, lesions=None):
    """An X-ray with a map drawn over it (jet colours, ``alpha`` its opacity), and the
    lung (cyan) and lesion (red) outlines when given."""
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="bilinear")
    if cam is not None and alpha > 0:
        ax.imshow(cam, cmap="jet", vmin=0, vmax=1, alpha=float(alpha), interpolation="bilinear")
    if lungs is not None and np.any(lungs):
        ax.contour(lungs, levels=[0.5], colors="cyan", linewidths=0.9)
    if lesions is not None and np.any(lesions):
        ax.contour(lesions, levels=[0.5], colors="red", linewidths=0.9)
    ax.set_xticks([])
    ax.set_yticks([])


def cam_explorer_figure(view, alpha: float = 0.5, cell: float = 3.0):
    """The CAM explorer's picture: one panel per model (``widgets.View.panels``), each the
    X-ray the model saw with its map at opacity ``alpha``, the lung mask (cyan) and
    lesions (red) when switched on; the panel's title gives the model, its P(TB), its
    decision (✓ right, ✗ wrong) and which class's map is shown.

    Drawn on a ``matplotlib.figure.Figure`` outside pyplot, so that redrawing from a
    widget callback neither piles up figures nor shows them twice in a notebook.
    """
    from matplotlib.figure import Figure

    panels = list(view.panels)
    n = max(1, len(panels))
    fig = Figure(figsize=(cell * n + 0.4, cell + 0.9), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    if not panels:
        axes[0].axis("off")
        axes[0].text(0.5, 0.5, view.message or "nothing to show", ha="center", va="center",
                     fontsize=10, transform=axes[0].transAxes)
    for ax, p in zip(axes, panels):
        _cam_axes(ax, p.image, p.cam, alpha, p.lungs, p.lesions)
        ax.set_title(p.title, fontsize=8, color="black" if p.correct else "tab:red")
    fig.suptitle(view.title, fontsize=8)
    return fig


def cam_gallery(rows: Sequence[dict], columns: Sequence[str], alpha: float = 0.5, cell: float = 1.45,
                title: str | None = None, method: str = "Grad-CAM"):
    """The same X-rays under several models: one row per image, one column per model.

    ``rows``: dicts with ``group`` (e.g. "TP"), ``key``, ``image`` (the X-ray at the
    first column's size), ``lungs`` / ``lesions`` (masks for the first column, or None)
    and ``panels``: ``{column: {"image", "cam", "prob", "correct"}}``. A row with no
    ``key`` is a group without images: its ``group`` text is written across the row.
    The first column shows the X-ray with the lungs (cyan) and lesions (red) outlined;
    each model's panel is titled with its P(TB), red when its decision was wrong.
    """
    columns = list(columns)
    ncols = 1 + len(columns)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(cell * ncols, cell * len(rows) + 0.5),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, row in enumerate(rows):
        if not row.get("key"):
            note = axes[i, 0].text(0.0, 0.5, row["group"], ha="left", va="center", fontsize=8,
                                   transform=axes[i, 0].transAxes)
            note.set_in_layout(False)  # it runs across the empty row
            continue
        ax = axes[i, 0]
        ax.axis("on")
        _cam_axes(ax, row["image"], None, 0.0, row.get("lungs"), row.get("lesions"))
        ax.set_ylabel(f"{row['group']}\n{row['key'].split('/')[-1]}", fontsize=6.5)
        for j, name in enumerate(columns, 1):
            p = row["panels"].get(name)
            if p is None:
                continue
            ax = axes[i, j]
            ax.axis("on")
            _cam_axes(ax, p["image"], p["cam"], alpha)
            ax.set_title(f"P(TB) {p['prob']:.2f}", fontsize=7, color="black" if p["correct"] else "tab:red",
                         pad=2)
    for j, name in enumerate(["X-ray"] + columns):
        axes[0, j].annotate(name, (0.5, 1.22), xycoords="axes fraction", ha="center", fontsize=8,
                            fontweight="bold")
    fig.suptitle(title or f"{method} maps of the TB class (red title: that model's decision was wrong; "
                 "cyan: lungs, red: lesions)", fontsize=8)
    fig.tight_layout()
    return fig


def agreement_matrix(matrix, names: Sequence[str], title: str = "agreement between the teachers' maps",
                     label: str = "mean Pearson correlation"):
    """A square matrix of pairwise agreement (e.g. ``pipeline.attention_agreement``), with
    each value written in its cell ("n/a" where it is undefined)."""
    m = np.asarray(matrix, float)
    k = len(names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * k, 0.6 + 0.7 * k))
    im = ax.imshow(m, cmap="viridis", vmin=min(0.0, np.nanmin(m)), vmax=1.0)
    ax.set_xticks(range(k), names, rotation=35, ha="right", fontsize=7)
    ax.set_yticks(range(k), names, fontsize=7)
    for a in range(k):
        for b in range(k):
            if np.isfinite(m[a, b]):
                ax.text(b, a, f"{m[a, b]:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if m[a, b] > 0.6 else "white")
            else:  # e.g. a model whose maps are all empty
                ax.text(b, a, "n/a", ha="center", va="center", fontsize=7, color="grey")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label=label)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def cam_methods(image, maps: dict, alpha: float = 0.5, lungs=None, lesions=None, title: str | None = None,
                cell: float = 1.7):
    """One X-ray under several CAM methods: ``maps`` is ``{method: (H, W) map}``."""
    names = list(maps)
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(cell * (len(names) + 1), cell + 0.6), squeeze=False)
    _cam_axes(axes[0, 0], image, None, 0.0, lungs, lesions)
    axes[0, 0].set_title("X-ray", fontsize=8)
    for ax, name in zip(axes[0, 1:], names):
        _cam_axes(ax, image, maps[name], alpha)
        ax.set_title(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------ stage 4: distillation

def _map_over(ax, image, cam=None, alpha: float = 0.5):
    """An X-ray with a map over it; the map is stretched over the whole image, whatever
    its own size (a 16-px guide map over a 64-px image)."""
    image = np.asarray(image, dtype=float)
    h, w = image.shape[-2:]
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="bilinear")
    if cam is not None and alpha > 0:
        ax.imshow(np.asarray(cam, dtype=float), cmap="jet", vmin=0, vmax=1, alpha=float(alpha),
                  interpolation="bilinear", extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    ax.set_xticks([])
    ax.set_yticks([])


def joint_augmentation(samples: Sequence, alpha: float = 0.5, cell: float = 1.6, title: str | None = None):
    """Augmented copies of one training image and its guide map, transformed together.

    ``samples``: ``[(title, image (H, W), map (h, w)), ...]`` (the first usually the
    original). Top row: the X-ray alone; bottom row: the same X-ray with its map over it.
    A map that moved with the image stays on the same anatomy in every column.
    """
    samples = list(samples)
    n = max(1, len(samples))
    fig, axes = plt.subplots(2, n, figsize=(cell * n, 2 * cell + 0.5), squeeze=False)
    for j, (name, image, cam) in enumerate(samples):
        _map_over(axes[0, j], image)
        _map_over(axes[1, j], image, cam, alpha)
        axes[0, j].set_title(name, fontsize=7.5)
    axes[0, 0].set_ylabel("X-ray", fontsize=8)
    axes[1, 0].set_ylabel("with its guide map", fontsize=8)
    fig.suptitle(title or "one training image and its guide map under joint augmentation", fontsize=8.5)
    fig.tight_layout()
    return fig


def distill_curves(histories: dict, title: str = "students"):
    """:func:`training_curves` of the students. The training loss is each student's own
    objective (cross-entropy plus its distillation terms), so its level is not comparable
    across variants; the validation loss (plain cross-entropy) and AUC are."""
    fig = training_curves(histories, title=title)
    ax = fig.axes[0]
    log = ax.get_yscale() == "log"
    ax.set_ylabel("training loss\n(each student's own objective)" + (" (log)" if log else ""))
    return fig


def ablation_intervals(points: dict, reference: dict | None = None, title: str | None = None,
                       cell: float = 1.9):
    """Each model's value and 95 % interval, one panel per quantity: a dot on a bar per
    model, models top to bottom in the order given. Overlapping bars: the data do not
    tell the models apart.

    ``points``: ``{model: {quantity: (value, lo, hi)}}`` (``reports.ablation_points``);
    NaN parts are left out. ``reference``: ``{quantity: value}`` drawn as a dotted grey
    line (e.g. chance: AUC 0.5, the lungs' share of the image for the in-lung share).
    """
    models = list(points)
    labels = list(dict.fromkeys(q for m in points.values() for q in m))
    colours = model_colours(models)
    fig, axes = plt.subplots(1, max(1, len(labels)), figsize=(cell * max(1, len(labels)) + 1.3,
                                                              0.32 * len(models) + 1.2),
                             sharey=True, squeeze=False)
    for ax, q in zip(axes[0], labels):
        for i, m in enumerate(models):
            v, lo, hi = (float(t) for t in points[m].get(q, (np.nan, np.nan, np.nan)))
            if np.isfinite(lo) and np.isfinite(hi):
                ax.plot([lo, hi], [i, i], color=colours[m], lw=2.2, solid_capstyle="butt", alpha=0.8)
            if np.isfinite(v):
                ax.plot([v], [i], "o", color=colours[m], ms=5, mec="black", mew=0.5)
        if reference and q in reference and np.isfinite(reference[q]):
            ax.axvline(float(reference[q]), color="grey", ls=":", lw=1)
        ax.set_title(q, fontsize=8)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=7)
    ax0 = axes[0, 0]
    ax0.set_yticks(range(len(models)), models, fontsize=7.5)
    ax0.set_ylim(len(models) - 0.5, -0.5)
    fig.suptitle(title or "test split, data sets pooled: value and 95 % bootstrap interval "
                 "(dotted: chance)", fontsize=8.5)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------ stage 5: results

def _ci_err(rows: Sequence[dict], metric: str):
    """Values and asymmetric error bars (2, n) of ``metric`` from evaluate-style rows."""
    v = np.array([np.nan if r.get(metric) is None else r[metric] for r in rows], float)
    lo = np.array([np.nan if r.get(f"{metric}_lo") is None else r[f"{metric}_lo"] for r in rows], float)
    hi = np.array([np.nan if r.get(f"{metric}_hi") is None else r[f"{metric}_hi"] for r in rows], float)
    err = np.vstack([np.where(np.isfinite(lo), v - lo, 0), np.where(np.isfinite(hi), hi - v, 0)])
    return v, np.clip(err, 0, None)


def paper_bars(test: dict, paper: dict, metric: str = "accuracy", datasets: Sequence[str] | None = None,
               title: str | None = None):
    """The kit's models against the paper: one group of bars per data set, one bar per
    model with its 95 % interval, the paper's figure as a black bar across the group.

    ``test``: ``{model: evaluate rows}``; ``paper``: ``{dataset: value}``.
    """
    models = list(test)
    datasets = list(datasets or paper)
    colours = model_colours(models)
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(2.2 + 0.5 * len(models) * len(datasets), 3.2))
    for j, m in enumerate(models):
        rows = [next((r for r in test[m] if r["dataset"] == ds), {}) for ds in datasets]
        v, err = _ci_err(rows, metric)
        x = np.arange(len(datasets)) - 0.4 + width * (j + 0.5)
        ax.bar(x, v, width * 0.92, color=colours[m], label=m, yerr=err, capsize=2,
               error_kw={"elinewidth": 0.9, "ecolor": "black"})
    for i, ds in enumerate(datasets):
        if ds in paper:
            ax.plot([i - 0.45, i + 0.45], [paper[ds]] * 2, color="black", lw=2.4, zorder=4,
                    label="the paper" if i == 0 else None)
            ax.text(i - 0.45, paper[ds] + 0.015, f"paper {100 * paper[ds]:.1f} %", fontsize=7, va="bottom")
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set_xlim(-0.5, len(datasets) - 0.5)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"test {metric}")
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_title(title or f"test {metric} with 95 % bootstrap intervals; black bar: the paper's figure",
                 fontsize=8.5)
    fig.tight_layout()
    return fig


MARKERS = ("o", "s", "D", "^", "v", "P", "X", "<", ">", "*")


def who_targets(who: dict, target: dict, dataset: str = "all", title: str | None = None):
    """Sensitivity against specificity of each model at its WHO operating point (threshold
    chosen on validation for 90 % sensitivity), with 95 % intervals as crosses; the
    shaded corner is the target (sensitivity and specificity at least the WHO's)."""
    models = list(who)
    colours = model_colours(models)
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    ts, tp = target["specificity"], target["sensitivity"]
    ax.fill_between([ts, 1.02], tp, 1.02, color="tab:green", alpha=0.15, lw=0,
                    label=f"WHO target: sens ≥ {tp:.0%}, spec ≥ {ts:.0%}")
    ax.axvline(ts, color="tab:green", lw=0.8, ls="--")
    ax.axhline(tp, color="tab:green", lw=0.8, ls="--")
    for k, m in enumerate(models):
        r = next((r for r in who[m] if r["dataset"] == dataset), None)
        if r is None or r.get("sensitivity") is None or r.get("specificity") is None:
            continue
        (sx,), sxe = _ci_err([r], "specificity")
        (sy,), sye = _ci_err([r], "sensitivity")
        ax.errorbar([sx], [sy], xerr=sxe, yerr=sye, fmt=MARKERS[k % len(MARKERS)], color=colours[m],
                    ms=6 if k < 5 else 5, mec="black", mew=0.5, elinewidth=0.9, capsize=2, label=m,
                    alpha=0.85)
    ax.text(1.0, 0.99, "target", ha="right", va="top", fontsize=7, color="tab:green")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("specificity (normal images cleared)")
    ax.set_ylabel("sensitivity (TB images found)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, loc="lower left")
    ax.set_title(title or f"WHO triage operating point on the test split ({dataset})", fontsize=8.5)
    fig.tight_layout()
    return fig


def cost_accuracy(cost: dict, test: dict, dataset: str = "all", metric: str = "accuracy",
                  title: str | None = None):
    """Test ``metric`` (with its 95 % interval) against CPU latency at batch 1 (log axis),
    one point per model, its area growing with the parameter count. Up and to the left
    is better: as good, for less."""
    models = [m for m in test if m in cost]
    colours = model_colours(list(test))
    fig, ax = plt.subplots(figsize=(5.2, 3.5))
    params = np.array([cost[m]["params"] for m in models], float)
    sizes = 25 + 400 * np.sqrt(params / params.max()) if len(params) else []
    from matplotlib.ticker import FuncFormatter, NullFormatter

    order = sorted(range(len(models)), key=lambda i: cost[models[i]]["latency_ms_b1"])
    points = []
    for rank, i in enumerate(order):
        m, s = models[i], sizes[i]
        r = next((r for r in test[m] if r["dataset"] == dataset), None)
        if r is None:
            continue
        (v,), err = _ci_err([r], metric)
        x = cost[m]["latency_ms_b1"]
        ax.errorbar([x], [v], yerr=err, fmt="none", ecolor=colours[m], elinewidth=0.9, capsize=2)
        ax.scatter([x], [v], s=s, color=colours[m], edgecolors="black", linewidths=0.5, alpha=0.85, zorder=3)
        points.append((m, x, v))
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda t, _: f"{t:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    lat = [cost[m]["latency_ms_b1"] for m in models]
    if lat:
        nice = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
                if min(lat) / 1.5 <= t <= max(lat) * 1.5]
        ax.set_xticks(nice)
        ax.set_xlim(min(lat) / 1.5, max(lat) * 2.5)
    _place_labels(fig, ax, [(f"{m}, {cost[m]['params'] / 1e6:.1f} M", x, v) for m, x, v in points])
    ax.set_xlabel("CPU latency, one image (ms, log scale)")
    ax.set_ylabel(f"test {metric} ({dataset})")
    ax.set_ylim(min(0.4, ax.get_ylim()[0]), 1.05)
    ax.grid(alpha=0.3, which="both")
    ax.set_title(title or "what each model costs and what it gets right (area: parameters)", fontsize=8.5)
    fig.tight_layout()
    return fig


def _place_labels(fig, ax, labels, offsets=((5, 6), (5, -13), (-5, 6), (-5, -13), (5, 16), (5, -23))):
    """Annotate points ``(text, x, y)`` next to them, each at the first offset (points) whose
    text overlaps no label placed before (the last candidate if all do)."""
    renderer = fig.canvas.get_renderer()
    placed = []
    for text, x, y in labels:
        for dx, dy in offsets:
            a = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=6.5,
                            ha="left" if dx >= 0 else "right")
            box = a.get_window_extent(renderer).expanded(1.02, 1.1)
            if not any(box.overlaps(b) for b in placed) or (dx, dy) == offsets[-1]:
                placed.append(box)
                break
            a.remove()


def cross_bars(cross: dict, metric: str = "accuracy", title: str | None = None):
    """Trained on one data set: its own test split beside every image of the other set,
    ``metric`` with 95 % intervals. The drop is the price of a new hospital's X-rays."""
    runs = cross.get("runs", [])
    fig, ax = plt.subplots(figsize=(1.6 + 1.6 * max(1, len(runs)), 3.0))
    for i, run in enumerate(runs):
        for k, (kind, colour, label) in enumerate((("in_domain", "tab:blue", "same data set (its test split)"),
                                                   ("cross", "tab:orange", "the other data set (all images)"))):
            v, err = _ci_err([run[kind]], metric)
            ax.bar([i - 0.2 + 0.4 * k], v, 0.38, color=colour, yerr=err, capsize=2, label=label if i == 0 else None,
                   error_kw={"elinewidth": 0.9})
    ax.set_xticks(range(len(runs)), [f"trained on {r['train']}\ntested on {r['train']} | {r['test']}" for r in runs],
                  fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.set_ylabel(f"{metric}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=6.5, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    fig.suptitle(title or f"cross-data-set {metric} (95 % intervals)", fontsize=8.5, y=1.06)
    fig.tight_layout()
    return fig


def kfold_points(cv: dict, metric: str = "accuracy", datasets: Sequence[str] | None = None,
                 title: str | None = None):
    """Each fold's held-out ``metric`` as a dot, the mean ± sd as a bar, per model and data set."""
    models = list(cv["models"])
    first = cv["models"][models[0]]["folds"][0]["test"] if models else []
    datasets = list(datasets or [r["dataset"] for r in first])
    fig, axes = plt.subplots(1, len(datasets), figsize=(1.0 + 1.6 * len(datasets), 0.5 + 0.45 * len(models) + 1.0),
                             sharey=True, squeeze=False)
    colours = model_colours(models)
    for ax, ds in zip(axes[0], datasets):
        for i, m in enumerate(models):
            vals = [next((r[metric] for r in f["test"] if r["dataset"] == ds), None) for f in cv["models"][m]["folds"]]
            vals = np.array([np.nan if v is None else v for v in vals], float)
            ax.plot(vals, np.full(len(vals), i), "o", color=colours[m], ms=4, alpha=0.7)
            s = cv["models"][m]["summary"].get(ds, {}).get(metric, {})
            if s.get("mean") is not None:
                sd = s["sd"] or 0.0
                ax.plot([s["mean"] - sd, s["mean"] + sd], [i, i], color="black", lw=1.2)
                ax.plot([s["mean"]], [i], "|", color="black", ms=10, mew=1.5)
        ax.set_title(ds, fontsize=8)
        ax.set_xlim(-0.02, 1.02)
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel(metric, fontsize=7.5)
    axes[0, 0].set_yticks(range(len(models)), models, fontsize=7.5)
    axes[0, 0].set_ylim(len(models) - 0.5, -0.5)
    fig.suptitle(title or f"{cv['k']}-fold cross-validation: each fold (dots), mean ± sd (black)", fontsize=8.5)
    fig.tight_layout()
    return fig
