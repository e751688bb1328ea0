"""The training machinery: one epoch loop for every model, one training loop for every classifier.

:class:`EpochLoop` is what the classifiers and the U-Net (``segmentation.train_unet``)
share: the epoch and step progress bars, the resumable state written after an epoch,
resume from it, and the best epoch's weights. Each caller keeps its own steps, schedule
and measure of the best epoch (validation AUC; the U-Net's validation Dice).

:func:`fit` trains any model that maps a ``(N, 1, H, W)`` batch in ``[0, 1]`` to logits
(every :func:`tbkd_helpers.models.build_model` model does) on datasets yielding
``(x, y)`` pairs. It writes into ``ckpt_dir``:

- ``last.pt`` after every epoch: weights, optimizer, scheduler, history and every random
  state, so ``fit(..., resume=True)`` continues a stopped run and ends with exactly the
  weights an uninterrupted run would have;
- ``best.pt``: the epoch with the highest validation AUC (ties: lower validation loss),
  with BatchNorm statistics recomputed on the training data at the end;
- ``done.json`` last, when training is finished: a later call with the same settings
  loads ``best.pt`` and returns at once.

>>> hist = fit(model, train_ds, val_ds, TrainSettings(epochs=3), ckpt_dir)  # doctest: +SKIP
>>> probs, labels = predict(model, test_ds)                                 # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, WeightedRandomSampler

from . import metrics as _metrics
from . import store
from .config import seed_everything, torch_device
from .models import checkpoint, has_batchnorm, read_checkpoint, recalibrate_bn

__all__ = ["TrainSettings", "History", "EpochLoop", "fit", "predict", "validate", "dataset_labels",
           "TrainingInterrupted"]

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("onecycle", "cosine", "none")
CLASS_BALANCE = ("loss", "sampler", "none")
BN_RECALIBRATE = ("end", "epoch", "off")


@dataclass
class TrainSettings:
    """Everything the training loop depends on (augmentation belongs to the dataset).

    - ``optimizer``: "adamw" | "sgd" (SGD with Nesterov ``momentum``).
    - ``schedule``: "onecycle" (warm-up then cosine decay, per step) | "cosine" (per
      step) | "none".
    - ``class_balance``: "loss" (class-weighted cross-entropy, inverse class frequency;
      deterministic) | "sampler" (weighted random sampling with replacement) | "none".
    - ``patience``: stop after this many epochs without a better validation AUC
      (``None`` or 0: never stop early).
    - ``bn_recalibrate``: recompute BatchNorm statistics on the training data (a no-grad
      pass, see ``models.recalibrate_bn``) "epoch": before every validation, so that the
      best epoch is chosen with the statistics it will be used with (from all training
      images, a fifth to a quarter of a real-data epoch; without it a short from-scratch run validates with lagging statistics
      and its per-epoch AUC/accuracy are near chance) | "end": once, for the best
      checkpoint | "off".
    - ``bn_images``: recalibrate from a fixed random subset of this many training images
      (drawn once from ``seed``, the same for every epoch; its own generator, so the
      training draws do not change), or from all of them (``None``, or a set no larger).
      The weights never see these statistics while they train (train-mode BatchNorm uses
      the batch's), so the subset changes only the validation scores and the kept
      model's statistics, never the training itself.
    - ``eval_batch_size``: the batch of the no-grad passes (BatchNorm recalibration and
      validation): at least ``batch_size``. Larger batches cost less per image (at 64 px,
      batch 64 took 60 % of batch 8's time for DenseNet121, 35 % for the student) and give
      the recalibration steadier batch statistics.
    - ``amp``: bf16 autocast, on CUDA only.
    """

    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    schedule: str = "onecycle"
    class_balance: str = "loss"
    patience: int | None = None
    seed: int = 0
    num_workers: int = 0
    label_smoothing: float = 0.0
    momentum: float = 0.9
    bn_recalibrate: str = "epoch"
    bn_images: int | None = None
    eval_batch_size: int = 64
    amp: bool = True

    def __post_init__(self) -> None:
        if self.class_balance is True:
            self.class_balance = "loss"
        elif self.class_balance in (False, None):
            self.class_balance = "none"
        for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES),
                              ("class_balance", CLASS_BALANCE),
                              ("bn_recalibrate", BN_RECALIBRATE)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainSettings.{name}={getattr(self, name)!r}: "
                                 f"choose one of {', '.join(allowed)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("TrainSettings: epochs and batch_size must be >= 1")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError("TrainSettings.label_smoothing must be in [0, 1)")
        if self.bn_images is not None and self.bn_images < 2:
            raise ValueError("TrainSettings.bn_images must be None or >= 2")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainSettings":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class History:
    """Per-epoch numbers of one training run (lists indexed by epoch, 1-based ``epoch``)."""

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_auc: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False
    # validation metrics of the returned model (best epoch, after BN recalibration)
    final: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.epoch)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (list(v) if isinstance(v, (list, tuple)) else v)
                      for k, v in d.items() if k in names})

    @property
    def best_val_auc(self) -> float:
        if self.best_epoch is None:
            return float("nan")
        return self.val_auc[self.epoch.index(self.best_epoch)]


class TrainingInterrupted(RuntimeError):
    """Raised by an ``on_epoch_end`` callback to stop; ``last.pt`` is already written."""


# --------------------------------------------------------------------------- helpers
def dataset_labels(ds: Dataset) -> np.ndarray:
    """Integer labels of a dataset: its ``labels``/``targets`` attribute if it has one
    (also through ``Subset``), else by reading every item."""
    if isinstance(ds, Subset):
        return dataset_labels(ds.dataset)[np.asarray(ds.indices)]
    for attr in ("labels", "targets", "y"):
        value = getattr(ds, attr, None)
        if value is not None and not callable(value):
            try:
                arr = np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value)
            except Exception:  # pragma: no cover - odd attribute
                continue
            if arr.ndim == 1 and len(arr) == len(ds):
                return arr.astype(np.int64)
    return np.asarray([int(ds[i][1]) for i in range(len(ds))], dtype=np.int64)


def _worker_init(worker_id: int) -> None:
    # each worker's torch seed comes from the loader's seeded generator; derive the others
    seed = torch.initial_seed() % (2**32)
    np.random.seed(seed)
    random.seed(seed)


def _loader(ds: Dataset, batch_size: int, num_workers: int, shuffle: bool = False,
            generator: torch.Generator | None = None, sampler=None,
            drop_last: bool = False, device: torch.device | None = None) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle if sampler is None else False,
                      sampler=sampler, generator=generator, num_workers=num_workers,
                      drop_last=drop_last, worker_init_fn=_worker_init if num_workers else None,
                      pin_memory=device is not None and device.type == "cuda",
                      persistent_workers=False)


def _device(device) -> torch.device:
    """None or "auto": CUDA when present (``config.torch_device``); else as given."""
    if device is None or isinstance(device, str):
        return torch_device(device or "auto")
    return torch.device(device)


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to_xy(batch, device):
    x, y = batch[0], batch[1]
    return (x.to(device, non_blocking=True).float(),
            torch.as_tensor(y).to(device, non_blocking=True).long())


def _rng_state(generator: torch.Generator | None) -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }
    if generator is not None:
        state["loader"] = generator.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    random.setstate(_tuples(state["python"]))
    if generator is not None and "loader" in state:
        generator.set_state(state["loader"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _tuples(obj):
    return tuple(_tuples(o) for o in obj) if isinstance(obj, (list, tuple)) else obj


def _better(auc: float, loss: float, best_auc: float, best_loss: float) -> bool:
    """Higher AUC wins; equal AUC (or both undefined): lower loss wins."""
    a = -math.inf if math.isnan(auc) else auc
    b = -math.inf if math.isnan(best_auc) else best_auc
    if a != b:
        return a > b
    return loss < best_loss


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, device: torch.device,
             amp: bool = True) -> dict:
    """Validation loss (plain cross-entropy), AUC and accuracy (argmax) of ``model`` on ``loader``."""
    was_training = model.training
    model.eval()
    losses, probs, labels, n = 0.0, [], [], 0
    try:
        for batch in loader:
            x, y = _to_xy(batch, device)
            with _autocast(device, amp):
                logits = model(x)
            logits = logits.float()
            losses += F.cross_entropy(logits, y, reduction="sum").item()
            probs.append(torch.softmax(logits, 1).cpu().numpy())
            labels.append(y.cpu().numpy())
            n += len(y)
    finally:
        model.train(was_training)
    p = np.concatenate(probs) if probs else np.zeros((0, 2))
    y = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    return {
        "loss": losses / max(n, 1),
        "auc": _metrics.auc(y, p[:, 1]) if p.shape[1] == 2 else float("nan"),
        "acc": float((p.argmax(1) == y).mean()) if n else float("nan"),
        "n": n,
    }


@torch.no_grad()
def predict(model: nn.Module, ds: Dataset, device: torch.device | str | None = None,
            batch_size: int = 64, num_workers: int = 0, amp: bool = True
            ) -> tuple[np.ndarray, np.ndarray]:
    """``(probability of class 1, label)`` for every item of ``ds``, in order.

    Runs in eval mode without gradients (the model's mode is restored afterwards); the
    model is moved to ``device`` (default: CUDA when present)."""
    device = _device(device)
    model.to(device)
    was_training = model.training
    model.eval()
    probs, labels = [], []
    try:
        for batch in _loader(ds, batch_size, num_workers, device=device):
            x, y = _to_xy(batch, device)
            with _autocast(device, amp):
                logits = model(x)
            probs.append(torch.softmax(logits.float(), 1)[:, 1].cpu().numpy())
            labels.append(y.cpu().numpy())
    finally:
        model.train(was_training)
    if not probs:
        return np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.int64)
    return np.concatenate(probs).astype(np.float64), np.concatenate(labels).astype(np.int64)


# --------------------------------------------------------------------------- the epoch loop
class EpochLoop:
    """What every training loop of the kit shares, the classifiers' (:func:`fit`) and the
    U-Net's (``segmentation.train_unet``): the progress bars, a resumable state written
    after an epoch, resume from it, and the best epoch's weights.

    - ``resume_path`` receives, after an epoch (every epoch, or at most every
      ``save_every_s`` seconds), the weights, the optimizer's and scheduler's states,
      every random state (torch, NumPy, Python, CUDA, and the data loader's
      ``generator``) and the caller's own ``state`` (its history): a run resumed from it
      ends with exactly the weights of an uninterrupted one.
    - ``best_path`` receives the best epoch's weights (:meth:`save_best`).
    - ``digest`` fingerprints the settings: a saved state with another digest is not
      resumed from (training starts over).

    >>> loop = EpochLoop("unet", model, opt, None, epochs=10, digest=d, resume_path=p)  # doctest: +SKIP
    >>> state = loop.resume()                      # None: a fresh start      # doctest: +SKIP
    >>> for epoch in loop.epochs():                                           # doctest: +SKIP
    ...     bar = loop.step_bar(epoch, n_steps)    # update it once per step
    ...     loop.end_epoch(epoch, {"history": history}, val_dice=f"{dice:.3f}")
    >>> loop.close()                                                          # doctest: +SKIP
    """

    def __init__(self, name: str, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                 epochs: int, *, digest: str, resume_path: str | Path, best_path: str | Path | None = None,
                 settings: dict | None = None, generator: torch.Generator | None = None,
                 progress: bool = True, save_every_s: float = 0.0) -> None:
        self.name, self.model, self.optimizer, self.scheduler = name, model, optimizer, scheduler
        self.total, self.digest, self.settings = int(epochs), digest, settings or {}
        self.resume_path = Path(resume_path)
        self.best_path = Path(best_path) if best_path is not None else None
        self.generator, self.progress, self.save_every_s = generator, progress, float(save_every_s)
        self.start, self.finished, self._bar, self._inner = 0, False, None, None
        self._last_save = time.perf_counter()

    # ---- resume
    def resume(self, requires: Sequence[Path] = ()) -> dict | None:
        """Restore the saved state when it has this loop's digest (and every file of
        ``requires`` exists); return it (the caller reads its own entries, e.g. history),
        or None for a fresh start. Says why a saved state is not used."""
        if not self.resume_path.is_file():
            return None
        try:
            last = read_checkpoint(self.resume_path, map_location=next(self.model.parameters()).device)
        except ValueError as err:
            _say(f"{self.name}: ignoring unreadable {err}", self.progress)
            return None
        if last.get("digest") != self.digest:
            _say(f"{self.name}: {self.resume_path} has other settings; starting over", self.progress)
            return None
        for path in requires:
            if not Path(path).is_file():
                _say(f"{self.name}: {path} is missing; starting over", self.progress)
                return None
        self.model.load_state_dict(last["state_dict"])
        self.optimizer.load_state_dict(last["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(last["scheduler"])
        _set_rng_state(last["rng"], self.generator)
        self.start, self.finished = int(last["epoch"]), bool(last.get("finished", False))
        _say(f"{self.name}: resuming after epoch {self.start} from {self.resume_path}", self.progress)
        return last

    # ---- progress
    def epochs(self) -> Iterator[int]:
        """The (1-based) epochs still to run, with the epoch bar; stops once :attr:`finished`."""
        from tqdm.auto import tqdm

        self._bar = tqdm(total=self.total, initial=self.start, desc=f"train {self.name}", unit="epoch",
                         disable=not self.progress, leave=True)
        try:
            for epoch in range(self.start + 1, self.total + 1):
                if self.finished:
                    break
                yield epoch
        finally:
            self.close()

    def step_bar(self, epoch: int, steps: int):
        """A bar of one epoch's ``steps`` (the caller updates it). It is never handed the
        data loader: tqdm.auto's class calls iter() on an iterable it is given, and every
        DataLoader iterator draws a seed from the loader's generator, so the shuffles, and
        the trained weights, would depend on which progress bar was in use."""
        from tqdm.auto import tqdm

        self._inner = tqdm(total=steps, desc=f"epoch {epoch}", leave=False, disable=not self.progress)
        return self._inner

    def end_epoch(self, epoch: int, state: dict, *, keep_last: bool = True, **postfix) -> None:
        """After an epoch: save the resumable state (with the caller's ``state``) when it is
        due (``save_every_s``; at the last epoch only with ``keep_last``), then move the bar."""
        if self._inner is not None:
            self._inner.close()
            self._inner = None
        due = self.save_every_s <= 0 or time.perf_counter() - self._last_save > self.save_every_s
        last_epoch = self.finished or epoch >= self.total
        if due and (keep_last or not last_epoch):
            ckpt = checkpoint(self.model, self.name, self.settings, {
                "digest": self.digest, "epoch": epoch, "finished": self.finished,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "rng": _rng_state(self.generator), **state})
            store.save_torch(ckpt, self.resume_path)
            del ckpt
            self._last_save = time.perf_counter()
        if self._bar is not None:
            self._bar.update(1)
            if postfix:
                self._bar.set_postfix(**postfix)

    def save_best(self, extra: dict | None = None) -> None:
        """The current weights as the best epoch's, in ``best_path``."""
        store.save_torch(checkpoint(self.model, self.name, self.settings, {"digest": self.digest, **(extra or {})}),
                         self.best_path)

    def load_best(self) -> dict:
        """Load ``best_path``'s weights into the model; return its checkpoint dict."""
        best = read_checkpoint(self.best_path, map_location=next(self.model.parameters()).device)
        self.model.load_state_dict(best["state_dict"])
        return best

    def close(self) -> None:
        for bar in (self._inner, self._bar):
            if bar is not None:
                bar.close()
        self._inner = self._bar = None


# --------------------------------------------------------------------------- training
def adamw(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel: one pass over all the weights instead of a dozen
    small operations per tensor. On this kit's CPUs its step is 3-6x faster (the students'
    and ResNet18's optimizer step was 15-30 % of a training step); the weights agree with
    the per-tensor version to about 1e-8. Falls back where the fused kernel is missing."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):  # an older torch, or a device without the fused kernel
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _make_optimizer(model: nn.Module, s: TrainSettings) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if s.optimizer == "adamw":
        return adamw(params, s.lr, s.weight_decay)
    return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, nesterov=s.momentum > 0,
                           weight_decay=s.weight_decay)


def _make_scheduler(opt: torch.optim.Optimizer, s: TrainSettings, total_steps: int):
    if s.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s.lr, total_steps=max(total_steps, 2))
    if s.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1))
    return None


