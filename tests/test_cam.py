"""tbkd_helpers.cam: viewing, measuring, caching and the differentiable Grad-CAM.

Models come from tbkd_helpers.models (random weights, tiny inputs). The differentiable
Grad-CAM is checked against pytorch-grad-cam's GradCAM on every architecture, and both
against a hand-written reference on a toy model whose target layer is changed in place
downstream (DenseNet's situation).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tbkd_helpers import cam
from tbkd_helpers.models import ARCHS, build_model, target_layer

ALL_ARCHS = ("resnet18", "mobilenet_v3_small", "mobilenet_v3_large", "densenet121", "vgg16",
             "inception_v3")
FAST_ARCHS = ("resnet18", "mobilenet_v3_small")
# inception_v3: 139 px is the smallest size whose Mixed_7c map is larger than 1x1 (3x3)
SIZE = {"inception_v3": 139}
CHEAP_METHODS = [m for m in cam.CAM_METHODS if m != "scorecam"]
TOL = 1e-4  # differentiable vs library, max abs difference of [0, 1] maps at the input size


def _slow(arch):
    return pytest.param(arch, marks=pytest.mark.slow) if arch in ("vgg16", "inception_v3") else arch


@functools.lru_cache(maxsize=None)
def _built(arch):
    model = build_model(arch, num_classes=2, pretrained=False, seed=0).eval()
    return model, target_layer(model, arch)


def _images(arch, n=2, seed=0):
    s = SIZE.get(arch, 64)
    return torch.rand(n, 1, s, s, generator=torch.Generator().manual_seed(seed))


def _first_conv(model, arch):
    return model.net.get_submodule(ARCHS[arch].first_conv)


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


class Toy(nn.Module):
    """conv → conv → BN (the CAM layer) → ReLU *in place* → mean → fc, as in DenseNet."""

    def __init__(self, width=8):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, width, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            self.bn.running_mean.copy_(torch.randn(width, generator=g) * 0.1)

    def features(self, x):
        return self.bn(self.conv2(F.relu(self.conv1(x))))

    def forward(self, x):
        out = F.relu(self.features(x), inplace=True)
        return self.fc(out.mean((2, 3)))


def _reference_gradcam(model, x, cls=1):
    """Grad-CAM of Toy.bn's own output, by hand (no hooks), scaled as pytorch-grad-cam does."""
    model.eval()
    a = model.features(x)
    logits = model.fc(F.relu(a).mean((2, 3)))
    (g,) = torch.autograd.grad(logits[:, cls].sum(), a)
    raw = F.relu((g.mean((2, 3))[:, :, None, None] * a).sum(1)).detach().numpy()
    out = []
    for c in raw:
        c = c - c.min()
        c = c / (1e-7 + c.max())
        c = cv2.resize(np.float32(c), (x.shape[-1], x.shape[-2]))
        c = c - c.min()
        out.append(c / (1e-7 + c.max()))
    return np.float32(out)


# --------------------------------------------------------------------------- viewing
@pytest.mark.parametrize("method", CHEAP_METHODS)
@pytest.mark.parametrize("arch", FAST_ARCHS)
def test_methods_shapes_range(arch, method):
    model, layer = _built(arch)
    x = _images(arch, n=3)
    cams, logits = cam.compute_cams_and_logits(model, layer, x, target_class=1, method=method,
                                               batch_size=2)
    assert cams.shape == (3, *x.shape[-2:]) and cams.dtype == np.float32
    assert logits.shape == (3, 2) and logits.dtype == np.float32
    assert np.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(x).numpy(), atol=1e-5)


@pytest.mark.parametrize("arch", [_slow(a) for a in ALL_ARCHS])
def test_gradcam_every_arch(arch):
    model, layer = _built(arch)
    x = _images(arch)
    cams = cam.compute_cams(model, layer, x, target_class=None)
    assert cams.shape == (2, *x.shape[-2:])
    assert np.isfinite(cams).all() and 0 <= cams.min() and cams.max() <= 1
    assert cams.reshape(2, -1).max(1).min() > 0.99  # min-max scaled: each reaches 1


