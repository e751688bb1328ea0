"""Starting weights of the classifiers: random, ImageNet, or chest-X-ray pretrained.

One setting (``Profile.weights``, ``make reproduce WEIGHTS=...``, ``tbkd reproduce
--weights ...``, the environment variable ``TBKD_WEIGHTS``) chooses:

- ``"random"``: every model from random weights (``quick`` and ``real``: nothing to
  download, and the kit's own figures are measured so);
- ``"imagenet"``: torchvision's ImageNet weights (``get_model_weights(arch).DEFAULT``)
  for every teacher and the student (``full``'s default, the paper's most likely setting);
- ``"cxr"``: torchxrayvision's chest-X-ray DenseNet121 (``densenet121-res224-all``,
  trained on eight public chest X-ray sets) for the DenseNet121 teacher; the other
  teachers and the student have no chest-X-ray weights of the same kind and take the
  ImageNet ones (:func:`kind_for`).

Where a file is looked for, in this order: the folder ``TBKD_WEIGHTS_DIR`` (any machine,
no network: copy the files there), then the usual cache of each kind (torch's
``$TORCH_HOME/hub/checkpoints`` for ImageNet, ``~/.torchxrayvision/models_data`` for the
chest-X-ray DenseNet). A file found nowhere is downloaded once into that cache; without a
network the run stops with one line that names the file and where to put it
(:class:`WeightsError`), before anything is written. A file whose SHA-256 does not start
with the prefix in its name (torchvision's naming), that cannot be read, or whose shapes
are not the model's, is refused with one line that says which.

This module imports nothing of the package: the model zoo reads it.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch

KINDS = ("random", "imagenet", "cxr")
#: the architecture the chest-X-ray weights exist for, and where they are published
CXR_ARCH = "densenet121"
CXR_URL = ("https://github.com/mlmed/torchxrayvision/releases/download/v1/"
           "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt")
#: torchxrayvision's DenseNet121: one input channel, 18 pathology outputs, pixels in [-1024, 1024]
CXR_CLASSES = 18
CXR_MEAN, CXR_STD = 0.5, 1 / 2048  # (x - 0.5) / (1 / 2048) maps [0, 1] onto [-1024, 1024]
_HASH = re.compile(r"-([a-f0-9]{6,})\.")  # torch.hub's convention: name-<sha256 prefix>.pth


class WeightsError(ValueError):
    """Starting weights that cannot be had: the message is one line for the user."""


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"weights={kind!r}: choose one of {', '.join(KINDS)}")
    return kind


def kind_for(kind: str, arch: str) -> str:
    """The weights ``arch`` actually starts from under the setting ``kind``: ``"cxr"``
    exists for DenseNet121 only; the other models take ImageNet's."""
    check_kind(kind)
    return "imagenet" if kind == "cxr" and arch != CXR_ARCH else kind


def source(kind: str, arch: str) -> tuple[str, str, str | None]:
    """``(url, file name, SHA-256 prefix or None)`` of ``arch``'s weights of ``kind``."""
    kind = kind_for(kind, arch)
    if kind == "imagenet":
        import torchvision

        url = torchvision.models.get_model_weights(arch).DEFAULT.url
    elif kind == "cxr":
        url = CXR_URL
    else:
        raise ValueError(f"{arch}: random weights have no file")
    name = url.rsplit("/", 1)[-1]
    m = _HASH.search(name)
    return url, name, m.group(1) if m else None


def user_dir() -> Path | None:
    env = os.environ.get("TBKD_WEIGHTS_DIR")
    return Path(env).expanduser() if env else None


def cache_dir(kind: str) -> Path:
    """Where ``kind``'s weights are cached (and downloaded to)."""
    if kind == "cxr":
        return Path("~/.torchxrayvision/models_data").expanduser()
    return Path(torch.hub.get_dir()) / "checkpoints"


