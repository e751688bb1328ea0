"""tbkd_helpers.train: learning, determinism, resume, finished-stage skip, the BN trap.

Data: tiny synthetic 32x32 gray images, positive ones with a bright square somewhere.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from tbkd_helpers.models import build_model, load_checkpoint, recalibrate_bn
from tbkd_helpers.train import (History, TrainSettings, TrainingInterrupted, dataset_labels,
                                fit, predict)


class Squares(Dataset):
    """``n`` noisy 32x32 images; label 1 has a bright 10x10 square at a random place.

    ``augment``: random horizontal flips drawn from torch's global generator, as a
    dataset's augmentation would (resume must restore that state too).
    """

    def __init__(self, n: int, seed: int, size: int = 32, augment: bool = False):
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(n, 1, size, size, generator=g) * 0.3 + 0.2
        self.labels = (torch.arange(n) % 2).tolist()
        for i, y in enumerate(self.labels):
            if y:
                r, c = torch.randint(0, size - 10, (2,), generator=g).tolist()
                x[i, 0, r:r + 10, c:c + 10] += 0.5
        self.x = x.clamp(0, 1)
        self.augment = augment

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = self.x[i]
        if self.augment and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, self.labels[i]


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread while these tests run (restored after): on the 2-core machine,
    shared with other jobs, two threads made MobileNet V3's many small convolutions up to
    50x slower (thread hand-off), one thread keeps the tests fast and timings stable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


QUICK = dict(epochs=2, batch_size=8, lr=3e-3, seed=0)


def state_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def data():
    return Squares(24, 0, augment=True), Squares(16, 1)


# --------------------------------------------------------------------------- learning
def test_fit_learns_a_separable_task(tmp_path):
    train, val = Squares(48, 0), Squares(32, 1)
    model = build_model("resnet18", seed=0)
    hist = fit(model, train, val, TrainSettings(epochs=3, batch_size=16, lr=3e-3), tmp_path,
               device="cpu", progress=False)
    assert isinstance(hist, History) and len(hist) == 3
    assert hist.epoch == [1, 2, 3]
    for key in ("train_loss", "val_loss", "val_auc", "val_acc", "lr", "seconds"):
        assert len(getattr(hist, key)) == 3, key
    assert hist.final["val_auc"] >= 0.9, hist
    assert hist.final["val_auc"] == pytest.approx(max(hist.val_auc))
    assert not model.training
    for name in ("best.pt", "last.pt", "done.json"):
        assert (tmp_path / name).is_file(), name
    json.dumps(hist.to_dict())  # JSON-ready
    assert History.from_dict(hist.to_dict()) == hist

    # best.pt is the returned model, loadable on its own
    probs, labels = predict(model, val, device="cpu")
    loaded, ckpt = load_checkpoint(tmp_path / "best.pt", expect_arch="resnet18")
    assert ckpt["epoch"] == hist.best_epoch and ckpt["bn_recalibrated"]
    assert ckpt["settings"]["train"]["lr"] == 3e-3
    probs2, _ = predict(loaded, val, device="cpu")
    np.testing.assert_allclose(probs, probs2, atol=1e-6)
    assert labels.tolist() == val.labels
    assert ((probs >= 0.5) == labels).mean() >= 0.8


def test_predict_returns_probabilities_and_labels_in_order():
    model = build_model("mobilenet_v3_small", seed=0).train()
    ds = TensorDataset(torch.rand(5, 1, 32, 32), torch.tensor([0, 1, 1, 0, 1]))
    probs, labels = predict(model, ds, device="cpu", batch_size=2)
    assert probs.shape == (5,) and probs.dtype == np.float64
    assert ((probs >= 0) & (probs <= 1)).all()
    assert labels.tolist() == [0, 1, 1, 0, 1]
    assert model.training  # mode restored


def test_dataset_labels_from_attribute_subset_or_items():
    ds = Squares(6, 0)
    assert dataset_labels(ds).tolist() == [0, 1, 0, 1, 0, 1]
    sub = torch.utils.data.Subset(ds, [1, 3, 4])
    assert dataset_labels(sub).tolist() == [1, 1, 0]
    tds = TensorDataset(torch.zeros(3, 1, 2, 2), torch.tensor([1, 0, 1]))
    assert dataset_labels(tds).tolist() == [1, 0, 1]


def test_settings_are_checked():
    with pytest.raises(ValueError, match="optimizer"):
        TrainSettings(optimizer="adam")
    with pytest.raises(ValueError, match="schedule"):
        TrainSettings(schedule="step")
    assert TrainSettings(class_balance=True).class_balance == "loss"
    s = TrainSettings(epochs=3)
    assert TrainSettings.from_dict(s.to_dict()) == s


# --------------------------------------------------------------------------- reproducibility
def test_same_seed_same_weights(tmp_path, data):
    train, val = data
    settings = TrainSettings(**QUICK, class_balance="sampler")
    a, b = build_model("mobilenet_v3_small", seed=0), build_model("mobilenet_v3_small", seed=0)
    ha = fit(a, train, val, settings, tmp_path / "a", device="cpu", progress=False)
    hb = fit(b, train, val, settings, tmp_path / "b", device="cpu", progress=False)
    assert state_equal(a, b)
    assert ha.train_loss == hb.train_loss and ha.val_auc == hb.val_auc
    c = build_model("mobilenet_v3_small", seed=0)
    fit(c, train, val, TrainSettings(**{**QUICK, "seed": 1}, class_balance="sampler"),
        tmp_path / "c", device="cpu", progress=False)
    assert not state_equal(a, c)  # the seed matters (shuffling, sampling, dropout, flips)


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_resume_reaches_the_same_weights(tmp_path, data, schedule):
    train, val = data
    settings = TrainSettings(**QUICK, schedule=schedule)

    straight = build_model("mobilenet_v3_small", seed=0)
    h1 = fit(straight, train, val, settings, tmp_path / "straight", device="cpu", progress=False)
    straight_last = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)

    def stop_after_first(epoch, history):
        if epoch == 1:
            raise TrainingInterrupted("stopped")

    run = tmp_path / "resumed"
    m = build_model("mobilenet_v3_small", seed=0)
    with pytest.raises(TrainingInterrupted):
        fit(m, train, val, settings, run, device="cpu", progress=False,
            on_epoch_end=stop_after_first)
    assert (run / "last.pt").is_file() and not (run / "done.json").exists()
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1

    epochs_run = []
    m2 = build_model("mobilenet_v3_small", seed=7)  # whatever it holds is replaced
    h2 = fit(m2, train, val, settings, run, device="cpu", progress=False, resume=True,
             on_epoch_end=lambda e, h: epochs_run.append(e))
    assert epochs_run == [2]
    assert state_equal(straight, m2)
    resumed_last = torch.load(run / "last.pt", weights_only=True)
    for k, v in straight_last["state_dict"].items():
        assert torch.equal(v, resumed_last["state_dict"][k]), k
    for key in ("train_loss", "val_loss", "val_auc", "val_acc", "lr", "best_epoch", "final"):
        assert getattr(h1, key) == getattr(h2, key), key


def test_finished_stage_is_skipped_and_changed_settings_retrain(tmp_path, data):
    train, val = data
    settings = TrainSettings(**{**QUICK, "epochs": 1})
    model = build_model("mobilenet_v3_small", seed=0)
    h1 = fit(model, train, val, settings, tmp_path, device="cpu", progress=False)
    done = json.loads((tmp_path / "done.json").read_text())
    assert done["complete"] and done["best_epoch"] == h1.best_epoch

    calls = []
    again = build_model("mobilenet_v3_small", seed=3)
    h2 = fit(again, train, val, settings, tmp_path, device="cpu", progress=False,
             on_epoch_end=lambda e, h: calls.append(e))
    assert calls == [] and h2 == h1
    assert state_equal(model, again) and not again.training

    h3 = fit(build_model("mobilenet_v3_small", seed=0), train, val,
             TrainSettings(**{**QUICK, "epochs": 1, "lr": 1e-3}), tmp_path, device="cpu",
             progress=False, on_epoch_end=lambda e, h: calls.append(e))
    assert calls == [1] and h3.train_loss != h1.train_loss
    # extra settings (image size, split, ...) are part of the fingerprint too
    fit(build_model("mobilenet_v3_small", seed=0), train, val,
        TrainSettings(**{**QUICK, "epochs": 1, "lr": 1e-3}), tmp_path, device="cpu",
        progress=False, extra_settings={"image_size": 32},
        on_epoch_end=lambda e, h: calls.append(e))
    assert calls == [1, 1]


# --------------------------------------------------------------------------- loop options
class Tiny(nn.Module):
    """A small non-zoo model: fit works on any (N,1,H,W) -> logits module."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    def forward(self, x):
        return self.body(x)


