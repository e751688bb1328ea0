"""Stage 1: find the lungs, so that nothing outside them sways the TB decision.

The paper's first step is a U-Net that extracts the lung region of every chest X-ray.
This module builds it on segmentation-models-pytorch, trains it on the lung masks that
exist, measures it, cleans its predictions and cuts the lungs out of every image:

1. :func:`build_unet` — ``smp.Unet`` with one input channel; the encoder is the
   profile's ``seg_encoder`` (ImageNet encoder weights with ``profile.seg_pretrained``,
   downloaded the first time, so off where there is no internet). Each image is
   standardised (zero mean, unit variance) inside the model, so the model sees the same
   thing whatever the exposure of the film.
2. :func:`train_unet` — Dice + BCE loss, image and mask augmented together
   (:func:`augment_pair`), AdamW with warm-up and cosine decay; the checkpoint kept is
   the epoch with the best validation Dice. Only records with lung masks of the saved
   split's *train* part are trained on (validation: its *val* part), so the U-Net never
   sees a test image of the classification split. A finished training is never redone;
   a stopped one resumes from its last saved epoch.
3. :func:`evaluate` — Dice and IoU per test image (:func:`dice_iou`), at the mask's own
   resolution, after post-processing.
4. :func:`postprocess` — threshold, keep the two largest connected regions, fill holes;
   :func:`plausibility` — is it two lungs of a plausible size?
5. :func:`extract_lungs` — mask with a small dilation margin, crop to the lungs' box
   (grown to a square so the lungs keep their proportions), resize.
   :func:`run_extraction` does it for every record, caching masks and extracted images
   under ``artifacts/<profile>/segmentation/`` with a manifest written last;
   :func:`extracted_records` hands the extracted images to the classifiers.
6. :func:`segment_files` — the ``tbkd segment`` command: any image files in, a mask and
   an extracted image out per file.

Every image of every data set goes through the same predicted-mask path, including the
Montgomery images that have manual masks: the classifiers then see exactly what a new,
unseen X-ray would give them (``tbkd segment``), never a cleaner manual cut at training
time and a predicted one in use.

Extracted images are stored once per record as 8-bit PNGs of
``profile.seg_extract_size`` px (0 means ``max(image_size, inception_size)``, the
largest input any classifier takes); the classifiers' datasets resize on load.
"""
from __future__ import annotations

import functools
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from . import store
from .recipes import UNET
from .config import seed_everything, torch_device
from .data import IMAGE_SUFFIXES, DataError, Prepared, Record, _is_junk, lung_mask, read_image, resize

ARCH = "smp.Unet"
# Joint augmentation of image and mask (training only). Geometric changes move both
# alike; intensity changes touch the image only.
AUGMENT = UNET.augment.to_dict()  # declared in recipes.UNET
RESUME_EVERY_S = 60.0  # save a resumable state at most this often during training


def seg_dir(profile) -> Path:
    """``artifacts/<profile>/segmentation``: checkpoint, masks, extracted images, manifest
    (shared by the profile's derived runs, ``Profile.subrun``)."""
    return profile.base_artifacts / "segmentation"


def extract_size(profile) -> int:
    """Side of the stored extracted images: ``seg_extract_size``, or the largest classifier input."""
    return int(profile.seg_extract_size) or max(profile.image_size, profile.inception_size)


# ---------------------------------------------------------------------------- the model

def build_unet(encoder: str = "resnet18", pretrained: bool = False, decoder_channels=None):
    """A U-Net for one-channel X-rays giving one lung logit per pixel.

    ``pretrained`` loads ImageNet encoder weights (segmentation-models-pytorch downloads
    them from the Hugging Face hub the first time; needs internet) and adapts the first
    convolution to one channel. The returned module standardises each image itself, so
    give it images in [0, 1] of shape (N, 1, H, W) with H and W multiples of 32.
    """
    import segmentation_models_pytorch as smp

    kw = {} if decoder_channels is None else {"decoder_channels": tuple(decoder_channels)}
    try:
        unet = smp.Unet(encoder_name=encoder, encoder_weights="imagenet" if pretrained else None,
                        in_channels=1, classes=1, **kw)
    except Exception as err:  # noqa: BLE001 - only the download can fail here
        if not pretrained:
            raise
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RuntimeError(f"ImageNet weights for the {encoder} encoder could not be loaded ({msg}); "
                           "connect to the internet once, or set pretrained=False") from None
    return _lung_unet_class()(unet)


@functools.lru_cache(maxsize=None)
def _lung_unet_class():
    import torch

    class LungUNet(torch.nn.Module):
        """``smp.Unet`` behind a per-image standardisation (zero mean, unit variance)."""

        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, x):
            mean = x.mean(dim=(2, 3), keepdim=True)
            std = x.std(dim=(2, 3), keepdim=True)
            return self.unet((x - mean) / (std + 1e-6))

    return LungUNet


