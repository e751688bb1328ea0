"""Grad-CAM knowledge distillation: a small student learns the labels, the teacher's soft
predictions, and where the teacher looks.

The paper gives no loss formula, so every choice is a setting (:class:`DistillSettings`)::

    loss = CE(student, y)
         + alpha * T^2 * KL(p_teacher^T || p_student^T)          (logit distillation)
         + beta  * D(cam_student, cam_guide)                     (attention distillation)

- ``p^T`` is the softmax at temperature ``T`` (Hinton et al. 2015); the ``T^2`` keeps the
  gradient scale independent of ``T``. The KL divergence runs from the teacher's
  distribution to the student's, as in Hinton's formulation.
- ``cam_student`` is the student's Grad-CAM for the TB class, computed differentiably
  (:func:`tbkd_helpers.cam.differentiable_gradcam`) in the same forward pass as its
  logits; ``cam_guide`` is the guiding teacher's cached map (:func:`make_guide`).
- ``D`` (``cam_loss``): "mse" or "l1" between per-image L2-normalised maps, summed over
  the map's pixels and averaged over images (for "mse" that is ``2 - 2 cos``, in
  [0, 2], independent of the map size), or "at", attention transfer (Zagoruyko &
  Komodakis 2017: the L2 distance of the normalised maps).
- The guiding maps and logits come from the stage-3 cache: no teacher runs while the
  student trains. "best": the teacher with the best validation AUC; "fusion": a
  validation-weighted average of all teachers (weights ``max(AUC - 0.5, 0)``, so a
  teacher at chance level has no say).

Geometric augmentation moves the lungs; the guiding map must move with them, so the
image and its map are transformed together (:class:`DistillDataset`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import cam as _cam
from .data import CXRDataset, ViewsDataset, augmenters

VARIANTS = ("ce", "kd", "cam", "kd+cam")
CAM_ORDERS = ("second", "first")


@dataclass(frozen=True)
class DistillSettings:
    """The distillation loss's knobs (see the module docstring)."""

    alpha: float = 0.0  # weight of the logit-distillation term
    beta: float = 0.0  # weight of the Grad-CAM term
    temperature: float = 4.0
    cam_loss: str = "mse"  # "mse" | "l1" | "at"
    target_class: int = 1  # maps of the TB class, as cached for the teachers
    cam_images: str = "tb"  # the map term on "tb" images only (the TB map explains a TB image;
    # on a normal image the guide's TB map marks nothing real) or on "all"
    cam_order: str = "second"  # "second": the map's gradient flows through the Grad-CAM weights
    # (the gradient of the score, so a second-order backward through the layers after the map's
    # layer); "first": the weights are held constant, the map's gradient flows through the
    # activations only (about the cost of a plain step)

    def __post_init__(self):
        if self.cam_loss not in _cam.CAM_LOSSES:
            raise ValueError(f"cam_loss={self.cam_loss!r}: choose one of {', '.join(_cam.CAM_LOSSES)}")
        if self.cam_images not in ("tb", "all"):
            raise ValueError(f"cam_images={self.cam_images!r}: choose 'tb' or 'all'")
        if self.cam_order not in CAM_ORDERS:
            raise ValueError(f"cam_order={self.cam_order!r}: choose one of {', '.join(CAM_ORDERS)}")
        if self.alpha < 0 or self.beta < 0 or self.temperature <= 0:
            raise ValueError("alpha and beta must be >= 0 and the temperature > 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def variant_settings(variant: str, alpha: float = 1.0, beta: float = 1.0, temperature: float = 4.0,
                     cam_loss: str = "mse", cam_order: str = "second") -> DistillSettings:
    """The ablation's four students: "ce" (labels only), "kd" (+ logit distillation),
    "cam" (+ Grad-CAM distillation), "kd+cam" (both)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown student variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    return DistillSettings(alpha=alpha if "kd" in variant else 0.0,
                           beta=beta if "cam" in variant else 0.0,
                           temperature=temperature, cam_loss=cam_loss, cam_order=cam_order)


# --------------------------------------------------------------------------- losses

def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, averaged over the batch."""
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    p_t = F.softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * t * t


