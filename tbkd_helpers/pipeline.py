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
from typing import Mapping, Sequence

import numpy as np
import torch

from . import cam as _cam
from . import data as _data
from . import distill as _distill
from . import metrics as _metrics
from . import models as _models
from . import segmentation as _seg
from . import recipes as _recipes
from . import store
from . import train as _train
from . import weights as _weights
from .config import seed_everything, torch_device


# --------------------------------------------------------------------------- stage 1

def lungs(profile, prep: _data.Prepared | None = None, progress: bool = True) -> "_seg.ExtractionResult":
    """The lung-extraction stage: the U-Net (trained once) and every record's mask and
    lung-extracted image.

    With the profile's own ``prep`` (every chapter passes it) the cached extraction is
    used only when it is current (:func:`segmentation.extraction_current`: same settings,
    data, split and U-Net); a changed setting redoes what depends on it. The extraction
    belongs to the profile's saved split: a ``prep`` with another split (a k-fold or
    cross-data-set run, see ``results``; a derived run, ``Profile.subrun``) and no ``prep``
    at all (readers of a finished stage, e.g. :func:`lung_masks`) use the complete
    extraction that is there, and read the profile's data only when there is none.
    """
    own_split = profile.base_artifacts / "splits.json"
    if prep is not None and Path(prep.split_path).absolute() != own_split.absolute():
        prep = None  # a derived split: never retrain the U-Net or re-extract for it
    cached = (store.manifest_complete(_seg.seg_dir(profile) / "manifest.json") if prep is None
              else _seg.extraction_current(profile, prep))
    if cached:
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
    out = {"size": profile.size_for(arch), "pretrained": profile.pretrained,
           "augment": _recipes.CLASSIFIER_AUGMENT.to_dict(),
           "split_sha256": store.file_sha256(prep.split_path),
           "extraction": store.settings_digest(ext.settings)}
    options = {k: v for k, v in profile.model_options(arch).items() if v != "classic"}
    if profile.pretrained:
        out["weights"] = _weights.kind_for(profile.weights, arch)
    return {**out, **options}  # default options leave the fingerprint (and old caches) as it was


def new_model(profile, arch: str, seed: int | None = None):
    """A fresh, seeded classifier ``arch`` as the profile builds it (weights, VGG head);
    ``seed`` defaults to the profile's."""
    return _models.build_model(arch, weights=profile.weights, seed=profile.seed if seed is None else seed,
                               **profile.model_options(arch))


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

def teacher_dir(profile, arch: str, seed: int | None = None) -> Path:
    """Where teacher ``arch`` lives: ``teachers/<arch>``, or ``teachers/<arch>-seed<k>`` for a
    training seed other than the profile's (:func:`teacher_seeds`)."""
    name = arch if seed is None or seed == profile.seed else f"{arch}-seed{seed}"
    return Path(profile.artifacts) / "teachers" / name


def recipe_settings(profile, recipe: "_recipes.Recipe", arch: str, epochs: int,
                    seed: int | None = None) -> _train.TrainSettings:
    """The ``train.TrainSettings`` of ``recipe`` (``recipes``: one declaration per role) at
    the profile's batch size, for ``epochs`` epochs."""
    r = recipe
    return _train.TrainSettings(epochs=epochs, batch_size=profile.batch_size, lr=r.lr_for(arch),
                                weight_decay=r.weight_decay, optimizer=r.optimizer, schedule=r.schedule,
                                class_balance=r.class_balance, patience=r.patience,
                                bn_recalibrate=r.bn_recalibrate, bn_images=r.bn_images,
                                seed=profile.seed if seed is None else seed)


def teacher_settings(profile, arch: str, epochs: int | None = None, seed: int | None = None) -> _train.TrainSettings:
    """``recipes.TEACHER`` for ``arch`` (every epoch runs; the best validation AUC is kept), for
    ``epochs`` (default: the profile's) times the recipe's multiple for ``arch``."""
    r = _recipes.TEACHER
    return recipe_settings(profile, r, arch, r.epochs_for(arch, epochs or profile.teacher_epochs), seed)


def student_settings(profile, epochs: int | None = None, seed: int | None = None) -> _train.TrainSettings:
    """``recipes.STUDENT`` for the profile's student (chapter 04, and the k-fold runs)."""
    return recipe_settings(profile, _recipes.STUDENT, profile.student, epochs or profile.student_epochs, seed)


class _RunLock:
    """One process trains a run folder at a time: ``<dir>/.training`` holds the pid of the
    process training there. Another process that wants the same run waits until the lock is
    released (the run then loads from the cache), or takes it over when its owner is dead."""

    def __init__(self, folder: Path, poll: float = 5.0):
        self.path, self.poll = Path(folder) / ".training", poll

    def __enter__(self):
        import os
        import time

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    owner = int(self.path.read_text() or 0)
                    os.kill(owner, 0)
                except (ValueError, ProcessLookupError, FileNotFoundError):
                    self.path.unlink(missing_ok=True)  # its owner is gone: take it over
                    continue
                except PermissionError:
                    pass
                time.sleep(self.poll)
                continue
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)
        return False


def _fit(profile, prep, arch: str, ckpt_dir: Path, settings: _train.TrainSettings, progress: bool,
         model: torch.nn.Module | None = None, train_ds=None, extra: dict | None = None,
         step_loss=None, seed: int | None = None, on_epoch_end=None):
    with _RunLock(ckpt_dir):
        return _fit_locked(profile, prep, arch, ckpt_dir, settings, progress, model, train_ds, extra,
                           step_loss, seed, on_epoch_end)


def _fit_locked(profile, prep, arch, ckpt_dir, settings, progress, model, train_ds, extra, step_loss, seed,
                on_epoch_end=None):
    seed_everything(profile.seed if seed is None else seed)
    model = model if model is not None else new_model(profile, arch, seed=seed)
    plain_train = classifier_dataset(profile, prep, arch, "train")
    if train_ds is None:
        train_ds = classifier_dataset(profile, prep, arch, "train", augment=True)
    val_ds = classifier_dataset(profile, prep, arch, "val")
    hist = _train.fit(model, train_ds, val_ds, settings, ckpt_dir, device=torch_device(profile.device),
                      progress=progress, calib_ds=plain_train, step_loss=step_loss, on_epoch_end=on_epoch_end,
                      extra_settings={**_fingerprint(profile, prep, arch), **(extra or {})})
    (ckpt_dir / "last.pt").unlink(missing_ok=True)  # finished: the resume state is not needed
    return model, hist


def train_teacher(profile, arch: str, prep: _data.Prepared | None = None, progress: bool = True,
                  seed: int | None = None):
    """Train (or load the finished) teacher ``arch`` on the lung-extracted training images.

    ``seed`` (default: the profile's) sets the initial weights, the batch order and the
    augmentation draws; the split stays the profile's. Returns ``(model, History)``; the
    model holds the epoch with the best validation AUC.
    """
    prep = prep or _data.prepare(profile, progress=progress)
    seed = profile.seed if seed is None else int(seed)
    return _fit(profile, prep, arch, teacher_dir(profile, arch, seed), teacher_settings(profile, arch, seed=seed),
                progress, seed=seed)


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


def guide_views(profile, prep: _data.Prepared) -> np.ndarray | None:
    """The fixed augmented views of the training images (``data.view_params``,
    ``(N, profile.guide_views, 6)``) on which the guide is cached, or None when the
    profile distils on freely augmented images (``guide_views = 0``). Drawn from the
    profile's seed, so every student of a profile sees the same views."""
    if not profile.guide_views:
        return None
    n = len(classifier_records(profile, prep, "train"))
    return _data.view_params(n, profile.guide_views, seed=profile.seed)


def view_cache(profile, arch: str, prep: _data.Prepared, progress: bool = True) -> "_cam.CamCache":
    """Teacher ``arch``'s logits and Grad-CAM maps on every fixed view of every training
    image (:func:`guide_views`; rows ``i * V + v``), cached like :func:`cam_cache`."""
    params = guide_views(profile, prep)
    if params is None:
        raise ValueError(f"profile {profile.name!r} distils without fixed views (guide_views = 0)")
    ckpt = teacher_dir(profile, arch) / "best.pt"
    if not (teacher_dir(profile, arch) / "done.json").is_file():
        train_teacher(profile, arch, prep, progress=progress)
    model = load_classifier(ckpt)
    views = _data.ViewsDataset(classifier_dataset(profile, prep, arch, "train"), params)
    key = {"checkpoint_sha256": store.file_sha256(ckpt), "size": profile.size_for(arch),
           "stride": profile.cam_stride, "views": int(params.shape[1]), "view_seed": profile.seed}
    return _cam.build_cam_cache(model, _models.target_layer(model, arch, stride=profile.cam_stride), views,
                                cam_path(profile, arch, f"train-views{params.shape[1]}"), key=key,
                                cam_size=profile.cam_size, method=profile.cam_method, target_class=1,
                                progress=progress, device=torch_device(profile.device))