def load_unet(path: str | os.PathLike, device="cpu"):
    """A U-Net checkpoint (``{arch, settings, state_dict}``) as (model in eval mode, settings)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no U-Net checkpoint here (train one with notebook 01 or `tbkd reproduce`)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file
        raise DataError(f"{path}: not a readable checkpoint ({str(err).splitlines()[0]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("arch") != ARCH:
        raise DataError(f"{path}: not a tbkd U-Net checkpoint (arch {ckpt.get('arch') if isinstance(ckpt, dict) else None!r})")
    s = ckpt["settings"]
    model = build_unet(s["encoder"], pretrained=False, decoder_channels=s.get("decoder_channels"))
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), s


# ---------------------------------------------------------------------------- measures

def dice_iou(pred, target) -> tuple[float, float]:
    """Dice = 2|P∩T| / (|P|+|T|) and IoU = |P∩T| / |P∪T| of two binary masks.

    Both empty counts as perfect agreement (1.0, 1.0). Dice = 2·IoU / (1 + IoU), so
    Dice is always the larger of the two except at 0 and 1.
    """
    p = np.asarray(pred).astype(bool)
    t = np.asarray(target).astype(bool)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and target {t.shape} differ in shape")
    inter = np.logical_and(p, t).sum()
    total = p.sum() + t.sum()
    if total == 0:
        return 1.0, 1.0
    union = total - inter
    return float(2 * inter / total), float(inter / union)


# ---------------------------------------------------------------------------- post-processing

def postprocess(prob, threshold: float = 0.5, keep: int = 2) -> np.ndarray:
    """Clean a lung probability map into a binary mask.

    Threshold it, keep the ``keep`` largest connected regions (two lungs; specks of
    false positives elsewhere go), and fill holes inside each (a dense nodule or the
    hilum can make the network hesitate in the middle of a lung).
    """
    m = np.asarray(prob) >= threshold
    lab, n = ndimage.label(m)
    if n > keep:
        sizes = np.bincount(lab.ravel())[1:]
        top = np.argsort(-sizes, kind="stable")[:keep] + 1
        m = np.isin(lab, top)
    return ndimage.binary_fill_holes(m)


def lung_regions(mask) -> list[dict]:
    """Connected regions of a mask, largest first: area (pixels), centroid, column range."""
    lab, n = ndimage.label(np.asarray(mask, bool))
    out = []
    for i, sl in enumerate(ndimage.find_objects(lab), 1):
        region = lab[sl] == i
        ys, xs = np.nonzero(region)
        out.append({"area": int(region.sum()), "cy": float(ys.mean() + sl[0].start),
                    "cx": float(xs.mean() + sl[1].start), "x0": sl[1].start, "x1": sl[1].stop})
    return sorted(out, key=lambda r: -r["area"])


def plausibility(mask, area_bounds: tuple[float, float] = (0.08, 0.60),
                 min_ratio: float = 0.25) -> tuple[bool, str]:
    """Is this a believable pair of lungs? ``(ok, reason)``.

    Checks: the lungs cover between ``area_bounds`` of the image; there are two
    regions; the smaller is at least ``min_ratio`` of the larger (not a speck); and
    they lie side by side (their column ranges overlap by less than half the narrower
    one), not one above the other (one lung broken in two). The reason says which
    check failed, or describes the mask when all pass.
    """
    m = np.asarray(mask, bool)
    share = float(m.mean()) if m.size else 0.0
    regions = lung_regions(m)
    if not regions:
        return False, "no lung found"
    lo, hi = area_bounds
    if share < lo:
        return False, f"lungs cover {share:.0%} of the image (expected at least {lo:.0%})"
    if share > hi:
        return False, f"lungs cover {share:.0%} of the image (expected at most {hi:.0%})"
    if len(regions) < 2:
        return False, "one lung region only"
    a, b = regions[0], regions[1]
    ratio = b["area"] / a["area"]
    if ratio < min_ratio:
        return False, f"second lung too small ({ratio:.0%} of the first; expected at least {min_ratio:.0%})"
    overlap = min(a["x1"], b["x1"]) - max(a["x0"], b["x0"])
    narrower = min(a["x1"] - a["x0"], b["x1"] - b["x0"])
    if overlap > 0.5 * narrower:
        return False, "the two regions lie one above the other, not side by side"
    return True, f"two lungs covering {share:.0%} of the image"


def _plaus(mask, profile) -> tuple[bool, str]:
    return plausibility(mask, tuple(profile.seg_area_bounds), profile.seg_min_lung_ratio)


# ---------------------------------------------------------------------------- extraction

def mask_shape(shape: tuple[int, int], max_side: int = 1024) -> tuple[int, int]:
    """The resolution masks are kept at: the image's own, shrunk so its long side is at most ``max_side``."""
    h, w = shape[:2]
    f = min(1.0, max_side / max(h, w))
    return max(1, round(h * f)), max(1, round(w * f))


def dilate(mask, radius: float) -> np.ndarray:
    """Grow a mask by ``radius`` pixels (a round structuring element, via a distance transform)."""
    m = np.asarray(mask, bool)
    if radius <= 0 or not m.any():
        return m.copy()
    return ndimage.distance_transform_edt(~m) <= radius


def lung_box(mask, margin: float = 0.03) -> tuple[int, int, int, int] | None:
    """(y0, x0, h, w) of the dilated mask's bounding box grown to a square, in the mask's pixels.

    ``None`` for an empty mask. The square may reach past the image's border.
    """
    m = dilate(mask, margin * max(np.shape(mask)))
    if not m.any():
        return None
    rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    side = max(y1 - y0, x1 - x0)
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    return int(math.floor(cy - side / 2)), int(math.floor(cx - side / 2)), int(side), int(side)


