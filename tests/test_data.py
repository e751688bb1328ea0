"""The data layer on tiny fixture trees in every supported layout."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tbkd_helpers import config, data
from tbkd_helpers.data import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


# ----------------------------------------------------------------------------- fixtures

def _png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr)  # uint16 arrays become 16-bit ("I;16") PNGs
    assert mode is None or im.mode == mode, im.mode
    im.save(path)
    return path


def _xray(h=40, w=36, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((h, w)) * 200 + 20).astype(np.uint8)


def _half_mask(h, w, side):
    m = np.zeros((h, w), np.uint8)
    if side == "left":  # patient's left lung: the image's right half
        m[5:-5, w // 2 + 2:-3] = 255
    else:
        m[5:-5, 3:w // 2 - 2] = 255
    return m


@pytest.fixture
def nlm_tree(tmp_path) -> Path:
    """Both NLM sets in the official layout: 8-bit Shenzhen (one RGB, one odd-sized),
    12-bit-in-16-bit Montgomery with left/right masks at another size than the images."""
    root = tmp_path / "nlm"
    cxr = root / "ChinaSet_AllFiles" / "CXR_png"
    for i, lab in enumerate([0, 1, 0, 1, 0, 1], start=1):
        _png(cxr / f"CHNCXR_{i:04d}_{lab}.png", _xray(seed=i))
    rgb = np.repeat(_xray(seed=99)[..., None], 3, axis=2)
    _png(cxr / "CHNCXR_0007_1.png", rgb)
    _png(cxr / "CHNCXR_0008_0.png", _xray(h=51, w=23, seed=8))
    mont = root / "MontgomerySet"
    for i, lab in enumerate([0, 1, 0, 1], start=1):
        name = f"MCUCXR_{i:04d}_{lab}.png"
        img16 = (np.random.default_rng(i).random((48, 40)) * 4095).astype(np.uint16)
        _png(mont / "CXR_png" / name, img16, mode="I;16")
        _png(mont / "ManualMask" / "leftMask" / name, _half_mask(24, 20, "left"))
        _png(mont / "ManualMask" / "rightMask" / name, _half_mask(24, 20, "right"))
    return root


@pytest.fixture
def class_tree(tmp_path) -> Path:
    root = tmp_path / "other_set"
    for cls, n in (("normal", 3), ("tuberculosis", 2)):
        for i in range(n):
            _png(root / cls / f"img{i}.png", _xray(seed=i))
    # a JPEG too
    Image.fromarray(_xray(seed=7)).save(root / "tuberculosis" / "img9.jpg", quality=90)
    return root


# ----------------------------------------------------------------------------- reading

def test_read_image_bit_depths_and_modes(tmp_path):
    a8 = np.array([[0, 255], [128, 64]], np.uint8)
    np.testing.assert_allclose(data.read_image(_png(tmp_path / "a.png", a8)), a8 / 255, atol=1e-6)
    a12 = np.array([[0, 4095], [2048, 100]], np.uint16)  # 12-bit data in a 16-bit PNG
    got = data.read_image(_png(tmp_path / "b.png", a12, mode="I;16"))
    assert got.dtype == np.float32 and got.max() == pytest.approx(1.0)
    assert got[1, 0] == pytest.approx(2048 / 4095, abs=1e-6)
    a16 = np.array([[0, 65535], [30000, 100]], np.uint16)
    got = data.read_image(_png(tmp_path / "c.png", a16, mode="I;16"))
    assert got[1, 0] == pytest.approx(30000 / 65535, abs=1e-6)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = 10  # alpha is dropped, not composited
    got = data.read_image(_png(tmp_path / "d.png", rgba))
    assert got.shape == (4, 4) and got.max() == pytest.approx(200 / 255, abs=1e-3)
    Image.fromarray(a8).save(tmp_path / "e.jpg")
    assert data.read_image(tmp_path / "e.jpg").shape == (2, 2)


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_text("this is not a PNG"), "not an image"),
    (lambda p: p.write_bytes(_png_bytes()[:200]), "truncated"),
])
def test_bad_image_files_name_the_file(tmp_path, make, message):
    path = tmp_path / "CHNCXR_0001_0.png"
    make(path)
    with pytest.raises(DataError) as err:
        data.read_image(path)
    text = str(err.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text


def _png_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_masks_are_resized_to_their_image_and_sides_kept_apart(nlm_tree):
    recs = {r.key: r for r in data.discover(nlm_tree)}
    rec = recs["montgomery/MCUCXR_0001_0"]
    left = data.lung_mask(rec, side="left")
    right = data.lung_mask(rec, side="right")
    both = data.lung_mask(rec)
    assert left.shape == right.shape == (48, 40)  # masks were 24x20
    assert not (left & right).any() and (both == (left | right)).all()
    # the patient's left lung lies on the image's right half
    assert left[:, 20:].sum() > 10 * left[:, :20].sum()
    assert right[:, :20].sum() > 10 * right[:, 20:].sum()


# ----------------------------------------------------------------------------- discovery

def test_discovers_both_nlm_sets_with_labels_ids_and_masks(nlm_tree):
    recs = data.discover(nlm_tree)
    by = {r.key: r for r in recs}
    assert len(recs) == 12
    assert {r.dataset for r in recs} == {"shenzhen", "montgomery"}
    r = by["shenzhen/CHNCXR_0002_1"]
    assert (r.label, r.patient_id, r.has_lung_mask) == (1, "CHNCXR_0002", False)
    m = by["montgomery/MCUCXR_0003_0"]
    assert m.label == 0 and m.left_mask.name == "MCUCXR_0003_0.png" and m.has_lung_mask
    assert data.count_table(recs) == [
        {"dataset": "montgomery", "normal": 2, "tb": 2, "total": 4, "lung_masks": 4},
        {"dataset": "shenzhen", "normal": 4, "tb": 4, "total": 8, "lung_masks": 0},
    ]
    for r in recs:  # every image reads as one float channel in [0, 1], any size or mode
        img = data.read_image(r.path)
        assert img.ndim == 2 and img.dtype == np.float32 and 0 <= img.min() <= img.max() <= 1


@pytest.mark.parametrize("level", ["ChinaSet_AllFiles", "ChinaSet_AllFiles/CXR_png", "MontgomerySet",
                                   "MontgomerySet/CXR_png"])
def test_root_at_any_level(nlm_tree, level):
    recs = data.discover(nlm_tree / level)
    expected = "shenzhen" if level.startswith("China") else "montgomery"
    assert {r.dataset for r in recs} == {expected}
    assert len(recs) == (8 if expected == "shenzhen" else 4)
    if expected == "montgomery":
        assert all(r.has_lung_mask for r in recs)


def test_public_shenzhen_masks_are_found(nlm_tree):
    mdir = nlm_tree / "ChinaSet_AllFiles" / "mask"
    _png(mdir / "CHNCXR_0001_0_mask.png", _half_mask(40, 36, "left") | _half_mask(40, 36, "right"))
    rec = {r.key: r for r in data.discover(nlm_tree)}["shenzhen/CHNCXR_0001_0"]
    assert rec.mask is not None and rec.has_lung_mask
    assert data.lung_mask(rec).sum() > 0
    with pytest.raises(DataError, match="combined lung mask"):
        data.lung_mask(rec, side="left")


def test_folder_per_class_layout(class_tree):
    recs = data.discover(class_tree)
    assert len(recs) == 6
    assert {r.dataset for r in recs} == {"other_set"}
    assert sum(r.label for r in recs) == 3
    assert {r.path.suffix for r in recs} == {".png", ".jpg"}


def test_unknown_class_folder(class_tree):
    (class_tree / "pneumonia").mkdir()
    _png(class_tree / "pneumonia" / "x.png", _xray())
    with pytest.raises(DataError, match=r"other_set/pneumonia: unknown class folder"):
        data.discover(class_tree)


def test_unknown_label_suffix(nlm_tree):
    bad = _png(nlm_tree / "ChinaSet_AllFiles" / "CXR_png" / "CHNCXR_0009_2.png", _xray())
    with pytest.raises(DataError) as err:
        data.discover(nlm_tree)
    assert str(err.value).startswith(str(bad)) and "unknown label suffix '_2'" in str(err.value)


def test_mask_without_its_image(nlm_tree):
    orphan = _png(nlm_tree / "MontgomerySet" / "ManualMask" / "leftMask" / "MCUCXR_0099_1.png",
                  _half_mask(24, 20, "left"))
    with pytest.raises(DataError) as err:
        data.discover(nlm_tree)
    assert str(err.value).startswith(str(orphan)) and "mask without its image" in str(err.value)


def test_one_sided_mask_is_an_error(nlm_tree):
    (nlm_tree / "MontgomerySet" / "ManualMask" / "rightMask" / "MCUCXR_0002_1.png").unlink()
    with pytest.raises(DataError, match="one side only"):
        data.discover(nlm_tree)


@pytest.mark.parametrize("kind", ["missing", "empty", "empty_cxr"])
def test_empty_or_missing_folders(tmp_path, kind):
    if kind == "missing":
        target = tmp_path / "nope"
        match = "folder not found"
    elif kind == "empty":
        target = tmp_path / "empty"
        target.mkdir()
        match = "no images found"
    else:
        target = tmp_path / "ChinaSet_AllFiles"
        (target / "CXR_png").mkdir(parents=True)
        match = "CXR_png: folder is empty"
    with pytest.raises(DataError, match=match):
        data.discover(target)


def test_corrupt_image_found_by_discovery_and_skip_report(nlm_tree):
    bad = nlm_tree / "ChinaSet_AllFiles" / "CXR_png" / "CHNCXR_0003_0.png"
    bad.write_bytes(bad.read_bytes()[:60])
    zero = nlm_tree / "MontgomerySet" / "CXR_png" / "MCUCXR_0004_1.png"
    zero.write_bytes(b"")
    with pytest.raises(DataError, match="CHNCXR_0003_0.png: truncated"):
        data.discover(nlm_tree)
    result = data.scan(nlm_tree, skip_bad=True)
    assert len(result.records) == 10
    skipped = {p.name: why for p, why in result.skipped}
    assert set(skipped) == {"CHNCXR_0003_0.png", "MCUCXR_0004_1.png"}
    assert "empty file" in skipped["MCUCXR_0004_1.png"]
    report = result.report()
    assert "2 skipped" in report and "CHNCXR_0003_0.png" in report and "MCUCXR_0004_1.png" in report


def test_junk_files_are_ignored_but_other_files_are_not(nlm_tree):
    cxr = nlm_tree / "ChinaSet_AllFiles" / "CXR_png"
    (cxr / "Thumbs.db").write_bytes(b"junk")
    assert len(data.discover(nlm_tree)) == 12
    (cxr / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="notes.txt: not an image file"):
        data.discover(nlm_tree)


# ----------------------------------------------------------------------------- splits

def _many_records(tmp_path, n_sz=60, n_mc=30):
    root = tmp_path / "many"
    for i in range(1, n_sz + 1):
        _png(root / "ChinaSet_AllFiles" / "CXR_png" / f"CHNCXR_{i:04d}_{i % 2}.png", _xray(8, 8, i))
    for i in range(1, n_mc + 1):
        _png(root / "MontgomerySet" / "CXR_png" / f"MCUCXR_{i:04d}_{int(i % 3 == 0)}.png", _xray(8, 8, i))
    return data.discover(root)


def test_split_is_stratified_disjoint_complete_and_seeded(tmp_path):
    recs = _many_records(tmp_path)
    split = data.make_split(recs, seed=3)
    parts = [set(split[n]) for n in data.SPLIT_NAMES]
    assert sum(map(len, parts)) == len(recs) and set.union(*parts) == {r.key for r in recs}
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    for row in split.table(recs):  # every stratum cut 70/10/20
        stratum = [r for r in recs if r.dataset == row["dataset"]]
        for lab, col in ((0, "normal"), (1, "tb")):
            n = sum(r.label == lab for r in stratum)
            frac = dict(zip(data.SPLIT_NAMES, (0.7, 0.1, 0.2)))[row["split"]]
            assert abs(row[col] - n * frac) <= 1
    assert data.make_split(recs, seed=3) == split
    assert data.make_split(recs, seed=4).test != split.test


def test_kfold_covers_every_record_once(tmp_path):
    recs = _many_records(tmp_path)
    folds = data.kfold_splits(recs, k=5, seed=0)
    held = [k for _, test in folds for k in test]
    assert sorted(held) == sorted(r.key for r in recs)
    for train, test in folds:
        assert not set(train) & set(test)
        tb_share = np.mean([r.label for r in recs if r.key in set(test)])
        assert 0.25 < tb_share < 0.6


def test_kfold_is_seeded(tmp_path):
    recs = _many_records(tmp_path)
    folds = data.kfold_splits(recs, k=5, seed=0)
    assert data.kfold_splits(list(reversed(recs)), k=5, seed=0) == folds  # same seed: same folds
    other = data.kfold_splits(recs, k=5, seed=1)
    assert sorted(k for _, test in other for k in test) == sorted(r.key for r in recs)
    assert [sorted(t) for _, t in other] != [sorted(t) for _, t in folds]


def test_split_persisted_and_tamper_detected(tmp_path):
    recs = _many_records(tmp_path)
    split = data.make_split(recs, seed=0)
    path = data.save_split(split, tmp_path / "splits.json", recs)
    assert data.load_split(path, recs) == split
    saved = json.loads(path.read_text())
    assert saved["test"] == split.test and len(saved["files"]) == len(recs)
    # change one image's content
    victim = next(r for r in recs if r.key == split.test[0])
    _png(victim.path, _xray(8, 8, seed=1234))
    with pytest.raises(DataError) as err:
        data.load_split(path, recs)
    assert str(err.value).startswith(str(path)) and f"{victim.path.name} changed" in str(err.value)
    # remove one
    gone = next(r for r in recs if r.key == split.train[0])
    gone.path.unlink()
    with pytest.raises(DataError, match=f"{gone.path.name} missing"):
        data.load_split(path, [r for r in recs if r is not gone])


def test_split_detects_new_images(tmp_path):
    recs = _many_records(tmp_path)
    path = data.save_split(data.make_split(recs), tmp_path / "s.json", recs)
    extra = _png(tmp_path / "many" / "ChinaSet_AllFiles" / "CXR_png" / "CHNCXR_0999_1.png", _xray(8, 8))
    with pytest.raises(DataError, match="1 image\\(s\\) not in the split"):
        data.load_split(path, data.discover(extra.parents[2]))


# ----------------------------------------------------------------------------- datasets

def test_cxr_dataset_shapes_and_augmentation(nlm_tree):
    import torch

    recs = data.discover(nlm_tree)
    ds = data.CXRDataset(recs, size=32, augment=False)
    x, y = ds[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and y in (0, 1)
    torch.manual_seed(0)
    aug = data.CXRDataset(recs, size=32, augment=True)
    xa, _ = aug[0]
    assert xa.shape == (1, 32, 32) and 0 <= float(xa.min()) <= float(xa.max()) <= 1
    assert not torch.equal(xa, x)


def test_prepare_quick_profile_makes_and_reuses_split(tmp_path, monkeypatch):
    monkeypatch.setenv("TBKD_ARTIFACTS", str(tmp_path / "art"))
    prof = config.get_profile("quick", phantom_counts={"shenzhen": 12, "montgomery": 8}, phantom_size=64)
    first = data.prepare(prof, progress=False)
    assert len(first.records) == 20 and first.split_path.is_file()
    stamp = first.split_path.stat().st_mtime_ns
    again = data.prepare(prof, progress=False)
    assert again.split == first.split and first.split_path.stat().st_mtime_ns == stamp
    assert len(first.part("test")) + len(first.part("val")) + len(first.part("train")) == 20


def test_profiles():
    assert config.get_profile("quick").data == "phantom"
    assert config.get_profile("real", data_dir="/x").data_dir == Path("/x")
    with pytest.raises(ValueError, match="unknown profile"):
        config.get_profile("huge")
    with pytest.raises(ValueError, match="unknown profile setting"):
        config.get_profile("quick", epochz=3)


def test_profile_model_options_pick_the_vgg_head():
    quick, real = config.get_profile("quick"), config.get_profile("real", data_dir="/x")
    full = config.get_profile("full", data_dir="/x")
    assert quick.model_options("vgg16") == {"vgg_head": "gap"} == real.model_options("vgg16")
    assert full.model_options("vgg16") == {"vgg_head": "classic"}  # 224 px: the 7x7 map the head was made for
    assert quick.model_options("resnet18") == {} == real.model_options("densenet121")


# ----------------------------------------------------------------------------- the real data

@pytest.mark.realdata
def test_shared_real_data_counts():
    if not SHARED.is_dir():
        pytest.skip(f"real NLM data not found at {SHARED}: smoke test skipped")
    recs = data.discover(SHARED)
    rows = {r["dataset"]: r for r in data.count_table(recs)}
    assert rows["shenzhen"]["total"] == 662 and rows["shenzhen"]["tb"] == 336
    assert rows["montgomery"]["total"] == 138 and rows["montgomery"]["tb"] == 58
    mont = [r for r in recs if r.dataset == "montgomery"]
    assert sum(r.left_mask is not None and r.right_mask is not None for r in mont) == 138


# ----------------------------------------------------------------------------- what a scan must not miss

def _one_line_error(exc_info, path: Path, *words: str) -> str:
    text = str(exc_info.value)
    assert text.startswith(str(path)) and "\n" not in text, text
    for w in words:
        assert w in text, text
    return text


@pytest.mark.parametrize("damage, why", [(lambda p: p.write_bytes(b""), "empty file"),
                                         (lambda p: p.write_bytes(p.read_bytes()[:60]), "truncated")],
                         ids=["empty", "truncated"])
def test_bad_mask_is_found_by_the_scan(nlm_tree, damage, why):
    mask = nlm_tree / "MontgomerySet" / "ManualMask" / "leftMask" / "MCUCXR_0001_0.png"
    damage(mask)
    with pytest.raises(DataError) as err:
        data.discover(nlm_tree)
    _one_line_error(err, mask, why)
    result = data.scan(nlm_tree, skip_bad=True)
    assert "montgomery/MCUCXR_0001_0" not in {r.key for r in result.records}
    assert len(result.records) == 11
    assert [(p, why in w) for p, w in result.skipped] == [(mask, True)]
    assert str(mask) in result.report()


def test_bad_combined_mask_is_found_by_the_scan(nlm_tree):
    mask = nlm_tree / "ChinaSet_AllFiles" / "mask" / "CHNCXR_0002_1_mask.png"
    mask.parent.mkdir()
    mask.write_text("not a png")
    with pytest.raises(DataError) as err:
        data.discover(nlm_tree)
    _one_line_error(err, mask, "not an image")


def test_lesion_mask_without_its_image(nlm_tree):
    orphan = _png(nlm_tree / "ChinaSet_AllFiles" / "LesionMask" / "CHNCXR_0099_1.png", _xray(8, 8))
    _png(nlm_tree / "ChinaSet_AllFiles" / "LesionMask" / "CHNCXR_0002_1.png", _xray(8, 8))
    with pytest.raises(DataError) as err:
        data.discover(nlm_tree)
    _one_line_error(err, orphan, "mask without its image")
    result = data.scan(nlm_tree, skip_bad=True)
    assert [p for p, _ in result.skipped] == [orphan]
    rec = {r.key: r for r in result.records}["shenzhen/CHNCXR_0002_1"]
    assert rec.lesion_mask is not None and rec.lesion_mask.name == "CHNCXR_0002_1.png"


@pytest.mark.parametrize("where", ["beside", "above"])
def test_combined_mask_folder_may_hold_montgomery_masks(nlm_tree, where):
    mdir = nlm_tree / "ChinaSet_AllFiles" / "mask" if where == "beside" else nlm_tree / "mask"
    full = _half_mask(40, 36, "left") | _half_mask(40, 36, "right")
    for i, lab in ((1, 0), (2, 1)):
        _png(mdir / f"CHNCXR_{i:04d}_{lab}_mask.png", full)
    _png(mdir / "MCUCXR_0001_0_mask.png", full)  # the other set's mask, in the same bundle folder
    _png(mdir / "MCUCXR_0042_1.png", full)  # even one whose image is not there at all
    recs = {r.key: r for r in data.discover(nlm_tree)}
    assert len(recs) == 12
    for key in ("shenzhen/CHNCXR_0001_0", "shenzhen/CHNCXR_0002_1"):
        assert recs[key].mask is not None and recs[key].mask.parent == mdir and recs[key].has_lung_mask
    assert recs["shenzhen/CHNCXR_0003_0"].mask is None
    assert all(r.mask is None for r in recs.values() if r.dataset == "montgomery")
    # a Shenzhen mask there without its image is still an error
    orphan = _png(mdir / "CHNCXR_0077_1_mask.png", full)
    with pytest.raises(DataError) as err:
        data.discover(nlm_tree)
    _one_line_error(err, orphan, "mask without its image")


@pytest.mark.parametrize("tree", ["nlm", "class"])
def test_images_in_a_subfolder_are_reported(nlm_tree, class_tree, tree):
    if tree == "nlm":
        root, parent = nlm_tree, nlm_tree / "ChinaSet_AllFiles" / "CXR_png"
        n_records = 12
    else:
        root, parent = class_tree, class_tree / "normal"
        n_records = 6
    sub = parent / "batch2"
    _png(sub / "CHNCXR_0050_1.png", _xray(8, 8))
    _png(sub / "deeper" / "CHNCXR_0051_0.png", _xray(8, 8))
    (sub / "readme.txt").write_text("not an image")
    _png(sub / ".ipynb_checkpoints" / "CHNCXR_0052_0.png", _xray(8, 8))  # junk: not counted
    with pytest.raises(DataError) as err:
        data.discover(root)
    _one_line_error(err, sub, "2 image(s) in a subfolder are not read", f"move them up into {parent}")
    result = data.scan(root, skip_bad=True)
    assert len(result.records) == n_records and [p for p, _ in result.skipped] == [sub]
    assert str(sub) in result.report()


def test_junk_and_imageless_subfolders_stay_ignored(nlm_tree, class_tree):
    for parent in (nlm_tree / "ChinaSet_AllFiles" / "CXR_png", class_tree / "tuberculosis"):
        _png(parent / ".ipynb_checkpoints" / "x.png", _xray(8, 8))
        _png(parent / "__MACOSX" / "._y.png", _xray(8, 8))
        (parent / "notes").mkdir()
        (parent / "notes" / "todo.txt").write_text("no images here")
    (class_tree / "__MACOSX").mkdir()
    assert len(data.discover(nlm_tree)) == 12
    assert len(data.discover(class_tree)) == 6


def test_empty_class_folder_is_an_error(class_tree):
    (class_tree / "tb").mkdir()
    with pytest.raises(DataError) as err:
        data.discover(class_tree)
    _one_line_error(err, class_tree / "tb", "folder is empty")


def test_missing_right_mask_folder_is_an_error(nlm_tree):
    right = nlm_tree / "MontgomerySet" / "ManualMask" / "rightMask"
    for p in right.iterdir():
        p.unlink()
    right.rmdir()
    with pytest.raises(DataError) as err:
        data.discover(nlm_tree)
    _one_line_error(err, right, "folder not found", "leftMask and rightMask")


def test_prepare_skips_bad_files_only_when_asked(nlm_tree, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TBKD_ARTIFACTS", str(tmp_path / "art"))
    monkeypatch.delenv("TBKD_SKIP_BAD", raising=False)
    bad = nlm_tree / "ChinaSet_AllFiles" / "CXR_png" / "CHNCXR_0005_0.png"
    bad.write_bytes(bad.read_bytes()[:60])
    strict = config.get_profile("real", data_dir=nlm_tree)
    assert strict.skip_bad is False
    with pytest.raises(DataError) as err:
        data.prepare(strict, progress=False)
    _one_line_error(err, bad, "truncated")
    assert not (strict.artifacts / "skipped.json").exists()

    lenient = config.get_profile("real", data_dir=nlm_tree, skip_bad=True)
    prep = data.prepare(lenient, progress=False)
    assert len(prep.records) == 11 and bad not in {r.path for r in prep.records}
    out = capsys.readouterr().out
    assert "1 skipped" in out and str(bad) in out and "truncated" in out
    listed = json.loads((lenient.artifacts / "skipped.json").read_text())
    assert [item["path"] for item in listed] == [str(bad)] and "truncated" in listed[0]["reason"]
    assert set(prep.split.train + prep.split.val + prep.split.test) == {r.key for r in prep.records}


def test_get_profile_reads_tbkd_skip_bad(monkeypatch):
    monkeypatch.delenv("TBKD_SKIP_BAD", raising=False)
    assert config.get_profile("quick").skip_bad is False
    for value, expected in (("1", True), ("true", True), ("YES", True), ("0", False), ("no", False),
                            ("", False)):
        monkeypatch.setenv("TBKD_SKIP_BAD", value)
        assert config.get_profile("quick").skip_bad is expected, value
    monkeypatch.setenv("TBKD_SKIP_BAD", "1")
    assert config.get_profile("real", data_dir="/x", skip_bad=False).skip_bad is False  # the caller wins
    monkeypatch.setenv("TBKD_SKIP_BAD", "ture")
    with pytest.raises(ValueError, match="TBKD_SKIP_BAD"):
        config.get_profile("quick")


def test_reproduce_skip_bad_flag_sets_the_environment(tmp_path, monkeypatch):
    """``tbkd reproduce --skip-bad``: the notebooks' kernels inherit TBKD_SKIP_BAD=1."""
    from tbkd_helpers import cli, notebooks

    monkeypatch.setenv("TBKD_SKIP_BAD", "0")  # recorded, so the "1" reproduce sets is undone after the test
    monkeypatch.setenv("TBKD_PROGRESS", "off")
    seen = []

    def fake_run(src, dst, parameters, log_output=True, cwd=None):
        seen.append((src.name, config.env_skip_bad()))
        return 0.0

    monkeypatch.setattr(notebooks, "run_notebook", fake_run)
    monkeypatch.setattr(notebooks, "declared_parameters", lambda nb: set())
    monkeypatch.setattr(notebooks, "numbered_notebooks", lambda: [tmp_path / "00_x.ipynb"])
    assert cli.main(["reproduce", "--out", str(tmp_path / "runs")]) == 0
    assert seen == [("00_x.ipynb", False)]
    assert cli.main(["reproduce", "--skip-bad", "--out", str(tmp_path / "runs")]) == 0
    assert seen[-1] == ("00_x.ipynb", True)
    assert "--skip-bad" in cli.build_parser()._subparsers._group_actions[0].choices["reproduce"].format_help()