def teacher_val_auc(profile, prep: _data.Prepared, teachers: Sequence[str] | None = None) -> dict[str, float]:
    """Each teacher's validation AUC (the guide is chosen on it, never on test)."""
    out = {}
    for arch in teachers or profile.teachers:
        if not (teacher_dir(profile, arch) / "done.json").is_file():
            train_teacher(profile, arch, prep, progress=False)
        out[arch] = val_auc(predictions(profile, teacher_dir(profile, arch), arch, prep))
    return out


def val_auc(preds: dict) -> float:
    """The validation AUC of a model's :func:`predictions` (the guide is chosen on it)."""
    v = preds["val"]
    return _metrics.classification_report(np.array(v["labels"]), np.array(v["probs"]))["auc"]


# --------------------------------------------------------------------------- stage 4

def student_dir(profile, variant: str, guide: str | None = None, cam_loss: str = "mse",
                seed: int | None = None) -> Path:
    """Where a student's run lives: ``students/<variant>[-<guide>[-<loss>]][-seed<k>]``
    (``guide`` as given, default the profile's rule, e.g. ``kd+cam-lungs``; no seed suffix
    for the profile's own seed)."""
    guide = guide_rule(profile, guide)
    name = variant if variant == "ce" else f"{variant}-{guide}" + ("" if cam_loss == "mse" or "cam" not in variant
                                                                     else f"-{cam_loss}")
    if seed is not None and seed != profile.seed:
        name += f"-seed{seed}"
    return Path(profile.artifacts) / "students" / name


def distill_settings(profile, variant: str, cam_loss: str = "mse") -> _distill.DistillSettings:
    return _distill.variant_settings(variant, alpha=profile.kd_alpha, beta=profile.cam_beta,
                                     temperature=profile.kd_temperature, cam_loss=cam_loss,
                                     cam_order=profile.cam_order)


def distill_code_digest() -> str:
    """A digest of the code a student's loss is made of (the distillation terms, the
    training step, the differentiable Grad-CAM, the distillation data set). It is part of
    every student's training fingerprint: edit the loss and the student retrains."""
    import inspect

    parts = [_distill.kd_loss, _distill.cam_term, _distill.make_step_loss, _distill.DistillDataset,
             _distill.variant_settings, _cam.differentiable_gradcam, _data.apply_view]
    return store.settings_digest({"source": [inspect.getsource(f) for f in parts]})


def guide_rule(profile, guide: str | None = None) -> str:
    """``guide`` as asked for, or the profile's rule (``profile.guide``) when None."""
    return profile.guide if guide is None else guide


def guide_mode(profile, prep: _data.Prepared, guide: str | None = None, att: dict[str, float] | None = None) -> str:
    """The guide a student follows, in the terms of ``distill.make_guide``: ``guide``
    (default: the profile's rule, ``profile.guide``), with ``"lungs"`` resolved to the teacher
    whose validation maps lie most inside the lungs (:func:`lungs_guide`; ``att``, the teachers'
    validation in-lung shares when the caller has them), in each half of a split guide
    (``"lungs,best"``: maps of the in-lung teacher, logits of the best-AUC one)."""
    halves = _distill.split_guide(guide_rule(profile, guide))
    resolved = [lungs_guide(profile, prep, att) if h == LUNGS_GUIDE else h for h in halves]
    return resolved[0] if resolved[0] == resolved[1] else _distill.GUIDE_SEP.join(resolved)


def guide_caches(profile, prep: _data.Prepared, guide: str | None = None, progress: bool = True):
    """What a distilled student learns from, built (cached) if missing: ``(aucs, mode, views,
    caches)``: the teachers' validation AUCs, :func:`guide_mode`'s resolved guide, the fixed
    views (:func:`guide_views`, or None) and the guiding teachers' caches of the training images."""
    aucs = teacher_val_auc(profile, prep)
    mode = guide_mode(profile, prep, guide)
    views = guide_views(profile, prep)
    build = (lambda a: view_cache(profile, a, prep, progress=progress)) if views is not None else \
        (lambda a: cam_cache(profile, a, prep, "train", progress=progress))
    return aucs, mode, views, {a: build(a) for a in _distill.guide_teachers(aucs, mode)}


#: a student run's cost relative to a ce run (a kd+cam step at stride 16 costs about 1.9 ce
#: steps, benchmarks/bench_student.py): :func:`train_students` starts the longest first
STUDENT_COST = {"ce": 1.0, "kd": 1.0, "cam": 1.9, "kd+cam": 1.9}


def _run_label(variant: str, guide: str | None, cam_loss: str, seed: int) -> str:
    return " ".join([variant, *([guide] if guide else []), *([cam_loss] if cam_loss != "mse" else []), f"seed {seed}"])


def train_students(profile, prep: _data.Prepared, runs: Sequence[dict], progress: bool = True) -> list[tuple]:
    """Train (or load) several students side by side (``parallel.run``: on a CPU, one process
    of one thread per core), then load each one here. ``runs``: :func:`train_student`'s
    keyword arguments, one dict per student (``variant``, and optionally ``guide``,
    ``cam_loss``, ``seed``, ``ckpt_dir``, and ``profile``: a variant of ``profile`` for that
    run, as the settings study trains). The guides' caches are built first, here, so that no two
    processes build the same one. Returns ``[(model, History, Guide or None)]`` in the
    order of ``runs``; a second call loads them all."""
    from . import parallel as _parallel

    jobs, profiles = [], []
    for r in runs:
        p = r.get("profile", profile)
        profiles.append(p)
        seed = p.seed if r.get("seed") is None else int(r["seed"])
        guide, loss = r.get("guide"), r.get("cam_loss", "mse")
        kwargs = {k: v for k, v in r.items() if k not in ("variant", "profile")}
        run_dir = Path(r["ckpt_dir"]) if r.get("ckpt_dir") else student_dir(p, r["variant"], guide, loss, seed)
        jobs.append(_parallel.Job(_run_label(r["variant"], guide, loss, seed), train_student,
                                  (p, r["variant"], prep), {**kwargs, "progress": False}, run_dir=run_dir,
                                  cost=STUDENT_COST.get(r["variant"], 1.0) * p.student_epochs / profile.student_epochs,
                                  epochs=p.student_epochs))
    built = set()
    for p, r, j in zip(profiles, runs, jobs):
        key = (repr(p), r.get("guide"))
        if r["variant"] != "ce" and not j.done and key not in built:
            built.add(key)
            guide_caches(p, prep, r.get("guide"), progress)
    _parallel.run(profile, jobs, progress=progress, desc="students")  # starts only the runs not done
    return [train_student(p, prep=prep, progress=progress, **{k: v for k, v in r.items() if k != "profile"})
            for p, r in zip(profiles, runs)]


def train_student(profile, variant: str = "kd+cam", prep: _data.Prepared | None = None,
                  guide: str | None = None, cam_loss: str = "mse", progress: bool = True, seed: int | None = None,
                  ckpt_dir: Path | None = None, on_epoch_end=None):
    """Train (or load) a student: "ce", "kd", "cam" or "kd+cam" (see ``distill``).

    The guiding teacher maps and logits are read from the stage-3 caches of the training
    images (built first if missing); no teacher runs while the student trains. With
    ``profile.guide_views``, they are those of fixed augmented views, the very images the
    student trains on (:func:`view_cache`). ``seed`` (default: the profile's) sets the
    student's initial weights, shuffling and view draws; the teachers stay the same.
    ``ckpt_dir`` (default :func:`student_dir`) holds a run trained with other loss weights
    than the profile's (``scripts/tune_student.py``). ``guide``: :func:`guide_mode`'s
    (default: the profile's rule).
    ``on_epoch_end``: ``train.fit``'s (progress of runs side by side, ``parallel``).
    Returns ``(model, History, Guide or None)``.
    """
    prep = prep or _data.prepare(profile, progress=progress)
    seed = profile.seed if seed is None else seed
    arch = profile.student
    ds_settings = distill_settings(profile, variant, cam_loss)
    t_settings = student_settings(profile, seed=seed)
    ckpt_dir = Path(ckpt_dir) if ckpt_dir else student_dir(profile, variant, guide, cam_loss, seed)
    model = new_model(profile, arch, seed=seed)
    code = {"code_sha256": distill_code_digest()}
    if variant == "ce":
        m, hist = _fit(profile, prep, arch, ckpt_dir, t_settings, progress, model=model,
                       extra={"variant": variant, **code}, seed=seed, on_epoch_end=on_epoch_end)
        return m, hist, None
    aucs, mode, views, caches = guide_caches(profile, prep, guide, progress)
    g = _distill.make_guide(caches, aucs, mode)
    base = classifier_dataset(profile, prep, arch, "train")
    train_ds = _distill.DistillDataset(base, g, augment=True, views=views)
    layer = _models.target_layer(model, arch, stride=profile.cam_stride)
    extra = {"variant": variant, "distill": ds_settings.to_dict(), "guide": g.weights,
             **({"guide_logits": g.logit_weights} if g.logit_weights is not None else {}),
             "cams": {a: c.key.get("checkpoint_sha256") for a, c in caches.items()},
             "cam_stride": profile.cam_stride, **code}
    if views is not None:
        extra["guide_views"] = int(views.shape[1])
    m, hist = _fit(profile, prep, arch, ckpt_dir, t_settings, progress, model=model, train_ds=train_ds,
                   extra=extra, step_loss=_distill.make_step_loss(layer, ds_settings), seed=seed,
                   on_epoch_end=on_epoch_end)
    return m, hist, g