def test_scorecam_tiny_model():
    model = Toy(width=4).eval()
    x = _images("toy", n=2)[..., :16, :16]
    cams = cam.compute_cams(model, model.bn, x, method="scorecam", batch_size=4)
    assert cams.shape == (2, 16, 16) and np.isfinite(cams).all()
    assert cams.min() >= 0 and cams.max() <= 1


def test_compute_cams_restores_model_state():
    model, layer = _built("resnet18")
    model.train()
    model.net.fc.eval()  # a mixed state must come back as it was
    p0 = _first_conv(model, "resnet18").weight
    p0.grad = torch.ones_like(p0)
    model.net.fc.weight.requires_grad_(False)
    hooks = _hook_count(model)
    try:
        cam.compute_cams(model, layer, _images("resnet18"))
        assert model.training and not model.net.fc.training and model.net.layer1.training
        assert torch.equal(p0.grad, torch.ones_like(p0))  # the caller's grads survive
        assert not model.net.fc.weight.requires_grad and p0.requires_grad
        assert all(p.grad is None for n, p in model.named_parameters() if n != "net.conv1.weight")
        assert _hook_count(model) == hooks
    finally:
        p0.grad = None
        model.net.fc.weight.requires_grad_(True)
        model.eval()


def test_compute_cams_errors_release_hooks():
    model, layer = _built("mobilenet_v3_small")
    hooks = _hook_count(model)
    with pytest.raises(RuntimeError, match="target_class"):
        cam.compute_cams(model, layer, _images("mobilenet_v3_small"), target_class=5)
    assert _hook_count(model) == hooks
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        cam.compute_cams(model, layer, torch.rand(2, 64, 64))
    with pytest.raises(ValueError, match="unknown CAM method"):
        cam.compute_cams(model, layer, _images("resnet18"), method="nope")


def test_per_image_targets_and_predicted():
    model, layer = _built("resnet18")
    x = _images("resnet18", n=4)
    both = [cam.compute_cams(model, layer, x, target_class=c) for c in (0, 1)]
    mixed = cam.compute_cams(model, layer, x, target_class=[0, 1, 1, 0])
    np.testing.assert_allclose(mixed, np.stack([both[0][0], both[1][1], both[1][2], both[0][3]]),
                               atol=1e-6)
    with torch.no_grad():
        pred = model(x).argmax(1).tolist()
    np.testing.assert_allclose(cam.compute_cams(model, layer, x, target_class=None),
                               cam.compute_cams(model, layer, x, target_class=pred), atol=1e-6)


def test_inplace_after_layer_matches_reference():
    """The layer's own output is explained, on the library path and ours alike."""
    model = Toy()
    x = _images("toy", n=3)[..., :20, :20]
    ref = _reference_gradcam(model, x)
    lib = cam.compute_cams(model, model.bn, x)
    ours, _ = cam.differentiable_gradcam(model, model.bn, x, out_size=20)
    assert np.abs(lib - ref).max() < TOL
    assert np.abs(ours.detach().numpy() - ref).max() < TOL



def test_cam_backward_stops_at_the_layer():
    """The viewing Grad-CAM's backward pass ends at the target layer: nothing below it (here
    ResNet18's first convolution) takes part, and the maps are those of a graph from the input."""
    with torch.random.fork_rng():  # an untrained model whose maps of the TB class are not all zero
        torch.manual_seed(0)
        model = build_model("resnet18", num_classes=2).eval()
    layer = target_layer(model, "resnet18", stride=16)
    x = _images("resnet18", n=2)
    called = []
    handle = _first_conv(model, "resnet18").register_full_backward_hook(lambda *a: called.append(1))
    try:
        maps = cam.compute_cams(model, layer, x)
    finally:
        handle.remove()
    assert not called, "the backward pass ran below the Grad-CAM layer"
    ref = cam.compute_cams(model, layer, x.clone().requires_grad_(True))  # a graph from the input
    assert np.abs(maps - ref).max() < TOL and maps.max() > 0

def test_inception_at_80px_gives_zero_maps():
    """Inception V3 at the quick profile's 80 px: Mixed_7c is 1x1, so Grad-CAM (min-max
    scaled) is all zeros: a documented limit, not NaN."""
    model, layer = _built("inception_v3")
    x = torch.rand(2, 1, 80, 80, generator=torch.Generator().manual_seed(0))
    cams = cam.compute_cams(model, layer, x)
    assert cams.shape == (2, 80, 80) and np.isfinite(cams).all() and cams.max() == 0


