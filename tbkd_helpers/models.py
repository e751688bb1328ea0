"""The model zoo: the paper's five teachers, the students, their Grad-CAM target layers.

Every classifier here is a torchvision model wrapped in :class:`GrayToModel`, so that all
of them take the same input: a *single-channel* batch ``(N, 1, H, W)`` with values in
``[0, 1]`` (a chest X-ray is gray). The wrapper normalises inside the model, so callers
never normalise, and the first convolution is adapted to one input channel:

- with ImageNet weights its RGB kernels are **summed** (what timm does for
  ``in_chans=1``): a gray image ``g`` fed as ``(g, g, g)`` to the RGB kernel gives the
  same response as ``g`` fed to the summed kernel. The gray image is normalised with the
  mean of ImageNet's channel means and stds (Inception V3's ported weights expect
  ``(x - 0.5) / 0.5`` instead, which is what torchvision's ``transform_input`` did);
- from scratch the first channel of torchvision's own initialisation is kept (the per-
  weight distribution torchvision would have drawn for one input channel) and the input
  is normalised with a fixed ``(x - 0.5) / 0.25``.

The normalisation constants are buffers of the model, so a checkpoint carries them.

>>> model = build_model("resnet18")                    # doctest: +SKIP
>>> model(torch.rand(2, 1, 64, 64)).shape              # doctest: +SKIP
torch.Size([2, 2])
"""
from __future__ import annotations

import copy
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
import torchvision
import torch.nn.functional as F
from torch import nn

from . import store
from . import weights as _weights

__all__ = [
    "ARCHS", "ArchSpec", "GrayToModel", "build_model", "target_layer", "recalibrate_bn",
    "has_batchnorm", "model_info", "cpu_latency", "checkpoint", "save_checkpoint",
    "load_checkpoint", "CHECKPOINT_FORMAT",
]

CHECKPOINT_FORMAT = "tbkd-classifier/1"

# VGG's classifier heads. "classic": torchvision's (7x7x512 features -> 4096 -> 4096 ->
# classes, 124 M weights), made for 224 px inputs. At 64 px the last feature map is 2x2:
# the adaptive pool copies each value 12 times into the 7x7 grid, and the optimiser
# updates 102 M first-layer weights that see 2048 distinct numbers. "gap": global average
# pooling, then the same three layers at width 512 (0.5 M weights); the 13 convolutions
# and the Grad-CAM layer are untouched. The quick profile uses "gap" (3x faster steps).
VGG_HEADS = ("classic", "gap")

# Gray versions of ImageNet's normalisation: the mean of the three channel values.
IMAGENET_GRAY_MEAN = (0.485 + 0.456 + 0.406) / 3  # 0.449
IMAGENET_GRAY_STD = (0.229 + 0.224 + 0.225) / 3  # 0.226
SCRATCH_MEAN, SCRATCH_STD = 0.5, 0.25


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class ArchSpec:
    """How to adapt one torchvision classifier: where its first conv, head and CAM layer are."""

    name: str  # torchvision model name
    first_conv: str  # dotted path (inside the torchvision model) of the RGB input conv
    head: str  # dotted path of the final nn.Linear
    cam_layer: str  # dotted path of the Grad-CAM target layer (last feature map)
    cam_layer16: str = ""  # the last layer at stride 16 (twice the resolution), "" = cam_layer
    cam_layer8: str = ""  # the last layer at stride 8 (for the tiny inputs of the quick profile)
    min_size: int = 32  # smallest input side that survives the network's downsampling
    pretrained_mean: float = IMAGENET_GRAY_MEAN
    pretrained_std: float = IMAGENET_GRAY_STD
    # BatchNorm momentum for a model trained from scratch (None: torchvision's default)
    scratch_bn_momentum: float | None = None
    note: str = ""


