"""tbkd_helpers.models: every architecture on tiny single-channel inputs, offline.

The ImageNet code path is exercised with local files: a randomly initialised torchvision
model's state dict stands in for the downloaded weights.
"""
from __future__ import annotations

import functools

import pytest
import torch
import torchvision
from torch import nn

from tbkd_helpers import models
from tbkd_helpers.models import (ARCHS, GrayToModel, build_model, checkpoint, cpu_latency,
                                 has_batchnorm, load_checkpoint, model_info, recalibrate_bn,
                                 save_checkpoint, target_layer)

@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread while these tests run (restored after): on the 2-core machine,
    shared with other jobs, two threads made MobileNet V3's many small convolutions up to
    50x slower (thread hand-off), one thread keeps the tests fast and timings stable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


ALL = list(ARCHS)
HEAVY = {"vgg16", "vgg16_bn"}  # 138 M parameters: a few seconds to build and save


def size_for(arch: str) -> int:
    return 80 if arch == "inception_v3" else 64


@functools.lru_cache(maxsize=None)
def _cached(arch: str) -> GrayToModel:
    return build_model(arch, seed=0)


@pytest.fixture
def model(request):
    """A fresh-from-cache model per arch (built once per session; tests must not train it)."""
    m = _cached(request.param)
    m.eval()
    return m


def batch(arch: str, n: int = 2) -> torch.Tensor:
    s = size_for(arch)
    return torch.rand(n, 1, s, s, generator=torch.Generator().manual_seed(1))


def imagenet_state(arch: str, seed: int = 3) -> dict:
    """What torchvision's weights file holds: the 3-channel, 1000-class model."""
    torch.manual_seed(seed)
    kw = dict(aux_logits=True, init_weights=False) if arch == "inception_v3" else {}
    net = torchvision.models.get_model(arch, weights=None, **kw)
    return net.state_dict()


# --------------------------------------------------------------------------- zoo
def test_registry_has_the_papers_five_and_both_vggs():
    for arch in ("densenet121", "inception_v3", "resnet18", "mobilenet_v3_large", "vgg16",
                 "mobilenet_v3_small", "vgg16_bn"):
        assert arch in ARCHS


@pytest.mark.parametrize("model", ALL, indirect=True, ids=ALL)
def test_forward_gray_batch_gives_two_logits(model):
    arch = model.arch
    with torch.no_grad():
        out = model(batch(arch))
    assert out.shape == (2, 2)
    assert torch.isfinite(out).all()
    first = model.net.get_submodule(ARCHS[arch].first_conv)
    assert first.in_channels == 1
    # normalisation lives inside the model: fixed (x - 0.5) / 0.25 from scratch
    assert float(model.mean) == pytest.approx(0.5) and float(model.std) == pytest.approx(0.25)


@pytest.mark.parametrize("arch", ["inception_v3", "mobilenet_v3_small"])
def test_train_mode_forward_returns_plain_logits(arch):
    m = build_model(arch, seed=0).train()
    out = m(batch(arch, 3))
    assert isinstance(out, torch.Tensor) and out.shape == (3, 2)
    out.sum().backward()