def test_early_stopping_on_a_flat_validation_auc(tmp_path, data):
    _, val = data
    train = Squares(24, 0)  # no augmentation: with lr=0 every epoch validates the same
    torch.manual_seed(0)
    hist = fit(Tiny(), train, val, TrainSettings(epochs=6, lr=0.0, schedule="none", patience=2),
               tmp_path, device="cpu", progress=False)
    assert hist.stopped_early and len(hist) == 3 and hist.best_epoch == 1


def test_sgd_cosine_label_smoothing_and_progress_bar(tmp_path, data, capsys, monkeypatch):
    import tqdm.auto
    import tqdm.std

    # the test session silences bars for nbval (TBKD_PROGRESS=off); this test wants a real one
    monkeypatch.setattr(tqdm.auto, "tqdm", tqdm.std.tqdm)
    train, val = data
    torch.manual_seed(0)
    model = Tiny()
    hist = fit(model, train, val,
               TrainSettings(epochs=2, batch_size=8, optimizer="sgd", schedule="cosine",
                             lr=0.05, label_smoothing=0.1, bn_recalibrate="end"),
               tmp_path, device="cpu", progress=True)
    assert len(hist) == 2 and hist.lr[-1] < 0.05
    assert all(np.isfinite(hist.train_loss))
    out = capsys.readouterr()
    assert "train Tiny" in out.err  # the bar went to stderr, not into the result