ARCHS: dict[str, ArchSpec] = {
    "densenet121": ArchSpec(
        "densenet121", "features.conv0", "classifier", "features.norm5",
        cam_layer16="features.denseblock3", cam_layer8="features.denseblock2",
        note="the CAM layer is norm5, the last feature map (ReLU and pooling follow)"),
    "inception_v3": ArchSpec(
        "inception_v3", "Conv2d_1a_3x3.conv", "fc", "Mixed_7c", min_size=75,
        cam_layer16="Mixed_6e", cam_layer8="Mixed_5d",
        # torchvision's Inception V3 weights were ported from TensorFlow and expect
        # inputs in [-1, 1]; its transform_input=True did that conversion. We turn
        # transform_input off and normalise with 0.5 / 0.5 ourselves.
        pretrained_mean=0.5, pretrained_std=0.5,
        note="aux classifier dropped; transform_input off; needs >= 75 px"),
    "resnet18": ArchSpec("resnet18", "conv1", "fc", "layer4.1", cam_layer16="layer3.1",
                         cam_layer8="layer2.1"),
    # torchvision builds MobileNet V3 with BatchNorm momentum 0.01 (the TensorFlow
    # reference's 0.99 decay, meant for hundreds of thousands of steps). Trained from
    # scratch for a few hundred steps, the running statistics then lag so far behind the
    # weights that the eval-mode model predicted a single class for every test image
    # (accuracy 0.455 while its AUC was 0.80-0.85, in the kit's first experiments). From scratch we use
    # PyTorch's usual 0.1, and train.fit also recomputes the statistics after training
    # (recalibrate_bn). Pretrained models keep torchvision's setting.
    "mobilenet_v3_large": ArchSpec(
        "mobilenet_v3_large", "features.0.0", "classifier.3", "features.16",
        cam_layer16="features.12", cam_layer8="features.6",
        scratch_bn_momentum=0.1, note="BN momentum 0.1 from scratch (torchvision: 0.01)"),
    "mobilenet_v3_small": ArchSpec(
        "mobilenet_v3_small", "features.0.0", "classifier.3", "features.12",
        cam_layer16="features.8", cam_layer8="features.3",
        scratch_bn_momentum=0.1, note="BN momentum 0.1 from scratch (torchvision: 0.01)"),
    # VGG's CAM layer is the ReLU after the last conv, before the last max-pool: twice the
    # resolution of features[-1] (the pool), which matters at the kit's small sizes.
    "vgg16": ArchSpec("vgg16", "features.0", "classifier.6", "features.29", cam_layer8="features.22",
                      note="no batch norm (the paper's VGG16)"),
    "vgg16_bn": ArchSpec("vgg16_bn", "features.0", "classifier.6", "features.42", cam_layer8="features.32",
                         note="VGG16 with batch norm (a documented setting)"),
}


def _get(module: nn.Module, dotted: str) -> nn.Module:
    return module.get_submodule(dotted)


def _set(module: nn.Module, dotted: str, new: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, leaf, new)


def _spec(arch: str) -> ArchSpec:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHS)}")
    return ARCHS[arch]