def crop_box(arr, box: tuple[float, float, float, float], out_size: int, order: int = 1) -> np.ndarray:
    """Cut ``box`` (y0, x0, h, w in ``arr``'s pixels) out of ``arr``, zero outside it, resized to out_size²."""
    arr = np.asarray(arr, np.float32)
    y0, x0, h, w = (int(round(v)) for v in box)
    canvas = np.zeros((h, w), np.float32)
    sy0, sx0 = max(y0, 0), max(x0, 0)
    sy1, sx1 = min(y0 + h, arr.shape[0]), min(x0 + w, arr.shape[1])
    if sy1 > sy0 and sx1 > sx0:
        canvas[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = arr[sy0:sy1, sx0:sx1]
    return resize(canvas, out_size, order=order)


def scale_box(box, from_shape, to_shape) -> tuple[float, float, float, float]:
    """A box in one resolution's pixels expressed in another's."""
    fy, fx = to_shape[0] / from_shape[0], to_shape[1] / from_shape[1]
    y0, x0, h, w = box
    return y0 * fy, x0 * fx, h * fy, w * fx


def extract_lungs(image, mask, out_size: int, margin: float = 0.03, return_box: bool = False):
    """The lung region of ``image`` as an ``out_size``² float32 image.

    The mask (any resolution; it is scaled to the image) is grown by ``margin`` of the
    image's larger side so the lung border stays in view; everything outside it turns
    black; the picture is cropped to the grown mask's bounding box, widened to a square
    around its centre (the lungs keep their proportions), and resized.

    An empty mask leaves nothing to cut out: the whole image is returned, resized.
    With ``return_box`` also returns the crop box (y0, x0, h, w) in the image's pixels,
    to cut other maps of the same image (e.g. lesion masks) the same way with :func:`crop_box`.
    """
    image = np.asarray(image, np.float32)
    mask = np.asarray(mask, bool)
    box = lung_box(mask, margin)
    if box is None:
        box_img = (0, 0, image.shape[0], image.shape[1])
        out = resize(image, out_size)
    else:
        grown = dilate(mask, margin * max(mask.shape))
        if grown.shape != image.shape:
            grown = resize(grown.astype(np.float32), image.shape, order=1) >= 0.5
        y0, x0, h, w = scale_box(box, mask.shape, image.shape)
        side = max(h, w)  # square in the image's own pixels
        box_img = (y0 + h / 2 - side / 2, x0 + w / 2 - side / 2, side, side)
        out = crop_box(image * grown, box_img, out_size)
    out = np.clip(out, 0, 1).astype(np.float32)
    box_img = tuple(int(round(v)) for v in box_img)
    return (out, box_img) if return_box else out


# ---------------------------------------------------------------------------- data for the U-Net

def _load_pairs(records: Sequence[Record], size: int, progress: bool = False, desc: str = "reading"):
    """Images and lung masks resized to size² as torch tensors (N, 1, size, size)."""
    import torch
    from tqdm.auto import tqdm

    imgs, masks = [], []
    for r in tqdm(records, desc=desc, disable=not progress, leave=False):
        imgs.append(resize(read_image(r.path), size))
        masks.append(lung_mask(r, shape=(size, size)))
    if not imgs:
        return torch.zeros((0, 1, size, size)), torch.zeros((0, 1, size, size))
    return (torch.from_numpy(np.stack(imgs)[:, None]),
            torch.from_numpy(np.stack(masks)[:, None].astype(np.float32)))


def masked_part(prep: Prepared, part: str) -> list[Record]:
    """The records of one split part that have lung masks (what the U-Net trains and is judged on)."""
    return [r for r in prep.part(part) if r.has_lung_mask]


def augment_pair(image, mask, generator=None):
    """Augment one image (1, H, W) float in [0, 1] and its mask (1, H, W) together.

    A random affine (rotation, shift, zoom) moves image and mask alike (the mask with
    nearest-neighbour, so it stays binary); brightness, contrast and gamma change the
    image only. Random numbers come from torch's global generator (seeded by the caller).
    """
    import torch
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    a = AUGMENT
    geo = v2.RandomAffine(degrees=a["degrees"], translate=(a["translate"], a["translate"]),
                          scale=a["scale"], interpolation=v2.InterpolationMode.BILINEAR)
    img, msk = geo(tv_tensors.Image(image), tv_tensors.Mask(mask))
    img = v2.ColorJitter(brightness=a["brightness"], contrast=a["contrast"])(img)
    lo, hi = a["gamma"]
    gamma = math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * float(torch.rand(())))
    img = img.clamp(0, 1) ** gamma
    return img.as_subclass(torch.Tensor), msk.as_subclass(torch.Tensor)


def augmentation_cases(record: Record, size: int, n: int = 4, seed: int = 0) -> list[dict]:
    """One image with its mask, then ``n`` joint augmentations of both (for ``viz.segmentation_overlays``)."""
    import torch

    x, y = _load_pairs([record], size)
    cases = [{"image": x[0, 0].numpy(), "pred": y[0, 0].numpy() > 0.5, "truth": None, "title": "original"}]
    gen_state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        for i in range(n):
            a, m = augment_pair(x[0], y[0] > 0.5)
            cases.append({"image": a[0].numpy(), "pred": m[0].numpy(), "truth": None, "title": f"augmented {i + 1}"})
    finally:
        torch.set_rng_state(gen_state)
    return cases


# ---------------------------------------------------------------------------- training