@pytest.mark.parametrize("bar", ["tqdm.asyncio", "tqdm.std"])
def test_the_progress_bar_class_does_not_change_the_weights(tmp_path, data, monkeypatch, bar):
    """Notebooks get tqdm.auto's class (tqdm.asyncio among its bases), headless runs
    tqdm.std's: the trained weights must not depend on it. (They did: tqdm.asyncio
    calls iter() on a wrapped DataLoader, which draws from the shuffle generator.)"""
    import importlib

    import tqdm.auto

    train, val = data
    settings = TrainSettings(epochs=2, batch_size=8, lr=1e-2)

    def run(out):
        torch.manual_seed(0)
        model = Tiny()
        hist = fit(model, train, val, settings, out, device="cpu", progress=True)
        return hist.train_loss, [p.detach().clone() for p in model.parameters()]

    monkeypatch.setattr(tqdm.auto, "tqdm", tqdm.std.tqdm)
    ref_loss, ref_w = run(tmp_path / "std")
    monkeypatch.setattr(tqdm.auto, "tqdm", importlib.import_module(bar).tqdm)
    loss, w = run(tmp_path / "other")
    assert loss == ref_loss
    assert all(torch.equal(a, b) for a, b in zip(w, ref_w))


# --------------------------------------------------------------------------- the BN trap
def test_mobilenet_from_scratch_does_not_predict_one_class(tmp_path):
    """torchvision's MobileNet V3 (BN momentum 0.01) trained from scratch for a
    few steps predicted one class for every image in eval mode. With momentum 0.1 and
    recalibrated statistics it must not."""
    train, val = Squares(64, 0), Squares(32, 1)
    model = build_model("mobilenet_v3_small", seed=0)
    settings = TrainSettings(epochs=3, batch_size=16, lr=3e-3)
    hist = fit(model, train, val, settings, tmp_path, device="cpu", progress=False)
    probs, labels = predict(model, val, device="cpu")
    pred = probs >= 0.5
    assert 0 < pred.sum() < len(pred), probs  # both classes predicted
    assert (pred == labels).mean() >= 0.75, (hist, probs)

    # the trap itself: running statistics that lag (here: never updated, as after a few
    # hundred steps at momentum 0.01) - recalibration restores the predictions
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
    lagging, _ = predict(model, val, device="cpu")
    # the same batches as fit's own recalibration (eval_batch_size): with a cumulative
    # average, the running variance depends on how the images are grouped into batches
    calib = torch.utils.data.DataLoader(train, batch_size=max(settings.batch_size, settings.eval_batch_size))
    recalibrate_bn(model, calib, "cpu")
    fixed, _ = predict(model, val, device="cpu")
    np.testing.assert_allclose(fixed, probs, atol=1e-4)
    assert not np.allclose(lagging, probs, atol=1e-2)