# --------------------------------------------------------------------------- wrapper
class GrayToModel(nn.Module):
    """Single-channel ``[0, 1]`` input → normalisation → torchvision classifier → logits.

    ``net`` is the (adapted) torchvision model; ``arch`` its registry name. The forward
    returns plain logits ``(N, num_classes)`` in train and eval mode alike.
    """

    def __init__(self, net: nn.Module, arch: str, mean: float, std: float, num_classes: int,
                 options: dict | None = None):
        super().__init__()
        self.net = net
        self.arch = arch
        self.num_classes = num_classes
        self.options = dict(options or {})  # non-default build_model options (checkpointed)
        self.min_size = _spec(arch).min_size if arch in ARCHS else 1
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"{self.arch} expects a (N, 1, H, W) gray batch, got {tuple(x.shape)}")
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(f"{self.arch} needs images of at least {self.min_size} px, "
                             f"got {tuple(x.shape[-2:])}")
        out = self.net((x - self.mean) / self.std)
        if isinstance(out, tuple):  # InceptionOutputs(logits, aux) if aux was kept
            out = out[0]
        return out

    def extra_repr(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"arch={self.arch!r}, mean={float(self.mean):.3f}, std={float(self.std):.3f}{opts}"


# --------------------------------------------------------------------------- building
def _torchvision_model(arch: str, num_classes: int, weights: Any = None) -> nn.Module:
    """The torchvision model, with ``num_classes`` outputs (1000 when weights come)."""
    kwargs: dict[str, Any] = {}
    if arch == "inception_v3":
        # torchvision requires aux_logits=True to load weights; it drops the aux head
        # afterwards when we ask for aux_logits=False (and we drop it ourselves below).
        kwargs = dict(aux_logits=weights is not None, transform_input=False,
                      init_weights=weights is None)
    if weights is None:
        kwargs["num_classes"] = num_classes
    return torchvision.models.get_model(arch, weights=weights, **kwargs)


_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _read_imagenet_state(path: Path, state: dict | None = None) -> dict[str, torch.Tensor]:
    if state is None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as err:  # truncated zip, pickle refused by weights_only, ...
            raise ValueError(f"{path}: cannot read weights ({_one_line(err)})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        m = _DENSENET_OLD_KEY.match(key)  # the original DenseNet files name norm.1 etc.
        out[m.group(1) + m.group(2) if m else key] = value
    return out


def _gap_head(net: nn.Module) -> None:
    """VGG: global average pooling and a 512-wide classifier (see ``VGG_HEADS``). The
    layer indices stay torchvision's, so ``classifier.6`` is still the last Linear."""
    width = net.classifier[0].in_features // (7 * 7)  # 512: the last conv's channels
    net.avgpool = nn.AdaptiveAvgPool2d(1)
    net.classifier = nn.Sequential(
        nn.Linear(width, width), nn.ReLU(True), nn.Dropout(0.5),
        nn.Linear(width, width), nn.ReLU(True), nn.Dropout(0.5),
        nn.Linear(width, net.classifier[6].out_features))
    # torchvision draws VGG's Linear weights from N(0, 0.01): right for 25088 inputs (a gain
    # of 0.01 * sqrt(25088) = 1.6), but 512-wide layers would shrink the signal 4x each.
    # He initialisation keeps the hidden layers' scale; the last layer stays N(0, 0.01).
    for i in (0, 3):
        nn.init.kaiming_normal_(net.classifier[i].weight, nonlinearity="relu")
        nn.init.zeros_(net.classifier[i].bias)
    nn.init.normal_(net.classifier[6].weight, 0, 0.01)
    nn.init.zeros_(net.classifier[6].bias)


def _pretrained_net(arch: str, kind: str) -> nn.Module:
    """An empty torchvision ``arch`` shaped like its ``kind`` weights file."""
    if kind == "cxr":  # torchxrayvision's DenseNet121: gray input, 18 pathologies
        net = torchvision.models.get_model(arch, weights=None, num_classes=_weights.CXR_CLASSES)
        old = net.features.conv0
        net.features.conv0 = nn.Conv2d(1, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
        return net
    if arch == "inception_v3":  # the ImageNet file has the aux head: build it to load
        return torchvision.models.get_model(arch, weights=None, aux_logits=True, transform_input=False,
                                            init_weights=False)
    return torchvision.models.get_model(arch, weights=None)


def build_model(arch: str, num_classes: int = 2, pretrained: bool = False,
                weights_path: str | Path | None = None, seed: int | None = None,
                vgg_head: str = "classic", weights: str = "random") -> GrayToModel:
    """A torchvision classifier for single-channel ``[0, 1]`` input with a ``num_classes`` head.

    - ``weights``: ``"random"``, ``"imagenet"`` (torchvision's weights API,
      ``get_model_weights(arch).DEFAULT``) or ``"cxr"`` (torchxrayvision's chest-X-ray
      DenseNet121; ImageNet for the other archs): found offline or downloaded once, see
      ``weights``; ``pretrained=True`` is ``weights="imagenet"``.
    - ``weights_path``: ImageNet weights from a named local file instead (a torchvision
      state dict with its 1000-class head).
    - random: ``seed`` makes the initialisation reproducible without touching the global
      random state.

    - ``vgg_head``: ``"classic"`` or ``"gap"`` for the VGGs (see ``VGG_HEADS``); ignored
      by the other archs.

    The first conv is adapted to one channel and the head replaced (see the module doc).
    """
    spec = _spec(arch)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if vgg_head not in VGG_HEADS:
        raise ValueError(f"vgg_head must be one of {', '.join(VGG_HEADS)}, not {vgg_head!r}")
    kind = _weights.kind_for("imagenet" if pretrained and weights == "random" else weights, arch)
    options = {"vgg_head": vgg_head} if arch.startswith("vgg") and vgg_head != "classic" else {}
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if weights_path is not None:
            path = Path(weights_path)
            state = _read_imagenet_state(path)
            kind = "imagenet"
        elif kind != "random":
            state, path = _weights.load(kind, arch)
            state = _read_imagenet_state(path, state)
        if kind != "random":
            net = _pretrained_net(arch, kind)
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as err:
                label = "ImageNet" if kind == "imagenet" else "chest-X-ray"
                raise ValueError(f"{path}: not {label} weights of {arch}, shapes or names differ "
                                 f"({_one_line(err)})") from None
            loaded = True
        else:
            net = _torchvision_model(arch, num_classes, weights=None)
            loaded = False

        if arch == "inception_v3":
            net.aux_logits = False
            net.AuxLogits = None
            net.transform_input = False

        old = _get(net, spec.first_conv)
        conv = nn.Conv2d(1, old.out_channels, old.kernel_size, old.stride, old.padding,
                         old.dilation, old.groups, bias=old.bias is not None,
                         padding_mode=old.padding_mode)
        with torch.no_grad():
            conv.weight.copy_(old.weight.sum(1, keepdim=True) if loaded else old.weight[:, :1])
            if old.bias is not None:
                conv.bias.copy_(old.bias)
        _set(net, spec.first_conv, conv)

        if options.get("vgg_head") == "gap":
            _gap_head(net)
        head = _get(net, spec.head)
        if loaded or head.out_features != num_classes:
            _set(net, spec.head, nn.Linear(head.in_features, num_classes))
        if not loaded:
            # From scratch, every head starts as N(0, 0.01) with zero bias, so that the first
            # predictions are near 50/50. torchvision's Inception V3 draws its fc from a
            # truncated N(0, 0.1): over 2048 features that gives logits of several units,
            # a starting loss above 2, and a head that a few hundred AdamW steps cannot pull
            # back (it stayed at chance on the phantoms and on Montgomery).
            last = _get(net, spec.head)
            nn.init.normal_(last.weight, 0, 0.01)
            nn.init.zeros_(last.bias)

        if not loaded and spec.scratch_bn_momentum is not None:
            for m in net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.momentum = spec.scratch_bn_momentum

        _twice_differentiable(net)

        cam = _get(net, spec.cam_layer)
        if isinstance(cam, (nn.ReLU, nn.Hardswish)):
            # a hook on an in-place activation sees a tensor that is its own input;
            # keep the CAM layer's output a fresh tensor for Grad-CAM's hooks.
            cam.inplace = False

    mean, std = ((_weights.CXR_MEAN, _weights.CXR_STD) if kind == "cxr" else
                 (spec.pretrained_mean, spec.pretrained_std) if loaded else (SCRATCH_MEAN, SCRATCH_STD))
    return GrayToModel(net, arch, mean, std, num_classes, options)


class Hardsigmoid2(nn.Module):
    """``relu6(x + 3) / 6``: the same function as ``nn.Hardsigmoid``, built from ops
    that have second derivatives. PyTorch's fused hardsigmoid has none
    (``derivative for aten::hardsigmoid_backward is not implemented``), and the
    student's differentiable Grad-CAM backpropagates through a gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3.0) / 6.0


class Hardswish2(nn.Module):
    """``x * relu6(x + 3) / 6``: ``nn.Hardswish`` with second derivatives (see Hardsigmoid2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.relu6(x + 3.0) / 6.0


def _twice_differentiable(net: nn.Module) -> None:
    """Swap MobileNet V3's fused hard activations for equal, twice-differentiable ones."""
    for name, child in list(net.named_children()):
        if isinstance(child, nn.Hardsigmoid):
            setattr(net, name, Hardsigmoid2())
        elif isinstance(child, nn.Hardswish):
            setattr(net, name, Hardswish2())
        else:
            _twice_differentiable(child)


def _fused_activations(net: nn.Module) -> None:
    """The inverse of :func:`_twice_differentiable`: torch's fused hard activations, for
    inference (the same values; one kernel instead of three)."""
    for name, child in list(net.named_children()):
        if isinstance(child, Hardsigmoid2):
            setattr(net, name, nn.Hardsigmoid())
        elif isinstance(child, Hardswish2):
            setattr(net, name, nn.Hardswish())
        else:
            _fused_activations(child)


def fold_batchnorm(net: nn.Module) -> int:
    """Fold, in place, every BatchNorm that directly follows a convolution in a ``Sequential``
    into that convolution (eval mode: the same function, one layer less; any model, the
    U-Net's decoder blocks too). Returns how many."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for child in net.children():
        folded += fold_batchnorm(child)
    if isinstance(net, nn.Sequential):
        keys = list(net._modules)
        for a, b in zip(keys, keys[1:]):
            conv, bn = net._modules[a], net._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                net._modules[a] = fuse_conv_bn_eval(conv, bn)
                net._modules[b] = nn.Identity()
                folded += 1
    return folded


def for_inference(model: nn.Module) -> nn.Module:
    """A copy of a trained classifier on the fastest faithful path for inference: eval
    mode, torch's fused hard activations back in place of the twice-differentiable ones
    that only the map term's training needs, and BatchNorm folded into the convolution
    before it. The outputs are the same up to float rounding; Grad-CAM layers keep their
    names (:func:`target_layer` finds them in the copy)."""
    out = copy.deepcopy(model).eval()
    _fused_activations(out)
    with torch.no_grad():
        fold_batchnorm(out)
    return out


def frozen_for_inference(model: nn.Module, input_size: int = 224) -> torch.jit.ScriptModule:
    """:func:`for_inference`'s model, traced and frozen by TorchScript (``torch.jit.trace``
    on one ``(1, 1, s, s)`` image, then ``torch.jit.freeze``): the same PyTorch kernels
    and the same outputs, without Python's per-layer overhead, which at batch 1 is most
    of a small model's time. Any batch size and the traced input size run. For
    probabilities only: Grad-CAM needs the module's hooks (use :func:`for_inference`)."""
    import warnings

    fast = for_inference(model)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on shape-dependent Python values
        traced = torch.jit.trace(fast, torch.rand(_input_shape(input_size)))
        return torch.jit.freeze(traced.eval())


def export_onnx(module: nn.Module, example: torch.Tensor, path, input_name: str, output_name: str) -> Path:
    """``module`` as an ONNX file at ``path`` (the TorchScript-based ``torch.onnx.export``,
    opset 17), with a dynamic batch axis on its one input and one output; the exporter's
    deprecation and tracer notes are silenced."""
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), input_names=[input_name], output_names=[output_name],
                          opset_version=17, dynamo=False,
                          dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}})
    return Path(path)