def test_input_checks():
    m = _cached("inception_v3")
    with pytest.raises(ValueError, match="at least 75 px"):
        m(torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        _cached("resnet18")(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("alexnet")


def test_seed_makes_init_reproducible_without_touching_global_rng():
    state = torch.get_rng_state()
    a, b = build_model("resnet18", seed=5), build_model("resnet18", seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k
    c = build_model("resnet18", seed=6)
    assert not torch.equal(a.net.conv1.weight, c.net.conv1.weight)


def test_inception_has_no_aux_head_and_no_input_transform():
    m = _cached("inception_v3")
    assert m.net.AuxLogits is None and not m.net.aux_logits
    assert not m.net.transform_input


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "mobilenet_v3_large"])
def test_mobilenet_from_scratch_uses_bn_momentum_0_1(arch):
    bns = [m for m in build_model(arch).modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.momentum == 0.1 for m in bns)


@pytest.mark.parametrize("model", ALL, indirect=True, ids=ALL)
def test_target_layer_gives_a_4d_feature_map(model):
    layer = target_layer(model, model.arch)
    assert target_layer(model) is layer  # arch read from the model
    seen = []
    handle = layer.register_forward_hook(lambda mod, inp, out: seen.append(out.detach().clone()))
    try:
        with torch.no_grad():
            model(batch(model.arch))
    finally:
        handle.remove()
    assert len(seen) == 1
    fmap = seen[0]
    assert fmap.ndim == 4 and fmap.shape[0] == 2 and fmap.shape[1] >= 64


@pytest.mark.parametrize("model", ["resnet18", "vgg16", "mobilenet_v3_small"], indirect=True)
def test_model_info_counts_params_and_flops(model):
    info = model_info(model, size_for(model.arch))
    assert info["params"] == sum(p.numel() for p in model.parameters())
    assert info["flops"] > 0
    bigger = model_info(model, (2 * size_for(model.arch), 2 * size_for(model.arch)))
    assert bigger["flops"] > 2 * info["flops"]  # convs scale with the pixel count


def test_flops_of_a_known_layer():
    net = GrayToModel(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.Flatten()),
                      "toy", 0.5, 0.25, 2)
    # 4 output channels x 8x8 positions x 9 weights, a multiply-add = 2 FLOPs
    assert model_info(net, 8)["flops"] == 2 * 4 * 8 * 8 * 9


def test_cpu_latency_is_a_small_positive_number():
    t = cpu_latency(_cached("mobilenet_v3_small"), 64, batch=1, repeats=3, warmup=1)
    assert 0 < t < 5


# --------------------------------------------------------------------------- pretrained path
@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a in HEAVY else a
                                  for a in ALL])
def test_local_imagenet_weights_are_loaded_and_adapted(arch, tmp_path):
    state = imagenet_state(arch)
    path = tmp_path / f"{arch}_imagenet.pth"
    torch.save(state, path)
    m = build_model(arch, weights_path=path)
    spec = ARCHS[arch]
    conv = m.net.get_submodule(spec.first_conv)
    # the first conv is the saved RGB kernel summed over its channels
    assert torch.allclose(conv.weight, state[f"{spec.first_conv}.weight"].sum(1, keepdim=True))
    # every other layer but the head is the saved one, untouched
    own = m.net.state_dict()
    rest = [k for k in own if not k.startswith((spec.first_conv + ".", spec.head + "."))]
    assert set(rest) <= set(state) and len(rest) > 10
    for k in rest:
        assert torch.equal(own[k], state[k]), k
    # a fresh 2-class head, ImageNet normalisation of gray images
    assert m.net.get_submodule(spec.head).out_features == 2
    assert float(m.mean) == pytest.approx(spec.pretrained_mean)
    assert float(m.std) == pytest.approx(spec.pretrained_std)
    # pretrained MobileNets keep torchvision's BatchNorm momentum
    if arch.startswith("mobilenet"):
        assert all(b.momentum == 0.01 for b in m.modules() if isinstance(b, nn.BatchNorm2d))
    with torch.no_grad():
        assert m.eval()(batch(arch)).shape == (2, 2)


def test_summed_kernel_sees_gray_like_the_rgb_model(tmp_path):
    """Gray g through the adapted conv == (g, g, g) through the original RGB conv."""
    state = imagenet_state("resnet18")
    torch.save(state, tmp_path / "w.pth")
    m = build_model("resnet18", weights_path=tmp_path / "w.pth").eval()
    rgb = torchvision.models.resnet18()
    rgb.load_state_dict(state)
    rgb.eval()
    g = torch.rand(2, 1, 32, 32)
    z = (g - m.mean) / m.std
    assert torch.allclose(m.net.conv1(z), rgb.conv1(z.expand(-1, 3, -1, -1)), atol=1e-5)