def train_settings(profile, prep: Prepared) -> dict:
    """Everything the trained U-Net depends on; a checkpoint with other settings is retrained."""
    train, val = masked_part(prep, "train"), masked_part(prep, "val")
    masks = {f"{r.key}:{i}": p for r in train + val for i, p in enumerate((r.mask, r.left_mask, r.right_mask)) if p}
    return {
        "arch": ARCH, "encoder": profile.seg_encoder, "pretrained": bool(profile.seg_pretrained),
        "decoder_channels": list(profile.seg_decoder_channels), "seg_size": profile.seg_size, "epochs": profile.seg_epochs,
        "batch_size": profile.seg_batch_size, "lr": UNET.lr, "seed": profile.seed,
        "augment": AUGMENT, "loss": "dice+bce",
        "train_keys": sorted(r.key for r in train), "val_keys": sorted(r.key for r in val),
        "split_sha256": store.file_sha256(prep.split_path),
        "masks_sha256": store.settings_digest({k: store.file_sha256(p) for k, p in masks.items()}),
    }


def checkpoint_path(profile) -> Path:
    return seg_dir(profile) / "unet.pt"


def _lr_at(step: int, total: int, base: float) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay to 1% of ``base``."""
    warm = max(1, int(0.05 * total))
    if step < warm:
        return base * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


def train_unet(profile, prep: Prepared | None = None, progress: bool = True, force: bool = False):
    """Train the lung U-Net of ``profile`` (or load the finished one); return (model, history).

    ``history`` is one dict per epoch: train_loss, val_loss, val_dice (at the network's
    size, before post-processing), lr, seconds. The model returned (and saved to
    ``segmentation/unet.pt``) holds the weights of the epoch with the best validation
    Dice. A finished training with the same settings is loaded, not redone (``force``
    retrains); a stopped one resumes from its last saved state (``unet_resume.pt``).
    """
    import torch

    from . import data as _data
    from .train import EpochLoop, adamw

    prep = prep or _data.prepare(profile, progress=progress)
    settings = train_settings(profile, prep)
    out = seg_dir(profile)
    ckpt_path, done_path, resume_path = checkpoint_path(profile), out / "unet.json", out / "unet_resume.pt"
    device = torch_device(profile.device)
    done = None if force else _finished_unet(profile, settings)
    if done is not None:
        model, _ = load_unet(ckpt_path, device)
        return model, done["history"]

    train, val = masked_part(prep, "train"), masked_part(prep, "val")
    if not train:
        raise DataError(f"{prep.root}: no image of the training split has a lung mask; the U-Net "
                        "needs masks (Montgomery ManualMask, Shenzhen mask/) or a trained checkpoint")
    seed_everything(profile.seed)
    x_tr, y_tr = _load_pairs(train, profile.seg_size, progress, "reading training images")
    x_va, y_va = _load_pairs(val, profile.seg_size, progress, "reading validation images")
    model = build_unet(profile.seg_encoder, profile.seg_pretrained, profile.seg_decoder_channels).to(device)
    opt = adamw(model.parameters(), UNET.lr, UNET.weight_decay)
    loss_fn = _loss()
    bs = profile.seg_batch_size
    steps_per_epoch = max(1, len(train) // bs + (len(train) % bs >= 2))
    total = steps_per_epoch * profile.seg_epochs
    best_path = out / "unet_best.pt"
    # the classifiers' epoch loop (train.EpochLoop): progress, resumable state, best weights
    loop = EpochLoop("U-Net", model, opt, None, profile.seg_epochs, digest=store.settings_digest(settings),
                     resume_path=resume_path, best_path=best_path, settings=settings, progress=progress,
                     save_every_s=RESUME_EVERY_S)
    history: list[dict] = []
    best = -math.inf
    last = None if force else loop.resume(requires=(best_path,))
    if last is not None:
        history, best = list(last["history"]), float(last["best"])
    del last
    try:
        for epoch in loop.epochs():
            t0 = time.perf_counter()
            model.train()
            perm = torch.randperm(len(train))
            losses = []
            bar = loop.step_bar(epoch, steps_per_epoch)
            for b in range(steps_per_epoch):
                idx = perm[b * bs:(b + 1) * bs]
                pairs = [augment_pair(x_tr[i], y_tr[i]) for i in idx.tolist()]
                x = torch.stack([p[0] for p in pairs]).to(device)
                y = torch.stack([p[1] for p in pairs]).float().to(device)
                lr = _lr_at((epoch - 1) * steps_per_epoch + b, total, UNET.lr)
                for g in opt.param_groups:
                    g["lr"] = lr
                loss = loss_fn(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
                bar.set_postfix(loss=f"{np.mean(losses):.3f}", refresh=False)
                bar.update(1)
            val_loss, val_dice = _validate(model, x_va, y_va, loss_fn, device, bs)
            row = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": val_loss,
                   "val_dice": val_dice, "lr": lr, "seconds": time.perf_counter() - t0}
            history.append(row)
            score = val_dice if len(val) else -row["train_loss"]
            if score > best:
                best = score
                loop.save_best({"epoch": epoch, "val_dice": val_dice})
            loop.end_epoch(epoch, {"history": history, "best": best}, keep_last=False,
                           loss=f"{row['train_loss']:.3f}", val_dice=f"{val_dice:.3f}")
    finally:
        loop.close()
    loop.load_best()
    model.eval()
    best_epoch = int(np.argmax([h["val_dice"] for h in history])) + 1 if len(val) else len(history)
    store.save_torch({"arch": ARCH, "settings": settings, "state_dict": model.state_dict(),
                      "history": history, "best_epoch": best_epoch}, ckpt_path)
    store.write_manifest(done_path, settings, checkpoint=ckpt_path.name,
                         checkpoint_sha256=store.file_sha256(ckpt_path), history=history,
                         best_epoch=best_epoch)
    for path in (resume_path, best_path):
        path.unlink(missing_ok=True)
    return model, history


def _finished_unet(profile, settings: dict) -> dict | None:
    """The training manifest (``unet.json``) of a finished U-Net with these settings whose
    checkpoint is intact, or None when there is none to load (it must be trained)."""
    out = seg_dir(profile)
    ckpt, done_path = checkpoint_path(profile), out / "unet.json"
    if not ckpt.is_file() or not store.manifest_complete(done_path, settings):
        return None
    done = store.read_json(done_path)
    return done if store.file_sha256(ckpt) == done.get("checkpoint_sha256") else None


def _loss():
    import segmentation_models_pytorch as smp
    import torch

    dice = smp.losses.DiceLoss(mode="binary", from_logits=True)
    bce = torch.nn.BCEWithLogitsLoss()
    return lambda logits, y: dice(logits, y) + bce(logits, y)


def _validate(model, x, y, loss_fn, device, bs) -> tuple[float, float]:
    """Validation loss and mean per-image Dice (threshold 0.5, at the network's size)."""
    import torch

    if len(x) == 0:
        return float("nan"), float("nan")
    model.eval()
    losses, dices = [], []
    with torch.no_grad():
        for i in range(0, len(x), bs):
            xb, yb = x[i:i + bs].to(device), y[i:i + bs].to(device)
            logits = model(xb)
            losses.append(float(loss_fn(logits, yb)) * len(xb))
            pred = (logits > 0).cpu().numpy()
            dices += [dice_iou(p, t)[0] for p, t in zip(pred, yb.cpu().numpy() > 0.5)]
    return float(np.sum(losses) / len(x)), float(np.mean(dices))


def best_epoch(history: Sequence[dict]) -> int:
    """The (1-based) epoch whose weights were kept: the best validation Dice."""
    vals = [h["val_dice"] for h in history]
    return int(np.nanargmax(vals)) + 1 if not all(np.isnan(vals)) else len(history)


# ---------------------------------------------------------------------------- prediction

def predict_probs(model, images: Sequence[np.ndarray], size: int, batch_size: int = 16,
                  device=None) -> np.ndarray:
    """Lung probability maps (N, size, size) of images of any size (each resized to size² first)."""
    import torch

    device = device or next(model.parameters()).device
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = np.stack([resize(np.asarray(im, np.float32), size) for im in images[i:i + batch_size]])
            logits = model(torch.from_numpy(x[:, None]).to(device))
            out.append(torch.sigmoid(logits)[:, 0].cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, size, size), np.float32)