def test_overlay():
    img = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    heat = np.zeros((8, 8), np.float32)
    heat[2:4, 2:4] = 1
    out = cam.overlay(img, heat, alpha=0.5)
    assert out.shape == (32, 32, 3) and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 1
    gray = cam.overlay(img, heat, alpha=0.0)
    np.testing.assert_allclose(gray[..., 0], gray[..., 2])
    assert not np.allclose(out[..., 0], out[..., 2])
    assert cam.overlay(torch.from_numpy(img), torch.from_numpy(heat), colormap="inferno").shape == (32, 32, 3)
    with pytest.raises(ValueError, match="colormap"):
        cam.overlay(img, heat, colormap="nope")


# --------------------------------------------------------------------------- measuring
def test_mass_in_mask():
    masks = np.zeros((3, 8, 8), bool)
    masks[:, 2:6, 2:6] = True
    maps = np.zeros((3, 8, 8), np.float32)
    maps[0, 3:5, 3:5] = 1  # all inside
    maps[1] = 1  # uniform: the mask's area share
    res = cam.mass_in_mask(maps, masks)
    assert res[0] == pytest.approx(1.0) and res[1] == pytest.approx(16 / 64)
    assert np.isnan(res[2])  # no mass at all
    outside = np.zeros((1, 8, 8), np.float32)
    outside[0, 0, 0] = 1
    assert cam.mass_in_mask(outside, masks[:1])[0] == 0
    # maps at another resolution are resized to the masks'
    assert cam.mass_in_mask(np.ones((1, 4, 4), np.float32), masks[:1])[0] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="non-negative"):
        cam.mass_in_mask(-np.ones((1, 8, 8)), masks[:1])


def test_pointing_game():
    les = np.zeros((4, 10, 10), bool)
    les[:3, 6:8, 6:8] = True  # image 3 has no lesion
    maps = np.zeros((4, 10, 10), np.float32)
    maps[0, 7, 7] = 1  # on the lesion
    maps[1, 7, 3] = 1  # 3 px left of it
    maps[2] = 0.5  # constant: points nowhere
    maps[3, 0, 0] = 1
    res = cam.pointing_game(maps, les)
    assert res[0] == 1 and res[1] == 0 and res[2] == 0 and np.isnan(res[3])
    assert cam.pointing_game(maps, les, tolerance_px=3)[1] == 1
    assert cam.pointing_game(maps, les, tolerance_px=2.5)[1] == 0
    assert np.nanmean(res) == pytest.approx(1 / 3)


def test_cam_agreement():
    rng = np.random.default_rng(0)
    a = rng.random((3, 8, 8)).astype(np.float32)
    b = a.copy()
    b[1] = 1 - a[1]
    b[2] = 0.3
    r = cam.cam_agreement(a, b)
    assert r[0] == pytest.approx(1) and r[1] == pytest.approx(-1) and np.isnan(r[2])
    assert cam.cam_agreement(a, 2 * a + 1)[0] == pytest.approx(1)
    iou = cam.cam_agreement(a, b, metric="iou", top_fraction=0.2)
    assert iou[0] == 1 and iou[1] == 0
    # different sizes: compared at the larger
    assert cam.cam_agreement(a, a[:, ::2, ::2]).shape == (3,)


def test_faithfulness_road_single_channel():
    model, layer = _built("resnet18")
    x = _images("resnet18", n=3)
    cams = cam.compute_cams(model, layer, x)
    cams[2] = 0  # constant: no ranking, NaN
    r1 = cam.faithfulness(model, layer, x, cams, metric="road_combined", percentiles=(20, 80), seed=3)
    r2 = cam.faithfulness(model, layer, x, cams, metric="road_combined", percentiles=(20, 80), seed=3)
    assert r1.shape == (3,) and np.isfinite(r1[:2]).all() and np.isnan(r1[2])
    np.testing.assert_array_equal(r1, r2)  # seeded imputation noise
    morf = cam.faithfulness(model, None, x[:2], cams[:2, ::4, ::4], metric="road_morf",
                            percentiles=(50,))
    mult = cam.faithfulness(model, layer, x[:2], None, metric="cam_mult", score="logit")
    assert np.isfinite(morf).all() and np.isfinite(mult).all()
    assert (np.abs(r1[:2]) <= 1).all()  # softmax confidences change by at most 1