def target_layer(model: nn.Module, arch: str | None = None, stride: int = 32) -> nn.Module:
    """The Grad-CAM target layer of a :func:`build_model` model.

    ``stride=32`` (the classic choice, the last feature map): densenet121 →
    ``features.norm5``; inception_v3 → ``Mixed_7c``; resnet18 → ``layer4[-1]``;
    mobilenet_v3_* → ``features[-1]``; vgg16(_bn) → the ReLU after the last conv (before
    the last max-pool, so already stride 16). ``stride=16``: the last block at stride
    16 (``denseblock3``, ``Mixed_6e``, ``layer3[-1]``, MobileNet ``features[12]`` /
    ``features[8]``): maps with twice the resolution (8×8 instead of 4×4 at 128 px),
    which the ``real`` profile uses at its small image sizes (``Profile.cam_stride``).
    ``stride=8``: the last block at stride 8 (``denseblock2``, ``Mixed_5d``, ``layer2[-1]``,
    MobileNet ``features[6]`` / ``features[3]``, VGG's ReLU after conv4_3): 8×8 maps at
    64 px, for the ``quick`` profile's tiny phantoms, whose lesions a 4×4 map cannot find.
    Its output is a ``(N, C, h, w)`` tensor.
    """
    if stride not in (8, 16, 32):
        raise ValueError(f"target_layer: stride must be 8, 16 or 32, not {stride}")
    arch = arch or getattr(model, "arch", None)
    if arch is None:
        raise ValueError("target_layer: pass arch= for a model not made by build_model")
    spec = _spec(arch)
    net = model.net if isinstance(model, GrayToModel) else model
    name = {8: spec.cam_layer8, 16: spec.cam_layer16}.get(stride) or spec.cam_layer
    return _get(net, name)