def predict_masks(model, images: Sequence[np.ndarray], size: int, threshold: float = 0.5,
                  max_side: int = 1024, batch_size: int = 16, device=None) -> list[np.ndarray]:
    """Post-processed lung masks (bool), one per image, at :func:`mask_shape` of each image."""
    probs = predict_probs(model, images, size, batch_size, device)
    return [postprocess(resize(p, mask_shape(np.shape(im), max_side)), threshold)
            for p, im in zip(probs, images)]


# ---------------------------------------------------------------------------- evaluation

def evaluate(model, records: Sequence[Record], profile, progress: bool = False):
    """Dice and IoU of every record with a lung mask, as a table (pandas DataFrame).

    Predictions are scaled back to the mask's resolution (the image's own, at most
    ``seg_mask_max_side``) and post-processed, then compared with the manual mask there.
    Columns: key, file, dataset, label, dice, iou, dice_raw and regions_raw (Dice and
    number of connected regions before post-processing), area (lung share of the
    image), plausible, reason.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    rows = []
    recs = [r for r in records if r.has_lung_mask]
    for i in tqdm(range(0, len(recs), profile.seg_batch_size), disable=not progress, leave=False):
        chunk = recs[i:i + profile.seg_batch_size]
        imgs = [read_image(r.path) for r in chunk]
        probs = predict_probs(model, imgs, profile.seg_size, profile.seg_batch_size)
        for r, im, p in zip(chunk, imgs, probs):
            shape = mask_shape(im.shape, profile.seg_mask_max_side)
            truth = lung_mask(r, shape)
            up = resize(p, shape)
            pred = postprocess(up, profile.seg_threshold)
            d, j = dice_iou(pred, truth)
            ok, why = _plaus(pred, profile)
            raw = up >= profile.seg_threshold
            rows.append({"key": r.key, "file": r.path.name, "dataset": r.dataset, "label": r.label,
                         "dice": d, "iou": j, "dice_raw": dice_iou(raw, truth)[0],
                         "regions_raw": int(ndimage.label(raw)[1]), "area": float(pred.mean()),
                         "plausible": ok, "reason": why})
    cols = ["key", "file", "dataset", "label", "dice", "iou", "dice_raw", "regions_raw", "area",
            "plausible", "reason"]
    return pd.DataFrame(rows, columns=cols)


def summarize(table, by: str = "dataset"):
    """Mean ± sd of Dice and IoU per data set and overall, as a small table of strings."""
    import pandas as pd

    def row(name, t):
        return {by: name, "images": len(t),
                "Dice": f"{t['dice'].mean():.3f} ± {t['dice'].std(ddof=1) if len(t) > 1 else 0:.3f}",
                "IoU": f"{t['iou'].mean():.3f} ± {t['iou'].std(ddof=1) if len(t) > 1 else 0:.3f}",
                "worst Dice": f"{t['dice'].min():.3f}" if len(t) else "-"}

    rows = [row(name, t) for name, t in table.groupby(by)] if len(table) else []
    if table[by].nunique() > 1:
        rows.append(row("all", table))
    return pd.DataFrame(rows).set_index(by)


def overlay_cases(model, records: Sequence[Record], profile, table=None, titles: str = "dice") -> list[dict]:
    """Images with predicted (and, where known, manual) masks, ready for ``viz.segmentation_overlays``.

    With ``table`` (from :func:`evaluate`) each title carries the image's Dice.
    """
    imgs = [read_image(r.path) for r in records]
    masks = predict_masks(model, imgs, profile.seg_size, profile.seg_threshold, profile.seg_mask_max_side)
    dice = dict(zip(table["key"], table["dice"])) if table is not None else {}
    cases = []
    for r, im, m in zip(records, imgs, masks):
        truth = lung_mask(r, m.shape) if r.has_lung_mask else None
        ok, why = _plaus(m, profile)
        title = r.path.stem + (f"\nDice {dice[r.key]:.3f}" if r.key in dice else "")
        if not ok:
            title += "\nimplausible"
        cases.append({"image": resize(im, m.shape) if im.shape != m.shape else im, "pred": m,
                      "truth": truth, "title": title, "plausible": ok, "reason": why})
    return cases


def postprocess_example(model, record: Record, profile) -> dict:
    """One image through each step of post-processing, for ``viz.postprocess_steps``."""
    img = read_image(record.path)
    shape = mask_shape(img.shape, profile.seg_mask_max_side)
    prob = resize(predict_probs(model, [img], profile.seg_size)[0], shape)
    raw = prob >= profile.seg_threshold
    return {"image": resize(img, shape), "prob": prob, "raw": raw,
            "clean": postprocess(prob, profile.seg_threshold), "title": record.path.stem}


def best_and_worst(table, n: int = 4):
    """Keys of the ``n`` best and ``n`` worst images by Dice."""
    t = table.sort_values(["dice", "key"], ascending=[False, True])
    return list(t["key"][:n]), list(t["key"][::-1][:n])


# ---------------------------------------------------------------------------- extraction of every record

@dataclass
class ExtractionResult:
    """What :func:`run_extraction` produced: one entry per record key.

    Each entry: ``extracted`` and ``mask`` (paths relative to ``folder``), ``dataset``,
    ``fallback`` (True when the mask was implausible and the whole image was used),
    ``reason`` (the plausibility verdict), ``area``, ``box`` (y0, x0, h, w of the crop
    in the original image's pixels) and ``shape`` (the original image's H, W).
    """

    folder: Path
    manifest: Path
    entries: dict[str, dict]
    settings: dict = field(default_factory=dict)
    reused: int = 0  # records taken from an earlier (possibly interrupted) run
    computed: int = 0
    seconds: float = 0.0

    def path(self, key: str, what: str = "extracted") -> Path:
        return self.folder / self.entries[key][what]

    @property
    def fallbacks(self) -> list[tuple[str, str]]:
        """(key, reason) of every record whose mask was implausible."""
        return [(k, e["reason"]) for k, e in sorted(self.entries.items()) if e["fallback"]]

    def table(self):
        import pandas as pd

        rows = [{"key": k, "dataset": e["dataset"], "fallback": e["fallback"], "area": e["area"],
                 "reason": e["reason"]} for k, e in sorted(self.entries.items())]
        return pd.DataFrame(rows, columns=["key", "dataset", "fallback", "area", "reason"])

    def counts(self):
        """Per data set: images, extracted from their lungs, fell back to the whole image."""
        t = self.table()
        g = t.groupby("dataset")["fallback"]
        out = g.agg(images="size", fallback="sum")
        out["extracted"] = out["images"] - out["fallback"]
        return out[["images", "extracted", "fallback"]]


def extraction_settings(profile, prep: Prepared, checkpoint: Path) -> dict:
    return {"checkpoint_sha256": store.file_sha256(checkpoint), "seg_size": profile.seg_size,
            "threshold": profile.seg_threshold, "margin": profile.seg_margin,
            "area_bounds": list(profile.seg_area_bounds), "min_lung_ratio": profile.seg_min_lung_ratio,
            "extract_size": extract_size(profile), "mask_max_side": profile.seg_mask_max_side,
            "split_sha256": store.file_sha256(prep.split_path),
            "keys": store.settings_digest(sorted(r.key for r in prep.records))}


def extraction_current(profile, prep: Prepared) -> bool:
    """True when the finished extraction in ``segmentation/`` is the one this profile would
    make now: its U-Net is the checkpoint ``train_unet`` would load for these settings and
    data (not one to retrain), and the extraction used that checkpoint, these sizes and
    thresholds, these records and this split. Cheap: file hashes are remembered."""
    if _finished_unet(profile, train_settings(profile, prep)) is None:
        return False
    return store.manifest_complete(seg_dir(profile) / "manifest.json",
                                   extraction_settings(profile, prep, checkpoint_path(profile)))


def _save_png(arr: np.ndarray, path: Path) -> None:
    """An 8-bit grey PNG, written atomically."""
    with store.atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def cut_out(image: np.ndarray, mask: np.ndarray, plausible: bool, size: int,
            margin: float) -> tuple[np.ndarray, tuple]:
    """``(size² image, crop box)``: the lungs cut out along ``mask``, or the whole image
    when the mask failed the lung check (never a crop from a mask we do not believe)."""
    if plausible:
        return extract_lungs(image, mask, size, margin, return_box=True)
    return resize(image, size), (0, 0, image.shape[0], image.shape[1])


def process_image(image: np.ndarray, prob: np.ndarray, profile) -> tuple[np.ndarray, np.ndarray, dict]:
    """Mask, extracted image and verdict of one image from its U-Net probability map."""
    mask = postprocess(resize(prob, mask_shape(image.shape, profile.seg_mask_max_side)), profile.seg_threshold)
    ok, why = _plaus(mask, profile)
    out, box = cut_out(image, mask, ok, extract_size(profile), profile.seg_margin)
    info = {"fallback": not ok, "reason": why, "area": round(float(mask.mean()), 4),
            "box": list(box), "shape": list(image.shape)}
    return mask, out, info


def run_extraction(profile, prep: Prepared, model=None, progress: bool = True,
                   checkpoint: Path | None = None) -> ExtractionResult:
    """Predict a lung mask for every record and cut out its lungs; cache both.

    Files go to ``segmentation/masks/<key>.png`` (0/255, at :func:`mask_shape`) and
    ``segmentation/extracted/<key>.png`` (8-bit, ``extract_size(profile)`` px), each
    written atomically. A journal (``extraction.partial.jsonl``) records each finished
    record after both its files are in place, so a stopped run resumes where it left
    off; the manifest (``segmentation/manifest.json``) is written last and only then is
    the stage trusted. A complete manifest with the same settings (checkpoint, sizes,
    thresholds, data) means nothing is redone.
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    out = seg_dir(profile)
    ckpt = Path(checkpoint) if checkpoint else checkpoint_path(profile)
    settings = extraction_settings(profile, prep, ckpt)
    manifest = out / "manifest.json"
    if store.manifest_complete(manifest, settings):
        man = store.read_json(manifest)
        entries = man["entries"]
        if all((out / e[w]).is_file() for e in entries.values() for w in ("extracted", "mask")):
            return ExtractionResult(out, manifest, entries, settings, reused=len(entries), computed=0,
                                    seconds=time.perf_counter() - t_start)
    if manifest.exists():
        manifest.unlink()  # its files are about to be rewritten: it must not vouch for them
    if model is None:
        model, _ = load_unet(ckpt, torch_device(profile.device))
    journal = out / "extraction.partial.jsonl"
    digest = store.settings_digest(settings)
    entries = _read_journal(journal, digest, out)
    reused = len(entries)
    todo = [r for r in prep.records if r.key not in entries]
    out.mkdir(parents=True, exist_ok=True)
    if not journal.exists() or reused == 0:
        journal.write_text(json.dumps({"settings_digest": digest}) + "\n")
    bs = profile.seg_batch_size
    with open(journal, "a") as jf, tqdm(total=len(todo), desc="extracting lungs", disable=not progress) as bar:
        for i in range(0, len(todo), bs):
            chunk = todo[i:i + bs]
            imgs = [read_image(r.path) for r in chunk]
            probs = predict_probs(model, imgs, profile.seg_size, bs)
            for r, im, p in zip(chunk, imgs, probs):
                mask, ext, info = process_image(im, p, profile)
                rel_m, rel_e = f"masks/{r.key}.png", f"extracted/{r.key}.png"
                _save_png(mask.astype(np.uint8) * 255, out / rel_m)
                _save_png(_to_u8(ext), out / rel_e)
                entry = {"key": r.key, "dataset": r.dataset, "image": str(r.path), "mask": rel_m,
                         "extracted": rel_e, **info}
                entries[r.key] = entry
                jf.write(json.dumps(entry) + "\n")
            jf.flush()
            os.fsync(jf.fileno())
            bar.update(len(chunk))
    entries = {k: entries[k] for k in sorted(entries) if k in {r.key for r in prep.records}}
    n_fb = sum(e["fallback"] for e in entries.values())
    store.write_manifest(manifest, settings, entries=entries, records=len(entries), fallbacks=n_fb,
                         extract_size=extract_size(profile))
    journal.unlink()
    return ExtractionResult(out, manifest, entries, settings, reused=reused, computed=len(todo),
                            seconds=time.perf_counter() - t_start)