def test_resize_maps_area_when_shrinking():
    m = np.zeros((1, 64, 64), np.float32)
    m[0, 5, 7] = 1  # one hot pixel: bilinear sampling to 2x2 would miss it
    small = cam.resize_maps(m, 2)
    assert small.shape == (1, 2, 2) and small[0, 0, 0] == pytest.approx(1 / 32 ** 2)
    big = cam.resize_maps(torch.from_numpy(small), (4, 6))  # enlarging: bilinear
    assert isinstance(big, torch.Tensor) and big.shape == (1, 4, 6)
    assert cam.resize_maps(m[0], 64).shape == (64, 64)


# --------------------------------------------------------------------------- caching
class TinySet:
    def __init__(self, n=5, size=64, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 1, size, size, generator=g)
        self.labels = [i % 2 for i in range(n)]
        self.records = [SimpleNamespace(key=f"img{i:02d}") for i in range(n)]
        self.augment = False

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def _leftovers(folder: Path):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_cam_cache_roundtrip_reuse_and_invalidate(tmp_path, monkeypatch):
    model, layer = _built("mobilenet_v3_small")
    ds = TinySet()
    path = tmp_path / "teacher_cams.npz"
    key = {"checkpoint_sha256": "abc", "image_size": 64}
    calls = []
    real = cam._iter_cams

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(cam, "_iter_cams", counting)
    c1 = cam.build_cam_cache(model, layer, ds, path, key, cam_size=16, batch_size=2, progress=False)
    assert len(calls) == 1 and path.is_file() and not _leftovers(tmp_path)
    assert c1.cams.shape == (5, 16, 16) and c1.cams.dtype == np.float16
    assert c1.logits.shape == (5, 2) and c1.logits.dtype == np.float32
    assert c1.labels.tolist() == [0, 1, 0, 1, 0] and list(c1.ids) == [f"img{i:02d}" for i in range(5)]
    assert 0 <= c1.cams.min() and c1.cams.max() <= 1
    # the maps are compute_cams' maps, area-shrunk; the logits the model's
    full, logits = cam.compute_cams_and_logits(model, layer, ds.images)
    np.testing.assert_allclose(c1.cams, cam.resize_maps(full, 16, mode="area"), atol=2e-3)
    np.testing.assert_allclose(c1.logits, logits, atol=1e-5)

    with np.load(path, allow_pickle=False) as z:  # the documented format
        assert str(z["format"]) == cam.CAM_CACHE_FORMAT
        stored = json.loads(str(z["key"]))
    assert stored["checkpoint_sha256"] == "abc" and stored["cam_size"] == 16
    assert stored["n_images"] == 5 and "images_sha256" in stored and "ids_sha256" in stored

    # same key: loaded, nothing computed
    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(cam, "_iter_cams", boom)
    c2 = cam.build_cam_cache(model, layer, ds, path, dict(key), cam_size=16, progress=False)
    np.testing.assert_array_equal(c2.cams, c1.cams)
    assert c2.key == c1.key
    loaded = cam.load_cam_cache(path)
    np.testing.assert_array_equal(loaded.logits, c1.logits)
    assert loaded.cams_tensor([0, 1]).dtype == torch.float32
    np.testing.assert_allclose(loaded.probabilities().sum(1), 1, atol=1e-6)

    # another checkpoint, other images, another size: recomputed
    monkeypatch.setattr(cam, "_iter_cams", counting)
    cam.build_cam_cache(model, layer, ds, path, {**key, "checkpoint_sha256": "def"},
                        cam_size=16, progress=False)
    assert len(calls) == 2
    ds.images[0, 0, 0, 0] = 1 - ds.images[0, 0, 0, 0]
    cam.build_cam_cache(model, layer, ds, path, {**key, "checkpoint_sha256": "def"},
                        cam_size=16, progress=False)
    assert len(calls) == 3
    c3 = cam.build_cam_cache(model, layer, ds, path, {**key, "checkpoint_sha256": "def"},
                             cam_size=None, progress=False)
    assert len(calls) == 4 and c3.cams.shape == (5, 64, 64)
    assert not _leftovers(tmp_path)