# --------------------------------------------------------------------------- batch norm
def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
               for m in model.modules())


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Iterable, device: torch.device | str | None = None,
                   max_batches: int | None = None) -> int:
    """Recompute every BatchNorm's running mean/var from data, as a plain average.

    BN layers are reset and put in train mode with ``momentum=None`` (cumulative moving
    average), every other module stays in eval mode (no dropout), and the batches of
    ``loader`` (``x`` or ``(x, y, ...)``) are passed forward without gradients. The
    result no longer depends on how fast the running statistics followed the weights
    during training (the MobileNet V3 trap, see ``ARCHS``). Weights are untouched.
    Batches of one image are skipped (BN cannot compute a variance from them).
    Returns the number of images used; the model's train/eval mode and the BN momenta
    are restored.
    """
    bns = [m for m in model.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    momenta = [m.momentum for m in bns]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    seen = 0
    try:
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if x.shape[0] < 2:
                continue
            model(x.to(device, non_blocking=True).float())
            seen += x.shape[0]
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        if seen == 0:  # nothing usable: put the old statistics back
            for m, (mean, var, n) in zip(bns, saved):
                m.running_mean.copy_(mean), m.running_var.copy_(var), m.num_batches_tracked.copy_(n)
        model.train(was_training)
    return seen


# --------------------------------------------------------------------------- cost
def _input_shape(input_size: int | Iterable[int], batch: int = 1) -> tuple[int, ...]:
    if isinstance(input_size, int):
        return (batch, 1, input_size, input_size)
    size = tuple(int(s) for s in input_size)
    if len(size) == 2:
        return (batch, 1, *size)
    if len(size) == 3:
        return (batch, *size)
    if len(size) == 4:
        return size
    raise ValueError(f"input_size must be an int, (H, W), (C, H, W) or (N, C, H, W): {input_size}")


def model_info(model: nn.Module, input_size: int | Iterable[int] = 224) -> dict[str, int]:
    """Parameter count and FLOPs of one forward pass on one image (``torch.utils.flop_counter``).

    FLOPs count a multiply-add as 2 (divide by 2 for MACs). ``input_size``: side in px,
    ``(H, W)`` or a full shape.
    """
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in model.parameters())
    device = next(model.parameters()).device
    x = torch.rand(_input_shape(input_size), device=device)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return {"params": int(params), "flops": int(counter.get_total_flops())}