def search_dirs(kind: str, arch: str) -> list[Path]:
    kind = kind_for(kind, arch)
    return [d for d in (user_dir(), cache_dir(kind)) if d is not None]


def _download(url: str, dst: Path, prefix: str | None, progress: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    # torch.hub writes a temporary file and moves it into place: nothing half-written
    torch.hub.download_url_to_file(url, str(dst), hash_prefix=prefix, progress=progress)


def locate(kind: str, arch: str, download: bool = True, progress: bool = True) -> Path:
    """The local file of ``arch``'s weights of ``kind`` (:func:`search_dirs`), downloaded
    into the cache when it is nowhere and ``download`` allows. Raises :class:`WeightsError`."""
    url, name, prefix = source(kind, arch)
    dirs = search_dirs(kind, arch)
    for d in dirs:
        if (d / name).is_file():
            return d / name
    where = " or ".join(str(d) for d in dirs)
    how = (f"download {url} on a machine with internet and put it in {where}"
           + ("" if user_dir() else " (or in a folder named by TBKD_WEIGHTS_DIR)"))
    if not download:
        raise WeightsError(f"{arch}: {kind_for(kind, arch)} weights {name} not found; {how}")
    dst = cache_dir(kind_for(kind, arch)) / name
    try:
        _download(url, dst, prefix, progress)
    except Exception as err:  # no network, refused, interrupted
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise WeightsError(f"{arch}: {kind_for(kind, arch)} weights {name} not found and not downloadable "
                           f"({reason}); {how}") from None
    return dst


def check_hash(path: Path) -> None:
    """Refuse a file whose SHA-256 does not start with the prefix its name carries."""
    m = _HASH.search(path.name)
    if not m:
        return
    h = hashlib.sha256(path.read_bytes()).hexdigest()
    if not h.startswith(m.group(1)):
        raise WeightsError(f"{path}: hash mismatch (SHA-256 {h[:12]}..., the name says {m.group(1)}...): "
                           "a corrupt or wrong file; delete it and fetch it again")


def read_state(path: Path, kind: str) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, read with ``weights_only=True``. torchxrayvision
    publishes a pickled model, which the kit does not unpickle: with torchxrayvision
    installed its own loader reads it; otherwise save the model's ``state_dict()``
    under the same name."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        if kind == "cxr":
            state = _xrv_state(path, err)
        else:
            raise WeightsError(f"{path}: cannot read weights ({str(err).splitlines()[0]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _xrv_state(path: Path, err: Exception) -> dict:
    try:
        import torchxrayvision as xrv
    except ImportError:
        raise WeightsError(f"{path}: a pickled torchxrayvision model, which the kit reads only through "
                           "torchxrayvision (pip install torchxrayvision), or save its state_dict() under "
                           "this name") from None
    model = xrv.models.DenseNet(weights="densenet121-res224-all", cache_dir=str(path.parent))
    return {k: v for k, v in model.state_dict().items() if k != "op_threshs"}


def load(kind: str, arch: str, download: bool = True, progress: bool = True) -> tuple[dict, Path]:
    """``(state dict, file)`` of ``arch``'s weights of ``kind``: located, hash-checked, read."""
    path = locate(kind, arch, download=download, progress=progress)
    check_hash(path)
    return read_state(path, kind_for(kind, arch)), path


def preflight(kind: str, archs, download: bool = True) -> list[Path]:
    """Make sure the weights of every model in ``archs`` are here (downloading what is
    missing) before a run starts: a missing file stops it at once, before anything is
    written. Returns the files."""
    check_kind(kind)
    if kind == "random":
        return []
    out = []
    for arch in dict.fromkeys(archs):
        path = locate(kind, arch, download=download)
        check_hash(path)
        out.append(path)
    return out


__all__ = ["KINDS", "CXR_ARCH", "WeightsError", "check_kind", "kind_for", "source", "search_dirs", "cache_dir",
           "locate", "check_hash", "read_state", "load", "preflight"]