def _say(msg: str, progress: bool) -> None:
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(msg)


def calibration_subset(ds: Dataset, settings: TrainSettings) -> Dataset:
    """The images BatchNorm is recalibrated from: ``settings.bn_images`` of ``ds`` drawn
    once from ``settings.seed`` (kept in the set's order), or all of ``ds``."""
    k = settings.bn_images
    if k is None or k >= len(ds):
        return ds
    rng = np.random.default_rng(settings.seed)
    return Subset(ds, sorted(rng.choice(len(ds), size=k, replace=False).tolist()))


def fit(model: nn.Module, train_ds: Dataset, val_ds: Dataset, settings: TrainSettings,
        ckpt_dir: str | Path, device: torch.device | str | None = None, progress: bool = True,
        *, resume: bool = True, extra_settings: dict | None = None,
        calib_ds: Dataset | None = None,
        on_epoch_end: Callable[[int, History], None] | None = None,
        step_loss: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None) -> History:
    """Train ``model`` in place; leave it holding the best epoch's weights, in eval mode.

    - ``ckpt_dir`` receives ``last.pt`` (every epoch), ``best.pt`` and, when finished,
      ``done.json``. If ``done.json`` and ``best.pt`` are there with the same settings,
      the best weights are loaded and the stored history returned without training.
    - ``resume=True`` continues from ``last.pt`` when its settings match (else training
      starts over); the result is identical to an uninterrupted run.
    - ``extra_settings``: anything else the result depends on (image size, split file
      digest, ...); part of the settings fingerprint and saved in the checkpoints.
    - ``calib_ds``: data for the final BatchNorm recalibration (default: ``train_ds``;
      ideally the training images without augmentation).
    - ``on_epoch_end(epoch, history)`` is called after ``last.pt`` is written (live plots;
      raising stops the run, which can be resumed later).
    - ``step_loss(model, batch, criterion, device) -> (loss, y)`` replaces the plain
      cross-entropy of a training batch (distillation adds its terms there; ``y`` is the
      batch's labels, for the running loss). Validation stays plain cross-entropy on
      ``val_ds``. Whatever the step loss depends on belongs in ``extra_settings``.

    The model itself must be built (and seeded) by the caller; shuffling, sampling,
    dropout and the dataset's own augmentation draws are seeded with ``settings.seed``.
    """
    s = settings
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    device = _device(device)
    arch = getattr(model, "arch", type(model).__name__)
    fingerprint = {"train": s.to_dict(), "arch": arch, "n_train": len(train_ds),
                   "n_val": len(val_ds), "extra": extra_settings or {}}
    digest = store.settings_digest(fingerprint)
    done_path, best_path, last_path = ckpt_dir / "done.json", ckpt_dir / "best.pt", ckpt_dir / "last.pt"
    model.to(device)

    # ---- a finished stage is not redone
    if store.manifest_complete(done_path, fingerprint) and best_path.is_file():
        best = read_checkpoint(best_path, map_location=device)
        if best.get("digest") == digest:
            model.load_state_dict(best["state_dict"])
            model.eval()
            _say(f"{arch}: finished run found in {ckpt_dir}, loaded best.pt", progress)
            return History.from_dict(store.read_json(done_path)["history"])

    # ---- data
    labels = dataset_labels(train_ds)
    n_classes = int(max(labels.max() + 1, 2)) if len(labels) else 2
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    class_weight = None
    generator = torch.Generator().manual_seed(s.seed)
    sampler = None
    if s.class_balance == "loss":
        w = len(labels) / (n_classes * np.maximum(counts, 1))
        class_weight = torch.tensor(w, dtype=torch.float32, device=device)
    elif s.class_balance == "sampler":
        per_item = (1.0 / np.maximum(counts, 1))[labels]
        sampler = WeightedRandomSampler(torch.as_tensor(per_item, dtype=torch.double),
                                        num_samples=len(labels), replacement=True,
                                        generator=generator)
    # a last batch of one image breaks BatchNorm in train mode: drop it
    drop_last = len(train_ds) > s.batch_size and len(train_ds) % s.batch_size == 1
    train_loader = _loader(train_ds, s.batch_size, s.num_workers, shuffle=True,
                           generator=generator, sampler=sampler, drop_last=drop_last, device=device)
    eval_batch = max(s.batch_size, s.eval_batch_size)
    val_loader = _loader(val_ds, eval_batch, s.num_workers, device=device)
    calib_loader = _loader(calibration_subset(calib_ds if calib_ds is not None else train_ds, s),
                           eval_batch, s.num_workers, device=device)
    steps_per_epoch = len(train_loader)
    criterion = nn.CrossEntropyLoss(weight=class_weight, label_smoothing=s.label_smoothing)

    # ---- fresh start or resume
    seed_everything(s.seed)
    optimizer = _make_optimizer(model, s)
    scheduler = _make_scheduler(optimizer, s, s.epochs * steps_per_epoch)
    loop = EpochLoop(arch, model, optimizer, scheduler, s.epochs, digest=digest, resume_path=last_path,
                     best_path=best_path, settings=fingerprint, generator=generator, progress=progress)
    history = History()
    best_auc, best_loss = float("nan"), math.inf
    last = loop.resume(requires=(best_path,)) if resume else None
    if last is not None:
        history = History.from_dict(last["history"])
        if history.best_epoch is not None:
            i = history.epoch.index(history.best_epoch)
            best_auc, best_loss = history.val_auc[i], history.val_loss[i]
    else:
        done_path.unlink(missing_ok=True)  # whatever was finished before had other settings
    del last

    # ---- epochs
    use_bn = has_batchnorm(model) and s.bn_recalibrate != "off"
    try:
        for epoch in loop.epochs():
            t0 = time.perf_counter()
            model.train()
            total, n = 0.0, 0
            inner = loop.step_bar(epoch, steps_per_epoch)
            for batch in train_loader:
                if step_loss is None:
                    x, y = _to_xy(batch, device)
                    with _autocast(device, s.amp):
                        logits = model(x)
                    loss = criterion(logits.float(), y)
                else:  # e.g. distillation: the caller's loss on its own batch layout
                    with _autocast(device, s.amp):
                        loss, y = step_loss(model, batch, criterion, device)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                total += loss.item() * len(y)
                n += len(y)
                inner.set_postfix(loss=f"{total / n:.4f}", refresh=False)
                inner.update(1)
            if use_bn and s.bn_recalibrate == "epoch":
                recalibrate_bn(model, calib_loader, device)
            ev = validate(model, val_loader, device, s.amp)
            history.epoch.append(epoch)
            history.train_loss.append(total / max(n, 1))
            history.val_loss.append(ev["loss"])
            history.val_auc.append(ev["auc"])
            history.val_acc.append(ev["acc"])
            history.lr.append(float(optimizer.param_groups[0]["lr"]))
            history.seconds.append(time.perf_counter() - t0)
            if history.best_epoch is None or _better(ev["auc"], ev["loss"], best_auc, best_loss):
                best_auc, best_loss, history.best_epoch = ev["auc"], ev["loss"], epoch
                loop.save_best({"epoch": epoch, "val_auc": ev["auc"], "val_loss": ev["loss"], "val_acc": ev["acc"],
                                "bn_recalibrated": use_bn and s.bn_recalibrate == "epoch"})
            if s.patience and epoch - history.best_epoch >= s.patience and epoch < s.epochs:
                history.stopped_early = True
                loop.finished = True
            loop.end_epoch(epoch, {"history": history.to_dict()}, loss=f"{history.train_loss[-1]:.4f}",
                           val_auc=f"{ev['auc']:.4f}", val_acc=f"{ev['acc']:.3f}")
            if on_epoch_end is not None:
                on_epoch_end(epoch, history)
    finally:
        loop.close()

    # ---- the best epoch, with honest BatchNorm statistics
    loop.load_best()
    # BatchNorm layers normalise with running statistics in eval mode. These are an
    # exponential average over the last training steps, computed while the weights were
    # still moving: they describe earlier weights than the ones kept (badly so with
    # MobileNet V3's momentum 0.01, which made an eval-mode model predict one class for
    # every image). Recomputing them for the kept weights, over the training data in a
    # no-grad pass, removes the lag; the weights are unchanged. With "epoch" that was
    # done before each validation, so best.pt's statistics are already fresh.
    if use_bn and s.bn_recalibrate == "end":
        recalibrate_bn(model, calib_loader, device)
    ev = validate(model, val_loader, device, s.amp)
    history.final = {"epoch": history.best_epoch, "val_loss": ev["loss"], "val_auc": ev["auc"],
                     "val_acc": ev["acc"], "bn_recalibrated": use_bn}
    store.save_torch(checkpoint(model, arch, fingerprint, {
        "digest": digest, "epoch": history.best_epoch, "val_auc": ev["auc"],
        "val_loss": ev["loss"], "val_acc": ev["acc"], "bn_recalibrated": use_bn,
        "history": history.to_dict()}), best_path)
    store.write_manifest(done_path, fingerprint, digest=digest, history=history.to_dict(),
                         best_epoch=history.best_epoch, best="best.pt")
    model.eval()
    return history