def cpu_latency(model: nn.Module, input_size: int | Iterable[int] = 224, batch: int = 1,
                repeats: int = 10, warmup: int = 2) -> float:
    """Median wall-clock seconds of one eval-mode forward pass on the CPU.

    A model on another device is copied to the CPU (the original is left where it is).
    """
    if next(model.parameters()).device.type != "cpu":
        model = copy.deepcopy(model).cpu()
    was_training = model.training
    model.eval()
    x = torch.rand(_input_shape(input_size, batch))
    times = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            for _ in range(max(1, repeats)):
                t0 = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t0)
    finally:
        model.train(was_training)
    return float(statistics.median(times))


# --------------------------------------------------------------------------- checkpoints
def _plain(obj: Any) -> Any:
    """Settings as plain Python (what ``torch.load(weights_only=True)`` accepts)."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):  # int keys stay int (an optimizer's state is keyed by index)
        return {(k if isinstance(k, (str, int)) else str(k)): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_plain(v) for v in obj)
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if hasattr(obj, "item") and getattr(obj, "ndim", 0) == 0:  # numpy scalar
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def checkpoint(model: nn.Module, arch: str | None = None, settings: dict | None = None,
               extra: dict | None = None) -> dict:
    """A checkpoint dict: ``format``, ``arch``, ``num_classes``, ``settings``, ``state_dict``
    (CPU tensors) and the ``extra`` entries (epoch, metrics, ...). Loadable with
    ``torch.load(weights_only=True)``."""
    arch = arch or getattr(model, "arch", None)
    if arch is None:
        raise ValueError("checkpoint: pass arch= for a model not made by build_model")
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None and arch in ARCHS:
        num_classes = _get(model.net if isinstance(model, GrayToModel) else model,
                           ARCHS[arch].head).out_features
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "arch": arch,
        "num_classes": int(num_classes) if num_classes is not None else None,
        "settings": _plain(settings or {}),
        "options": dict(getattr(model, "options", {}) or {}),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    for key, value in (extra or {}).items():
        if key in ckpt:
            raise ValueError(f"checkpoint: extra key {key!r} would overwrite a reserved entry")
        ckpt[key] = _plain(value)
    return ckpt


def save_checkpoint(path: str | Path, model: nn.Module, arch: str | None = None,
                    settings: dict | None = None, **extra: Any) -> Path:
    """Write :func:`checkpoint` atomically (``store.save_torch``)."""
    return store.save_torch(checkpoint(model, arch, settings, extra), path)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """The checkpoint dict at ``path`` (``weights_only=True``), checked to be a tbkd one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, unpickling refused, not a torch file, ...
        raise ValueError(f"{path}: cannot read checkpoint ({_one_line(err)})") from None
    if not isinstance(ckpt, dict) or "arch" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not a tbkd checkpoint (no 'arch' and 'state_dict' entries)")
    return ckpt