def test_cam_cache_failure_mid_write_leaves_old_file(tmp_path, monkeypatch):
    model, layer = _built("mobilenet_v3_small")
    ds = TinySet(n=3)
    path = tmp_path / "cams.npz"
    cam.build_cam_cache(model, layer, ds, path, {"v": 1}, cam_size=8, progress=False)
    before = path.read_bytes()

    def half_then_fail(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(cam, "_save_npz", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        cam.build_cam_cache(model, layer, ds, path, {"v": 2}, cam_size=8, progress=False)
    assert path.read_bytes() == before and not _leftovers(tmp_path)
    with pytest.raises(OSError):
        cam.build_cam_cache(model, layer, ds, tmp_path / "new.npz", {"v": 2}, progress=False)
    assert not (tmp_path / "new.npz").exists() and not _leftovers(tmp_path)


def test_cam_cache_bad_files(tmp_path):
    model, layer = _built("mobilenet_v3_small")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=str(bad)):
        cam.load_cam_cache(bad)
    with pytest.raises(FileNotFoundError):
        cam.load_cam_cache(tmp_path / "absent.npz")
    with pytest.warns(UserWarning, match="recomputing"):
        c = cam.build_cam_cache(model, layer, TinySet(n=2), bad, {"v": 1}, cam_size=8,
                                progress=False)
    assert cam.load_cam_cache(bad).key == c.key
    # one target class per image, in the data set's order
    ds = TinySet(n=3)
    per = cam.build_cam_cache(model, layer, ds, tmp_path / "per.npz", {"v": 1},
                              target_class=torch.tensor([1, 0, 1]), batch_size=2, progress=False)
    ref = cam.compute_cams(model, layer, ds.images, target_class=[1, 0, 1])
    np.testing.assert_allclose(per.cams, ref, atol=1e-3)
    assert per.key["target_class"] == [1, 0, 1]
    class Broken(TinySet):  # an IndexError inside must not end the cache early, silently
        def __getitem__(self, i):
            if i == 2:
                raise IndexError("no image 2")
            return super().__getitem__(i)

    with pytest.raises(RuntimeError, match="no image 2"):
        cam.build_cam_cache(model, layer, Broken(n=4), tmp_path / "b.npz", {}, batch_size=2,
                            progress=False)
    assert not (tmp_path / "b.npz").exists()
    aug = TinySet(n=2)
    aug.augment = True
    with pytest.raises(ValueError, match="augment"):
        cam.build_cam_cache(model, layer, aug, tmp_path / "a.npz", {}, progress=False)


# --------------------------------------------------------------------------- training
@pytest.mark.parametrize("arch", [_slow(a) for a in ALL_ARCHS])
def test_differentiable_matches_library(arch):
    model, layer = _built(arch)
    x = _images(arch, n=2 if arch == "inception_v3" else 3, seed=1)
    lib, lib_logits = cam.compute_cams_and_logits(model, layer, x, target_class=1)
    ours, logits = cam.differentiable_gradcam(model, layer, x, target_class=1,
                                              out_size=x.shape[-2:])
    assert ours.shape == lib.shape and logits.shape == (len(x), 2)
    assert np.abs(ours.detach().numpy() - lib).max() < TOL
    np.testing.assert_allclose(logits.detach().numpy(), lib_logits, atol=1e-5)
    if arch in ("vgg16", "inception_v3"):
        return  # the rest is architecture-independent; keep the slow ones short
    # predicted class
    lib_p = cam.compute_cams(model, layer, x, target_class=None)
    ours_p, _ = cam.differentiable_gradcam(model, layer, x, target_class=None, out_size=x.shape[-2:])
    assert np.abs(ours_p.detach().numpy() - lib_p).max() < TOL
    # at the layer's resolution: min-max scaled, one value of 1 per image with a map
    small, _ = cam.differentiable_gradcam(model, layer, x)
    assert small.shape[-2:] != x.shape[-2:] and small.min() >= 0 and small.max() <= 1


@pytest.mark.parametrize("arch", [_slow(a) for a in ALL_ARCHS])
def test_differentiable_gradients_flow_in_train_mode(arch):
    model, layer = _built(arch)
    hooks = _hook_count(model)
    model.train()
    # Dropout draws from the global generator: without a seed of its own the maps (and
    # this test's outcome) depended on which tests ran before it in the same process.
    # fork_rng keeps the seed from leaking into later tests.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            x = _images(arch, n=2, seed=2)
            cams, logits = cam.differentiable_gradcam(model, layer, x,
                                                      target_class=torch.tensor([0, 1]), out_size=16)
            assert cams.requires_grad and logits.requires_grad and cams.shape == (2, 16, 16)
            # The premise: maps with more than one lit cell at the layer's resolution. An
            # untrained net's map can be empty or a single cell (the ReLU), and min-max
            # scaling is scale-invariant, so such a map has no gradient at all.
            raw, _ = cam.differentiable_gradcam(model, layer, x, target_class=torch.tensor([0, 1]),
                                                normalize=False)
            assert ((raw.detach() > 0).flatten(1).sum(1) > 1).any()
            teacher = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0))
            loss = cam.cam_loss(cams, teacher, kind="mse")
            model.zero_grad(set_to_none=True)
            loss.backward()
            g = _first_conv(model, arch).weight.grad
            assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
            assert _hook_count(model) == hooks
        finally:
            model.zero_grad(set_to_none=True)
            model.eval()


