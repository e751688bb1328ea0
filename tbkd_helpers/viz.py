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