def student_maps(profile, model, prep: _data.Prepared, part: str = "test") -> tuple[np.ndarray, list[_data.Record]]:
    """The student's Grad-CAM maps (TB class, at its input size) on one split part."""
    ds = classifier_dataset(profile, prep, profile.student, part)
    layer = _models.target_layer(model, profile.student, stride=profile.cam_stride)
    maps = _cam.compute_cams(model, layer, ds.images, target_class=1, method="gradcam",
                             device=torch_device(profile.device))
    return maps, ds.records


# --- reporting (stage 2)


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
                      loaded: dict | None = None, progress: bool = False) -> TeacherAttention:
    """Every teacher's maps of class ``target_class`` (TB) on ``part``, at its input size.

    Teachers missing from the artifacts are trained first. Maps are computed here (the
    test part is small; the training part's maps are the distillation cache,
    :func:`cam_cache`). Probabilities and thresholds are those of :func:`predictions`
    and :func:`evaluate` (threshold by Youden's rule on the validation split).
    ``loaded``: ``{arch: model}`` already in memory, used instead of the checkpoint.
    """
    archs = list(teachers or profile.teachers)
    records = classifier_records(profile, prep, part)
    device = torch_device(profile.device)
    att = TeacherAttention(part=part, method=method, records=records,
                           labels=np.array([r.label for r in records], int), maps={}, probs={},
                           thresholds={}, sizes={}, models={}, images={}, lungs={}, lesions={})
    for arch in archs:
        d = teacher_dir(profile, arch)
        model = (loaded or {}).get(arch)
        if model is None:
            if not (d / "done.json").is_file():
                train_teacher(profile, arch, prep, progress=progress)
            model = load_classifier(d / "best.pt")
        model.eval()
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


def cam_layers(profile, models: dict) -> list[dict]:
    """Where Grad-CAM looks in each model: ``{model: nn.Module}`` (keys: architectures)
    → one dict per model with its input size and, for the layers at stride 8 (``quick``), 16
    (``real``) and 32 (the classic last feature map), the layer's name and map size."""
    rows = []
    for arch, model in models.items():
        size = profile.size_for(arch)
        names = {id(m): n for n, m in model.named_modules()}
        row = {"teacher": arch, "input": f"{size}×{size}"}
        for stride in (8, 16, 32):
            layer = _models.target_layer(model, arch, stride=stride)
            shapes = []
            handle = layer.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[-2:])))
            try:
                with torch.no_grad(), _cam._eval_mode(model):
                    model(torch.zeros(1, 1, size, size, device=next(model.parameters()).device))
            finally:
                handle.remove()
            name = names.get(id(layer), "?").removeprefix("net.")
            row[f"layer (stride {stride})"] = name
            row[f"map (stride {stride})"] = "×".join(map(str, shapes[-1]))
        rows.append(row)
    return rows


def road_subset(att: TeacherAttention, n: int = 16) -> np.ndarray:
    """The images ROAD is measured on: the first ``n`` TB images of the part (in the
    split's order; the TB map explains a TB image)."""
    return np.flatnonzero(att.labels == 1)[:n]


def _nanmean(values) -> float:
    """The mean of the finite values; NaN (without a warning) when there are none."""
    v = np.asarray(values, dtype=float).reshape(-1)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else float("nan")


def attention_agreement(att: TeacherAttention, metric: str = "pearson") -> np.ndarray:
    """``(T, T)``: the mean over images of each pair of teachers' map agreement
    (``cam.cam_agreement``: Pearson correlation, or the IoU of the top 20 % pixels).
    Images where a map is constant (e.g. empty) are left out; a pair with no image left
    is NaN."""
    names = att.teachers
    m = np.eye(len(names))
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            b = names[j]
            m[i, j] = m[j, i] = _nanmean(_cam.cam_agreement(att.maps[a], att.maps[b], metric=metric))
    return m


#: the columns of :func:`attention_table` as a report names them
ATTENTION_COLUMNS = {"in_lung": "in-lung share", "pointing": "pointing game", "road": "ROAD",
                     "agreement": "agreement", "n_images": "n images", "n_empty": "n empty maps",
                     "n_lesion": "n lesion", "n_road": "n ROAD"}