def _read_journal(journal: Path, digest: str, out: Path) -> dict[str, dict]:
    """Entries of an interrupted run with the same settings whose files are both in place.

    A torn last line (the run stopped mid-write) or an entry whose file is missing is
    not trusted: that record is redone.
    """
    if not journal.is_file():
        return {}
    lines = journal.read_text().splitlines()
    try:
        head = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        head = {}
    if head.get("settings_digest") != digest:
        journal.unlink()
        return {}
    entries = {}
    for line in lines[1:]:
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(e, dict) and all((out / e.get(w, "")).is_file() for w in ("mask", "extracted")):
            entries[e["key"]] = e
    return entries


def load_extraction(profile) -> ExtractionResult:
    """The finished extraction of ``profile`` (raises DataError when there is none)."""
    out = seg_dir(profile)
    manifest = out / "manifest.json"
    if not store.manifest_complete(manifest):
        raise DataError(f"{manifest}: lung extraction not complete (run notebook 01 first)")
    man = store.read_json(manifest)
    return ExtractionResult(out, manifest, man["entries"], man["settings"], reused=len(man["entries"]))


def extracted_records(prep_or_records, manifest) -> list[Record]:
    """The records, each reading its lung-extracted image instead of the original.

    ``manifest`` is an :class:`ExtractionResult`, a profile, or the path of the
    manifest. Raises DataError when a record has no extracted image (extraction not
    run, incomplete, or made for other data).
    """
    recs = prep_or_records.records if isinstance(prep_or_records, Prepared) else list(prep_or_records)
    if isinstance(manifest, ExtractionResult):
        res = manifest
    elif hasattr(manifest, "artifacts"):
        res = load_extraction(manifest)
    else:
        path = Path(manifest)
        if not store.manifest_complete(path):
            raise DataError(f"{path}: lung extraction not complete (run notebook 01 first)")
        man = store.read_json(path)
        res = ExtractionResult(path.parent, path, man["entries"], man["settings"])
    out = []
    for r in recs:
        if r.key not in res.entries:
            raise DataError(f"{r.path}: no lung-extracted image in {res.manifest} (re-run notebook 01)")
        p = res.path(r.key)
        if not p.is_file():
            raise DataError(f"{p}: extracted image missing (re-run notebook 01)")
        out.append(r.with_path(p))
    return out


