"""Grad-CAM knowledge distillation: losses, guides, the joint augmentation, one training step."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tbkd_helpers import cam, distill, models
from tbkd_helpers.data import Record


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_hard_activations_are_equal_and_twice_differentiable():
    x = torch.linspace(-5, 5, 101, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(models.Hardsigmoid2()(x), F.hardsigmoid(x))
    assert torch.allclose(models.Hardswish2()(x), F.hardswish(x))
    (g,) = torch.autograd.grad(models.Hardswish2()(x).sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad(g.sum(), x)  # the fused op raises here
    assert torch.isfinite(g2).all()


def test_mobilenet_student_cam_loss_reaches_early_weights_in_train_mode():
    model = models.build_model("mobilenet_v3_small", seed=0).train()
    layer = models.target_layer(model, "mobilenet_v3_small", stride=16)
    x = torch.rand(4, 1, 64, 64)
    maps, logits = cam.differentiable_gradcam(model, layer, x)
    assert maps.shape == (4, 4, 4) and logits.shape == (4, 2)
    target = torch.rand(4, 4, 4)
    distill.cam_term(maps, target).backward()
    first = model.net.features[0][0].weight.grad
    assert first is not None and first.abs().sum() > 0


def test_kd_loss_zero_for_equal_logits_and_positive_otherwise():
    s = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    assert distill.kd_loss(s, s.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-5)
    t = torch.tensor([[-1.0, 2.0], [0.3, 0.5]])
    assert distill.kd_loss(s, t, 4.0).item() > 0
    # the T^2 factor keeps the gradient's scale about the same whatever the temperature
    norms = []
    for temp in (2.0, 8.0):
        z = (s * 0.1).clone().requires_grad_()
        (g,) = torch.autograd.grad(distill.kd_loss(z, t * 0.1, temp), z)
        norms.append(g.norm().item())
    assert 0.5 < norms[0] / norms[1] < 2


def test_cam_term_is_size_independent_for_mse():
    a = torch.rand(3, 8, 8)
    b = torch.rand(3, 8, 8)
    small = distill.cam_term(a, b, "mse").item()
    big = distill.cam_term(F.interpolate(a[:, None], 16)[:, 0], F.interpolate(b[:, None], 16)[:, 0], "mse").item()
    assert 0 < small < 2 and big == pytest.approx(small, rel=0.05)
    assert distill.cam_term(a, a, "at").item() == pytest.approx(0.0, abs=1e-6)


def test_teacher_weights_rules():
    aucs = {"a": 0.9, "b": 0.7, "c": 0.45}
    assert distill.teacher_weights(aucs, "best") == {"a": 1.0, "b": 0.0, "c": 0.0}
    fused = distill.teacher_weights(aucs, "fusion")
    assert fused["c"] == 0 and fused["a"] == pytest.approx(2 * fused["b"]) and sum(fused.values()) == pytest.approx(1)
    assert distill.teacher_weights(aucs, "b")["b"] == 1.0
    with pytest.raises(ValueError, match="unknown guide"):
        distill.teacher_weights(aucs, "worst")


def test_best_teacher_breaks_ties_alphabetically_whatever_the_order():
    """Chapter 03 draws, and the "best" guide of chapter 04 uses, the same teacher."""
    aucs = {"resnet18": 1.0, "mobilenet_v3_large": 1.0, "densenet121": float("nan")}
    assert distill.best_teacher(aucs) == "mobilenet_v3_large"
    assert distill.best_teacher(dict(reversed(list(aucs.items())))) == "mobilenet_v3_large"
    assert distill.teacher_weights(aucs, "best")["mobilenet_v3_large"] == 1.0


def _cache(maps, logits, ids):
    return cam.CamCache(cams=maps.astype(np.float16), logits=logits.astype(np.float32),
                        labels=np.zeros(len(maps), np.int64), key={}, ids=np.array(ids))


def test_make_guide_best_and_fusion():
    ids = ["s/1", "s/2"]
    a = _cache(np.ones((2, 4, 4)), np.array([[0.0, 1.0]] * 2), ids)
    b = _cache(np.zeros((2, 8, 8)), np.array([[1.0, 0.0]] * 2), ids)
    best = distill.make_guide({"a": a, "b": b}, {"a": 0.9, "b": 0.7}, "best")
    assert best.source == "a" and best.cams.shape == (2, 4, 4) and best.cams.min() == 1
    fused = distill.make_guide({"a": a, "b": b}, {"a": 0.9, "b": 0.7}, "fusion")
    assert fused.source == "fusion" and fused.cams.shape == (2, 8, 8)
    assert fused.cams.mean() == pytest.approx(2 / 3, abs=1e-3)  # weights 0.4 : 0.2
    assert fused.logits[0].tolist() == pytest.approx([1 / 3, 2 / 3], abs=1e-6)
    c = _cache(np.zeros((2, 8, 8)), np.zeros((2, 2)), ["s/2", "s/1"])
    with pytest.raises(ValueError, match="images differ"):
        distill.make_guide({"a": a, "c": c}, {"a": 0.9, "c": 0.8}, "fusion")



def test_split_guide_takes_maps_from_one_rule_and_logits_from_the_other():
    ids = ["s/1", "s/2"]
    a = _cache(np.ones((2, 4, 4)), np.array([[0.0, 1.0]] * 2), ids)
    b = _cache(np.zeros((2, 8, 8)), np.array([[1.0, 0.0]] * 2), ids)
    aucs = {"a": 0.9, "b": 0.7}
    g = distill.make_guide({"a": a, "b": b}, aucs, "b,best")  # maps of b, logits of the best (a)
    assert (g.source, g.maps_source, g.logits_source) == ("b,a", "b", "a")
    assert g.cams.shape == (2, 8, 8) and g.cams.max() == 0  # b's maps
    assert g.logits.tolist() == [[0.0, 1.0]] * 2  # a's logits
    assert g.weights == {"a": 0.0, "b": 1.0} and g.logit_weights == {"a": 1.0, "b": 0.0}
    assert distill.guide_teachers(aucs, "b,best") == ["a", "b"] and distill.guide_teachers(aucs, "b") == ["b"]
    same = distill.make_guide({"a": a, "b": b}, aucs, "a,best")  # both halves name a: one teacher's guide
    assert same.source == "a" and same.logit_weights is None
    assert distill.split_guide("fusion") == ("fusion", "fusion")
    with pytest.raises(ValueError, match="maps, then logits"):
        distill.split_guide("a,b,c")


class _Base:
    """A stand-in for CXRDataset: images with a bright square and records."""

    def __init__(self, n=6, size=32):
        self.images = torch.zeros(n, 1, size, size)
        self.images[:, :, 4:12, 20:28] = 1.0
        self.labels = torch.tensor([i % 2 for i in range(n)])
        self.records = [Record(key=f"s/{i}", path=None, dataset="s", label=i % 2, patient_id=str(i))
                        for i in range(n)]

    def __len__(self):
        return len(self.images)


def test_joint_augmentation_keeps_map_on_the_image():
    base = _Base()
    maps = F.adaptive_avg_pool2d(base.images, 8)[:, 0].numpy()  # the map marks the square
    guide = distill.Guide(cams=maps, logits=np.zeros((6, 2), np.float32), ids=[r.key for r in base.records],
                          source="t", weights={"t": 1.0})
    ds = distill.DistillDataset(base, guide, augment=True)
    torch.manual_seed(0)
    for i in range(len(ds)):
        x, y, m, lg = ds[i]
        assert x.shape == (1, 32, 32) and m.shape == (8, 8) and lg.shape == (2,)
        # where the augmented map peaks, the augmented image is bright
        img_small = F.adaptive_avg_pool2d(x, 8)[0]
        corr = np.corrcoef(img_small.flatten(), m.flatten())[0, 1]
        assert corr > 0.8


def test_guide_must_match_dataset_order():
    base = _Base()
    guide = distill.Guide(cams=np.zeros((6, 4, 4), np.float32), logits=np.zeros((6, 2), np.float32),
                          ids=[f"s/{i}" for i in reversed(range(6))], source="t", weights={"t": 1})
    with pytest.raises(ValueError, match="not the data set's images"):
        distill.DistillDataset(base, guide)


@pytest.mark.parametrize("variant", distill.VARIANTS)
def test_step_loss_for_every_variant(variant):
    model = models.build_model("mobilenet_v3_small", seed=0).train()
    layer = models.target_layer(model, "mobilenet_v3_small", stride=16)
    s = distill.variant_settings(variant)
    step = distill.make_step_loss(layer, s)
    batch = (torch.rand(4, 1, 64, 64), torch.tensor([0, 1, 0, 1]), torch.rand(4, 4, 4), torch.randn(4, 2))
    criterion = torch.nn.CrossEntropyLoss()
    torch.manual_seed(1)  # the same dropout draw for the step and the plain CE below
    loss, y = step(model, batch, criterion, torch.device("cpu"))
    assert loss.ndim == 0 and torch.isfinite(loss) and y.tolist() == [0, 1, 0, 1]
    loss.backward()
    assert model.net.features[0][0].weight.grad.abs().sum() > 0
    torch.manual_seed(1)
    with torch.no_grad():
        ce = criterion(model(batch[0]), batch[1]).item()  # same batch statistics (train mode)
    if variant == "ce":
        assert loss.item() == pytest.approx(ce, rel=1e-4)
    else:
        assert loss.item() > ce  # the extra terms are non-negative and here positive


def test_cam_order_first_holds_the_gradcam_weights_constant():
    """The map term alone (the cross-entropy scaled to zero): with cam_order "second" it
    reaches the layers after the Grad-CAM layer (through the Grad-CAM weights, a gradient
    of the score); with "first" only the layers before it, and the map is the same."""
    batch = (torch.rand(4, 1, 64, 64), torch.tensor([1, 1, 0, 1]), torch.rand(4, 4, 4), torch.randn(4, 2))
    zero_ce = lambda logits, y: logits.sum() * 0.0  # noqa: E731
    grads, losses = {}, {}
    for order in distill.CAM_ORDERS:
        model = models.build_model("mobilenet_v3_small", seed=0).train()
        layer = models.target_layer(model, "mobilenet_v3_small", stride=16)
        step = distill.make_step_loss(layer, distill.variant_settings("cam", cam_order=order))
        torch.manual_seed(1)
        loss, _ = step(model, batch, zero_ce, torch.device("cpu"))
        loss.backward()
        losses[order] = loss.item()
        grads[order] = (model.net.features[0][0].weight.grad.abs().sum().item(),  # before the layer
                        model.net.classifier[-1].weight.grad.abs().sum().item())  # after it
    assert losses["first"] == pytest.approx(losses["second"], rel=1e-6) and losses["first"] > 0
    assert grads["second"][0] > 0 and grads["second"][1] > 0
    assert grads["first"][0] > 0 and grads["first"][1] == 0.0
    with pytest.raises(ValueError, match="cam_order"):
        distill.DistillSettings(cam_order="third")


def test_variant_settings():
    assert distill.variant_settings("ce") == distill.DistillSettings()
    both = distill.variant_settings("kd+cam", alpha=0.5, beta=2.0, cam_loss="at")
    assert (both.alpha, both.beta, both.cam_loss) == (0.5, 2.0, "at")
    with pytest.raises(ValueError, match="unknown student variant"):
        distill.variant_settings("magic")
    with pytest.raises(ValueError, match="cam_loss"):
        distill.DistillSettings(cam_loss="kl")
