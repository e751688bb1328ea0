"""The phantom chest X-ray generator and the data sets it writes."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tbkd_helpers import phantom as P
from tbkd_helpers.phantom import Phantom, make_phantom, write_phantom_sets


def _ph(seed: int, label: int = 0, size: int = 64, difficulty: float = 0.5) -> Phantom:
    return make_phantom(np.random.default_rng(seed), size=size, label=label, difficulty=difficulty)


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


# --------------------------------------------------------------------------- one phantom
@pytest.mark.parametrize("size", [64, 97, 128])
@pytest.mark.parametrize("label", [0, 1])
def test_shapes_dtypes_range(size, label):
    ph = _ph(3, label=label, size=size)
    assert ph.label == label
    assert ph.image.shape == (size, size) and ph.image.dtype == np.float32
    assert 0.0 <= ph.image.min() and ph.image.max() <= 1.0
    for m in (ph.left_lung, ph.right_lung, ph.lesions):
        assert m.shape == (size, size) and m.dtype == bool
    assert ph.left_lung.any() and ph.right_lung.any()
    assert not (ph.left_lung & ph.right_lung).any()


def test_large_size_works():
    ph = _ph(1, label=1, size=512)
    assert ph.image.shape == (512, 512)
    lung = ph.left_lung | ph.right_lung
    assert 0.15 < lung.mean() < 0.5
    assert ph.lesions.any() and not (ph.lesions & ~lung).any()


def test_deterministic_per_seed():
    a, b, c = _ph(7, label=1), _ph(7, label=1), _ph(8, label=1)
    for f in ("image", "left_lung", "right_lung", "lesions"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.image, c.image)


def test_lesions_only_for_tb_and_inside_lungs():
    for seed in range(12):
        normal, tb = _ph(seed, label=0), _ph(seed, label=1, difficulty=seed / 11)
        assert not normal.lesions.any()
        assert tb.lesions.any()
        assert not (tb.lesions & ~(tb.left_lung | tb.right_lung)).any()


def test_lung_sides_follow_the_xray_convention():
    """The patient's left lung appears on the image's right."""
    ratios = []
    for seed in range(10):
        ph = _ph(seed)
        half = ph.image.shape[1] // 2
        cols = np.arange(ph.image.shape[1])
        left_on_right = (ph.left_lung & (cols >= half)).sum() / ph.left_lung.sum()
        right_on_left = (ph.right_lung & (cols < half)).sum() / ph.right_lung.sum()
        assert left_on_right > 0.95 and right_on_left > 0.95
        ratios.append(ph.left_lung.sum() / ph.right_lung.sum())
    # the heart notch: the patient's left lung is the smaller one (on average)
    assert np.mean(ratios) < 0.98 and max(ratios) < 1.2


def test_lungs_darker_than_mediastinum_and_body_brighter_than_air():
    lung_means, mid_means, edge_means, belly_means = [], [], [], []
    for seed in range(10):
        ph = _ph(seed, size=96)
        lung = ph.left_lung | ph.right_lung
        rows = np.nonzero(lung.any(axis=1))[0]
        mid = ph.image[rows.min():rows.max(), 96 // 2 - 3: 96 // 2 + 3]
        lung_means.append(ph.image[lung].mean())
        mid_means.append(mid.mean())
        assert ph.image[lung].mean() < mid.mean() - 0.15
        edge_means.append(np.r_[ph.image[:8, :4].ravel(), ph.image[:8, -4:].ravel()].mean())
        belly_means.append(ph.image[-15:, 30:66].mean())
    assert np.mean(edge_means) < 0.3 < np.mean(belly_means)
    assert np.mean(lung_means) < np.mean(belly_means)


def test_lesions_lie_mostly_in_the_upper_lung_zones():
    """The generator weights lesion centres to the upper third of the lungs (1 : 0.3 : 0.1
    by thirds of lung height): over a seeded batch of TB phantoms most lesion pixels lie
    above the lung fields' vertical midline, and a larger share than the lung tissue
    itself (lesions placed uniformly in the lungs would match the lungs' share)."""
    lesion_up = lesion_all = lung_up = lung_all = 0
    for seed in range(24):
        ph = _ph(1000 + seed, label=1, size=64)
        lung = ph.left_lung | ph.right_lung
        rows = np.nonzero(lung.any(axis=1))[0]
        mid = (rows.min() + rows.max()) / 2
        r = np.nonzero(ph.lesions)[0]
        lesion_up, lesion_all = lesion_up + (r < mid).sum(), lesion_all + r.size
        r = np.nonzero(lung)[0]
        lung_up, lung_all = lung_up + (r < mid).sum(), lung_all + r.size
    share, lung_share = lesion_up / lesion_all, lung_up / lung_all
    assert share > 0.5, share
    assert share > lung_share, (share, lung_share)


def test_difficulty_is_monotone():
    def strength(difficulty):
        vals = []
        for seed in range(20):
            ph = _ph(100 + seed, label=1, size=64, difficulty=difficulty)
            lung = ph.left_lung | ph.right_lung
            contrast = ph.image[ph.lesions].mean() - ph.image[lung & ~ph.lesions].mean()
            vals.append(ph.lesions.sum() * contrast)
        return np.mean(vals)

    easy, mid, hard = strength(0.0), strength(0.5), strength(1.0)
    assert easy > mid > hard > 0


def test_normal_and_tb_share_anatomy_statistics():
    """Lesions are the only difference: lung sizes look alike in both classes."""
    n = [(_ph(s, label=0).left_lung | _ph(s, label=0).right_lung).mean() for s in range(8)]
    t = [(_ph(s, label=1).left_lung | _ph(s, label=1).right_lung).mean() for s in range(8)]
    assert abs(np.mean(n) - np.mean(t)) < 0.03


@pytest.mark.parametrize("kwargs", [{"label": 2}, {"difficulty": 1.5}, {"difficulty": -0.1}, {"size": 16}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        make_phantom(np.random.default_rng(0), **kwargs)


# --------------------------------------------------------------------------- data sets on disk
COUNTS = {"shenzhen": 5, "montgomery": 4}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("ph") / "phantoms"
    assert write_phantom_sets(root, counts=COUNTS, size=64, seed=3, progress=False) == root
    return root


def test_layout_on_disk(written):
    root = written
    cn = root / "ChinaSet_AllFiles"
    mc = root / "MontgomerySet"
    names = sorted(p.name for p in (cn / "CXR_png").iterdir())
    assert names == [f"CHNCXR_{i:04d}_{(i + 1) % 2}.png" for i in range(1, 6)]
    assert names[0] == "CHNCXR_0001_0.png" and names[1] == "CHNCXR_0002_1.png"
    assert sorted(p.name for p in (cn / "mask").iterdir()) == [n.replace(".png", "_mask.png") for n in names]
    assert sorted(p.name for p in (cn / "LesionMask").iterdir()) == names
    mnames = sorted(p.name for p in (mc / "CXR_png").iterdir())
    assert mnames == [f"MCUCXR_{i:04d}_{(i + 1) % 2}.png" for i in range(1, 5)]
    for sub in ("ManualMask/leftMask", "ManualMask/rightMask", "LesionMask"):
        assert sorted(p.name for p in (mc / sub).iterdir()) == mnames

    for name in names:
        im = Image.open(cn / "CXR_png" / name)
        assert im.mode == "L" and im.size == (64, 64)
        mask = _read(cn / "mask" / name.replace(".png", "_mask.png"))
        assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
        lesion = _read(cn / "LesionMask" / name)
        assert lesion.dtype == np.uint8 and set(np.unique(lesion)) <= {0, 255}
        assert lesion.any() == name.endswith("_1.png")
        assert not ((lesion > 0) & (mask == 0)).any()
    for name in mnames:
        im = Image.open(mc / "CXR_png" / name)
        assert im.mode == "I;16" and im.size == (64, 64)
        arr = np.asarray(im)
        assert arr.dtype == np.uint16 and arr.max() <= 4095 and arr.max() > 2000  # 12-bit values
        left = _read(mc / "ManualMask/leftMask" / name)
        right = _read(mc / "ManualMask/rightMask" / name)
        for m in (left, right):
            assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 255}
        cols = np.arange(64)
        assert (left > 0)[:, cols >= 32].sum() > 0.95 * (left > 0).sum()  # patient's left: image right
        assert (right > 0)[:, cols < 32].sum() > 0.95 * (right > 0).sum()
        lesion = _read(mc / "LesionMask" / name)
        assert lesion.any() == name.endswith("_1.png")


def test_files_match_make_phantom(written):
    ph = make_phantom(P.phantom_rng(3, "montgomery", 2), size=64, label=1)
    arr = _read(written / "MontgomerySet/CXR_png/MCUCXR_0002_1.png")
    np.testing.assert_array_equal(arr, np.round(ph.image * 4095).astype(np.uint16))
    np.testing.assert_array_equal(_read(written / "MontgomerySet/LesionMask/MCUCXR_0002_1.png") > 0,
                                  ph.lesions)
    ph = make_phantom(P.phantom_rng(3, "shenzhen", 1), size=64, label=0)
    np.testing.assert_array_equal(_read(written / "ChinaSet_AllFiles/CXR_png/CHNCXR_0001_0.png"),
                                  np.round(ph.image * 255).astype(np.uint8))


def test_manifest_and_no_temporary_left(written):
    man = json.loads((written / "PHANTOM.json").read_text())
    assert man["counts"] == COUNTS and man["size"] == 64 and man["seed"] == 3
    assert man["difficulty"] == 0.5 and isinstance(man["generator_version"], int)
    assert man["per_class"] == {"shenzhen": {"0": 3, "1": 2}, "montgomery": {"0": 2, "1": 2}}
    assert sorted(p.name for p in written.parent.iterdir()) == [written.name]
    # PHANTOM.json is the newest file of the tree (written last)
    newest = max(written.rglob("*.png"), key=lambda p: p.stat().st_mtime_ns)
    assert (written / "PHANTOM.json").stat().st_mtime_ns >= newest.stat().st_mtime_ns


def test_same_settings_byte_identical_and_prefix_stable(tmp_path, written):
    other = write_phantom_sets(tmp_path / "again", counts=COUNTS, size=64, seed=3, progress=False)
    assert _tree_digest(other) == _tree_digest(written)
    # fewer images: the ones kept are the same files
    fewer = _tree_digest(write_phantom_sets(tmp_path / "fewer", counts={"shenzhen": 2}, size=64,
                                            seed=3, progress=False))
    full = _tree_digest(written)
    pngs = [k for k in fewer if k.endswith(".png")]
    assert len(pngs) == 2 * 3 and all(fewer[k] == full[k] for k in pngs)
    assert not (tmp_path / "fewer" / "MontgomerySet").exists()
    # another seed: other images
    seed4 = _tree_digest(write_phantom_sets(tmp_path / "seed4", counts=COUNTS, size=64, seed=4,
                                            progress=False))
    key = "ChinaSet_AllFiles/CXR_png/CHNCXR_0001_0.png"
    assert seed4[key] != full[key]


def test_rerun_skips_and_other_settings_regenerate(tmp_path, capsys):
    root = tmp_path / "data"
    write_phantom_sets(root, counts={"shenzhen": 3, "montgomery": 2}, size=64, progress=False)
    assert capsys.readouterr().err == ""  # progress=False: no bar
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    write_phantom_sets(root, counts={"shenzhen": 3, "montgomery": 2}, size=64, progress=False)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps

    before = _tree_digest(root)
    write_phantom_sets(root, counts={"shenzhen": 2}, size=64, difficulty=0.2, progress=False)
    after = _tree_digest(root)
    assert json.loads((root / "PHANTOM.json").read_text())["difficulty"] == 0.2
    assert not (root / "MontgomerySet").exists()  # the old tree was replaced, not merged
    assert sorted(k for k in after if "CXR_png" in k) == [
        "ChinaSet_AllFiles/CXR_png/CHNCXR_0001_0.png", "ChinaSet_AllFiles/CXR_png/CHNCXR_0002_1.png"]
    key = "ChinaSet_AllFiles/CXR_png/CHNCXR_0002_1.png"
    assert after[key] != before[key]  # TB image: other difficulty, other lesions
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_stopped_run_leaves_old_tree_and_no_temporary(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_phantom_sets(root, counts={"shenzhen": 2}, size=64, progress=False)
    before = _tree_digest(root)
    calls = []

    def boom(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return make_phantom(*args, **kwargs)

    monkeypatch.setattr(P, "make_phantom", boom)
    with pytest.raises(KeyboardInterrupt):
        write_phantom_sets(root, counts={"shenzhen": 4}, size=64, progress=False)
    assert _tree_digest(root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    # a first run that is stopped leaves nothing at all
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        write_phantom_sets(tmp_path / "fresh", counts={"shenzhen": 4}, size=64, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_stale_temporary_of_dead_process_is_removed(tmp_path):
    stale = tmp_path / ".tmp-data-999999999"
    (stale / "ChinaSet_AllFiles").mkdir(parents=True)
    write_phantom_sets(tmp_path / "data", counts={"shenzhen": 1}, size=64, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_refuses_to_overwrite_foreign_folder(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=str(root)):
        write_phantom_sets(root, counts={"shenzhen": 1}, size=64, progress=False)
    assert (root / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


@pytest.mark.parametrize("kwargs", [{"counts": {"nih": 3}}, {"counts": {"shenzhen": -1}},
                                    {"difficulty": 2.0}, {"size": 8}])
def test_bad_settings(tmp_path, kwargs):
    with pytest.raises(ValueError):
        write_phantom_sets(tmp_path / "x", progress=False, **kwargs)
    assert not (tmp_path / "x").exists()


def test_labels_alternate_and_balance():
    labels = [P.phantom_label(i) for i in range(1, 12)]
    assert labels[:4] == [0, 1, 0, 1] and sum(labels) == 5
    assert os.fspath(P.MANIFEST) == "PHANTOM.json"


def test_phantom_trees_read_by_the_data_layer(written):
    """The phantom sets go through ``data.discover`` like real data, keeping every mask."""
    from tbkd_helpers import data

    recs = data.discover(written)
    assert len(recs) == sum(COUNTS.values())
    assert {r.dataset: sum(x.dataset == r.dataset for x in recs) for r in recs} == COUNTS
    for rec in recs:
        assert rec.lesion_mask is not None and rec.lesion_mask.parent.name == "LesionMask"
        assert rec.lesion_mask.name == rec.path.name and rec.has_lung_mask
        lesions = data.lesion_mask(rec)
        lungs = data.lung_mask(rec)
        assert lesions.shape == lungs.shape == (64, 64)
        assert lesions.any() == (rec.label == 1)
        assert not (lesions & ~lungs).any()
        if rec.dataset == "shenzhen":  # one combined mask, as the public Shenzhen masks
            assert rec.mask is not None and rec.left_mask is None and rec.right_mask is None
            assert rec.mask.name == f"{rec.path.stem}_mask.png"
        else:  # left and right, as Montgomery's ManualMask
            assert rec.mask is None and rec.left_mask.parent.name == "leftMask"
            assert rec.right_mask.parent.name == "rightMask"
            left, right = data.lung_mask(rec, side="left"), data.lung_mask(rec, side="right")
            assert left.any() and right.any() and not (left & right).any()
    rec = next(r for r in recs if r.key == "montgomery/MCUCXR_0002_1")
    ph = make_phantom(P.phantom_rng(3, "montgomery", 2), size=64, label=1)
    np.testing.assert_array_equal(data.lesion_mask(rec), ph.lesions)
    np.testing.assert_array_equal(data.lung_mask(rec, side="left"), ph.left_lung)