def test_differentiable_frozen_teacher_and_errors():
    model = Toy()
    for p in model.parameters():
        p.requires_grad_(False)
    x = _images("toy", n=2)[..., :16, :16]
    cams, _ = cam.differentiable_gradcam(model, model.bn, x)  # graph starts at the input
    assert cams.shape == (2, 8, 8)
    hooks = _hook_count(model)
    with pytest.raises(ValueError, match="out of range"):
        cam.differentiable_gradcam(model, model.bn, x, target_class=7)
    with pytest.raises(ValueError, match="did not run"):
        cam.differentiable_gradcam(model, nn.Conv2d(1, 1, 1), x)

    class Boom(nn.Module):
        def forward(self, x):
            model.features(x)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cam.differentiable_gradcam(Boom(), model.bn, x)
    assert _hook_count(model) == hooks  # removed on every path


def test_normalize_maps():
    m = torch.rand(3, 4, 5)
    m[2] = 0
    n = cam.normalize_maps(m)
    assert n.shape == m.shape
    norms = n.reshape(3, -1).norm(dim=1)
    assert torch.allclose(norms[:2], torch.ones(2)) and norms[2] == 0


@pytest.mark.parametrize("kind", cam.CAM_LOSSES)
def test_cam_loss(kind):
    g = torch.Generator().manual_seed(0)
    s = torch.rand(4, 6, 6, generator=g, requires_grad=True)
    assert cam.cam_loss(s, s.detach().clone(), kind=kind).item() == pytest.approx(0, abs=1e-7)
    assert cam.cam_loss(s, 3 * s.detach(), kind=kind).item() == pytest.approx(0, abs=1e-6)  # scale-free
    t = torch.rand(4, 12, 12, generator=g)  # another size: resized to the student's
    loss = cam.cam_loss(s, t, kind=kind)
    assert loss.ndim == 0 and loss.item() > 0
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    # a cache's float16 array is a valid teacher
    assert cam.cam_loss(s, t.numpy().astype(np.float16), kind=kind).item() == pytest.approx(
        loss.item(), rel=1e-2)
    same = cam.cam_loss(s, s.detach().clone(), kind=kind)
    s.grad = None
    same.backward()
    assert torch.isfinite(s.grad).all()  # no NaN at zero distance (the "at" norm)


def test_cam_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown CAM loss"):
        cam.cam_loss(torch.rand(2, 4, 4), torch.rand(2, 4, 4), kind="kl")
    with pytest.raises(ValueError, match="same N"):
        cam.cam_loss(torch.rand(2, 4, 4), torch.rand(3, 4, 4))