def weights_sha256(path: str | Path) -> str:
    """SHA-256 of a checkpoint's weights alone (names, dtypes, shapes and values, in key
    order). Unlike the file's hash it ignores what a run also records, such as each
    epoch's wall time, so two identical trainings give the same digest."""
    import hashlib

    state = read_checkpoint(Path(path), "cpu")["state_dict"]
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_checkpoint(path: str | Path, map_location: Any = "cpu",
                    expect_arch: str | None = None) -> tuple[GrayToModel, dict]:
    """Rebuild the model a checkpoint describes and load its weights; eval mode.

    Returns ``(model, ckpt)``. Raises ``ValueError`` (one line, starting with the path)
    when the file is truncated, not a tbkd checkpoint, of another arch than
    ``expect_arch``, or its weights do not fit the architecture (missing or unexpected
    keys, wrong head size).
    """
    path = Path(path)
    ckpt = read_checkpoint(path, map_location)
    arch = ckpt["arch"]
    if arch not in ARCHS:
        raise ValueError(f"{path}: unknown arch {arch!r} (known: {', '.join(ARCHS)})")
    if expect_arch is not None and arch != expect_arch:
        raise ValueError(f"{path}: checkpoint is a {arch}, expected {expect_arch}")
    state = ckpt["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: 'state_dict' is not a dict")
    num_classes = ckpt.get("num_classes")
    if num_classes is None:
        weight = state.get(f"net.{ARCHS[arch].head}.weight")
        num_classes = int(weight.shape[0]) if isinstance(weight, torch.Tensor) else 2
    options = ckpt.get("options") or {}
    if not isinstance(options, dict) or set(options) - {"vgg_head"}:
        raise ValueError(f"{path}: unknown build options {options!r}")
    try:
        # built on the meta device: no memory, and no random initialisation of weights the
        # checkpoint replaces anyway (that was 0.3 s per load, 1.1 s for VGG16 -- chapter 04
        # loads 35 checkpoints); the checkpoint's tensors are then assigned, not copied
        with torch.device("meta"):
            model = build_model(arch, num_classes=int(num_classes), pretrained=False, **options)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    result = _load_state(model, state, assign=True)
    if not result and any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        result = "tensors the checkpoint does not hold"  # e.g. a non-persistent buffer
    if result:
        raise ValueError(f"{path}: weights do not fit {arch} with {num_classes} classes: {result}")
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    model.eval()
    return model, ckpt


def _load_state(model: nn.Module, state: dict, assign: bool = False) -> str:
    """Load strictly; '' on success, else a one-line description of what did not fit.
    ``assign``: the model's tensors become the state's (for a model built on "meta")."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) (e.g. {unexpected[0]})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es) (e.g. {shapes[0]})")
    if problems:
        return "; ".join(problems)
    try:
        model.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as err:
        return _one_line(err)
    return ""