def before_after(result: ExtractionResult, records: Sequence[Record], n: int = 4) -> list[dict]:
    """Original image with its predicted mask, and the extracted image, for ``viz.extraction_pairs``."""
    pairs = []
    for r in list(records)[:n]:
        e = result.entries[r.key]
        img = read_image(r.path)
        mask = np.asarray(Image.open(result.path(r.key, "mask"))) > 127
        pairs.append({"image": resize(img, mask.shape) if img.shape != mask.shape else img,
                      "mask": mask, "extracted": read_image(result.path(r.key)),
                      "title": r.path.stem, "fallback": e["fallback"], "reason": e["reason"]})
    return pairs


# ---------------------------------------------------------------------------- tbkd segment

class Segmented(tuple):
    """``(path, error)``: unpacks as a pair; ``mask``, ``extracted`` and ``note`` say more.

    ``error`` is None when both files were written; ``note`` says when the mask was
    implausible and the whole image was used instead.
    """

    def __new__(cls, path, error, mask=None, extracted=None, note=None):
        self = super().__new__(cls, (path, error))
        self.mask, self.extracted, self.note = mask, extracted, note
        return self

    @property
    def path(self) -> Path:
        return self[0]

    @property
    def error(self) -> str | None:
        return self[1]


def expand_inputs(paths: Iterable[str | os.PathLike]) -> list[tuple[Path, str | None]]:
    """Files as given, folders as the image files below them: (path, error or None)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                           and not _is_junk(f) and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not files:
                out.append((p, f"{p}: no .png/.jpg images in this folder"))
            out += [(f, None) for f in files]
        else:
            out.append((p, None))
    return out


def segment_files(paths: Sequence[str | os.PathLike], outdir: str | os.PathLike,
                  checkpoint: str | os.PathLike | None, profile, progress: bool = False) -> list[Segmented]:
    """Segment image files: ``<outdir>/<stem>_mask.png`` and ``<stem>_lungs.png`` per input.

    Folders are expanded to the images below them. A file that cannot be read gets
    its DataError line as the error and the others are still done. ``checkpoint``
    defaults to the profile's trained U-Net; a missing or bad checkpoint raises
    DataError (nothing can be done without it). Extracted images have
    ``extract_size(profile)`` px; an implausible mask gives the whole image and a note.
    """
    ckpt = Path(checkpoint) if checkpoint else checkpoint_path(profile)
    model, s = load_unet(ckpt, torch_device(profile.device))
    size = s["seg_size"]
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    results, used = [], set()
    for path, err in expand_inputs(paths):
        if err:
            results.append(Segmented(path, err))
            continue
        try:
            img = read_image(path)
        except DataError as e:
            results.append(Segmented(path, str(e)))
            continue
        stem, n = path.stem, 1
        while stem in used:
            n += 1
            stem = f"{path.stem}-{n}"
        used.add(stem)
        try:
            prob = predict_probs(model, [img], size)[0]
            mask, ext, info = process_image(img, prob, profile)
        except (ValueError, RuntimeError) as e:  # e.g. an image too small for the network
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            results.append(Segmented(path, f"{path}: cannot segment it ({why})"))
            continue
        mp, ep = outdir / f"{stem}_mask.png", outdir / f"{stem}_lungs.png"
        try:
            _save_png(mask.astype(np.uint8) * 255, mp)
            _save_png(_to_u8(ext), ep)
        except OSError as e:
            results.append(Segmented(path, f"{path}: cannot write its output to {outdir} ({e.strerror or e})"))
            continue
        note = f"{path}: implausible lung mask ({info['reason']}); used the whole image" if info["fallback"] else None
        results.append(Segmented(path, None, mp, ep, note))
    return results