def attention_table(att: TeacherAttention, road_images: int = 16,
                    road_percentiles: Sequence[int] = (20, 50, 80), seed: int = 0,
                    chance_row: bool = True) -> list[dict]:
    """How good each teacher's attention is, one dict per teacher:

    - ``in_lung``: mean share of the map's mass inside the U-Net's lung mask
      (``cam.mass_in_mask``; over the images whose map is not empty);
    - ``pointing``: pointing-game hit rate: the share of TB images with a known lesion
      (phantoms) whose map peaks on it (``cam.pointing_game``; an empty map misses);
      NaN on real data;
    - ``road``: mean ROAD score (``cam.faithfulness``, ``road_combined``: confidence
      drop when the most relevant pixels are removed, against when the least relevant
      are; higher is more faithful) on :func:`road_subset` (``road_images`` TB images);
    - ``agreement``: mean Pearson correlation with the other teachers' maps;
    - ``n_images``, ``n_empty`` (maps with no positive value: nothing in the image
      argues for TB, e.g. a model whose output does not depend on its input),
      ``n_lesion``, ``n_road``: how many images each figure rests on.

    An average over no image is NaN. With ``chance_row`` a last row, ``"chance"``, says
    what a map with no information scores: a uniform map's in-lung share (the lungs'
    share of the image) and a random pixel's chance of landing on a lesion.
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
        rows.append({"teacher": arch, "in_lung": _nanmean(_cam.mass_in_mask(maps, att.lungs[s])),
                     "pointing": _nanmean(hits), "road": _nanmean(road), "agreement": _nanmean(others),
                     "n_images": len(maps), "n_empty": int((maps.reshape(len(maps), -1).max(1) <= 0).sum()),
                     "n_lesion": int(np.isfinite(hits).sum()), "n_road": len(sub)})
    if chance_row and names:
        s = att.sizes[names[0]]
        lungs, les = att.lungs[s], att.lesions[s]
        has = les.reshape(len(les), -1).any(1)
        rows.append({"teacher": "chance", "in_lung": _nanmean(lungs.reshape(len(lungs), -1).mean(1)),
                     "pointing": _nanmean(les[has].reshape(int(has.sum()), -1).mean(1)) if has.any()
                     else float("nan"),  # real data: no lesion masks
                     "road": float("nan"), "agreement": float("nan"), "n_images": len(lungs), "n_empty": 0,
                     "n_lesion": int(has.sum()), "n_road": 0})
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


def bn_subset_study(profile, prep: _data.Prepared, model_dirs: Sequence[Path], images: int,
                    draws: int = 3) -> list[dict]:
    """What recalibrating BatchNorm from ``images`` training images, not all of them, changes.

    For each finished classifier in ``model_dirs`` (a folder with ``best.pt``), its
    statistics are recomputed once from every training image and once per draw from
    ``images`` of them (the subset ``train.calibration_subset`` takes, with seeds
    ``0 .. draws-1``), and the validation AUC and accuracy (argmax) are measured after each.
    The weights are the checkpoint's throughout; the test split is not read. One row per
    model: the full-set figures, each draw's difference from them, and both passes' seconds.
    """
    import time

    from torch.utils.data import DataLoader

    device = torch_device(profile.device)
    rows = []
    for d in model_dirs:
        model = load_classifier(Path(d) / "best.pt").to(device)
        arch = model.arch
        train_ds = classifier_dataset(profile, prep, arch, "train")
        val_loader = DataLoader(classifier_dataset(profile, prep, arch, "val"), batch_size=64)

        def measure(ds):
            t0 = time.perf_counter()
            _models.recalibrate_bn(model, DataLoader(ds, batch_size=64), device)
            seconds = time.perf_counter() - t0
            ev = _train.validate(model, val_loader, device, amp=False)
            return ev["auc"], ev["acc"], seconds

        auc, acc, sec = measure(train_ds)
        subsets = [measure(_train.calibration_subset(train_ds, _train.TrainSettings(seed=s, bn_images=images)))
                   for s in range(draws)]
        rows.append({"model": f"{Path(d).parent.name}/{Path(d).name}", "arch": arch, "n_train": len(train_ds),
                     "images": min(images, len(train_ds)), "val_auc": _num(auc), "val_acc": _num(acc),
                     "d_auc": [_num(a - auc) for a, _, _ in subsets],
                     "d_acc": [_num(c - acc) for _, c, _ in subsets],
                     "seconds_all": round(sec, 2), "seconds_subset": round(float(np.mean([t for *_, t in subsets])), 2)})
    return rows


# --- reporting (stage 4)

ABLATION_METRICS = ("accuracy", "auc", "sensitivity", "specificity", "f1")


def guide_for_part(profile, prep: _data.Prepared, guide: str | None = None, part: str = "test",
                   progress: bool = False) -> _distill.Guide:
    """The guide of :func:`train_student` (``distill.make_guide`` for :func:`guide_mode`'s
    guide: one teacher's maps and logits, or the validation-weighted fusion) on any split part, from the stage-3
    caches (built, and teachers trained, when missing). On ``"test"`` it is what the
    students' maps are compared with; the students never see it while training."""
    for arch in profile.teachers:
        if not (teacher_dir(profile, arch) / "done.json").is_file():
            train_teacher(profile, arch, prep, progress=progress)
    aucs = teacher_val_auc(profile, prep)
    mode = guide_mode(profile, prep, guide)
    caches = {a: cam_cache(profile, a, prep, part, progress=progress) for a in _distill.guide_teachers(aucs, mode)}
    return _distill.make_guide(caches, aucs, mode)


def _num(v, ndigits: int = 4):
    v = float(v)
    return None if not np.isfinite(v) else round(v, ndigits)


def mean_ci(values, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: the mean of ``values`` (NaNs left out) and its percentile
    bootstrap ``1 - alpha`` interval (images resampled with replacement). NaN bounds
    with fewer than two values or ``n_boot=0``; all NaN when no value is finite."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan"), float("nan"), float("nan")
    mean = float(v.mean())
    if n_boot <= 0 or len(v) < 2:
        return mean, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return mean, float(lo), float(hi)


def attention_by_dataset(maps, lungs, guide_maps, datasets: Sequence[str], n_boot: int = 1000,
                         seed: int = 0) -> list[dict]:
    """Where a student looks, per data set and pooled (``"all"``, last), like
    :func:`evaluate`'s rows: ``n``; ``in_lung``, the mean share of the map's mass inside
    the U-Net lung mask (``cam.mass_in_mask``); ``agreement``, the mean per-image Pearson
    correlation with the guide's map of the same image (``distill.guide_agreement``, at
    the student's map size); each with ``_lo`` / ``_hi`` bootstrap bounds
    (:func:`mean_ci`). Maps, masks and guide maps are ``(N, ., .)`` in the same order as
    ``datasets``; numbers are rounded to 4 decimals (undefined: ``None``)."""
    ds = np.asarray([str(d) for d in datasets])
    in_lung = _cam.mass_in_mask(maps, lungs)
    agree = _distill.guide_agreement(np.ascontiguousarray(maps, np.float32),
                                     np.ascontiguousarray(guide_maps, np.float32))
    if not len(ds) == len(in_lung) == len(agree):
        raise ValueError(f"{len(in_lung)} maps, {len(agree)} guide maps but {len(ds)} data set names")
    rows = []
    for name in sorted(set(ds)) + ["all"]:
        sel = np.ones(len(ds), bool) if name == "all" else ds == name
        row = {"dataset": name, "n": int(sel.sum())}
        for key, vals in (("in_lung", in_lung), ("agreement", agree)):
            m, lo, hi = mean_ci(vals[sel], n_boot=n_boot, seed=seed)
            row.update({key: _num(m), f"{key}_lo": _num(lo), f"{key}_hi": _num(hi)})
        rows.append(row)
    return rows


#: what :func:`attention_figures` measures, as a report names it
ATTENTION_FIGURES = {"in_lung": "in-lung share", "pointing": "pointing game", "lesion_share": "lesion share",
                     "agreement": "agreement with guide"}


def attention_figures(maps, lungs, lesions, guide_maps=None, n_boot: int = 1000, seed: int = 0) -> dict:
    """Where a model looks on a split part, against the truth where it is known:

    - ``in_lung``: share of the map's mass inside the U-Net's lung mask (all images);
    - ``pointing``: share of the images with a known lesion (phantoms) whose map peaks on
      it (``cam.pointing_game``); ``lesion_share``: share of their maps' mass on lesions;
    - ``agreement``: Pearson correlation with the guide's map of the same image.

    Each is ``{"mean", "lo", "hi", "n"}`` (bootstrap over images, :func:`mean_ci`);
    undefined (no lesion masks on real data, no guide) gives ``None`` values. Maps
    ``(N, h, w)`` in [0, 1], masks ``(N, s, s)`` bool, in the same order.
    """
    maps = np.ascontiguousarray(maps, np.float32)
    has = lesions.reshape(len(lesions), -1).any(1)
    values = {"in_lung": _cam.mass_in_mask(maps, lungs),
              "pointing": _cam.pointing_game(maps[has], lesions[has]) if has.any() else np.array([]),
              "lesion_share": _cam.mass_in_mask(maps[has], lesions[has]) if has.any() else np.array([]),
              "agreement": (_distill.guide_agreement(maps, np.ascontiguousarray(guide_maps, np.float32))
                            if guide_maps is not None else np.array([]))}
    out = {}
    for key, v in values.items():
        m, lo, hi = mean_ci(v, n_boot=n_boot, seed=seed)
        out[key] = {"mean": _num(m), "lo": _num(lo), "hi": _num(hi), "n": int(np.isfinite(v).sum())}
    return out


def attention_chance(lungs, lesions) -> dict:
    """What a map that carries no information scores in :func:`attention_figures`: a
    uniform map puts the lungs' area share in the lungs and the lesions' area share on
    lesions; a peak at a random pixel lands on a lesion with that same probability."""
    area = lambda m: m.reshape(len(m), -1).mean(1)  # noqa: E731
    has = lesions.reshape(len(lesions), -1).any(1)
    les = _num(area(lesions[has]).mean()) if has.any() else None
    return {"in_lung": _num(area(lungs).mean()), "pointing": les, "lesion_share": les, "agreement": 0.0}


def attention_report(profile, prep: _data.Prepared, models: dict, guide: str | None = None, part: str = "test",
                     n_boot: int = 1000) -> dict:
    """:func:`attention_figures` of every model on ``part``: ``models`` is ``{name: (model,
    arch)}``. Returns ``{"guide", "part", "n_images", "chance", "models": {name: figures}}``;
    agreement is with ``guide``'s maps (:func:`guide_for_part`), resized to each model's, and
    ``"guide"`` names whose maps those are."""
    records = classifier_records(profile, prep, part)
    g = guide_for_part(profile, prep, guide, part)
    device = torch_device(profile.device)
    masks, out = {}, {}
    for name, (model, arch) in models.items():
        size = profile.size_for(arch)
        if size not in masks:
            masks[size] = (_data.CXRDataset(records, size=size).images, lung_masks(profile, records, size, "lung"),
                           lung_masks(profile, records, size, "lesion"))
        images, lungs, lesions = masks[size]
        layer = _models.target_layer(model, arch, stride=profile.cam_stride)
        maps = _cam.compute_cams(model.eval(), layer, images, target_class=1, method="gradcam", device=device)
        out[name] = attention_figures(maps, lungs, lesions, g.cams, n_boot=n_boot, seed=profile.seed)
    size = profile.size_for(profile.student)
    if size not in masks:
        masks[size] = (None, lung_masks(profile, records, size, "lung"), lung_masks(profile, records, size, "lesion"))
    return {"guide": g.maps_source, "part": part, "n_images": len(records),
            "chance": attention_chance(masks[size][1], masks[size][2]), "models": out}


def guide_predictions(profile, prep: _data.Prepared, guide: str | None = None,
                      parts: Sequence[str] = ("val", "test")) -> dict:
    """The guide's P(TB) on ``parts``, in :func:`predictions`' format (so that
    :func:`evaluate` scores it like any model): the softmax of its cached logits, i.e.
    the best teacher's own probabilities, or those of the fused logits."""
    out = {}
    for part in parts:
        g = guide_for_part(profile, prep, guide, part)
        recs = classifier_records(profile, prep, part)
        if g.ids and g.ids != [r.key for r in recs]:
            raise ValueError(f"the {part!r} guide's images are not the {part!r} split's; rebuild the CAM caches")
        p = torch.softmax(torch.from_numpy(np.asarray(g.logits, np.float64)), 1)[:, 1].numpy()
        out[part] = {"keys": [r.key for r in recs], "datasets": [r.dataset for r in recs],
                     "labels": [int(r.label) for r in recs], "probs": [round(float(v), 6) for v in p]}
    return out


def _score(preds: dict, maps, guide: _distill.Guide, records, profile, rule: str, n_boot: int) -> dict:
    if guide.ids and guide.ids != [r.key for r in records]:
        raise ValueError("the guide's test images are not the test split's; rebuild the CAM caches")
    rows = evaluate(preds, rule=rule, n_boot=n_boot, seed=profile.seed)
    lungs = lung_masks(profile, records, profile.size_for(profile.student), "lung")
    att = attention_by_dataset(maps, lungs, guide.cams, [r.dataset for r in records], n_boot=n_boot,
                               seed=profile.seed)
    by_key = dict(zip(preds["test"]["keys"], preds["test"]["probs"]))
    return {"test": rows, "attention": att, "maps": maps, "guide": guide.source,
            "probs": np.array([by_key[r.key] for r in records], float), "threshold": rows[0]["threshold"]}


def score_student(profile, prep: _data.Prepared, model, variant: str, guide: str | None = None,
                  cam_loss: str = "mse", rule: str = "youden", n_boot: int = 1000) -> dict:
    """What the ablation reports of one trained student (:func:`train_student`'s
    ``variant``, ``guide``, ``cam_loss``), on the test split:

    ``test``: :func:`evaluate`'s rows (threshold chosen on validation by ``rule``);
    ``attention``: :func:`attention_by_dataset` against the test maps of ``guide`` (for
    "ce", which had no guide, the guide it is compared with); ``maps``: its Grad-CAM
    maps of the TB class ``(N, s, s)``; ``probs``: its P(TB) and ``threshold``, in the
    test split's order; ``guide``: the guide's name.
    """
    preds = predictions(profile, student_dir(profile, variant, guide, cam_loss), profile.student, prep,
                        model=model)
    maps, records = student_maps(profile, model, prep, "test")
    return _score(preds, maps, guide_for_part(profile, prep, guide, "test"), records, profile, rule, n_boot)


def score_guide(profile, prep: _data.Prepared, guide: str | None = None, rule: str = "youden",
                n_boot: int = 1000) -> dict:
    """:func:`score_student`'s dict for the guide itself (its cached test maps and the
    softmax of its cached logits, :func:`guide_predictions`): the row the students are
    measured against. Its agreement with itself is 1 by definition."""
    g = guide_for_part(profile, prep, guide, "test")
    return _score(guide_predictions(profile, prep, guide), g.cams, g, classifier_records(profile, prep, "test"),
                  profile, rule, n_boot)


def ablation_entry(score: dict, history=None, **run) -> dict:
    """The JSON-ready part of a :func:`score_student` / :func:`score_guide` dict (test
    rows, attention rows, the guide's name), with ``run`` (e.g. ``variant``,
    ``guide_mode``, ``cam_loss``) and, for a trained student's ``history``, its kept
    epoch, epochs run and validation AUC."""
    out = {"test": score["test"], "attention": score["attention"], "guide": score["guide"], **run}
    if history is not None:
        h = history.to_dict() if hasattr(history, "to_dict") else dict(history)
        out.update(best_epoch=h.get("best_epoch"), epochs_run=len(h.get("epoch", [])),
                   val_auc=(h.get("final") or {}).get("val_auc"))
    return out


# --------------------------------------------------------------------------- stage 4, over seeds

#: the figures :func:`student_seeds` follows over seeds, per data set (test split)
SEED_METRICS = ("accuracy", "auc", "sensitivity", "specificity")
SEED_ATTENTION = ("in_lung", "pointing", "lesion_share", "agreement")


def seed_list(profile, n: int) -> list[int]:
    """The ``n`` student seeds of a comparison: the profile's own, then the next ones."""
    return [profile.seed + i for i in range(int(n))]


def student_seeds(profile, prep: _data.Prepared, seeds: Sequence[int], variants: Sequence[str] = _distill.VARIANTS,
                  guide: str | None = None, cam_loss: str = "mse", reference: str = "ce", rule: str = "youden",
                  progress: bool = False) -> dict:
    """Every student variant trained once per seed, on the same split with the same
    teachers (trained once: retraining five teachers per seed or fold costs too much), and
    measured on the test split like the ablation (threshold from validation).

    What changes from seed to seed: the student's initial weights, the order of the
    batches, the draws of augmentation or views; the same seed gives every variant the
    same ones, so the variants are *paired* by seed. Returns ``{"seeds", "variants",
    "reference", "guide", "runs": {variant: [{seed, best_epoch, val_auc, test: {dataset:
    {metric}}, attention: {figure}}]}, "summary": {variant: {dataset: {metric: mean_sd}}},
    "attention": {variant: {figure: mean_sd}}, "paired": {variant: {dataset: {metric:
    paired_difference against reference}}, "attention": {...}}}``.
    """
    seeds = [int(s) for s in seeds]
    g_test = guide_for_part(profile, prep, guide, "test")
    records = classifier_records(profile, prep, "test")
    size = profile.size_for(profile.student)
    lungs, lesions = lung_masks(profile, records, size, "lung"), lung_masks(profile, records, size, "lesion")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    todo = [{"variant": v, "guide": guide, "cam_loss": cam_loss, "seed": seed} for seed in seeds for v in variants]
    trained = iter(train_students(profile, prep, todo, progress=progress))
    for seed in seeds:
        for v in variants:
            model, hist, _ = next(trained)
            preds = predictions(profile, student_dir(profile, v, guide, cam_loss, seed), profile.student, prep,
                                model=model)
            rows = evaluate(preds, rule=rule, n_boot=0, seed=profile.seed)
            maps, _ = student_maps(profile, model, prep, "test")
            att = attention_figures(maps, lungs, lesions, g_test.cams, n_boot=0)
            runs[v].append({"seed": seed, "best_epoch": hist.best_epoch,
                            "val_auc": _num((hist.final or {}).get("val_auc", float("nan"))),
                            "test": {r["dataset"]: {m: r[m] for m in SEED_METRICS} for r in rows},
                            "attention": {k: att[k]["mean"] for k in SEED_ATTENTION}})
    return {"seeds": seeds, "variants": list(variants), "reference": reference, "guide": g_test.source,
            "guide_mode": guide_rule(profile, guide), "cam_loss": cam_loss, "guide_views": profile.guide_views,
            "teachers": "trained once, on the fixed split, with the profile's seed",
            "runs": runs, **summarize_variant_runs(runs, reference)}


def summarize_variant_runs(runs: Mapping[str, Sequence[dict]], reference: str = "ce") -> dict:
    """Students' runs (:func:`student_seeds`' rows, ``runs[variant][i]``, the ``i``-th run of
    every variant paired: the same seed, or the same fold) summed up: ``{"summary":
    {variant: {dataset: {metric: mean_sd}}}, "attention": {variant: {figure: mean_sd}},
    "paired": {variant: {"test": {dataset: {metric: paired_difference against
    reference}}, "attention": {...}}}}``."""
    variants = list(runs)
    datasets = list(runs[variants[0]][0]["test"])
    summary = {v: {ds: {m: _metrics.mean_sd([r["test"][ds][m] for r in runs[v]]) for m in SEED_METRICS}
                   for ds in datasets} for v in variants}
    attention = {v: {k: _metrics.mean_sd([r["attention"][k] for r in runs[v]]) for k in SEED_ATTENTION}
                 for v in variants}
    paired = {}
    if reference in runs:
        ref = runs[reference]
        for v in variants:
            if v == reference:
                continue
            paired[v] = {"test": {ds: {m: _metrics.paired_difference([r["test"][ds][m] for r in runs[v]],
                                                                     [r["test"][ds][m] for r in ref])
                                       for m in SEED_METRICS} for ds in datasets},
                         "attention": {k: _metrics.paired_difference([r["attention"][k] for r in runs[v]],
                                                                     [r["attention"][k] for r in ref])
                                       for k in SEED_ATTENTION}}
    return {"summary": summary, "attention": attention, "paired": paired}


def teacher_seed_row(entry: Mapping, seed: int) -> dict:
    """A teacher's entry in the ``teachers.json`` that chapter 02 writes, as a row of
    :func:`teacher_seeds`: the same figures, without retraining it."""
    return {"seed": int(seed), "best_epoch": entry["best_epoch"], "epochs": entry.get("epochs_run"),
            "val_auc": _num(entry["val_auc"]), "seconds": None,
            "test": {r["dataset"]: {m: r[m] for m in SEED_METRICS} for r in entry["test"]}}


def teacher_seeds(profile, prep: _data.Prepared, seeds: Sequence[int], teachers: Sequence[str] | None = None,
                  rule: str = "youden", progress: bool = False, on_run=None, on_seed=None,
                  known: Mapping[str, Mapping[int, dict]] | None = None) -> dict:
    """Every teacher trained once per training seed, on the profile's fixed split, and
    measured on the test split as chapter 02 measures it (threshold from validation).

    The profile's own seed is chapter 02's teacher (``teachers/<arch>``); another seed ``k``
    trains in ``teachers/<arch>-seed<k>`` (initial weights, batch order, augmentation). Each
    seed's best teacher on validation is the one ``guide = "best"`` would pick. The
    ``reference`` is the teacher chosen with the profile's own seed (chapter 02's and 04's
    guide); every other teacher is compared with it, paired by seed. ``on_run(row)`` is
    called after each teacher, ``on_seed(result)`` after each seed with the result over the
    seeds done so far (a stopped run can keep them). ``known`` (``{arch: {seed: row}}``, e.g. :func:`teacher_seed_row`
    of a finished run's ``teachers.json``) gives rows that are taken as they are instead of
    training those teachers. Returns ``{"seeds", "teachers", "reference", "runs": {arch:
    [{seed, best_epoch, val_auc, test: {dataset: {metric}}}]}, "summary": {arch: {dataset:
    {metric: mean_sd}}}, "best_on_validation": {seed: arch}, "paired": {arch: {dataset:
    {metric: paired_difference against reference}}}}``.
    """
    seeds, teachers = [int(s) for s in seeds], list(teachers or profile.teachers)
    runs: dict[str, list[dict]] = {a: [] for a in teachers}
    for seed in seeds:
        for arch in teachers:
            row = ((known or {}).get(arch) or {}).get(seed)
            if row is None:
                model, hist = train_teacher(profile, arch, prep, progress=progress, seed=seed)
                preds = predictions(profile, teacher_dir(profile, arch, seed), arch, prep, model=model)
                rows = evaluate(preds, rule=rule, n_boot=0, seed=profile.seed)
                row = {"seed": seed, "best_epoch": hist.best_epoch, "epochs": len(hist.seconds),
                       "val_auc": _num(val_auc(preds)), "seconds": round(float(sum(hist.seconds)), 1),
                       "test": {r["dataset"]: {m: r[m] for m in SEED_METRICS} for r in rows}}
            runs[arch].append(row)
            if on_run:
                on_run({"teacher": arch, **row})
        if on_seed:
            on_seed(_teacher_seeds_summary(profile, seeds[:len(runs[teachers[0]])], teachers, runs, rule))
    return _teacher_seeds_summary(profile, seeds, teachers, runs, rule)


def _teacher_seeds_summary(profile, seeds: list[int], teachers: list[str], runs: dict, rule: str) -> dict:
    """:func:`teacher_seeds`' result from its ``runs`` (one row per seed and teacher)."""
    best = {s: max(teachers, key=lambda a: runs[a][i]["val_auc"]) for i, s in enumerate(seeds)}
    reference = best[seeds[0]]
    datasets = list(runs[teachers[0]][0]["test"])
    summary = {a: {ds: {m: _metrics.mean_sd([r["test"][ds][m] for r in runs[a]]) for m in SEED_METRICS}
                   for ds in datasets} for a in teachers}
    paired = {a: {ds: {m: _metrics.paired_difference([r["test"][ds][m] for r in runs[a]],
                                                     [r["test"][ds][m] for r in runs[reference]])
                       for m in SEED_METRICS} for ds in datasets}
              for a in teachers if a != reference}
    return {"seeds": seeds, "teachers": teachers, "reference": reference, "rule": rule,
            "split": f"the profile's fixed split (seed {profile.seed})",
            "runs": runs, "summary": summary, "best_on_validation": {str(s): a for s, a in best.items()},
            "paired": paired}


def teacher_epochs_study(profile, prep: _data.Prepared, arch: str, seeds: Sequence[int],
                         epochs: Sequence[int], on_row=None, progress: bool = False) -> dict:
    """How long must teacher ``arch`` train? It is trained once per seed for each count of
    ``epochs`` (the first is the reference), with ``recipes.TEACHER``'s other settings and
    the one-cycle schedule stretched over each count; the same seed gives the same initial
    weights and first batches, so the runs are paired. Only **validation** figures: the kept
    epoch's validation AUC and which epoch was kept. The test split is not read.

    Runs train in ``teachers/study/<arch>-e<epochs>-seed<k>`` (a stopped study resumes).
    ``on_row(row)`` is called after every run. Returns ``{"teacher", "reference", "runs",
    "summary", "paired"}`` (``summarize_paired``: each count against the first, by seed)."""
    epochs = [int(e) for e in epochs]
    rows = []
    for seed in seeds:  # seed by seed: a stopped study has whole comparisons of the first seeds
        for n in epochs:
            folder = Path(profile.artifacts) / "teachers" / "study" / f"{arch}-e{n}-seed{seed}"
            settings = recipe_settings(profile, _recipes.TEACHER, arch, n, int(seed))
            model, hist = _fit(profile, prep, arch, folder, settings, progress, seed=int(seed))
            preds = predictions(profile, folder, arch, prep, parts=("val",), model=model)
            row = {"teacher": arch, "seed": int(seed), "epochs": n, "best_epoch": hist.best_epoch,
                   "val_auc": _num(val_auc(preds)), "seconds": round(float(sum(hist.seconds)), 1)}
            rows.append(row)
            if on_row is not None:
                on_row(row)
    key = lambda r: f"{r['epochs']} epochs"  # noqa: E731
    summary, paired = summarize_paired(rows, key, f"{epochs[0]} epochs", [arch], group="teacher",
                                       figures=("val_auc", "best_epoch", "seconds"))
    return {"teacher": arch, "reference": f"{epochs[0]} epochs", "runs": rows, "summary": summary,
            "paired": paired}


# --------------------------------------------------------------------------- stage 4, choosing the loss

#: the loss settings ``scripts/tune_student.py`` compares (kd+cam student): the profile's
#: own first, then one change at a time (a change that is the profile's own setting is skipped)
TUNING_GRID = ({}, {"kd_temperature": 1.0}, {"kd_temperature": 4.0}, {"cam_beta": 3.0}, {"cam_loss": "at"})
#: a setting replaces the defaults only when its validation AUC is higher by more than this
#: (one seed, about 80 validation images: smaller differences are noise)
TUNING_MARGIN = 0.02


def tune_student(profile, prep: _data.Prepared, grid: Sequence[dict] = TUNING_GRID, variant: str = "kd+cam",
                 progress: bool = False) -> list[dict]:
    """Train one ``variant`` student per setting of ``grid`` (changes of the profile's
    ``kd_alpha``, ``cam_beta``, ``kd_temperature``, plus ``cam_loss`` and ``guide``) and
    report each one's **validation** figures only: the kept epoch's validation AUC and
    loss. The test split is not read. Runs live in ``students/tuning/<i>``."""
    out = []
    for i, change in enumerate(grid):
        change = dict(change)
        cam_loss, guide = change.pop("cam_loss", "mse"), change.pop("guide", profile.guide)
        p = profile.replace(**change)
        if i > 0 and p == profile and (cam_loss, guide) == ("mse", profile.guide):
            continue  # the profile's defaults: already the first run
        _, hist, _ = train_student(p, variant, prep, guide=guide, cam_loss=cam_loss, progress=progress,
                                   ckpt_dir=Path(profile.artifacts) / "students" / "tuning" / f"{i}")
        f = hist.final or {}
        out.append({"alpha": p.kd_alpha, "beta": p.cam_beta, "temperature": p.kd_temperature,
                    "cam_loss": cam_loss, "guide": guide, "best_epoch": hist.best_epoch,
                    "val_auc": _num(f.get("val_auc", float("nan"))),
                    "val_loss": _num(f.get("val_loss", float("nan"))),
                    "seconds": round(float(sum(hist.seconds)), 1)})
    return out


#: the patience settings ``scripts/patience_study.py`` compares by default: ``(student epochs,
#: guide views)``; the profile's own setting is always the reference
PATIENCE_GRID = ((60, 16),)


def _student_val_row(p, model, hist, val_ds, lungs: np.ndarray, guide_maps: np.ndarray, prep,
                     lesions: np.ndarray | None = None) -> dict:
    """A trained student's **validation** figures for the studies below: the kept epoch's
    AUC and cross-entropy, the accuracy at P(TB) 0.5, the in-lung share of its Grad-CAM
    maps and their agreement with ``guide_maps``, and its training time; with ``lesions``
    (phantoms: the validation images' lesion masks) also the lesion share and pointing game."""
    probs, labels = _train.predict(model, val_ds, device=torch_device(p.device))
    maps, _ = student_maps(p, model, prep, "val")
    att = attention_figures(maps, lungs, np.zeros_like(lungs) if lesions is None else lesions, guide_maps,
                            n_boot=0)
    f = hist.final or {}
    row = {"best_epoch": hist.best_epoch, "val_auc": _num(f.get("val_auc", float("nan"))),
           "val_loss": _num(f.get("val_loss", float("nan"))),
           "val_accuracy": _num(float(((probs >= 0.5) == labels).mean())),
           "in_lung": att["in_lung"]["mean"], "agreement": att["agreement"]["mean"],
           "seconds": round(float(sum(hist.seconds)), 1)}
    if lesions is not None and att["lesion_share"]["mean"] is not None:
        row.update(lesion_share=att["lesion_share"]["mean"], pointing=att["pointing"]["mean"])
    return row


#: profile settings that change only how a distilled student learns from its guide: a ce
#: student trained under a change of these alone is the profile's own ce student
DISTILL_ONLY = frozenset({"kd_alpha", "kd_temperature", "cam_beta", "cam_order", "guide", "guide_views"})
#: the profile fields a settings study may change: the student's alone (a change of a field the
#: teachers, their maps or the data depend on would retrain them in place)
STUDY_FIELDS = frozenset({"student", "student_epochs", "kd_alpha", "kd_temperature", "cam_beta", "cam_order",
                          "guide", "guide_views"})
SETTINGS_FIGURES = ("val_auc", "val_loss", "val_accuracy", "in_lung", "lesion_share", "pointing", "agreement",
                    "seconds")


def setting_label(change: Mapping) -> str:
    """A settings study's name of one change of the profile: ``"cam_beta=4, cam_order=first"``."""
    return ", ".join(f"{k}={v}" for k, v in change.items()) or "profile's own"


def settings_study(profile, prep: _data.Prepared, seeds: Sequence[int], variants: Sequence[str] = ("ce", "kd+cam"),
                   grid: Sequence[Mapping] = (), on_row=None, progress: bool = False) -> dict:
    """How do the students fare under other settings of the profile? Each ``variant`` trained
    once per seed with the profile's own settings and with every change of ``grid`` (a dict
    of :class:`config.Profile` fields), side by side (:func:`train_students`), with the
    teachers of the fixed split; the same seed gives the same initial weights, so the runs
    are paired. Only **validation** figures (:func:`_student_val_row`, with the lesion share
    and pointing game where the lesions are known: phantoms). The test split is not read.

    The profile's own setting reuses chapter 04's students; a ce student under a change
    of :data:`DISTILL_ONLY` settings alone is the profile's own. Others train in
    ``students/settings/<change>/``. Returns ``{"reference", "settings", "runs", "summary",
    "paired", "versus_ce"}``: ``paired`` compares each setting with the profile's own per
    variant, ``versus_ce`` each variant with ce within each setting (both paired by seed)."""
    for g in grid:
        bad = sorted(set(g) - STUDY_FIELDS)
        if bad:
            raise ValueError(f"settings study: {bad[0]!r} is not the student's to change (the teachers, their "
                             f"maps or the data depend on it); choose from {', '.join(sorted(STUDY_FIELDS))}")
    settings = [{}] + [dict(g) for g in grid if dict(g) and profile.replace(**g) != profile]
    records = classifier_records(profile, prep, "val")
    size = profile.size_for(profile.student)
    lungs = lung_masks(profile, records, size, "lung")
    lesions = lung_masks(profile, records, size, "lesion")
    lesions = lesions if lesions.any() else None
    val_ds = classifier_dataset(profile, prep, profile.student, "val")
    runs, meta = [], []
    for change in settings:
        p = profile.replace(**change)
        slug = setting_label(change).replace(", ", "_").replace("=", "-")
        for v in variants:
            for seed in seeds:
                own = not change or (v == "ce" and set(change) <= DISTILL_ONLY)
                ckpt = None if own else Path(profile.artifacts) / "students" / "settings" / slug / f"{v}-seed{seed}"
                runs.append({"variant": v, "seed": int(seed), "profile": p, **({"ckpt_dir": ckpt} if ckpt else {})})
                meta.append((setting_label(change), p, v, int(seed)))
    trained = train_students(profile, prep, runs, progress=progress)
    guides = {}
    rows = []
    for (label, p, v, seed), (model, hist, _) in zip(meta, trained):
        if label not in guides:
            guides[label] = guide_for_part(p, prep, None, "val").cams
        row = {"seed": seed, "variant": v, "setting": label,
               **_student_val_row(p, model, hist, val_ds, lungs, guides[label], prep, lesions)}
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return summarize_settings(rows, [setting_label(c) for c in settings], variants)


def summarize_settings(rows: Sequence[dict], settings: Sequence[str], variants: Sequence[str]) -> dict:
    """:func:`settings_study`'s summary (see there)."""
    figures = [f for f in SETTINGS_FIGURES if any(f in r for r in rows)]
    summary, paired = summarize_paired(rows, lambda r: r["setting"], settings[0], variants, figures=figures)
    versus = {}
    if "ce" in variants:
        _, versus = summarize_paired(rows, lambda r: r["variant"], "ce", settings, group="setting", figures=figures)
    return {"reference": settings[0], "settings": list(settings), "runs": list(rows), "summary": summary,
            "paired": paired, "versus_ce": versus}


def patience_study(profile, prep: _data.Prepared, seeds: Sequence[int], variants: Sequence[str] = ("kd", "kd+cam"),
                   grid: Sequence[tuple[int, int]] = PATIENCE_GRID, on_row=None, progress: bool = False) -> dict:
    """Does the student need more patience? Each ``variant`` trained with the profile's own
    ``(student_epochs, guide_views)`` and with every setting of ``grid``, once per seed
    (the same seed: the same initial weights, so the runs are paired), with the teachers
    and guide of the fixed split. Only **validation** figures (:func:`_student_val_row`;
    agreement with the maps of the profile's guide). The test split is not read.

    The profile's own setting trains where chapter 04's students live (and reuses them);
    the others in ``students/patience/``. ``on_row(row)`` is called after every run (to
    save what is done). Returns ``{"settings", "runs": [rows], "summary": {variant:
    {setting: {figure: mean_sd}}}, "paired": {variant: {setting: {figure: paired
    difference from the profile's own}}}}``."""
    own = (profile.student_epochs, profile.guide_views)
    settings = [own] + [tuple(g) for g in grid if tuple(g) != own]
    records = classifier_records(profile, prep, "val")
    lungs = lung_masks(profile, records, profile.size_for(profile.student), "lung")
    guide_val = guide_for_part(profile, prep, None, "val")
    val_ds = classifier_dataset(profile, prep, profile.student, "val")
    rows = []
    for v in variants:  # variant by variant: a stopped study has whole comparisons of the first ones
        for seed in seeds:
            for epochs, views in settings:
                p = profile.replace(student_epochs=int(epochs), guide_views=int(views))
                ckpt = None if (epochs, views) == own else \
                    Path(profile.artifacts) / "students" / "patience" / f"{v}-e{epochs}-v{views}-seed{seed}"
                model, hist, _ = train_student(p, v, prep, progress=progress, seed=seed, ckpt_dir=ckpt)
                row = {"seed": int(seed), "variant": v, "epochs": int(epochs), "views": int(views),
                       **_student_val_row(p, model, hist, val_ds, lungs, guide_val.cams, prep)}
                rows.append(row)
                if on_row is not None:
                    on_row(row)
    return summarize_patience(rows, own, variants)


PATIENCE_FIGURES = ("val_auc", "val_loss", "val_accuracy", "in_lung", "agreement", "seconds")


def summarize_paired(rows: Sequence[dict], key, reference: str, groups: Sequence[str], group: str = "variant",
                     figures: Sequence[str] = PATIENCE_FIGURES) -> tuple[dict, dict]:
    """Mean and SD of each figure per group (``row[group]``) and setting (``key(row)``),
    and each setting's difference from the ``reference`` setting, paired by seed.
    Returns ``(summary, paired)``."""
    summary, paired = {}, {}
    for v in groups:
        by = {}
        for r in rows:
            if r[group] == v:
                by.setdefault(key(r), []).append(r)
        summary[v] = {k: {f: _metrics.mean_sd([r[f] for r in rs]) for f in figures} for k, rs in by.items()}
        ref = {r["seed"]: r for r in by.get(reference, [])}
        paired[v] = {}
        for k, rs in by.items():
            if k == reference:
                continue
            pairs = [(r, ref[r["seed"]]) for r in rs if r["seed"] in ref]
            paired[v][k] = {f: _metrics.paired_difference([a[f] for a, _ in pairs], [b[f] for _, b in pairs])
                            for f in figures}
    return summary, paired


def summarize_patience(rows: Sequence[dict], own: tuple[int, int], variants: Sequence[str]) -> dict:
    """Mean and SD of each figure per variant and setting, and each setting's paired
    difference (by seed) from the profile's own setting."""
    own_key = f"{own[0]} epochs x {own[1]} views"
    summary, paired = summarize_paired(rows, lambda r: f"{r['epochs']} epochs x {r['views']} views", own_key,
                                       variants)
    return {"reference": own_key, "runs": list(rows), "summary": summary, "paired": paired}


#: a guide candidate of :func:`guide_study` besides "best", "fusion" and teacher names: the
#: teacher whose Grad-CAM maps put the largest share of their mass inside the lungs on the
#: validation split (:func:`lungs_guide`)
LUNGS_GUIDE = "lungs"


def teacher_val_attention(profile, prep: _data.Prepared, teachers: Sequence[str] | None = None) -> dict[str, float]:
    """Each teacher's in-lung share on the **validation** split: the mean share of its
    cached Grad-CAM maps' mass inside the U-Net's lung masks (``cam.mass_in_mask``). Kept in
    memory for the caches it was computed from (every student of a ``"lungs"`` profile asks)."""
    teachers = tuple(teachers or profile.teachers)
    caches = {a: cam_cache(profile, a, prep, "val", progress=False) for a in teachers}
    memo_key = (str(profile.artifacts), profile.image_size, store.file_sha256(prep.split_path),
                tuple((a, c.key.get("checkpoint_sha256")) for a, c in caches.items()))
    if memo_key not in _VAL_ATTENTION:
        masks = lung_masks(profile, classifier_records(profile, prep, "val"), profile.image_size, "lung")
        _VAL_ATTENTION[memo_key] = {
            a: _num(float(np.nanmean(_cam.mass_in_mask(np.ascontiguousarray(c.cams, np.float32), masks))))
            for a, c in caches.items()}  # maps resized to the masks
    return dict(_VAL_ATTENTION[memo_key])


_VAL_ATTENTION: dict = {}


def lungs_guide(profile, prep: _data.Prepared, att: dict[str, float] | None = None) -> str:
    """The teacher whose validation maps are most inside the lungs (``att``, default
    :func:`teacher_val_attention`; ties: the first in the profile's order)."""
    att = att if att is not None else teacher_val_attention(profile, prep)
    return max(profile.teachers, key=lambda a: (att[a] if att[a] is not None else -1.0))


def guide_study(profile, prep: _data.Prepared, seeds: Sequence[int], guides: Sequence[str] = ("best", "fusion", LUNGS_GUIDE),
                variants: Sequence[str] = ("kd+cam",), on_row=None, progress: bool = False,
                aucs: dict[str, float] | None = None, att: dict[str, float] | None = None) -> dict:
    """Which guide should the student follow? Each ``variant`` trained once per seed with
    every guide of ``guides`` (``"best"``: the teacher with the best validation AUC;
    ``"fusion"``: all teachers, weighted by validation AUC; ``"lungs"``: the teacher whose
    validation maps are most inside the lungs; or a teacher's name; ``aucs`` and ``att``, the
    teachers' validation AUCs and in-lung shares, when the caller has them), with the profile's
    own settings and the teachers of the fixed split, the same seed giving the same initial
    weights (runs paired by seed). Only **validation** figures (:func:`_student_val_row`);
    agreement is with the student's own guide. The test split is not read.

    Each guide trains in ``students/<variant>-<guide>`` (:func:`student_dir`; a guide that is
    the best teacher reuses the "best" students), so the profile's own guide reuses chapter 04's.
    Returns ``{"reference": "best", "guides": {name: resolved}, "teachers": {arch: {"val_auc",
    "val_in_lung"}}, "runs", "summary", "paired"}``, as :func:`patience_study`."""
    aucs = aucs if aucs is not None else teacher_val_auc(profile, prep)
    att = att if att is not None else teacher_val_attention(profile, prep)
    best = next(a for a, w in _distill.teacher_weights(aucs, "best").items() if w > 0)
    resolved = {g: _distill.GUIDE_SEP.join(dict.fromkeys(_distill.guide_sources(aucs, guide_mode(profile, prep, g, att))))
                for g in guides}  # teachers' names: "vgg16_bn,densenet121" for "lungs,best"
    # a guide that resolves to the best teacher is the "best" guide: its students are reused
    train_as = {g: ("best" if r == best else g) for g, r in resolved.items()}
    records = classifier_records(profile, prep, "val")
    lungs = lung_masks(profile, records, profile.size_for(profile.student), "lung")
    val_ds = classifier_dataset(profile, prep, profile.student, "val")
    guide_maps = {g: guide_for_part(profile, prep, r, "val").cams for g, r in train_as.items()}
    rows = []
    for v in variants:
        for seed in seeds:
            for g, r in resolved.items():
                model, hist, _ = train_student(profile, v, prep, guide=train_as[g], progress=progress, seed=seed)
                row = {"seed": int(seed), "variant": v, "guide": g, "teacher": r,
                       **_student_val_row(profile, model, hist, val_ds, lungs, guide_maps[g], prep)}
                rows.append(row)
                if on_row is not None:
                    on_row(row)
    return summarize_guides(rows, list(guides), variants, resolved, aucs, att)


def summarize_guides(rows: Sequence[dict], guides: Sequence[str], variants: Sequence[str], resolved: dict,
                     aucs: dict, att: dict) -> dict:
    """:func:`guide_study`'s summary: each guide's figures over seeds and its paired
    difference from the first guide's (``guides[0]``, the reference)."""
    summary, paired = summarize_paired(rows, lambda r: r["guide"], guides[0], variants)
    return {"reference": guides[0], "guides": dict(resolved),
            "teachers": {a: {"val_auc": _num(aucs[a]), "val_in_lung": att.get(a)} for a in aucs},
            "runs": list(rows), "summary": summary, "paired": paired}


def view_samples(profile, prep: _data.Prepared, guide: "_distill.Guide", i: int, n: int = 4) -> list[tuple]:
    """``(title, image, map)`` for chapter 04's figure of training image ``i``: the image
    with the guide's map, then ``n`` of the views the student trains on, each with the
    guide's own map of that view and its P(TB) (``profile.guide_views``); without fixed
    views, ``n`` random augmentations with the map warped along (``DistillDataset``)."""
    base = classifier_dataset(profile, prep, profile.student, "train")
    out = [("original", base.images[i, 0], guide.cams[i])]
    views = guide_views(profile, prep)
    if views is None or not {guide.maps_source, guide.logits_source} <= set(profile.teachers):
        ds = _distill.DistillDataset(base, guide, augment=True)
        torch.manual_seed(profile.seed)
        for k in range(n):
            x, _, m, _ = ds[i]
            out.append((f"augmented {k + 1}", x[0], m))
        return out
    maps = view_cache(profile, guide.maps_source, prep, progress=False)
    logits = view_cache(profile, guide.logits_source, prep, progress=False)
    v_count = views.shape[1]
    for v in range(min(n, v_count)):
        j = i * v_count + v
        p = float(torch.softmax(torch.from_numpy(np.asarray(logits.logits[j], np.float64)), 0)[1])
        out.append((f"view {v + 1}: P(TB) {p:.2f}", _data.apply_view(base.images[i], views[i, v])[0],
                    np.asarray(maps.cams[j], np.float32)))
    return out
