"""Grad-CAM: viewing it (pytorch-grad-cam), measuring it, caching it, and training with it.

Four parts, in the order the notebooks use them:

1. **Viewing** (:func:`compute_cams`, :func:`compute_cams_and_logits`, :func:`overlay`):
   batched maps from pytorch-grad-cam's classes (:data:`CAM_METHODS`), one per image,
   ``float32`` in ``[0, 1]`` at the input size, and the logits of the same forward pass.
2. **Measuring** (:func:`mass_in_mask`, :func:`pointing_game`, :func:`cam_agreement`,
   :func:`faithfulness`): how much attention falls inside the lungs, whether the peak
   lands on a lesion, how alike two models' maps are, and whether deleting what a map
   points at changes the model's confidence (pytorch-grad-cam's ROAD metrics).
3. **Caching** (:func:`build_cam_cache`, :func:`load_cam_cache`): a teacher's maps and
   logits for a data set, written once as ``.npz`` and reused while the checkpoint and
   settings stay the same (the format is described at :func:`build_cam_cache`).
4. **Training** (:func:`differentiable_gradcam`, :func:`normalize_maps`, :func:`cam_loss`):
   the student's Grad-CAM as a differentiable function of its weights, from the same
   forward pass that gives its logits, so that a CAM loss can be backpropagated.
   No library offers this; it is checked against pytorch-grad-cam's ``GradCAM``.

Every function takes the model and its target layer explicitly (``model, layer``); the
model takes ``(N, 1, H, W)`` images in ``[0, 1]`` and returns logits ``(N, C)``
(``models.build_model`` / ``models.target_layer`` make such pairs). Functions that need
eval mode switch to it and restore each module's train/eval mode afterwards.

A note on in-place operations: some torchvision models change the target layer's output
in place afterwards (DenseNet applies ``F.relu(..., inplace=True)`` to ``features.norm5``).
pytorch-grad-cam would then see post-ReLU activations with pre-ReLU gradients on the CPU
(its stored activation shares memory with the tensor the ReLU overwrites) and pre-ReLU
activations on a GPU (where ``.cpu()`` copies first). Every function here adds a forward
hook that hands the rest of the network a *copy* of the layer's output, so that the
activations and gradients are always those of the layer's own output, on any device.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import store

__all__ = [
    "CAM_METHODS", "compute_cams", "compute_cams_and_logits", "overlay",
    "mass_in_mask", "pointing_game", "cam_agreement", "faithfulness", "FAITHFULNESS_METRICS",
    "CamCache", "build_cam_cache", "load_cam_cache", "CAM_CACHE_FORMAT",
    "differentiable_gradcam", "normalize_maps", "cam_loss", "CAM_LOSSES", "resize_maps",
]

CAM_CACHE_FORMAT = "tbkd-cam-cache/1"
CAM_LOSSES = ("mse", "l1", "at")
#: ``1e-7``: the epsilon pytorch-grad-cam's ``scale_cam_image`` adds to the max.
_MINMAX_EPS = 1e-7


def _cam_methods() -> dict[str, type]:
    import pytorch_grad_cam as pgc

    names = {
        "gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "scorecam": "ScoreCAM",
        "eigencam": "EigenCAM", "layercam": "LayerCAM", "xgradcam": "XGradCAM",
        "hirescam": "HiResCAM", "eigengradcam": "EigenGradCAM",
        "gradcam-elementwise": "GradCAMElementWise",
    }
    return {key: getattr(pgc, cls) for key, cls in names.items() if hasattr(pgc, cls)}


#: name → pytorch-grad-cam class, for the methods the installed version provides.
#: ``scorecam`` runs the model once per channel of the target layer per image: slow.
CAM_METHODS: dict[str, type] = _cam_methods()


# --------------------------------------------------------------------------- small helpers
def _device_of(model: nn.Module, device: Any = None) -> torch.device:
    """``device`` (the model is moved there), else the device of the model's parameters."""
    if device is not None:
        device = torch.device(device)
        model.to(device)
        return device
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside, and every module's own train/eval flag put back afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@contextlib.contextmanager
def _params_frozen(model: nn.Module) -> Iterator[None]:
    """No parameter gradients inside (saves the weight-gradient work of a CAM backward),
    and every parameter's ``requires_grad`` and ``.grad`` put back afterwards (the
    library calls ``model.zero_grad()``, which would otherwise wipe a caller's grads)."""
    saved = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        for p, _, _ in saved:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag, grad in saved:
            p.requires_grad_(flag)
            p.grad = grad


@contextlib.contextmanager
def _copy_layer_output(layer: nn.Module) -> Iterator[None]:
    """Hand the network downstream of ``layer`` a copy of its output (see the module doc)."""
    def hook(module, inputs, output):
        if isinstance(output, torch.Tensor):
            return output.clone()
        return None

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def _graph_from_layer(layer: nn.Module) -> Iterator[None]:
    """Start the autograd graph at ``layer``'s output (a leaf that requires grad) rather than
    at the input: Grad-CAM needs the gradient down to that layer only, and with the
    parameters frozen nothing below it needs one, so the backward pass stops there instead
    of running through the whole network to the image. Runs before the library's hooks."""
    def hook(module, inputs, output):
        if isinstance(output, torch.Tensor) and not output.requires_grad:
            return output.detach().requires_grad_(True)
        return None

    handle = layer.register_forward_hook(hook, prepend=True)
    try:
        yield
    finally:
        handle.remove()