@pytest.mark.parametrize("arch", ["resnet18", "inception_v3"])
def test_pretrained_true_asks_for_the_imagenet_weights(arch, monkeypatch, tmp_path):
    """pretrained=True (weights="imagenet") asks ``weights.load`` for the ImageNet file of
    ``arch`` (tests/test_weights.py checks where it is looked for); nothing is downloaded."""
    from tbkd_helpers import weights

    state = imagenet_state(arch)
    asked = []

    def fake_load(kind, a, **kw):
        asked.append((kind, a))
        return state, tmp_path / f"{a}.pth"

    monkeypatch.setattr(weights, "load", fake_load)
    m = build_model(arch, pretrained=True)
    assert asked == [("imagenet", arch)]
    spec = ARCHS[arch]
    assert torch.allclose(m.net.get_submodule(spec.first_conv).weight,
                          state[f"{spec.first_conv}.weight"].sum(1, keepdim=True))
    if arch == "inception_v3":
        assert m.net.AuxLogits is None and not m.net.transform_input
        assert float(m.mean) == 0.5 and float(m.std) == 0.5
    with torch.no_grad():
        assert m.eval()(batch(arch)).shape == (2, 2)


def test_bad_weights_file_names_the_file(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save(imagenet_state("mobilenet_v3_small"), path)
    with pytest.raises(ValueError, match=f"^{path}: not ImageNet weights of resnet18"):
        build_model("resnet18", weights_path=path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=f"^{junk}: cannot read weights"):
        build_model("resnet18", weights_path=junk)


# --------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("model", [pytest.param(a, marks=pytest.mark.slow) if a in HEAVY else a
                                   for a in ALL], indirect=True)
def test_checkpoint_round_trip(model, tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", model, model.arch, {"image_size": 64, "lr": 1e-3},
                           epoch=3, val_auc=0.75)
    raw = torch.load(path, weights_only=True)
    assert raw["arch"] == model.arch and raw["settings"]["image_size"] == 64
    loaded, ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 3 and ckpt["val_auc"] == 0.75 and ckpt["num_classes"] == 2
    assert not loaded.training
    for (k, v), w in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(v, w), k
    x = batch(model.arch)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_loading_builds_on_meta_and_initialises_nothing(tmp_path, monkeypatch):
    """load_checkpoint skips the random initialisation the checkpoint overwrites."""
    path = save_checkpoint(tmp_path / "m.pt", _cached("resnet18"), settings={})
    calls = []
    real = torch.Tensor.normal_

    def spy(self, *args, **kwargs):
        calls.append(self.device.type)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "normal_", spy)
    model, _ = load_checkpoint(path)
    assert calls and set(calls) == {"meta"}  # He init ran, on meta tensors only
    assert all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()])
    assert all(p.requires_grad for p in model.parameters())


def test_checkpoint_keeps_pretrained_normalisation_and_class_count(tmp_path):
    torch.save(imagenet_state("resnet18"), tmp_path / "w.pth")
    m = build_model("resnet18", num_classes=3, weights_path=tmp_path / "w.pth")
    save_checkpoint(tmp_path / "m.pt", m, settings={})
    loaded, ckpt = load_checkpoint(tmp_path / "m.pt", expect_arch="resnet18")
    assert ckpt["num_classes"] == 3 and loaded.net.fc.out_features == 3
    assert float(loaded.mean) == pytest.approx(models.IMAGENET_GRAY_MEAN)


def test_checkpoint_settings_become_plain_python(tmp_path):
    from dataclasses import dataclass
    from pathlib import Path

    @dataclass
    class S:
        size: int = 64
        where: Path = Path("/x")
        pair: tuple = (1, 2)

    ckpt = checkpoint(_cached("mobilenet_v3_small"), "mobilenet_v3_small", S(), {"note": "hi"})
    assert ckpt["settings"] == {"size": 64, "where": "/x", "pair": (1, 2)}
    torch.save(ckpt, tmp_path / "c.pt")
    assert torch.load(tmp_path / "c.pt", weights_only=True)["note"] == "hi"


class _NotAllowed:  # pickled as a custom class: weights_only refuses it
    pass


