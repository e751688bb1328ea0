"""Starting weights: random, ImageNet, chest-X-ray; found offline, refused with one line."""
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from tbkd_helpers import models, weights
from tbkd_helpers.config import get_profile
from tbkd_helpers.models import ARCHS, build_model


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network (a download fails as it does here), empty caches under tmp_path."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TBKD_WEIGHTS_DIR", raising=False)

    def no_network(url, dst, hash_prefix=None, progress=True):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path


def _save_as_named(state, folder: Path, stem: str, monkeypatch, arch: str, kind: str) -> Path:
    """Write ``state`` where ``kind``'s weights of ``arch`` are looked for, under a name
    that carries its own SHA-256 prefix (torchvision's convention), and make the weights
    API report that name (its real files cannot be written by a test)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "tmp.pth"
    torch.save(state, tmp)
    h = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    path = folder / f"{stem}-{h}.pth"
    tmp.rename(path)
    real = weights.source

    def fake_source(k, a):
        if a == arch and weights.kind_for(k, a) == kind:
            return f"https://example.invalid/{path.name}", path.name, h
        return real(k, a)

    monkeypatch.setattr(weights, "source", fake_source)
    return path


def test_the_imagenet_url_comes_from_torchvisions_weights_api():
    url, name, prefix = weights.source("imagenet", "resnet18")
    assert url == torchvision.models.get_model_weights("resnet18").DEFAULT.url
    assert name == url.rsplit("/", 1)[-1] and prefix and name.startswith("resnet18-")
    assert weights.source("cxr", "resnet18") == weights.source("imagenet", "resnet18")  # no CXR resnet
    assert weights.source("cxr", "densenet121")[0] == weights.CXR_URL


def test_imagenet_weights_from_torchs_cache(offline, monkeypatch):
    state = torchvision.models.resnet18().state_dict()
    path = _save_as_named(state, Path(torch.hub.get_dir()) / "checkpoints", "resnet18", monkeypatch,
                          "resnet18", "imagenet")
    m = build_model("resnet18", weights="imagenet")
    assert torch.allclose(m.net.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(m.net.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    assert float(m.mean) == pytest.approx(ARCHS["resnet18"].pretrained_mean)
    assert weights.preflight("imagenet", ["resnet18"]) == [path]


def test_imagenet_weights_from_the_users_folder(offline, monkeypatch):
    folder = offline / "my-weights"
    monkeypatch.setenv("TBKD_WEIGHTS_DIR", str(folder))
    state = torchvision.models.mobilenet_v3_small().state_dict()
    _save_as_named(state, folder, "mobilenet_v3_small", monkeypatch, "mobilenet_v3_small", "imagenet")
    m = build_model("mobilenet_v3_small", weights="imagenet")
    first = ARCHS["mobilenet_v3_small"].first_conv
    assert torch.allclose(m.net.get_submodule(first).weight, state[f"{first}.weight"].sum(1, keepdim=True))
    assert m.net.get_submodule(ARCHS["mobilenet_v3_small"].head).out_features == 2


def test_chest_xray_weights_for_densenet_from_torchxrayvisions_cache(offline, monkeypatch):
    net = torchvision.models.densenet121(num_classes=weights.CXR_CLASSES)
    net.features.conv0 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)  # torchxrayvision's gray DenseNet
    state = net.state_dict()
    folder = Path("~/.torchxrayvision/models_data").expanduser()
    assert folder == weights.cache_dir("cxr")
    folder.mkdir(parents=True)
    torch.save(state, folder / weights.CXR_URL.rsplit("/", 1)[-1])
    m = build_model("densenet121", weights="cxr")
    assert torch.equal(m.net.features.conv0.weight, state["features.conv0.weight"])
    assert torch.equal(m.net.features.denseblock1.denselayer1.conv1.weight,
                       state["features.denseblock1.denselayer1.conv1.weight"])
    # torchxrayvision's pixel range: [0, 1] -> [-1024, 1024]
    assert float((1.0 - m.mean) / m.std) == pytest.approx(1024) and float((0 - m.mean) / m.std) == pytest.approx(-1024)
    assert m.net.classifier.out_features == 2


def test_missing_weights_without_network_is_one_line_naming_the_file(offline):
    with pytest.raises(weights.WeightsError) as err:
        weights.preflight("imagenet", ["densenet121", "mobilenet_v3_small"])
    msg = str(err.value)
    assert "\n" not in msg and "densenet121-" in msg and "TBKD_WEIGHTS_DIR" in msg
    assert str(Path(torch.hub.get_dir()) / "checkpoints") in msg
    assert not (Path(torch.hub.get_dir()) / "checkpoints").exists() or \
        not any((Path(torch.hub.get_dir()) / "checkpoints").iterdir())  # nothing half-written


def test_reproduce_stops_at_once_with_one_line_and_writes_nothing(offline, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "TORCH_HOME": str(offline / "torch"), "HOME": str(offline / "home"),
           "TBKD_ARTIFACTS": str(tmp_path / "a"), "TBKD_RESULTS": str(tmp_path / "r"),
}
    code = ("import sys, torch\n"
            "def no_network(*a, **k): raise OSError('<urlopen error [Errno -2] Name or service not known>')\n"
            "torch.hub.download_url_to_file = no_network\n"
            "from tbkd_helpers.cli import main\n"
            "sys.exit(main(['reproduce', '--profile', 'quick', '--weights', 'imagenet', '--out', sys.argv[1]]))")
    out = tmp_path / "runs"
    r = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, env=env,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tbkd reproduce: ") and "not found" in lines[0]
    assert not out.exists() and not (tmp_path / "a").exists() and not (tmp_path / "r").exists()


def test_a_corrupt_file_is_refused_for_its_hash(offline, monkeypatch):
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = _save_as_named(torchvision.models.resnet18().state_dict(), folder, "resnet18", monkeypatch,
                          "resnet18", "imagenet")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    path.write_bytes(bytes(data))
    with pytest.raises(weights.WeightsError, match="hash mismatch") as err:
        build_model("resnet18", weights="imagenet")
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_a_mismatched_file_is_refused_for_its_shapes(offline, monkeypatch):
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = _save_as_named(torchvision.models.resnet34().state_dict(), folder, "resnet18", monkeypatch,
                          "resnet18", "imagenet")
    with pytest.raises(ValueError, match="shapes or names differ") as err:
        build_model("resnet18", weights="imagenet")
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_the_weights_setting(monkeypatch):
    monkeypatch.delenv("TBKD_WEIGHTS", raising=False)
    assert get_profile("quick").weights == "random" and get_profile("real").weights == "random"
    assert get_profile("full").weights == "imagenet"  # the paper's setting
    monkeypatch.setenv("TBKD_WEIGHTS", "cxr")
    prof = get_profile("real")
    assert prof.weights == "cxr" and prof.pretrained and prof.run_name == "real-cxr"
    assert prof.artifacts.name == "real-cxr" and prof.results.name == "real-cxr"
    assert get_profile("real", weights="random").artifacts.name == "real"
    monkeypatch.setenv("TBKD_WEIGHTS", "imagnet")
    with pytest.raises(ValueError, match="imagnet"):
        get_profile("real")
    assert weights.kind_for("cxr", "densenet121") == "cxr" and weights.kind_for("cxr", "vgg16") == "imagenet"


def test_the_fingerprint_and_the_results_record_the_weights(monkeypatch):
    from tbkd_helpers import pipeline

    monkeypatch.delenv("TBKD_WEIGHTS", raising=False)
    monkeypatch.setattr(pipeline, "lungs", lambda *a, **k: type("E", (), {"settings": {}})())
    monkeypatch.setattr(pipeline.store, "file_sha256", lambda p: "x")
    prep = type("P", (), {"split_path": "s"})()
    assert "weights" not in pipeline._fingerprint(get_profile("real"), prep, "resnet18")
    fp = pipeline._fingerprint(get_profile("real", weights="cxr"), prep, "densenet121")
    assert fp["weights"] == "cxr" and fp["pretrained"] is True
    assert pipeline._fingerprint(get_profile("real", weights="cxr"), prep, "resnet18")["weights"] == "imagenet"