def test_adamw_is_fused_and_steps_like_the_per_tensor_optimizer():
    """train.adamw uses torch's fused kernel where it exists, with the same update rule."""
    from tbkd_helpers.train import adamw

    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(2)) for _ in range(2)]
    x = torch.randn(3, 1, 8, 8)
    for net in nets:
        net(x)
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [adamw(nets[0].parameters(), 1e-2, 1e-4),
            torch.optim.AdamW(nets[1].parameters(), lr=1e-2, weight_decay=1e-4, foreach=False)]
    assert opts[0].defaults.get("fused") is True
    for _ in range(5):
        for net, opt in zip(nets, opts):
            opt.zero_grad()
            net(x).square().sum().backward()
            opt.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert not torch.equal(a, torch.zeros_like(a))


def test_no_grad_passes_run_in_eval_sized_batches(tmp_path, monkeypatch):
    """BatchNorm recalibration and validation read batches of eval_batch_size (at least
    the training batch), not of the training batch."""
    import tbkd_helpers.train as train

    seen = {"calib": [], "val": []}
    real_recal, real_validate = train.recalibrate_bn, train.validate

    def recal(model, loader, *a, **k):
        seen["calib"] += [len(b[0]) for b in loader]
        return real_recal(model, loader, *a, **k)

    def validate(model, loader, *a, **k):
        seen["val"] += [len(b[0]) for b in loader]
        return real_validate(model, loader, *a, **k)

    monkeypatch.setattr(train, "recalibrate_bn", recal)
    monkeypatch.setattr(train, "validate", validate)
    model = build_model("resnet18", seed=0)
    fit(model, Squares(24, 0), Squares(12, 1), TrainSettings(epochs=1, batch_size=4, eval_batch_size=16),
        tmp_path / "ckpt", progress=False)
    assert seen["calib"][:2] == [16, 8] and seen["val"][:1] == [12]


def test_bn_images_recalibrates_from_a_fixed_subset_and_leaves_training_alone(tmp_path, data):
    """``bn_images``: the statistics come from the same seeded subset every epoch (the
    set's order kept; all of it when it is no larger), and the training itself (losses,
    weights other than BatchNorm's running statistics) is the one without the subset."""
    import tbkd_helpers.train as train
    from tbkd_helpers.train import calibration_subset

    ds, _ = data
    sub = calibration_subset(ds, TrainSettings(seed=3, bn_images=10))
    assert len(sub) == 10 and list(sub.indices) == sorted(set(sub.indices))
    assert list(calibration_subset(ds, TrainSettings(seed=3, bn_images=10)).indices) == list(sub.indices)
    assert list(calibration_subset(ds, TrainSettings(seed=4, bn_images=10)).indices) != list(sub.indices)
    assert calibration_subset(ds, TrainSettings(bn_images=len(ds))) is ds
    assert calibration_subset(ds, TrainSettings()) is ds
    with pytest.raises(ValueError, match="bn_images"):
        TrainSettings(bn_images=1)

    train_ds, val = data
    plain = Squares(24, 0)  # the training images without augmentation, as the pipeline passes
    models, hists, seen = {}, {}, []
    real_recal = train.recalibrate_bn

    def recal(model, loader, *a, **k):
        seen.append(sum(len(b[0]) for b in loader))
        return real_recal(model, loader, *a, **k)

    for k in (None, 10):
        models[k] = build_model("resnet18", seed=0)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(train, "recalibrate_bn", recal)
            hists[k] = fit(models[k], train_ds, val, TrainSettings(**QUICK, bn_images=k), tmp_path / str(k),
                           device="cpu", progress=False, calib_ds=plain)
    assert seen == [24, 24, 10, 10]  # one pass per epoch, from all images, then from the subset
    assert hists[None].train_loss == hists[10].train_loss
    # the last epoch's weights (last.pt; the kept epoch may differ, chosen on other statistics)
    from tbkd_helpers.models import read_checkpoint
    sa, sb = (read_checkpoint(tmp_path / str(k) / "last.pt")["state_dict"] for k in (None, 10))
    stats = ("running_mean", "running_var", "num_batches_tracked")
    assert all(torch.equal(sa[n], sb[n]) for n in sa if not n.endswith(stats))
    assert not all(torch.equal(sa[n], sb[n]) for n in sa if n.endswith("running_mean"))