def _bad_checkpoints(tmp_path):
    good = checkpoint(_cached("resnet18"), "resnet18", {}, {})
    cases = {}

    def put(name, obj):
        cases[name] = tmp_path / f"{name}.pt"
        torch.save(obj, cases[name])

    put("wrong_arch", {**good, "arch": "mobilenet_v3_small"})
    put("wrong_head", {**good, "num_classes": 3})
    put("missing_keys", {**good, "state_dict": {k: v for k, v in good["state_dict"].items()
                                                if not k.startswith("net.layer4")}})
    put("extra_keys", {**good, "state_dict": {**good["state_dict"], "net.bogus": torch.zeros(1)}})
    put("plain_state_dict", good["state_dict"])
    put("unknown_arch", {**good, "arch": "alexnet"})
    put("unsafe_pickle", {**good, "extra": _NotAllowed()})
    full = tmp_path / "full.pt"
    torch.save(good, full)
    cases["truncated"] = tmp_path / "truncated.pt"
    cases["truncated"].write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    cases["empty"] = tmp_path / "empty.pt"
    cases["empty"].write_bytes(b"")
    return cases


def test_mismatched_checkpoints_raise_one_line_errors_naming_the_file(tmp_path):
    for name, path in _bad_checkpoints(tmp_path).items():
        with pytest.raises(ValueError) as info:
            load_checkpoint(path)
        msg = str(info.value)
        assert msg.startswith(f"{path}: "), (name, msg)
        assert "\n" not in msg, (name, msg)


def test_expect_arch_and_missing_file(tmp_path):
    path = save_checkpoint(tmp_path / "r.pt", _cached("resnet18"), settings={})
    with pytest.raises(ValueError, match=f"^{path}: checkpoint is a resnet18, expected vgg16"):
        load_checkpoint(path, expect_arch="vgg16")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")


# --------------------------------------------------------------------------- VGG heads
def test_vgg_gap_head_keeps_the_convolutions_and_shrinks_the_head():
    classic = build_model("vgg16", seed=0)
    gap = build_model("vgg16", seed=0, vgg_head="gap")
    assert gap.options == {"vgg_head": "gap"} and classic.options == {}
    # the 13 convolutions (and so the Grad-CAM layer) are the same, seeded alike
    conv_keys = [k for k in classic.state_dict() if k.startswith("net.features.")]
    for k in conv_keys:
        assert torch.equal(classic.state_dict()[k], gap.state_dict()[k]), k
    assert target_layer(gap, "vgg16") is gap.net.features[29]
    # global average pooling and 512-wide layers; classifier.6 stays the 2-class head
    assert isinstance(gap.net.avgpool, nn.AdaptiveAvgPool2d) and gap.net.avgpool.output_size == 1
    assert [m.out_features for m in gap.net.classifier if isinstance(m, nn.Linear)] == [512, 512, 2]
    n_conv = sum(classic.state_dict()[k].numel() for k in conv_keys)
    n_gap = sum(p.numel() for p in gap.parameters())
    assert n_gap - n_conv == 512 * 512 * 2 + 512 * 2 + 2 * 512 + 2
    assert sum(p.numel() for p in classic.parameters()) - n_conv > 100 * n_gap // 15  # 124 M
    # He-initialised hidden layers keep the signal's scale through the head
    feats = torch.randn(256, 512).clamp(min=0)
    with torch.no_grad():
        hidden = gap.net.classifier[:2](feats)
    assert 0.3 < float(hidden.pow(2).mean() / feats.pow(2).mean()) < 3
    with torch.no_grad():
        assert gap.eval()(torch.rand(2, 1, 64, 64)).shape == (2, 2)


def test_vgg_head_option_is_checked_and_ignored_by_other_archs():
    with pytest.raises(ValueError, match="vgg_head must be one of classic, gap"):
        build_model("vgg16", vgg_head="tiny")
    assert build_model("resnet18", vgg_head="gap").options == {}


def test_vgg_gap_head_with_local_imagenet_weights(tmp_path):
    state = imagenet_state("vgg16")
    torch.save(state, tmp_path / "vgg.pth")
    m = build_model("vgg16", weights_path=tmp_path / "vgg.pth", vgg_head="gap")
    assert torch.equal(m.net.features[2].weight, state["features.2.weight"])
    assert m.net.classifier[6].out_features == 2


