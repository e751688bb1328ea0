"""The kit's stages, end to end: each function returns its stage's result and does the
work only when it is not already complete in ``artifacts/<profile>/``.

A notebook calls its own stage and, through it, whatever earlier stage is missing, so
every chapter also runs on its own. This module sits on top of the others (like the
CLI): it is the only one that imports every room.

    lungs()             stage 1  U-Net, lung masks, lung-extracted images   segmentation/
    train_teacher()     stage 2  one teacher CNN                            teachers/<arch>/
    cam_cache()         stage 3  a teacher's Grad-CAM maps and logits       cams/<arch>_<part>.npz
    train_student()     stage 4  a distilled student                        students/<variant>/
    predictions()       any classifier's probabilities on val and test      <model dir>/predictions.json
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import cam as _cam
from . import data as _data
from . import distill as _distill
from . import metrics as _metrics
from . import models as _models
from . import segmentation as _seg
from . import store
from . import train as _train
from .config import seed_everything, torch_device

# Learning rates of the teachers trained from scratch (AdamW, one-cycle schedule).
# VGG16 without batch norm diverges at 1e-3 from scratch; it gets a gentler peak.
TEACHER_LR = {"vgg16": 2e-4}
DEFAULT_LR = 1e-3


# --------------------------------------------------------------------------- stage 1

def lungs(profile, prep: _data.Prepared | None = None, progress: bool = True) -> "_seg.ExtractionResult":
    """The lung-extraction stage: the U-Net (trained once) and every record's mask and
    lung-extracted image."""
    man = _seg.seg_dir(profile) / "manifest.json"
    if store.manifest_complete(man):
        try:
            return _seg.load_extraction(profile)
        except _data.DataError:
            pass
    prep = prep or _data.prepare(profile, progress=progress)
    model, _ = _seg.train_unet(profile, prep, progress=progress)
    return _seg.run_extraction(profile, prep, model, progress=progress)


def classifier_records(profile, prep: _data.Prepared, part: str, dataset: str | None = None) -> list[_data.Record]:
    """The records of one split part, reading their lung-extracted images."""
    return _seg.extracted_records(prep.part(part, dataset), lungs(profile, prep, progress=False))


def classifier_dataset(profile, prep: _data.Prepared, arch: str, part: str, augment: bool = False,
                       dataset: str | None = None) -> _data.CXRDataset:
    """A ``CXRDataset`` of lung-extracted images at ``arch``'s input size."""
    return _data.CXRDataset(classifier_records(profile, prep, part, dataset), size=profile.size_for(arch),
                            augment=augment)


def _fingerprint(profile, prep: _data.Prepared, arch: str) -> dict:
    """What a classifier's training depends on besides its TrainSettings."""
    ext = lungs(profile, prep, progress=False)
    return {"size": profile.size_for(arch), "pretrained": profile.pretrained,
            "split_sha256": store.file_sha256(prep.split_path),
            "extraction": store.settings_digest(ext.settings)}


def lung_masks(profile, records: Sequence[_data.Record], size: int, what: str = "lung") -> np.ndarray:
    """Masks in the frame of the lung-extracted images, ``(N, size, size)`` bool.

    ``what="lung"``: the U-Net's mask of each image (what extraction kept);
    ``what="lesion"``: the ground-truth lesions (phantoms only), cut the same way.
    """
    ext = lungs(profile, progress=False)
    out = np.zeros((len(records), size, size), bool)
    for i, rec in enumerate(records):
        e = ext.entries[rec.key]
        if what == "lung":
            m = _data.read_mask(ext.path(rec.key, "mask"), tuple(e["shape"]))
        elif what == "lesion":
            if rec.lesion_mask is None:
                continue
            m = _data.read_mask(rec.lesion_mask, tuple(e["shape"]))
        else:
            raise ValueError(f"what must be 'lung' or 'lesion', not {what!r}")
        out[i] = _seg.crop_box(m.astype(np.float32), e["box"], size, order=1) >= 0.5
    return out


# --------------------------------------------------------------------------- stage 2