def _logits_of(out: Any) -> torch.Tensor:
    """Plain logits from a model output (``InceptionOutputs`` and tuples: the first item)."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"model returned {type(out).__name__}, expected a logits tensor")


def _check_images(images: Any) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a tensor (N, 1, H, W), got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must have shape (N, 1, H, W), got {tuple(images.shape)}")
    return images.float()


def _target_list(target_class: Any, n: int) -> list[int] | None:
    """``None`` (predicted class), or one class index per image."""
    if target_class is None:
        return None
    if isinstance(target_class, torch.Tensor):
        target_class = target_class.detach().cpu().reshape(-1).tolist() \
            if target_class.ndim else int(target_class)
    if isinstance(target_class, np.ndarray):
        target_class = target_class.reshape(-1).tolist() if target_class.ndim else int(target_class)
    if isinstance(target_class, (int, np.integer)):
        return [int(target_class)] * n
    out = [int(c) for c in target_class]
    if len(out) != n:
        raise ValueError(f"target_class has {len(out)} entries for {n} images")
    return out


def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = (int(s) for s in size)
    return h, w


def resize_maps(maps: np.ndarray | torch.Tensor, size: int | Sequence[int],
                mode: str = "auto") -> np.ndarray | torch.Tensor:
    """Resize ``(N, h, w)`` (or ``(h, w)``) maps to ``size``; same type back (numpy → float32).

    ``mode``: ``"bilinear"`` (half-pixel centres, as OpenCV's ``INTER_LINEAR``),
    ``"area"`` (averaging), ``"nearest"``, or ``"auto"``: area when both sides shrink
    (bilinear would sample only a few pixels of a large map), else bilinear.
    """
    size = _size2(size)
    is_np = isinstance(maps, np.ndarray)
    t = torch.from_numpy(np.asarray(maps, dtype=np.float32)) if is_np else maps
    squeeze = t.ndim == 2
    if squeeze:
        t = t[None]
    if mode == "auto":
        shrink = size[0] <= t.shape[-2] and size[1] <= t.shape[-1]
        mode = "area" if shrink else "bilinear"
    if tuple(t.shape[-2:]) != size:
        kw = {"align_corners": False} if mode == "bilinear" else {}
        t = F.interpolate(t[:, None].float(), size=size, mode=mode, **kw)[:, 0]
    if squeeze:
        t = t[0]
    return t.numpy() if is_np else t


# --------------------------------------------------------------------------- 1. viewing
def _cam_batches(model: nn.Module, layer: nn.Module, batches: Iterable[tuple[torch.Tensor, Any]],
                 method: str = "gradcam", device: Any = None, batch_size: int = 32,
                 ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(cams (n, H, W) float32, logits (n, C) float32)`` per ``(images, targets)``
    batch, with one pytorch-grad-cam object (one set of hooks) for all of them."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}: choose one of {', '.join(CAM_METHODS)}")
    cls = CAM_METHODS[method]
    device = _device_of(model, device)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_eval_mode(model))
        stack.enter_context(_params_frozen(model))
        # the library's context manager releases its hooks on exit (it also swallows an
        # IndexError there, so one raised inside is re-raised below as a RuntimeError)
        cam = stack.enter_context(cls(model=model, target_layers=[layer]))
        # registered after the library's hooks, so that they see the layer's own output
        stack.enter_context(_copy_layer_output(layer))
        if cam.uses_gradients:  # the params are frozen: the graph starts at the layer
            stack.enter_context(_graph_from_layer(layer))
        if method == "scorecam":
            cam.batch_size = batch_size  # its masked forward passes, per image
        grad_ctx = torch.enable_grad if cam.uses_gradients else torch.no_grad
        it = iter(batches)
        while True:
            try:  # an IndexError must not reach the library's __exit__ (it would vanish)
                images, targets = next(it)
            except StopIteration:
                break
            except IndexError as err:
                raise RuntimeError(f"reading the images: IndexError: {err}") from err
            x = images.to(device)
            tg = None if targets is None else [ClassifierOutputTarget(c) for c in targets]
            try:
                with grad_ctx():
                    maps = cam(input_tensor=x, targets=tg)
            except IndexError as err:
                raise RuntimeError(f"{method}: {err} (is target_class within the model's "
                                   f"outputs, and does the layer run in the forward?)") from err
            logits = _logits_of(cam.outputs).detach().float().cpu().numpy()
            cam.outputs = None  # drop the graph now
            yield np.clip(np.asarray(maps, dtype=np.float32), 0.0, 1.0), logits


def compute_cams_and_logits(model: nn.Module, layer: nn.Module, images: torch.Tensor,
                            target_class: int | Sequence[int] | None = 1, method: str = "gradcam",
                            batch_size: int = 32, device: Any = None,
                            ) -> tuple[np.ndarray, np.ndarray]:
    """CAMs of ``images`` and the logits of the same forward passes.

    ``images``: ``(N, 1, H, W)`` in ``[0, 1]``. ``target_class``: one class for all
    images, one per image, or ``None`` for each image's predicted class. ``method``: a
    key of :data:`CAM_METHODS`. Runs in batches of ``batch_size`` in eval mode (each
    module's mode is restored afterwards; parameters' ``requires_grad`` and ``.grad``
    too). ``device``: where to run (the model is moved there); default: the model's.

    Returns ``cams`` ``(N, H, W)`` float32 in ``[0, 1]`` (pytorch-grad-cam's scaling:
    per image min-max at the layer's resolution, OpenCV bilinear resize to ``(H, W)``,
    min-max again; a map with no positive value is all zeros, never NaN) and ``logits``
    ``(N, C)`` float32.
    """
    images = _check_images(images)
    n = images.shape[0]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    targets = _target_list(target_class, n)
    if n == 0:
        return (np.zeros((0, *images.shape[-2:]), np.float32), np.zeros((0, 0), np.float32))
    batches = ((images[i:i + batch_size], None if targets is None else targets[i:i + batch_size])
               for i in range(0, n, batch_size))
    cams, logits = [], []
    for c, lg in _cam_batches(model, layer, batches, method=method, device=device,
                              batch_size=batch_size):
        cams.append(c)
        logits.append(lg)
    return np.concatenate(cams), np.concatenate(logits)


def compute_cams(model: nn.Module, layer: nn.Module, images: torch.Tensor,
                 target_class: int | Sequence[int] | None = 1, method: str = "gradcam",
                 batch_size: int = 32, device: Any = None) -> np.ndarray:
    """``(N, H, W)`` float32 maps in ``[0, 1]``; see :func:`compute_cams_and_logits`."""
    return compute_cams_and_logits(model, layer, images, target_class, method,
                                   batch_size, device)[0]


def overlay(image: np.ndarray | torch.Tensor, cam: np.ndarray | torch.Tensor, alpha: float = 0.5,
            colormap: str | int = "jet") -> np.ndarray:
    """A gray ``image`` ``(H, W)`` in ``[0, 1]`` with ``cam`` drawn over it as a heat map.

    ``alpha``: weight of the heat map (0: the image alone, 1: the heat map alone).
    ``colormap``: an OpenCV colormap name (``"jet"``, ``"turbo"``, ``"inferno"``, ...) or
    constant. ``cam`` is resized to the image when sizes differ. Returns ``(H, W, 3)``
    float32 RGB in ``[0, 1]`` (pytorch-grad-cam's ``show_cam_on_image``).
    """
    import cv2
    from pytorch_grad_cam.utils.image import show_cam_on_image

    img = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image,
                     dtype=np.float32)
    cam = np.asarray(cam.detach().cpu() if isinstance(cam, torch.Tensor) else cam, dtype=np.float32)
    img = np.squeeze(img)
    cam = np.squeeze(cam)
    if img.ndim != 2 or cam.ndim != 2:
        raise ValueError(f"overlay: image and cam must be 2-D, got {img.shape} and {cam.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if cam.shape != img.shape:
        cam = resize_maps(cam, img.shape)
    if isinstance(colormap, str):
        code = getattr(cv2, f"COLORMAP_{colormap.upper()}", None)
        if code is None:
            raise ValueError(f"unknown OpenCV colormap {colormap!r}")
    else:
        code = int(colormap)
    rgb = np.repeat(np.clip(img, 0, 1)[..., None], 3, axis=2)
    out = show_cam_on_image(rgb, np.clip(np.nan_to_num(cam), 0, 1), use_rgb=True,
                            colormap=code, image_weight=1.0 - alpha)
    return out.astype(np.float32) / 255.0


# --------------------------------------------------------------------------- 2. measuring
def _as_maps(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3:
        raise ValueError(f"{name} must have shape (N, H, W) or (H, W), got {arr.shape}")
    return arr


def _maps_and_masks(cams: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    c = _as_maps(cams, "cams").astype(np.float64)
    m = _as_maps(masks, "masks").astype(bool)
    if len(c) != len(m):
        raise ValueError(f"{len(c)} maps but {len(m)} masks")
    if c.shape[1:] != m.shape[1:]:  # measure at the masks' resolution
        c = resize_maps(c.astype(np.float32), m.shape[1:]).astype(np.float64)
    return c, m


def mass_in_mask(cams: Any, masks: Any) -> np.ndarray:
    """Share of each map's total mass that lies inside its mask: ``(N,)`` float64 in ``[0, 1]``.

    ``cams`` ``(N, H, W)`` non-negative; ``masks`` ``(N, H', W')`` boolean (e.g. lungs).
    Maps are resized (:func:`resize_maps`) to the masks' size when they differ. A map with no mass
    at all gives NaN (use ``np.nanmean``). A map that is uniform gives the mask's area
    share: compare with that baseline.
    """
    c, m = _maps_and_masks(cams, masks)
    if (c < 0).any():
        raise ValueError("mass_in_mask: maps must be non-negative")
    total = c.reshape(len(c), -1).sum(1)
    inside = (c * m).reshape(len(c), -1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / np.where(total > 0, total, 1), np.nan)


def pointing_game(cams: Any, lesion_masks: Any, tolerance_px: float = 0) -> np.ndarray:
    """Does each map's maximum fall on a lesion? ``(N,)`` float64: 1.0 hit, 0.0 miss, NaN.

    - NaN for images whose lesion mask is empty (no lesion to point at: skip them with
      ``np.nanmean``; the hit rate is ``np.nanmean(result)``).
    - A hit when the map's argmax (the first one in row-major order on ties) is within
      ``tolerance_px`` pixels (Euclidean, at the masks' resolution) of a lesion pixel.
    - A constant map (e.g. all zeros) points nowhere: a miss (0.0).
    Maps are resized (:func:`resize_maps`) to the masks' size when they differ.
    """
    from scipy.ndimage import distance_transform_edt

    c, m = _maps_and_masks(cams, lesion_masks)
    out = np.full(len(c), np.nan)
    for i, (cam, les) in enumerate(zip(c, m)):
        if not les.any():
            continue
        if not np.isfinite(cam).all() or cam.max() == cam.min():
            out[i] = 0.0
            continue
        r, q = np.unravel_index(int(np.argmax(cam)), cam.shape)
        if tolerance_px <= 0:
            out[i] = float(les[r, q])
        else:
            out[i] = float(distance_transform_edt(~les)[r, q] <= tolerance_px)
    return out


def cam_agreement(a: Any, b: Any, metric: str = "pearson", top_fraction: float = 0.2) -> np.ndarray:
    """Per-image agreement of two sets of maps ``(N, H, W)``: ``(N,)`` float64.

    - ``metric="pearson"``: Pearson correlation of the pixel values, in ``[-1, 1]``;
      NaN when either map is constant.
    - ``metric="iou"``: intersection over union of the two maps' top ``top_fraction``
      pixels (exactly ``ceil(top_fraction * H * W)`` pixels each; ties broken by a stable
      sort, i.e. by position).
    Maps of different sizes are compared at the larger one (bilinear).
    """
    x = _as_maps(a, "a").astype(np.float32)
    y = _as_maps(b, "b").astype(np.float32)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} maps against {len(y)} maps")
    if x.shape[1:] != y.shape[1:]:
        size = max(x.shape[1:], y.shape[1:], key=lambda s: s[0] * s[1])
        x, y = resize_maps(x, size), resize_maps(y, size)
    x = x.reshape(len(x), -1).astype(np.float64)
    y = y.reshape(len(y), -1).astype(np.float64)
    if metric == "pearson":
        xc = x - x.mean(1, keepdims=True)
        yc = y - y.mean(1, keepdims=True)
        den = np.sqrt((xc ** 2).sum(1) * (yc ** 2).sum(1))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, (xc * yc).sum(1) / np.where(den > 0, den, 1), np.nan)
    if metric == "iou":
        if not 0 < top_fraction <= 1:
            raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
        k = max(1, math.ceil(top_fraction * x.shape[1]))
        out = np.empty(len(x))
        for i in range(len(x)):
            ta = set(np.argsort(-x[i], kind="stable")[:k].tolist())
            tb = set(np.argsort(-y[i], kind="stable")[:k].tolist())
            out[i] = len(ta & tb) / len(ta | tb)
        return out
    raise ValueError(f"unknown agreement metric {metric!r}: 'pearson' or 'iou'")


#: what :func:`faithfulness` can measure (pytorch-grad-cam's metrics), and which sign is good.
FAITHFULNESS_METRICS = {
    "road_combined": "ROADCombined: (LeRF - MoRF) / 2 over the percentiles; higher is better",
    "road_morf": "ROADMostRelevantFirstAverage: confidence change after removing the most "
                 "relevant pixels; lower (more negative) is better",
    "road_lerf": "ROADLeastRelevantFirstAverage: confidence change after removing the least "
                 "relevant pixels; higher (closer to 0) is better",
    "cam_mult": "CamMultImageConfidenceChange: confidence(x * cam) - confidence(x); "
                "higher is better",
}


def faithfulness(model: nn.Module, layer: nn.Module | None, images: torch.Tensor,
                 cams: np.ndarray | None = None, target_class: int | Sequence[int] | None = 1,
                 metric: str = "road_combined", method: str = "gradcam",
                 percentiles: Sequence[int] = (10, 30, 50, 70, 90), score: str = "softmax",
                 batch_size: int = 32, seed: int = 0, device: Any = None) -> np.ndarray:
    """How much the model's confidence depends on what each map points at: ``(N,)`` float64.

    Uses pytorch-grad-cam's metrics (see :data:`FAITHFULNESS_METRICS` for each one's
    meaning and good direction). ROAD (Rong et al. 2022) replaces the removed pixels by
    a noisy linear interpolation of their neighbours; its imputer works per channel and
    was checked here on single-channel tensors (the installed version reshapes the image
    to ``(C, H*W)`` and solves one sparse system; with ``C = 1`` scipy returns a vector,
    which broadcasts correctly). The imputer's noise is drawn from a generator seeded
    with ``seed`` (the global random state is left as it was).

    ``cams``: ``(N, h, w)`` maps (resized to the images when smaller, e.g. a cache's);
    ``None``: computed here with ``method`` on ``layer``. ``score``: ``"softmax"`` (the
    confidence is the class probability) or ``"logit"``. Maps that are constant (no
    ranking of pixels; ROAD's linear system has no known pixel then) get NaN.
    Cost: ROAD solves one sparse system per image, percentile and direction (about
    25 ms at 64 px on one CPU core; ``cam_mult`` needs one forward pass).
    """
    from pytorch_grad_cam.metrics import road
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
    from pytorch_grad_cam.utils.model_targets import (ClassifierOutputSoftmaxTarget,
                                                      ClassifierOutputTarget)

    images = _check_images(images)
    n, (h, w) = images.shape[0], images.shape[-2:]
    if metric not in FAITHFULNESS_METRICS:
        raise ValueError(f"unknown metric {metric!r}: choose one of {', '.join(FAITHFULNESS_METRICS)}")
    if score not in ("softmax", "logit"):
        raise ValueError(f"score must be 'softmax' or 'logit', got {score!r}")
    device = _device_of(model, device)
    if cams is None:
        if layer is None:
            raise ValueError("faithfulness: pass cams or the layer to compute them on")
        cams = compute_cams(model, layer, images, target_class, method, batch_size, device)
    cams = _as_maps(cams, "cams").astype(np.float32)
    if len(cams) != n:
        raise ValueError(f"{len(cams)} maps for {n} images")
    if cams.shape[1:] != (h, w):
        cams = resize_maps(cams, (h, w))
    targets = _target_list(target_class, n)
    if targets is None:
        with torch.no_grad(), _eval_mode(model):
            targets = [int(c) for i in range(0, n, batch_size)
                       for c in _logits_of(model(images[i:i + batch_size].to(device))).argmax(1)]
    target_cls = ClassifierOutputSoftmaxTarget if score == "softmax" else ClassifierOutputTarget
    pct = list(percentiles)
    metric_obj: Callable = {
        "road_combined": lambda: road.ROADCombined(percentiles=pct),
        "road_morf": lambda: road.ROADMostRelevantFirstAverage(percentiles=pct),
        "road_lerf": lambda: road.ROADLeastRelevantFirstAverage(percentiles=pct),
        "cam_mult": CamMultImageConfidenceChange,
    }[metric]()
    flat = cams.reshape(n, -1)
    usable = np.isfinite(flat).all(1) & (flat.max(1) > flat.min(1))
    out = np.full(n, np.nan)
    idx = np.flatnonzero(usable)
    devices = [device] if device.type == "cuda" else []
    with _eval_mode(model), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for i in range(0, len(idx), batch_size):
            sel = idx[i:i + batch_size]
            x = images[torch.as_tensor(sel)].to(device)
            tg = [target_cls(targets[j]) for j in sel]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", category=UserWarning)
                # the installed ROAD calls np.argwhere on a tensor (NumPy 2 deprecation)
                warnings.filterwarnings("ignore", message=".*__array_wrap__", category=DeprecationWarning)
                vals = metric_obj(x, cams[sel], tg, model)
            out[sel] = np.asarray(vals, dtype=np.float64).reshape(len(sel))
    return out


# --------------------------------------------------------------------------- 3. caching
@dataclass
class CamCache:
    """A teacher's attention maps and logits for a data set, in the data set's order.

    ``cams`` ``(N, h, w)`` float16 in ``[0, 1]``; ``logits`` ``(N, C)`` float32;
    ``labels`` ``(N,)`` int64; ``key`` the dict it was built for; ``ids`` ``(N,)`` str
    (the records' keys) when the data set had ``records``, else ``None``.
    """

    cams: np.ndarray
    logits: np.ndarray
    labels: np.ndarray
    key: dict
    ids: np.ndarray | None = None
    path: Path | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return int(self.cams.shape[0])

    def cams_tensor(self, index: Any = None, device: Any = None) -> torch.Tensor:
        """The maps (all, or ``cams[index]``) as a float32 tensor, e.g. a batch's targets."""
        arr = self.cams if index is None else self.cams[np.asarray(index)]
        return torch.from_numpy(np.asarray(arr, dtype=np.float32)).to(device or "cpu")

    def probabilities(self) -> np.ndarray:
        """Softmax of the logits, ``(N, C)``."""
        z = self.logits - self.logits.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)


def _jsonable_key(key: dict) -> dict:
    """The key as it will read back from JSON (tuples → lists, paths → str, ...)."""
    return json.loads(json.dumps(key, sort_keys=True, default=store._jsonable))


def _dataset_fingerprint(dataset: Any) -> tuple[dict, list[str] | None]:
    """What identifies the data set's content beyond the caller's key."""
    info: dict[str, Any] = {}
    ids = None
    try:
        info["n_images"] = len(dataset)
    except TypeError:
        pass
    records = getattr(dataset, "records", None)
    if records is not None and all(hasattr(r, "key") for r in records):
        ids = [str(r.key) for r in records]
        info["ids_sha256"] = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    images = getattr(dataset, "images", None)
    if isinstance(images, torch.Tensor):  # CXRDataset keeps its pixels in memory: cheap
        arr = images.detach().cpu().contiguous().numpy()
        info["images_sha256"] = hashlib.sha256(arr.tobytes()).hexdigest()
        info["images_shape"] = list(arr.shape)
    return info, ids


def _save_npz(file, **arrays) -> None:  # a seam for tests (a failure while writing)
    np.savez_compressed(file, **arrays)


def load_cam_cache(path: str | Path) -> CamCache:
    """Read a cache written by :func:`build_cam_cache`.

    Raises ``FileNotFoundError`` when absent and ``ValueError`` (one line starting with
    the path) when the file is unreadable or not a tbkd CAM cache.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such CAM cache")
    try:
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
            missing = {"format", "cams", "logits", "labels", "key"} - names
            if missing:
                raise ValueError(f"missing {', '.join(sorted(missing))}")
            fmt = str(z["format"])
            if fmt != CAM_CACHE_FORMAT:
                raise ValueError(f"format {fmt!r}, expected {CAM_CACHE_FORMAT!r}")
            cache = CamCache(cams=z["cams"], logits=z["logits"], labels=z["labels"],
                             key=json.loads(str(z["key"])),
                             ids=z["ids"] if "ids" in names else None, path=path)
    except ValueError as err:
        raise ValueError(f"{path}: not a readable CAM cache ({' '.join(str(err).split())})") from None
    except Exception as err:  # truncated zip, bad zlib stream, ...
        raise ValueError(f"{path}: not a readable CAM cache ({type(err).__name__}: "
                         f"{' '.join(str(err).split())})") from None
    n = len(cache.cams)
    if cache.cams.ndim != 3 or len(cache.logits) != n or len(cache.labels) != n \
            or (cache.ids is not None and len(cache.ids) != n):
        raise ValueError(f"{path}: not a readable CAM cache (arrays of different lengths)")
    return cache


def build_cam_cache(model: nn.Module, layer: nn.Module, dataset: Any, path: str | Path,
                    key: dict, cam_size: int | Sequence[int] | None = None, batch_size: int = 32,
                    method: str = "gradcam", target_class: int | Sequence[int] | None = 1,
                    progress: bool = True, device: Any = None) -> CamCache:
    """The teacher's maps and logits for every image of ``dataset``, cached at ``path``.

    ``dataset`` yields ``(x (1, H, W) in [0, 1], y)`` (e.g. ``data.CXRDataset`` without
    augmentation; an augmenting one is refused: its images change at every read).
    ``key`` identifies what the maps depend on, e.g. ``{"checkpoint_sha256":
    store.file_sha256(ckpt), "image_size": 64}``. The stored key is ``key`` plus
    ``method``, ``target_class``, ``cam_size`` and a fingerprint of the data
    (``n_images``; ``ids_sha256`` when the data set has ``records``; ``images_sha256``
    when it holds an ``images`` tensor, as ``CXRDataset`` does, so that images re-made
    by another segmentation are noticed too). When ``path`` holds a cache with the
    same stored key it is loaded and nothing is computed; otherwise (no file, another
    key, an unreadable file) the maps are computed and the file (re)written atomically.

    **File format** (``CAM_CACHE_FORMAT = "tbkd-cam-cache/1"``), a compressed ``.npz``
    readable with ``np.load(path, allow_pickle=False)``:

    - ``format``: 0-d str, ``"tbkd-cam-cache/1"``;
    - ``cams``: ``(N, h, w)`` float16 in ``[0, 1]``: :func:`compute_cams` maps at the
      input size, shrunk to ``cam_size`` with area averaging when given;
    - ``logits``: ``(N, C)`` float32, from the same forward passes;
    - ``labels``: ``(N,)`` int64, the data set's ``y``;
    - ``key``: 0-d str, the stored key as JSON (sorted keys);
    - ``ids``: ``(N,)`` str, the records' keys (only when the data set has ``records``).
    Row ``i`` of every array is ``dataset[i]``.
    """
    from tqdm.auto import tqdm

    path = Path(path)
    if getattr(dataset, "augment", False):
        raise ValueError("build_cam_cache: the data set augments its images; cache maps of "
                         "a data set built with augment=False")
    data_info, ids = _dataset_fingerprint(dataset)
    if isinstance(target_class, (torch.Tensor, np.ndarray)):
        arr = np.asarray(target_class.detach().cpu() if isinstance(target_class, torch.Tensor)
                         else target_class).astype(int)
        target_class = int(arr) if arr.ndim == 0 else arr.reshape(-1).tolist()
    if isinstance(target_class, np.integer):
        target_class = int(target_class)
    if target_class is not None and not isinstance(target_class, int):
        target_class = [int(c) for c in target_class]  # one per image, in the data set's order
    full_key = _jsonable_key({**key, "method": method, "cam_size": cam_size,
                              "target_class": target_class, **data_info})
    if path.exists():
        try:
            cached = load_cam_cache(path)
        except ValueError as err:
            warnings.warn(f"{err}; recomputing it", stacklevel=2)
        else:
            if cached.key == full_key:
                return cached

    n_total = data_info.get("n_images")
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         num_workers=0)
    labels_all: list[np.ndarray] = []
    seen = 0

    def batches():
        nonlocal seen
        for x, y in loader:
            n = x.shape[0]
            labels_all.append(np.asarray(y, dtype=np.int64).reshape(n))
            tg = _target_list(target_class[seen:seen + n] if isinstance(target_class, list)
                              else target_class, n)
            seen += n
            yield _check_images(x), tg

    cams, logits = [], []
    bar = tqdm(total=n_total, desc=f"{method} maps", disable=not progress, leave=False)
    try:
        for c, lg in _iter_cams(model, layer, batches(), method=method, device=device,
                                batch_size=batch_size):
            if cam_size is not None:
                c = resize_maps(c, cam_size, mode="area")
            cams.append(np.clip(c, 0, 1).astype(np.float16))
            logits.append(lg.astype(np.float32))
            bar.update(len(c))
    finally:
        bar.close()
    if not cams:
        size = _size2(cam_size) if cam_size is not None else (0, 0)
        cams, logits = [np.zeros((0, *size), np.float16)], [np.zeros((0, 0), np.float32)]
    arrays = {
        "format": np.array(CAM_CACHE_FORMAT),
        "cams": np.concatenate(cams),
        "logits": np.concatenate(logits),
        "labels": np.concatenate(labels_all) if labels_all else np.zeros(0, np.int64),
        "key": np.array(json.dumps(full_key, sort_keys=True)),
    }
    if ids is not None:
        arrays["ids"] = np.array(ids, dtype=str)
    with store.atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:  # a file object: numpy adds no ".npz" to the name
            _save_npz(f, **arrays)
    return CamCache(cams=arrays["cams"], logits=arrays["logits"], labels=arrays["labels"],
                    key=full_key, ids=arrays.get("ids"), path=path)


_iter_cams = _cam_batches  # the computation build_cam_cache calls (tests replace it)


# --------------------------------------------------------------------------- 4. training
def _minmax(c: torch.Tensor, eps: float = _MINMAX_EPS) -> torch.Tensor:
    """pytorch-grad-cam's per-image scaling: ``(c - min) / (eps + max(c - min))``."""
    c = c - c.amin(dim=(-2, -1), keepdim=True)
    return c / (eps + c.amax(dim=(-2, -1), keepdim=True))


def differentiable_gradcam(model: nn.Module, layer: nn.Module, x: torch.Tensor,
                           target_class: int | torch.Tensor | Sequence[int] | None = 1,
                           out_size: int | Sequence[int] | None = None, normalize: bool = True,
                           create_graph: bool = True, relu: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM as a differentiable function of the model's weights, batched.

    One forward pass of ``x`` ``(N, 1, H, W)`` gives the logits and, through a forward
    hook on ``layer``, its activations ``A`` ``(N, K, h, w)``. Then, for each image's
    class score ``s`` (``target_class``: one int, one per image, or ``None`` for the
    predicted class):

    ``grads = autograd.grad(sum(s), A, create_graph=True)``;
    ``weights = grads.mean((2, 3))``; ``cam = relu(sum_k weights_k * A_k)``.

    ``relu=False`` keeps the signed map (before the ReLU). Distillation trains on it: where
    the ReLU zeroes a region (at first, for a student from scratch, often the whole map)
    no gradient passes, so a student whose map is empty could never learn to light it
    up. After min-max scaling the signed map is the ReLU'd one wherever that is not
    empty, up to where its zero lies.

    With ``normalize`` the map is scaled as pytorch-grad-cam scales it: per image min-max
    (``(c - min) / (1e-7 + max)``) at the layer's resolution, then, when ``out_size`` is
    given, a bilinear resize (half-pixel centres, as OpenCV's ``INTER_LINEAR``) and
    min-max again. Without ``normalize`` the raw map is only resized.

    Returns ``(cams (N, h', w'), logits (N, C))``. Both stay on the autograd graph: the
    caller's cross-entropy uses these logits (no second forward pass) and a loss on the
    maps reaches the weights before ``layer`` (the gradients are second-order terms, so
    ``create_graph=True``; with ``False`` the maps still depend on the weights through
    ``A``, only not through the gradients). Works in train mode (BatchNorm statistics
    update once, as in any forward; in train mode the scores of a batch are coupled by
    BatchNorm, so the gradient of ``sum(s)`` is not exactly per image, as in any batched
    Grad-CAM). The hook is removed even when something fails.

    Agreement with pytorch-grad-cam's ``GradCAM`` (tests/test_cam.py): on the same model
    (eval mode), layer and inputs, with ``out_size`` the input size, the detached maps
    match the library's within a max abs difference of 1e-4 (measured: about 1e-6).
    """
    x = _check_images(x) if not isinstance(x, torch.Tensor) else x
    if x.ndim != 4:
        raise ValueError(f"x must have shape (N, 1, H, W), got {tuple(x.shape)}")
    captured: list[torch.Tensor] = []

    def hook(module, inputs, output):
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            raise ValueError(f"the target layer returned {type(output).__name__} "
                             f"{tuple(getattr(output, 'shape', ()))}; Grad-CAM needs (N, K, h, w)")
        captured.append(output)
        return output.clone()  # downstream in-place ops change the copy, not A

    with torch.enable_grad():
        if not x.requires_grad and not all(p.requires_grad for p in model.parameters()):
            # frozen weights before the layer (a teacher): start the graph at the input
            x = x.detach().requires_grad_(True)
        handle = layer.register_forward_hook(hook)
        try:
            logits = _logits_of(model(x))
        finally:
            handle.remove()
        if not captured:
            raise ValueError("the target layer did not run in the model's forward pass")
        acts = captured[-1]  # a layer run several times: its last call
        if not acts.requires_grad:
            raise ValueError("the target layer's output does not require grad")
        n = logits.shape[0]
        if target_class is None:
            idx = logits.detach().argmax(1)
        elif isinstance(target_class, torch.Tensor) and target_class.ndim:
            idx = target_class.to(logits.device).long().reshape(-1)
        else:
            idx = torch.as_tensor(_target_list(target_class, n), device=logits.device).long()
        if idx.numel() != n:
            raise ValueError(f"target_class has {idx.numel()} entries for {n} images")
        if n and (idx.min() < 0 or idx.max() >= logits.shape[1]):
            raise ValueError(f"target_class out of range for {logits.shape[1]} classes")
        score = logits.gather(1, idx[:, None]).sum()
        (grads,) = torch.autograd.grad(score, acts, create_graph=create_graph, retain_graph=True)
        weights = grads.mean(dim=(2, 3))
        cams = (weights[:, :, None, None] * acts).sum(1)
        if relu:
            cams = F.relu(cams)
        if normalize:
            cams = _minmax(cams)
        if out_size is not None:
            size = _size2(out_size)
            if tuple(cams.shape[-2:]) != size:
                cams = F.interpolate(cams[:, None], size=size, mode="bilinear",
                                     align_corners=False)[:, 0]
                if normalize:
                    cams = _minmax(cams)
    return cams, logits


def normalize_maps(cams: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each map divided by the L2 norm of its flattened values (same shape back).

    An all-zero map stays all zero (the norm is clamped at ``eps``).
    """
    flat = cams.reshape(cams.shape[0], -1)
    return F.normalize(flat, p=2, dim=1, eps=eps).reshape(cams.shape)


def cam_loss(student_cams: torch.Tensor, teacher_cams: torch.Tensor | np.ndarray,
             kind: str = "mse", normalize: bool = True) -> torch.Tensor:
    """Distance between the student's maps ``(N, h, w)`` and the teacher's ``(N, h', w')``.

    The teacher's maps (a tensor or a cache's float16 array) are resized to the
    student's size when they differ (:func:`resize_maps`: area averaging when shrinking,
    bilinear when enlarging), and detached (they are targets). With
    ``normalize`` (default) both are first L2-normalised per image
    (:func:`normalize_maps`), so only where attention lies counts, not its scale.

    - ``"mse"``: mean over all pixels and images of the squared difference (for
      L2-normalised maps: ``(2 - 2 cos) / (h w)`` per image; the scale of Zagoruyko &
      Komodakis' reference code, which multiplies it by beta = 1000);
    - ``"l1"``: mean absolute difference;
    - ``"at"``: attention transfer as written in Zagoruyko & Komodakis (2017), eq. 2 with
      p = 2: the L2 distance between the normalised maps, per image (in ``[0, 2]`` and
      independent of the map size), averaged over images.
    All are 0 for identical maps. Returns a scalar tensor.
    """
    if kind not in CAM_LOSSES:
        raise ValueError(f"unknown CAM loss {kind!r}: choose one of {', '.join(CAM_LOSSES)}")
    s = student_cams
    if s.ndim == 4 and s.shape[1] == 1:
        s = s[:, 0]
    t = torch.as_tensor(np.asarray(teacher_cams, dtype=np.float32)
                        if isinstance(teacher_cams, np.ndarray) else teacher_cams)
    t = t.detach().to(device=s.device, dtype=s.dtype)
    if t.ndim == 4 and t.shape[1] == 1:
        t = t[:, 0]
    if s.ndim != 3 or t.ndim != 3 or s.shape[0] != t.shape[0]:
        raise ValueError(f"cam_loss: maps must be (N, h, w) with the same N, got "
                         f"{tuple(s.shape)} and {tuple(t.shape)}")
    if t.shape[-2:] != s.shape[-2:]:
        t = resize_maps(t, tuple(s.shape[-2:]))
    if normalize:
        s, t = normalize_maps(s), normalize_maps(t)
    if kind == "mse":
        return F.mse_loss(s, t)
    if kind == "l1":
        return F.l1_loss(s, t)
    return torch.linalg.vector_norm((s - t).reshape(s.shape[0], -1), ord=2, dim=1).mean()