def test_vgg_gap_checkpoint_round_trip_and_bad_options(tmp_path):
    model = build_model("vgg16", seed=1, vgg_head="gap").eval()
    path = save_checkpoint(tmp_path / "v.pt", model, settings={})
    loaded, ckpt = load_checkpoint(path)
    assert ckpt["options"] == {"vgg_head": "gap"} and loaded.options == {"vgg_head": "gap"}
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    raw = torch.load(path, weights_only=True)
    for options, why in (({"vgg_head": "tiny"}, "vgg_head must be one of"),
                         ({"width": 3}, "unknown build options")):
        bad = tmp_path / "bad.pt"
        torch.save({**raw, "options": options}, bad)
        with pytest.raises(ValueError, match=f"^{bad}: {why}"):
            load_checkpoint(bad)


# --------------------------------------------------------------------------- batch norm
def _toy_bn_net() -> GrayToModel:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(8, 2))
    return GrayToModel(net, "toy", 0.5, 0.25, 2)


def test_recalibrate_bn_matches_batch_statistics():
    model = _toy_bn_net()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:  # garbage running statistics, as after a lagging average
        bn.running_mean.fill_(3.0)
        bn.running_var.fill_(50.0)
    x = torch.rand(64, 1, 16, 16)

    def batch_stat_output():  # BN with batch statistics, dropout off
        model.eval()
        for bn in bns:
            bn.train()
        with torch.no_grad():
            out = model(x)
        model.eval()
        return out

    reference = batch_stat_output()
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model(x), reference, atol=1e-2)
    model.train()
    n = recalibrate_bn(model, [(x[:32], None), (x[32:], None)], "cpu")
    assert n == 64
    assert model.training  # mode restored
    assert all(bn.momentum == 0.1 for bn in bns)  # momentum restored
    model.eval()
    with torch.no_grad():
        # batch statistics of all 64 images == the average of two equal halves' means; the
        # variances differ only by Bessel's correction over 32*16*16 values
        assert torch.allclose(model(x), reference, atol=2e-3)


def test_recalibrate_bn_without_bn_or_usable_batches_changes_nothing():
    lin = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    assert not has_batchnorm(lin)
    assert recalibrate_bn(lin, [(torch.rand(2, 1, 2, 2), 0)]) == 0
    model = _toy_bn_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert recalibrate_bn(model, [(torch.rand(1, 1, 8, 8), 0)]) == 0  # batches of one: skipped
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_recalibrate_bn_max_batches():
    model = _toy_bn_net()
    loader = [(torch.rand(4, 1, 8, 8), 0) for _ in range(5)]
    assert recalibrate_bn(model, loader, max_batches=2) == 8


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "resnet18"])
def test_the_inference_paths_give_the_training_models_outputs(arch):
    """for_inference (fused activations, BatchNorm folded) and its TorchScript-frozen form
    compute the trained model's function: the same probabilities, at any batch size."""
    torch.set_num_threads(1)
    model = build_model(arch, seed=0).train()
    with torch.no_grad():  # BatchNorm statistics that are not the identity, as after training
        for _ in range(3):
            model(torch.rand(8, 1, 64, 64))
    model.eval()
    fast, frozen = models.for_inference(model), models.frozen_for_inference(model, 64)
    assert not any(isinstance(m, (models.Hardswish2, models.Hardsigmoid2)) for m in fast.modules())
    if arch.startswith("mobilenet"):  # conv-BN pairs in Sequentials (ResNet's are attributes: kept)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert isinstance(frozen, torch.jit.ScriptModule)
    x = torch.rand(5, 1, 64, 64)
    with torch.no_grad():
        ref = torch.softmax(model(x), 1)
        for out in (fast(x), frozen(x), frozen(x[:1])):
            assert torch.allclose(torch.softmax(out, 1), ref[:len(out)], atol=1e-5)