def cam_term(student_maps: torch.Tensor, guide_maps: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """The attention term ``D``: per image, summed over the student map's pixels
    ("mse", "l1") or the attention-transfer distance ("at"); averaged over images."""
    loss = _cam.cam_loss(student_maps, guide_maps, kind=kind)
    if kind in ("mse", "l1"):
        loss = loss * student_maps.shape[-1] * student_maps.shape[-2]
    return loss


# --------------------------------------------------------------------------- guides

@dataclass
class Guide:
    """The maps and logits the student is taught with, one row per training image."""

    cams: np.ndarray  # (N, h, w) float32 in [0, 1]
    logits: np.ndarray  # (N, C) float32
    ids: list[str]
    source: str  # "resnet18", "fusion", or "<maps' source>,<logits' source>" when they differ
    weights: dict[str, float]  # teacher -> weight of its maps
    logit_weights: dict[str, float] | None = None  # teacher -> weight of its logits (None: ``weights``)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def maps_source(self) -> str:
        """Whose maps the guide holds (a teacher's name or "fusion")."""
        return self.source.split(GUIDE_SEP)[0]

    @property
    def logits_source(self) -> str:
        """Whose logits the guide holds (a teacher's name or "fusion")."""
        return self.source.split(GUIDE_SEP)[-1]


#: separates the two halves of a split guide, ``"<maps>,<logits>"``: e.g. ``"vgg16_bn,densenet121"``
#: teaches the maps of VGG16-BN and the logits of DenseNet121
GUIDE_SEP = ","


def split_guide(mode: str) -> tuple[str, str]:
    """``(maps, logits)`` of a guide: ``"a,b"`` takes its maps from ``a`` and its logits from
    ``b``; any other guide takes both from itself."""
    parts = mode.split(GUIDE_SEP)
    if len(parts) > 2 or not all(parts):
        raise ValueError(f"guide {mode!r}: one rule, or two joined by {GUIDE_SEP!r} (maps, then logits)")
    return parts[0], parts[-1]


def guide_sources(val_auc: Mapping[str, float], mode: str = "best") -> tuple[str, str]:
    """Whose maps and whose logits a guide holds: a teacher's name, or "fusion"."""
    def name(rule):
        used = [k for k, w in teacher_weights(val_auc, rule).items() if w > 0]
        return used[0] if len(used) == 1 else "fusion"
    maps, logits = split_guide(mode)
    return name(maps), name(logits)


def guide_teachers(val_auc: Mapping[str, float], mode: str = "best") -> list[str]:
    """The teachers whose caches a guide reads: those with a weight in its maps or its logits."""
    return sorted({k for rule in split_guide(mode) for k, w in teacher_weights(val_auc, rule).items() if w > 0})


def best_teacher(val_auc: Mapping[str, float]) -> str:
    """The teacher with the highest validation AUC (ties: the first in sorted order; an
    undefined AUC counts as the lowest): the guide ``"best"`` and the teacher chapter 03
    draws."""
    names = sorted(val_auc)
    if not names:
        raise ValueError("no teachers to guide the student")
    return max(names, key=lambda n: (np.nan_to_num(val_auc[n], nan=-1.0), -names.index(n)))


def teacher_weights(val_auc: Mapping[str, float], mode: str = "best") -> dict[str, float]:
    """Weights of the teachers in the guide, from their validation AUCs.

    "best": 1 for the best teacher (ties: the first in sorted order), 0 for the others;
    "fusion": ``max(AUC - 0.5, 0)``, normalised to sum to 1 (equal weights if every
    teacher is at chance); a teacher's name: that teacher alone.
    """
    names = sorted(val_auc)
    if not names:
        raise ValueError("no teachers to guide the student")
    if mode in val_auc:
        return {n: float(n == mode) for n in names}
    if mode == "best":
        best = best_teacher(val_auc)
        return {n: float(n == best) for n in names}
    if mode == "fusion":
        raw = np.array([max(np.nan_to_num(val_auc[n], nan=0.5) - 0.5, 0.0) for n in names])
        raw = raw / raw.sum() if raw.sum() > 0 else np.full(len(names), 1 / len(names))
        return {n: float(w) for n, w in zip(names, raw)}
    raise ValueError(f"unknown guide {mode!r}: 'best', 'fusion' or a teacher's name ({', '.join(names)})")


def make_guide(caches: Mapping[str, "_cam.CamCache"], val_auc: Mapping[str, float],
               mode: str = "best") -> Guide:
    """Combine the teachers' cached maps and logits into the student's targets.

    Maps are averaged with the teacher weights after each is scaled to [0, 1] (they are
    already, per image) and brought to the largest map size; logits are averaged with
    the same weights, or, for a split guide ``"<maps>,<logits>"`` (:func:`split_guide`),
    with the weights of its second rule. Every cache must hold the same images in the same order.
    """
    maps_mode, logits_mode = split_guide(mode)
    aucs = {k: val_auc[k] for k in caches}
    weights, logit_weights = teacher_weights(aucs, maps_mode), teacher_weights(aucs, logits_mode)
    used = {k: w for k, w in weights.items() if w > 0}
    used_logits = {k: w for k, w in logit_weights.items() if w > 0}
    first = caches[next(iter(used))]
    ids = [str(i) for i in first.ids] if first.ids is not None else []
    for c in (caches[k] for k in {**used, **used_logits}):
        if c.ids is not None and [str(i) for i in c.ids] != ids:
            raise ValueError(f"{c.path}: its images differ from {first.path}'s; rebuild the CAM caches")
    size = max(max(caches[k].cams.shape[-2:]) for k in used)
    cams = np.zeros((len(first), size, size), np.float32)
    logits = np.zeros(first.logits.shape, np.float32)
    for name, w in used.items():
        maps = np.asarray(caches[name].cams, np.float32)
        cams += w * (maps if maps.shape[-1] == size else _cam.resize_maps(maps, size))
    for name, w in used_logits.items():
        logits += w * np.asarray(caches[name].logits, np.float32)
    split = logit_weights != weights
    source = GUIDE_SEP.join(guide_sources(aucs, mode)) if split else guide_sources(aucs, mode)[0]
    return Guide(cams=cams, logits=logits, ids=ids, source=source, weights=weights,
                 logit_weights=logit_weights if split else None)


# --------------------------------------------------------------------------- data

class DistillDataset(torch.utils.data.Dataset):
    """``(image, label, guide map, guide logits)`` for each training image.

    ``base`` holds the images (a ``CXRDataset`` made without augmentation, in the same
    order as the guide). Two ways to augment:

    - ``views`` (``data.view_params``, ``(N, V, 6)``), with a guide built on those views
      (one row per image and view, keys ``"<key>@<v>"``): each draw picks one of the
      image's V fixed views, and the teacher's logits and map are those of *that view*
      (the teacher saw exactly what the student sees: "consistent" distillation);
    - ``augment`` without views: one random rotation/shift/zoom is applied to the image
      and its guide map together (the map is brought to the image's size, stacked as a
      second channel, transformed, and shrunk back), then brightness and contrast change
      on the image alone; the logits stay those of the unaugmented image.
    """

    def __init__(self, base: CXRDataset, guide: Guide, augment: bool = False, views: np.ndarray | None = None):
        self.n_views = 0 if views is None else int(np.asarray(views).shape[1])
        keys = [r.key for r in base.records]
        if self.n_views:
            keys = [f"{k}@{v}" for k in keys for v in range(self.n_views)]
        if len(keys) != len(guide):
            raise ValueError(f"{len(keys)} images (and views) but {len(guide)} guide maps")
        if guide.ids and keys != guide.ids:
            raise ValueError("the guide's images are not the data set's images (order, content or views)")
        self.base = base
        self.labels = base.labels  # for class balancing in train.fit
        self.records = base.records
        self.cams = torch.from_numpy(np.ascontiguousarray(guide.cams, dtype=np.float32))
        self.logits = torch.from_numpy(np.ascontiguousarray(guide.logits, dtype=np.float32))
        self.augment = augment
        self.view_images = ViewsDataset(base, views).images if self.n_views else None
        self._geo, self._jitter = augmenters()  # the teachers' augmentation (recipes)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        if self.n_views:
            j = i * self.n_views + int(torch.randint(self.n_views, (1,)))
            return self.view_images[j], int(self.base.labels[i]), self.cams[j], self.logits[j]
        x = self.base.images[i]
        m = self.cams[i]
        if self.augment:
            h, w = x.shape[-2:]
            big = F.interpolate(m[None, None], size=(h, w), mode="bilinear", align_corners=False)[0]
            both = self._geo(torch.cat([x, big]))
            x = self._jitter(both[:1]).clamp(0, 1)
            m = F.adaptive_avg_pool2d(both[1:], m.shape[-2:])[0].clamp(0, 1)
        return x, int(self.base.labels[i]), m, self.logits[i]


# --------------------------------------------------------------------------- the training step

def make_step_loss(layer: nn.Module, settings: DistillSettings):
    """The loss of one training batch, for ``train.fit(..., step_loss=...)``.

    Without a CAM term the student runs one plain forward pass; with one, its logits
    and its differentiable Grad-CAM come from the same forward pass, and the map's
    gradient reaches the weights: through the Grad-CAM weights too with ``cam_order``
    "second" (``create_graph=True``), through the activations only with "first".
    """
    s = settings

    def step(model: nn.Module, batch, criterion: nn.Module, device: torch.device):
        x, y, guide_maps, guide_logits = (t.to(device) for t in batch)
        if s.beta > 0:  # signed maps: an empty (ReLU'd) map would pass no gradient
            maps, logits = _cam.differentiable_gradcam(model, layer, x, target_class=s.target_class, relu=False,
                                                       create_graph=s.cam_order == "second")
        else:
            logits = model(x)
        loss = criterion(logits.float(), y)
        if s.alpha > 0:
            loss = loss + s.alpha * kd_loss(logits, guide_logits, s.temperature)
        if s.beta > 0:
            sel = (y == s.target_class) if s.cam_images == "tb" else torch.ones_like(y, dtype=torch.bool)
            if sel.any():
                loss = loss + s.beta * cam_term(maps[sel], guide_maps[sel], s.cam_loss)
        return loss, y

    return step


def guide_agreement(student_maps: np.ndarray, guide_maps: np.ndarray) -> np.ndarray:
    """Per-image Pearson correlation of the student's maps with the guide's (at the
    student's map size)."""
    if guide_maps.shape[-2:] != student_maps.shape[-2:]:
        guide_maps = _cam.resize_maps(guide_maps, student_maps.shape[-2:])
    return _cam.cam_agreement(student_maps, guide_maps)


__all__ = ["VARIANTS", "CAM_ORDERS", "DistillSettings", "variant_settings", "kd_loss", "cam_term", "Guide",
           "teacher_weights", "make_guide", "DistillDataset", "make_step_loss", "guide_agreement"]