def teacher_dir(profile, arch: str) -> Path:
    return Path(profile.artifacts) / "teachers" / arch


def teacher_settings(profile, arch: str) -> _train.TrainSettings:
    """AdamW with a one-cycle schedule, class-weighted loss, early stopping on validation
    AUC after a third of the epochs without progress."""
    return _train.TrainSettings(epochs=profile.teacher_epochs, batch_size=profile.batch_size,
                                lr=TEACHER_LR.get(arch, DEFAULT_LR), seed=profile.seed,
                                patience=max(3, profile.teacher_epochs // 3))


def _fit(profile, prep, arch: str, ckpt_dir: Path, settings: _train.TrainSettings, progress: bool,
         model: torch.nn.Module | None = None, train_ds=None, extra: dict | None = None,
         step_loss=None):
    seed_everything(profile.seed)
    model = model if model is not None else _models.build_model(arch, pretrained=profile.pretrained,
                                                                seed=profile.seed)
    plain_train = classifier_dataset(profile, prep, arch, "train")
    if train_ds is None:
        train_ds = classifier_dataset(profile, prep, arch, "train", augment=True)
    val_ds = classifier_dataset(profile, prep, arch, "val")
    hist = _train.fit(model, train_ds, val_ds, settings, ckpt_dir, device=torch_device(profile.device),
                      progress=progress, calib_ds=plain_train, step_loss=step_loss,
                      extra_settings={**_fingerprint(profile, prep, arch), **(extra or {})})
    (ckpt_dir / "last.pt").unlink(missing_ok=True)  # finished: the resume state is not needed
    return model, hist


def train_teacher(profile, arch: str, prep: _data.Prepared | None = None, progress: bool = True):
    """Train (or load the finished) teacher ``arch`` on the lung-extracted training images.

    Returns ``(model, History)``; the model holds the epoch with the best validation AUC.
    """
    prep = prep or _data.prepare(profile, progress=progress)
    return _fit(profile, prep, arch, teacher_dir(profile, arch), teacher_settings(profile, arch), progress)


def load_classifier(path: str | Path):
    """A classifier checkpoint (``best.pt``) as an eval-mode model on the CPU."""
    model, _ = _models.load_checkpoint(path)
    return model.eval()


# --------------------------------------------------------------------------- predictions

def predictions(profile, model_dir: Path, arch: str, prep: _data.Prepared,
                parts: Sequence[str] = ("val", "test"), model=None) -> dict:
    """Probabilities of TB for every image of ``parts``, cached beside the checkpoint.

    Returns ``{part: {"keys": [...], "datasets": [...], "labels": [...], "probs": [...]}}``.
    Recomputed only when the checkpoint changed.
    """
    ckpt = Path(model_dir) / "best.pt"
    path = Path(model_dir) / "predictions.json"
    key = {"checkpoint_sha256": store.file_sha256(ckpt), "parts": list(parts)}
    if path.is_file():
        cached = store.read_json(path)
        if cached.get("key") == key:
            return cached["parts"]
    model = model or load_classifier(ckpt)
    out = {}
    for part in parts:
        ds = classifier_dataset(profile, prep, arch, part)
        probs, labels = _train.predict(model, ds, device=torch_device(profile.device))
        out[part] = {"keys": [r.key for r in ds.records], "datasets": [r.dataset for r in ds.records],
                     "labels": labels.tolist(), "probs": [round(float(p), 6) for p in probs]}
    store.write_json(path, {"key": key, "parts": out})
    return out


def evaluate(preds: dict, rule: str = "youden", n_boot: int = 1000, seed: int = 0,
             datasets: Sequence[str] | None = None) -> list[dict]:
    """Test-split metrics with bootstrap CIs, per data set and pooled ("all").

    The decision threshold is chosen on the validation split (pooled over data sets,
    by ``rule``; see ``metrics.choose_threshold``) and only applied to the test split.
    """
    val, test = preds["val"], preds["test"]
    thr = _metrics.choose_threshold(np.array(val["labels"]), np.array(val["probs"]), rule=rule)
    names = list(datasets) if datasets else sorted(set(test["datasets"]))
    rows = []
    for ds in names + ["all"]:
        sel = np.array([d == ds or ds == "all" for d in test["datasets"]])
        if not sel.any():
            continue
        y, p = np.array(test["labels"])[sel], np.array(test["probs"])[sel]
        row = _metrics.summarize(y, p, threshold=thr, n_boot=n_boot, seed=seed)
        rows.append({"dataset": ds, "rule": rule, **row})
    return rows


def cost(model: torch.nn.Module, size: int, repeats: int = 10) -> dict:
    """Parameters, FLOPs, weights size (MB, float32) and CPU latency (ms) at batch 1."""
    info = _models.model_info(model, size)
    lat = _models.cpu_latency(model.cpu(), size, batch=1, repeats=repeats)
    return {"params": info["params"], "flops": info["flops"],
            "weights_mb": round(info["params"] * 4 / 2**20, 2), "latency_ms_b1": round(lat * 1000, 2)}


# --------------------------------------------------------------------------- stage 3

def cam_path(profile, arch: str, part: str) -> Path:
    return Path(profile.artifacts) / "cams" / f"{arch}_{part}.npz"


def cam_cache(profile, arch: str, prep: _data.Prepared, part: str = "train", model=None,
              progress: bool = True) -> "_cam.CamCache":
    """Teacher ``arch``'s Grad-CAM maps (TB class) and logits for one split part, cached.

    Maps are taken at the layer ``profile.cam_stride`` names, with
    ``profile.cam_method``, and stored at ``profile.cam_size`` px. The cache is rebuilt
    only when the checkpoint (or the images, or a setting) changed.
    """
    ckpt = teacher_dir(profile, arch) / "best.pt"
    if model is None:
        if not (teacher_dir(profile, arch) / "done.json").is_file():
            train_teacher(profile, arch, prep, progress=progress)
        model = load_classifier(ckpt)
    ds = classifier_dataset(profile, prep, arch, part)
    key = {"checkpoint_sha256": store.file_sha256(ckpt), "size": profile.size_for(arch),
           "stride": profile.cam_stride}
    return _cam.build_cam_cache(model, _models.target_layer(model, arch, stride=profile.cam_stride), ds,
                                cam_path(profile, arch, part), key=key, cam_size=profile.cam_size,
                                method=profile.cam_method, target_class=1, progress=progress,
                                device=torch_device(profile.device))


def teacher_val_auc(profile, prep: _data.Prepared, teachers: Sequence[str] | None = None) -> dict[str, float]:
    """Each teacher's validation AUC (the guide is chosen on it, never on test)."""
    out = {}
    for arch in teachers or profile.teachers:
        preds = predictions(profile, teacher_dir(profile, arch), arch, prep)
        v = preds["val"]
        out[arch] = _metrics.classification_report(np.array(v["labels"]), np.array(v["probs"]))["auc"]
    return out


# --------------------------------------------------------------------------- stage 4

def student_dir(profile, variant: str, guide: str = "best", cam_loss: str = "mse") -> Path:
    name = variant if variant == "ce" else f"{variant}-{guide}" + ("" if cam_loss == "mse" or "cam" not in variant
                                                                     else f"-{cam_loss}")
    return Path(profile.artifacts) / "students" / name


def distill_settings(profile, variant: str, cam_loss: str = "mse") -> _distill.DistillSettings:
    return _distill.variant_settings(variant, alpha=profile.kd_alpha, beta=profile.cam_beta,
                                     temperature=profile.kd_temperature, cam_loss=cam_loss)


def train_student(profile, variant: str = "kd+cam", prep: _data.Prepared | None = None,
                  guide: str = "best", cam_loss: str = "mse", progress: bool = True):
    """Train (or load) a student: "ce", "kd", "cam" or "kd+cam" (see ``distill``).

    The guiding teacher maps and logits are read from the stage-3 caches of the training
    images (built first if missing); no teacher runs while the student trains.
    Returns ``(model, History, Guide or None)``.
    """
    prep = prep or _data.prepare(profile, progress=progress)
    arch = profile.student
    ds_settings = distill_settings(profile, variant, cam_loss)
    t_settings = _train.TrainSettings(epochs=profile.student_epochs, batch_size=profile.batch_size,
                                      lr=DEFAULT_LR, seed=profile.seed,
                                      patience=max(3, profile.student_epochs // 3))
    ckpt_dir = student_dir(profile, variant, guide, cam_loss)
    model = _models.build_model(arch, pretrained=profile.pretrained, seed=profile.seed)
    if variant == "ce":
        m, hist = _fit(profile, prep, arch, ckpt_dir, t_settings, progress, model=model,
                       extra={"variant": variant})
        return m, hist, None
    aucs = teacher_val_auc(profile, prep)
    caches = {a: cam_cache(profile, a, prep, "train", progress=progress)
              for a, w in _distill.teacher_weights(aucs, guide).items() if w > 0}
    g = _distill.make_guide(caches, aucs, guide)
    base = classifier_dataset(profile, prep, arch, "train")
    train_ds = _distill.DistillDataset(base, g, augment=True)
    layer = _models.target_layer(model, arch, stride=profile.cam_stride)
    extra = {"variant": variant, "distill": ds_settings.to_dict(), "guide": g.weights,
             "cams": {a: c.key.get("checkpoint_sha256") for a, c in caches.items()},
             "cam_stride": profile.cam_stride}
    m, hist = _fit(profile, prep, arch, ckpt_dir, t_settings, progress, model=model, train_ds=train_ds,
                   extra=extra, step_loss=_distill.make_step_loss(layer, ds_settings))
    return m, hist, g


def student_maps(profile, model, prep: _data.Prepared, part: str = "test") -> tuple[np.ndarray, list[_data.Record]]:
    """The student's Grad-CAM maps (TB class, at its input size) on one split part."""
    ds = classifier_dataset(profile, prep, profile.student, part)
    layer = _models.target_layer(model, profile.student, stride=profile.cam_stride)
    maps = _cam.compute_cams(model, layer, ds.images, target_class=1, method="gradcam",
                             device=torch_device(profile.device))
    return maps, ds.records


# --- reporting (stage 2)

METRIC_LABELS = {"accuracy": "accuracy", "auc": "AUC", "sensitivity": "sensitivity",
                 "specificity": "specificity", "precision": "precision", "f1": "F1"}


def _undefined(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def format_ci(value, lo=None, hi=None, digits: int = 2) -> str:
    """``"0.91 [0.86, 0.95]"``: a value with its confidence interval; ``"n/a"`` for an
    undefined value, the value alone when the interval is undefined."""
    if _undefined(value):
        return "n/a"
    text = f"{value:.{digits}f}"
    if _undefined(lo) or _undefined(hi):
        return text
    return f"{text} [{lo:.{digits}f}, {hi:.{digits}f}]"


def metrics_table(results: dict, metrics: Sequence[str] = _metrics.METRICS, digits: int = 2,
                  index_name: str = "model"):
    """``{model: evaluate(...) rows}`` as a pandas DataFrame indexed by (model, data set):
    ``n (TB)`` and one column per metric, each ``"value [lo, hi]"``."""
    import pandas as pd

    records = []
    for model, rows in results.items():
        for r in rows:
            rec = {index_name: model, "dataset": r["dataset"], "n (TB)": f"{r['n']} ({r['n_pos']})"}
            rec.update({METRIC_LABELS.get(m, m): format_ci(r.get(m), r.get(f"{m}_lo"), r.get(f"{m}_hi"), digits)
                        for m in metrics})
            records.append(rec)
    return pd.DataFrame(records).set_index([index_name, "dataset"])


def cost_table(costs: dict):
    """``{model: cost(...)}`` as a pandas DataFrame with readable units."""
    import pandas as pd

    return pd.DataFrame({m: {"input (px)": c.get("size"), "parameters (M)": round(c["params"] / 1e6, 2),
                             "GFLOPs": round(c["flops"] / 1e9, 3), "weights (MB)": c["weights_mb"],
                             "CPU latency, batch 1 (ms)": c["latency_ms_b1"]}
                         for m, c in costs.items()}).T


def roc_by_dataset(parts: dict, thresholds: dict | None = None,
                   datasets: Sequence[str] | None = None) -> dict:
    """ROC curves of several models, per data set (and pooled, "all", when there are two
    or more): ``{dataset: {model: roc_points(...) + n_pos, n_neg[, point]}}``.

    ``parts``: ``{model: predictions(...)[part]}``; ``thresholds``: ``{model: threshold}``
    adds ``point`` = (false-positive rate, sensitivity) at that threshold.
    """
    names = list(datasets) if datasets else sorted({d for p in parts.values() for d in p["datasets"]})
    out = {}
    for ds in names + (["all"] if len(names) > 1 else []):
        curves = {}
        for model, p in parts.items():
            sel = np.array([d == ds or ds == "all" for d in p["datasets"]], bool)
            y, prob = np.asarray(p["labels"])[sel], np.asarray(p["probs"], float)[sel]
            if len(np.unique(y)) < 2:
                continue
            c = _metrics.roc_points(y, prob)
            c.update(n_pos=int((y == 1).sum()), n_neg=int((y == 0).sum()))
            if thresholds and model in thresholds:
                rep = _metrics.classification_report(y, prob, thresholds[model])
                c["point"] = (1 - rep["specificity"], rep["sensitivity"])
            curves[model] = c
        if curves:
            out[ds] = curves
    return out


# --- reporting (stage 3)

from dataclasses import dataclass as _dataclass  # noqa: E402


@_dataclass
class TeacherAttention:
    """The teachers' Grad-CAM maps on one split part and what measuring them needs.

    Row ``i`` of every array is ``records[i]``. Per teacher (``arch``): ``maps[arch]``
    ``(N, s, s)`` in ``[0, 1]`` at its input size ``sizes[arch]``, ``probs[arch]`` its
    P(TB), ``thresholds[arch]`` its threshold (chosen on validation), ``models[arch]``.
    Per input size ``s``: ``images[s]`` ``(N, 1, s, s)``, ``lungs[s]`` (U-Net) and
    ``lesions[s]`` (ground truth, phantoms; all False on real data) ``(N, s, s)`` bool.
    """

    part: str
    method: str
    records: list
    labels: np.ndarray
    maps: dict
    probs: dict
    thresholds: dict
    sizes: dict
    models: dict
    images: dict
    lungs: dict
    lesions: dict

    @property
    def teachers(self) -> list[str]:
        return list(self.maps)

    def predicted(self, arch: str) -> np.ndarray:
        return (self.probs[arch] >= self.thresholds[arch]).astype(int)


def teacher_attention(profile, prep: _data.Prepared, teachers: Sequence[str] | None = None,
                      part: str = "test", method: str = "gradcam", target_class: int = 1,
                      progress: bool = False) -> TeacherAttention:
    """Every teacher's maps of class ``target_class`` (TB) on ``part``, at its input size.

    Teachers missing from the artifacts are trained first. Maps are computed here (the
    test part is small; the training part's maps are the distillation cache,
    :func:`cam_cache`). Probabilities and thresholds are those of :func:`predictions`
    and :func:`evaluate` (threshold by Youden's rule on the validation split).
    """
    archs = list(teachers or profile.teachers)
    records = classifier_records(profile, prep, part)
    device = torch_device(profile.device)
    att = TeacherAttention(part=part, method=method, records=records,
                           labels=np.array([r.label for r in records], int), maps={}, probs={},
                           thresholds={}, sizes={}, models={}, images={}, lungs={}, lesions={})
    for arch in archs:
        d = teacher_dir(profile, arch)
        if not (d / "done.json").is_file():
            train_teacher(profile, arch, prep, progress=progress)
        model = load_classifier(d / "best.pt")
        size = profile.size_for(arch)
        if size not in att.images:
            att.images[size] = _data.CXRDataset(records, size=size).images
            att.lungs[size] = lung_masks(profile, records, size, "lung")
            att.lesions[size] = lung_masks(profile, records, size, "lesion")
        preds = predictions(profile, d, arch, prep, parts=("val", "test"), model=model)
        val = preds["val"]
        att.thresholds[arch] = _metrics.choose_threshold(np.array(val["labels"]), np.array(val["probs"]))
        layer = _models.target_layer(model, arch, stride=profile.cam_stride)
        maps, logits = _cam.compute_cams_and_logits(model, layer, att.images[size], target_class=target_class,
                                                    method=method, device=device)
        if part in preds:
            by_key = dict(zip(preds[part]["keys"], preds[part]["probs"]))
            att.probs[arch] = np.array([by_key[r.key] for r in records], float)
        else:
            z = torch.softmax(torch.from_numpy(logits).double(), 1)[:, 1]
            att.probs[arch] = z.numpy()
        att.maps[arch], att.sizes[arch], att.models[arch] = maps, size, model.cpu()
    return att


def road_subset(att: TeacherAttention, n: int = 16) -> np.ndarray:
    """The images ROAD is measured on: the first ``n`` TB images of the part (in the
    split's order; the TB map explains a TB image)."""
    return np.flatnonzero(att.labels == 1)[:n]


def attention_agreement(att: TeacherAttention, metric: str = "pearson") -> np.ndarray:
    """``(T, T)``: the mean over images of each pair of teachers' map agreement
    (``cam.cam_agreement``: Pearson correlation, or the IoU of the top 20 % pixels)."""
    names = att.teachers
    m = np.eye(len(names))
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            b = names[j]
            m[i, j] = m[j, i] = np.nanmean(_cam.cam_agreement(att.maps[a], att.maps[b], metric=metric))
    return m


def attention_table(att: TeacherAttention, road_images: int = 16,
                    road_percentiles: Sequence[int] = (20, 40, 60, 80), seed: int = 0,
                    chance_row: bool = True) -> list[dict]:
    """How good each teacher's attention is, one dict per teacher:

    - ``in_lung``: mean share of the map's mass inside the U-Net's lung mask
      (``cam.mass_in_mask``; all images);
    - ``pointing``: pointing-game hit rate: the share of TB images with a known lesion
      (phantoms) whose map peaks on it (``cam.pointing_game``); NaN on real data;
    - ``road``: mean ROAD score (``cam.faithfulness``, ``road_combined``: confidence
      drop when the most relevant pixels are removed, against when the least relevant
      are; higher is more faithful) on :func:`road_subset` (``road_images`` TB images);
    - ``agreement``: mean Pearson correlation with the other teachers' maps;
    - ``n_images``, ``n_lesion``, ``n_road``: how many images each figure rests on.

    With ``chance_row`` a last row, ``"chance"``, says what a map with no information
    scores: a uniform map's in-lung share (the lungs' share of the image) and a random
    pixel's chance of landing on a lesion.
    """
    names = att.teachers
    agree = attention_agreement(att) if len(names) > 1 else np.full((1, 1), np.nan)
    sub = road_subset(att, road_images)
    rows = []
    for i, arch in enumerate(names):
        s = att.sizes[arch]
        maps = att.maps[arch]
        hits = _cam.pointing_game(maps, att.lesions[s])
        road = (_cam.faithfulness(att.models[arch], None, att.images[s][torch.as_tensor(sub)], cams=maps[sub],
                                  target_class=1, metric="road_combined", percentiles=road_percentiles,
                                  seed=seed) if len(sub) else np.array([np.nan]))
        others = [agree[i, j] for j in range(len(names)) if j != i]
        rows.append({"teacher": arch, "in_lung": float(np.nanmean(_cam.mass_in_mask(maps, att.lungs[s]))),
                     "pointing": float(np.nanmean(hits)) if np.isfinite(hits).any() else float("nan"),
                     "road": float(np.nanmean(road)) if np.isfinite(road).any() else float("nan"),
                     "agreement": float(np.mean(others)) if others else float("nan"),
                     "n_images": len(maps), "n_lesion": int(np.isfinite(hits).sum()), "n_road": len(sub)})
    if chance_row and names:
        s = att.sizes[names[0]]
        lungs, les = att.lungs[s], att.lesions[s]
        has = les.reshape(len(les), -1).any(1)
        rows.append({"teacher": "chance", "in_lung": float(lungs.reshape(len(lungs), -1).mean(1).mean()),
                     "pointing": float(les[has].reshape(has.sum(), -1).mean(1).mean()) if has.any()
                     else float("nan"),
                     "road": float("nan"), "agreement": float("nan"), "n_images": len(lungs),
                     "n_lesion": int(has.sum()), "n_road": 0})
    return rows


GALLERY_GROUPS = {"TP": "true positives: TB, and most teachers say TB",
                  "FP": "false positives: normal, but most teachers say TB",
                  "FN": "false negatives: TB, but most teachers say normal"}


def gallery_picks(att: TeacherAttention, per_group: int = 2) -> dict[str, list[int]]:
    """Images for the gallery, ``{"TP" | "FP" | "FN": [index, ...]}``.

    An image's group is decided by the majority of the teachers' decisions (so that one
    row shows the same X-ray under every teacher); within a group the most confident
    images come first (highest mean P(TB) for TP and FP, lowest for FN). A group may be
    empty (e.g. no false positives on a small test split).
    """
    votes = np.mean([att.predicted(a) for a in att.teachers], axis=0)
    mean_p = np.mean([att.probs[a] for a in att.teachers], axis=0)
    says_tb = votes > 0.5
    y = att.labels
    groups = {"TP": (y == 1) & says_tb, "FP": (y == 0) & says_tb, "FN": (y == 1) & ~says_tb}
    out = {}
    for g, sel in groups.items():
        idx = np.flatnonzero(sel)
        order = np.argsort(mean_p[idx] if g == "FN" else -mean_p[idx], kind="stable")
        out[g] = idx[order][:per_group].tolist()
    return out


def gallery_rows(att: TeacherAttention, picks: dict[str, list[int]]) -> list[dict]:
    """The rows ``viz.cam_gallery`` draws for :func:`gallery_picks` (an empty group
    becomes one row saying so)."""
    first = att.sizes[att.teachers[0]]
    rows = []
    for g, idx in picks.items():
        if not idx:
            rows.append({"group": f"{g}: none on this split ({GALLERY_GROUPS.get(g, g)})"})
        for i in idx:
            panels = {a: {"image": att.images[att.sizes[a]][i, 0].numpy(), "cam": att.maps[a][i],
                          "prob": float(att.probs[a][i]),
                          "correct": bool(att.predicted(a)[i] == att.labels[i])} for a in att.teachers}
            rows.append({"group": g, "key": att.records[i].key, "image": att.images[first][i, 0].numpy(),
                         "lungs": att.lungs[first][i], "lesions": att.lesions[first][i], "panels": panels})
    return rows


def lagging_bn(model: torch.nn.Module, ds, steps: int, momentum: float = 0.01, batch_size: int = 16,
               seed: int = 0) -> torch.nn.Module:
    """A copy of ``model`` (same weights) whose BatchNorm running statistics are those an
    exponential average with ``momentum`` holds after ``steps`` training batches, started
    from PyTorch's initial values (mean 0, variance 1): what a short from-scratch run with
    torchvision's MobileNet V3 momentum (0.01) would have left, had the weights been
    these all along. For showing the lag that ``models.recalibrate_bn`` removes."""
    import copy

    from torch.utils.data import DataLoader

    lag = copy.deepcopy(model).cpu().eval()
    bns = [m for m in lag.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = momentum
        m.train()
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    done = 0
    with torch.no_grad():
        while done < steps:
            for x, _ in loader:
                lag(x.float())
                done += 1
                if done >= steps:
                    break
    return lag.eval()
