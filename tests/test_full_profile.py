"""The `full` profile (the paper's sizes, meant for a GPU) starts and trains a batch of
every model on the CPU, and picks CUDA where there is one."""
from __future__ import annotations

import pytest
import torch

from tbkd_helpers import config, models, train


def test_full_profile_uses_the_papers_sizes():
    p = config.get_profile("full", data_dir="/nowhere")
    assert p.size_for("densenet121") == 224 and p.size_for("inception_v3") == 299
    assert p.data == "real" and set(p.teachers) == set(config.TEACHERS)


def test_device_auto_picks_cuda_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert config.torch_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert config.torch_device("auto").type == "cpu"
    assert config.torch_device("cpu").type == "cpu"


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(config.TEACHERS) + ["mobilenet_v3_small"])
def test_full_profile_trains_one_batch_of_every_model_on_cpu(arch, tmp_path):
    p = config.get_profile("full", data_dir="/nowhere")
    size = p.size_for(arch)
    torch.manual_seed(0)
    x = torch.rand(2, 1, size, size)
    y = torch.tensor([0, 1])
    ds = torch.utils.data.TensorDataset(x, y)
    model = models.build_model(arch, seed=p.seed)
    before = [q.detach().clone() for q in model.parameters()]
    settings = train.TrainSettings(epochs=1, batch_size=2, seed=p.seed, bn_recalibrate="off",
                                   schedule="none")
    hist = train.fit(model, ds, ds, settings, tmp_path / arch, device="cpu", progress=False)
    assert len(hist.epoch) == 1 and hist.train_loss[0] == hist.train_loss[0]  # ran, not NaN
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), "no weight moved"


def test_full_profile_distils_at_the_classic_grad_cam_layer():
    """At 224 px the last block (stride 32) gives 7x7 maps, so `full` uses it; the kd+cam
    step of the student runs there and its gradient reaches the first convolution."""
    from tbkd_helpers import cam, distill

    p = config.get_profile("full", data_dir="/nowhere")
    assert p.cam_stride == 32 and config.get_profile("real").cam_stride == 16
    model = models.build_model(p.student, seed=0).train()
    layer = models.target_layer(model, p.student, stride=p.cam_stride)
    x = torch.rand(2, 1, p.image_size, p.image_size)
    maps, _ = cam.differentiable_gradcam(model, layer, x, target_class=1)
    assert tuple(maps.shape) == (2, 7, 7)
    settings = distill.variant_settings("kd+cam", alpha=p.kd_alpha, beta=p.cam_beta, temperature=p.kd_temperature)
    step = distill.make_step_loss(layer, settings)
    batch = (x, torch.tensor([0, 1]), torch.rand(2, p.cam_size, p.cam_size), torch.randn(2, 2))
    loss, _ = step(model, batch, torch.nn.CrossEntropyLoss(), torch.device("cpu"))
    loss.backward()
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0
