"""Stage 1: lung segmentation — measures, post-processing, extraction, cache, ``tbkd segment``.

Everything runs on tiny synthetic fixtures (a 12-image Montgomery-layout set of 64 px
"X-rays" with two dark elliptical lungs); the U-Net is trained for one epoch at 32 px.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tbkd_helpers import config, data, segmentation as seg, store


# ---------------------------------------------------------------------------- fixtures

def _ellipse(shape, cy, cx, ry, rx):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def _two_lungs(size=64):
    right = _ellipse((size, size), size * 0.5, size * 0.3, size * 0.3, size * 0.13)  # image's left
    left = _ellipse((size, size), size * 0.52, size * 0.7, size * 0.28, size * 0.12)
    return left, right


def _write_montgomery(root: Path, n: int = 12, size: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    cxr = root / "MontgomerySet" / "CXR_png"
    lm, rm = root / "MontgomerySet" / "ManualMask" / "leftMask", root / "MontgomerySet" / "ManualMask" / "rightMask"
    for d in (cxr, lm, rm):
        d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        left, right = _two_lungs(size)
        shift = rng.integers(-3, 4, 2)
        left, right = (np.roll(m, shift, (0, 1)) for m in (left, right))
        img = 0.7 - 0.45 * (left | right) + rng.normal(0, 0.03, (size, size))
        name = f"MCUCXR_{i + 1:04d}_{i % 2}.png"
        Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8)).save(cxr / name)
        Image.fromarray(left.astype(np.uint8) * 255).save(lm / name)
        Image.fromarray(right.astype(np.uint8) * 255).save(rm / name)
    return root


_LOAD_PAIRS = seg._load_pairs
_PREDICT_PROBS = seg.predict_probs


def _profile(root: Path, **kw):
    settings = dict(seg_size=32, seg_epochs=3, seg_batch_size=4, seg_decoder_channels=(16, 16, 16, 16, 16),
                    image_size=24, inception_size=40, device="cpu")
    return config.get_profile("real", data_dir=root, **{**settings, **kw})


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return _write_montgomery(tmp_path_factory.mktemp("cxr"))


@pytest.fixture(scope="module")
def trained_once(tiny_data, tmp_path_factory):
    """The U-Net trained once for the module: its segmentation folder, to copy into each test."""
    art = tmp_path_factory.mktemp("artifacts")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TBKD_ARTIFACTS", str(art))
        prof = _profile(tiny_data)
        prep = data.prepare(prof, progress=False)
        seg.train_unet(prof, prep, progress=False)
        return seg.seg_dir(prof)


@pytest.fixture
def tiny(tiny_data, tmp_path, monkeypatch):
    """A tiny real-layout data set, its profile (artifacts in tmp) and prepared split."""
    monkeypatch.setenv("TBKD_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("TBKD_RESULTS", str(tmp_path / "results"))
    prof = _profile(tiny_data)
    return prof, data.prepare(prof, progress=False)


@pytest.fixture
def trained(tiny, trained_once, monkeypatch):
    """``tiny`` with the module's trained U-Net in place (loaded, not retrained)."""
    prof, prep = tiny
    out = seg.seg_dir(prof)
    out.mkdir(parents=True)
    for name in ("unet.pt", "unet.json"):
        shutil.copy(trained_once / name, out / name)
    monkeypatch.setattr(seg, "_load_pairs", lambda *a, **k: pytest.fail("retrained a finished U-Net"))
    model, history = seg.train_unet(prof, prep, progress=False)
    monkeypatch.setattr(seg, "_load_pairs", _LOAD_PAIRS)
    return prof, prep, model, history


# ---------------------------------------------------------------------------- Dice and IoU

@pytest.mark.parametrize("pred, target, dice, iou", [
    ([1, 1, 0, 0], [1, 1, 0, 0], 1.0, 1.0),
    ([1, 1, 0, 0], [0, 0, 1, 1], 0.0, 0.0),
    ([1, 1, 1, 1], [0, 0, 1, 1], 2 * 2 / 6, 2 / 4),  # 2 shared of 4 + 2: Dice 2/3, IoU 1/2
    ([1, 1, 1, 0], [0, 1, 1, 1], 2 * 2 / 6, 2 / 4),
    ([1, 0, 0, 0], [1, 1, 1, 1], 2 * 1 / 5, 1 / 4),
    ([0, 0, 0, 0], [0, 0, 0, 0], 1.0, 1.0),  # both empty: perfect agreement
    ([0, 0, 0, 0], [0, 1, 0, 0], 0.0, 0.0),
])
def test_dice_iou_hand_computed(pred, target, dice, iou):
    d, j = seg.dice_iou(np.array(pred).reshape(2, 2), np.array(target).reshape(2, 2))
    assert d == pytest.approx(dice) and j == pytest.approx(iou)
    if 0 < j < 1:
        assert d == pytest.approx(2 * j / (1 + j))


def test_dice_iou_rejects_other_shapes():
    with pytest.raises(ValueError, match="shape"):
        seg.dice_iou(np.zeros((2, 2)), np.zeros((2, 3)))


# ---------------------------------------------------------------------------- post-processing

def test_postprocess_keeps_two_largest_and_fills_holes():
    prob = np.zeros((40, 40), np.float32)
    prob[5:35, 3:15] = 0.9  # lung 1
    prob[15:20, 7:11] = 0.1  # a hole in lung 1
    prob[6:33, 22:34] = 0.8  # lung 2
    prob[37:39, 37:39] = 0.95  # a speck
    prob[1:3, 18:20] = 0.7  # another speck
    prob[30:34, 18:20] = 0.49  # below threshold
    out = seg.postprocess(prob, threshold=0.5)
    assert out.dtype == bool
    regions = seg.lung_regions(out)
    assert [r["area"] for r in regions] == [30 * 12, 27 * 12]  # the hole is filled, specks gone
    assert not out[37:39, 37:39].any() and not out[1:3, 18:20].any() and not out[30:34, 18:20].any()
    assert out[15:20, 7:11].all()


def test_postprocess_threshold_and_few_regions():
    prob = np.zeros((10, 10))
    prob[2:5, 2:5] = 0.6
    assert seg.postprocess(prob, 0.5).sum() == 9
    assert seg.postprocess(prob, 0.7).sum() == 0
    assert seg.postprocess(np.zeros((5, 5))).sum() == 0


@pytest.mark.parametrize("case, ok, words", [
    ("two", True, "two lungs"),
    ("empty", False, "no lung"),
    ("one", False, "one lung"),
    ("tiny", False, "at least"),
    ("huge", False, "at most"),
    ("speck", False, "second lung too small"),
    ("stacked", False, "one above the other"),
])
def test_plausibility(case, ok, words):
    left, right = _two_lungs(64)
    m = {
        "two": left | right,
        "empty": np.zeros((64, 64), bool),
        "one": right,
        "tiny": _ellipse((64, 64), 30, 18, 3, 3) | _ellipse((64, 64), 30, 44, 3, 3),
        "huge": np.pad(np.ones((60, 29), bool), ((2, 2), (2, 33))) | np.pad(np.ones((60, 29), bool), ((2, 2), (33, 2))),
        "speck": right | _ellipse((64, 64), 30, 44, 2, 2),
        "stacked": _ellipse((64, 64), 16, 32, 10, 14) | _ellipse((64, 64), 46, 32, 10, 14),
    }[case]
    got, why = seg.plausibility(m)
    assert got is ok and words in why


# ---------------------------------------------------------------------------- extraction

def test_extract_empty_mask_gives_whole_image():
    img = np.random.default_rng(0).random((50, 50)).astype(np.float32)
    out, box = seg.extract_lungs(img, np.zeros((50, 50), bool), 20, return_box=True)
    assert out.shape == (20, 20) and box == (0, 0, 50, 50)
    np.testing.assert_allclose(out, data.resize(img, 20), atol=1e-6)


def test_extract_full_mask_gives_whole_image():
    img = np.random.default_rng(1).random((50, 50)).astype(np.float32)
    out, box = seg.extract_lungs(img, np.ones((50, 50), bool), 20, return_box=True)
    assert box == (0, 0, 50, 50)
    np.testing.assert_allclose(out, data.resize(img, 20), atol=1e-6)


def test_extract_one_lung_crops_a_square_around_it():
    img = np.full((100, 100), 0.8, np.float32)
    mask = np.zeros((100, 100), bool)
    mask[20:80, 10:40] = True  # one lung, on the image's left: 60 tall, 30 wide
    out, box = seg.extract_lungs(img, mask, 50, margin=0.05, return_box=True)
    y0, x0, h, w = box
    assert h == w == 70  # 60 + 2 × 5 px margin, squared
    assert (y0 + h / 2, x0 + w / 2) == pytest.approx((50, 25), abs=1)  # centred on the lung
    assert out.shape == (50, 50)
    # inside the lung the image is kept; beside it (outside mask + margin) it is black
    assert out[25, 25] == pytest.approx(0.8, abs=1e-3)
    assert out[25, 2] == 0 and out[25, 47] == 0
    # the margin keeps a rim of the image around the mask
    assert out[25, 16] == pytest.approx(0.8, abs=1e-3)  # x = 25 + (16 - 25) * 70 / 50 ≈ 12.4: in the margin


def test_extract_mask_of_other_resolution_and_crop_box_reuse():
    img = np.random.default_rng(2).random((120, 90)).astype(np.float32)
    left, right = _two_lungs(64)
    mask = data.resize((left | right).astype(np.float32), (80, 60)) >= 0.5
    out, box = seg.extract_lungs(img, mask, 32, return_box=True)
    assert out.shape == (32, 32) and box[2] == box[3]
    # the same box cuts any other map of the image (e.g. a lesion mask) the same way
    ones = seg.crop_box(np.ones_like(img), box, 32)
    assert ones.shape == (32, 32) and ones.max() == pytest.approx(1)


def test_process_image_falls_back_on_an_implausible_mask():
    prof = config.get_profile("quick")
    img = np.random.default_rng(3).random((64, 64)).astype(np.float32)
    left, right = _two_lungs(64)
    mask, out, info = seg.process_image(img, (left | right).astype(np.float32), prof)
    assert not info["fallback"] and info["reason"].startswith("two lungs")
    assert info["box"][2] == info["box"][3] < 64 and out.shape == (seg.extract_size(prof),) * 2
    assert out.min() == 0  # outside the lungs is black
    for bad, why in ((np.zeros((64, 64)), "no lung"), (right.astype(np.float32), "one lung")):
        mask, out, info = seg.process_image(img, bad, prof)
        assert info["fallback"] and why in info["reason"] and info["box"] == [0, 0, 64, 64]
        np.testing.assert_allclose(out, data.resize(img, seg.extract_size(prof)), atol=1e-6)


# ---------------------------------------------------------------------------- joint augmentation

@pytest.mark.parametrize("seed", range(5))
def test_augmentation_keeps_image_and_mask_aligned(seed):
    left, right = _two_lungs(64)
    mask = torch.from_numpy(left | right)[None]
    img = torch.where(mask, 0.8, 0.3).float()  # the image *is* the mask, in grey levels
    torch.manual_seed(seed)
    a_img, a_mask = seg.augment_pair(img, mask)
    assert a_img.shape == img.shape and a_mask.shape == mask.shape and a_mask.dtype == torch.bool
    assert not torch.equal(a_mask, mask)  # it did move
    # the bright part of the augmented image is where the augmented mask is (the border
    # that the affine move uncovers is black in the image and not lung in the mask)
    cut = (a_img.max() + a_img.min()) / 2
    agree = ((a_img > cut) == a_mask).float().mean()
    assert agree > 0.97
    # ...which a mask moved on its own would not be
    torch.manual_seed(seed + 100)
    _, other = seg.augment_pair(img, mask)
    assert ((a_img > cut) == other).float().mean() < agree


# ---------------------------------------------------------------------------- model, training, cache

def test_build_unet_single_channel_any_range():
    model = seg.build_unet("resnet18", decoder_channels=(16, 16, 16, 16, 16)).eval()
    with torch.no_grad():
        y = model(torch.rand(2, 1, 32, 32))
        y2 = model(torch.rand(2, 1, 32, 32) * 0.1 + 0.5)  # standardised inside: exposure does not matter
    assert y.shape == (2, 1, 32, 32) and y2.shape == (2, 1, 32, 32)


def test_pretrained_encoder_weights_through_the_download_path(tmp_path, monkeypatch):
    """The ImageNet path, fed local files instead of the hub: the encoder gets those weights."""
    import segmentation_models_pytorch.encoders as smp_enc
    from safetensors.torch import save_file

    donor = seg.build_unet("resnet18").unet.encoder  # one channel; the hub's weights have three
    state = {k: v.clone() for k, v in donor.state_dict().items()}
    state["conv1.weight"] = torch.randn(64, 3, 7, 7)
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text("{}")
    asked = []
    monkeypatch.setattr(smp_enc, "hf_hub_download",
                        lambda repo_id, filename, revision=None: asked.append(filename) or str(tmp_path / filename))
    model = seg.build_unet("resnet18", pretrained=True)
    enc = model.unet.encoder.state_dict()
    assert "model.safetensors" in asked
    assert torch.equal(enc["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    assert enc["conv1.weight"].shape == (64, 1, 7, 7)  # RGB filters folded into one channel
    assert torch.allclose(enc["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))


def test_pretrained_without_internet_says_so(monkeypatch):
    import segmentation_models_pytorch.encoders as smp_enc

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(smp_enc, "hf_hub_download", offline)
    with pytest.raises(RuntimeError, match="ImageNet weights for the resnet18 encoder could not be loaded"):
        seg.build_unet("resnet18", pretrained=True)


def test_train_saves_a_weights_only_checkpoint_and_is_not_redone(trained, monkeypatch):
    prof, prep, model, history = trained
    assert len(history) == prof.seg_epochs and {"train_loss", "val_loss", "val_dice"} <= set(history[0])
    ckpt = torch.load(seg.checkpoint_path(prof), weights_only=True)
    assert ckpt["arch"] == "smp.Unet" and ckpt["settings"]["encoder"] == prof.seg_encoder
    assert ckpt["settings"]["train_keys"] and not set(ckpt["settings"]["train_keys"]) & set(prep.split.test)
    monkeypatch.setattr(seg, "_load_pairs", lambda *a, **k: pytest.fail("retrained a finished U-Net"))
    model2, history2 = seg.train_unet(prof, prep, progress=False)
    assert history2 == history
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k


def test_train_resumes_from_saved_state(tiny, monkeypatch):
    prof, prep = tiny
    prof = prof.replace(seg_epochs=2)
    monkeypatch.setattr(seg, "RESUME_EVERY_S", -1.0)  # save after every epoch
    calls = {"n": 0}
    real_validate = seg._validate

    def stop_in_epoch_two(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_validate(*a, **k)

    monkeypatch.setattr(seg, "_validate", stop_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        seg.train_unet(prof, prep, progress=False)
    assert (seg.seg_dir(prof) / "unet_resume.pt").is_file() and not seg.checkpoint_path(prof).exists()
    monkeypatch.setattr(seg, "_validate", real_validate)
    _, history = seg.train_unet(prof, prep, progress=False)
    assert [h["epoch"] for h in history] == [1, 2]
    assert not (seg.seg_dir(prof) / "unet_resume.pt").exists()


def test_evaluate_table(trained):
    prof, prep, model, _ = trained
    table = seg.evaluate(model, prep.records[:3], prof)
    assert len(table) == 3 and table["dice"].between(0, 1).all() and table["iou"].le(table["dice"] + 1e-9).all()
    summary = seg.summarize(table)
    assert "±" in summary.loc["montgomery", "Dice"]


def test_predict_masks_at_each_images_resolution(trained):
    _, _, model, _ = trained
    imgs = [np.random.rand(40, 30).astype(np.float32), np.random.rand(70, 70).astype(np.float32)]
    masks = seg.predict_masks(model, imgs, 32, max_side=50)
    assert [m.shape for m in masks] == [(40, 30), (50, 50)] and all(m.dtype == bool for m in masks)


def _mtimes(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*.png")}


def test_extraction_writes_everything_and_is_reused(trained, monkeypatch):
    prof, prep, model, _ = trained
    res = seg.run_extraction(prof, prep, model, progress=False)
    assert res.computed == len(prep.records) and set(res.entries) == {r.key for r in prep.records}
    man = store.read_json(res.manifest)
    assert man["complete"] and man["records"] == len(prep.records)
    for key, e in res.entries.items():
        ext = Image.open(res.path(key))
        assert ext.size == (40, 40) and ext.mode == "L"  # max(image_size, inception_size), 8-bit
        assert res.path(key, "mask").is_file()
        assert isinstance(e["fallback"], bool) and e["reason"]
    assert res.counts()["images"].sum() == len(prep.records)
    recs = seg.extracted_records(prep, res)
    assert [r.key for r in recs] == [r.key for r in prep.records]
    assert all(r.path.parent.parent.name == "extracted" for r in recs)
    assert [r.key for r in seg.extracted_records(prep.records, res.manifest)] == [r.key for r in prep.records]
    assert len(seg.extracted_records(prep, prof)) == len(prep.records)
    # a second run redoes nothing and touches no file
    before = _mtimes(res.folder)
    monkeypatch.setattr(seg, "predict_probs", lambda *a, **k: pytest.fail("redid a complete extraction"))
    again = seg.run_extraction(prof, prep, None, progress=False)
    assert again.computed == 0 and again.entries == res.entries and _mtimes(res.folder) == before


def test_interrupted_extraction_is_not_trusted_and_resumes(trained, monkeypatch):
    prof, prep, model, _ = trained
    n = len(prep.records)
    real_save = seg._save_png
    calls = {"n": 0}

    def dies_midway(arr, path):
        calls["n"] += 1
        if calls["n"] == 7:  # in the middle of the 4th record (2 files per record)
            raise KeyboardInterrupt
        real_save(arr, path)

    monkeypatch.setattr(seg, "_save_png", dies_midway)
    prof = prof.replace(seg_batch_size=2)
    with pytest.raises(KeyboardInterrupt):
        seg.run_extraction(prof, prep, model, progress=False)
    out = seg.seg_dir(prof)
    assert not (out / "manifest.json").exists()
    with pytest.raises(data.DataError, match="not complete"):
        seg.extracted_records(prep, prof)
    journal = out / "extraction.partial.jsonl"
    assert journal.is_file()
    # the process died after the journal's last flush; simulate a torn line and a lost file too
    lines = journal.read_text().splitlines()
    # header + the first batch of two records + the third, whose files were both written
    assert len(lines) == 1 + 3
    first = json.loads(lines[1])
    (out / first["extracted"]).unlink()
    journal.write_text("\n".join(lines) + '\n{"key": "montgomery/MCUCXR_00')
    assert not list(out.rglob(".*.png"))  # no temporary file left behind
    monkeypatch.setattr(seg, "_save_png", real_save)
    res = seg.run_extraction(prof, prep, model, progress=False)
    assert res.reused == 2 and res.computed == n - 2  # only the intact journal entries are reused
    assert store.manifest_complete(res.manifest) and not journal.exists()
    assert all(res.path(k).is_file() and res.path(k, "mask").is_file() for k in res.entries)


def test_extraction_redone_when_settings_change(trained):
    prof, prep, model, _ = trained
    seg.run_extraction(prof, prep, model, progress=False)
    res = seg.run_extraction(prof.replace(seg_margin=0.1), prep, model, progress=False)
    assert res.computed == len(prep.records)
    assert store.read_json(res.manifest)["settings"]["margin"] == 0.1


def test_pipeline_stage_redoes_a_stale_extraction(trained, monkeypatch):
    """The stage every classifier calls (pipeline.lungs) trusts the cache only when it
    is current: a changed extraction setting redoes the extraction, a changed U-Net
    setting retrains the U-Net, and an unchanged profile touches nothing."""
    from tbkd_helpers import pipeline

    prof, prep, model, _ = trained
    first = pipeline.lungs(prof, prep, progress=False)
    assert seg.extraction_current(prof, prep)
    before = _mtimes(first.folder)
    monkeypatch.setattr(seg, "predict_probs", lambda *a, **k: pytest.fail("redid a current extraction"))
    again = pipeline.lungs(prof, prep, progress=False)
    assert again.entries == first.entries and _mtimes(first.folder) == before
    # a k-fold or cross-data-set run passes the same records with another split: it
    # uses the profile's extraction, never retrains the U-Net or re-extracts for it
    fold_split = prep.split.__class__(train=prep.split.test, val=prep.split.val, test=prep.split.train,
                                      seed=prep.split.seed, fractions=prep.split.fractions)
    store.write_json(first.folder.parent / "fold" / "split.json", {"train": fold_split.train})
    fold = data.Prepared(root=prep.root, records=prep.records, split=fold_split,
                         split_path=first.folder.parent / "fold" / "split.json")
    monkeypatch.setattr(seg, "_load_pairs", lambda *a, **k: pytest.fail("retrained the U-Net for a fold"))
    assert pipeline.lungs(prof, fold, progress=False).entries == first.entries
    assert _mtimes(first.folder) == before
    monkeypatch.setattr(seg, "_load_pairs", _LOAD_PAIRS)
    monkeypatch.setattr(seg, "predict_probs", _PREDICT_PROBS)
    wider = prof.replace(seg_margin=0.1)
    assert not seg.extraction_current(wider, prep)
    res = pipeline.lungs(wider, prep, progress=False)
    assert res.computed == len(prep.records) and res.settings["margin"] == 0.1
    longer = wider.replace(seg_epochs=wider.seg_epochs + 1)
    assert not seg.extraction_current(longer, prep)
    trainings = []
    monkeypatch.setattr(seg, "_load_pairs", lambda *a, **k: trainings.append(1) or _LOAD_PAIRS(*a, **k))
    res = pipeline.lungs(longer, prep, progress=False)
    assert trainings and res.computed == len(prep.records)
    assert store.read_json(seg.seg_dir(longer) / "unet.json")["settings"]["epochs"] == longer.seg_epochs
    assert seg.extraction_current(longer, prep)


# ---------------------------------------------------------------------------- tbkd segment

def test_segment_files_good_corrupt_and_folder(trained, tmp_path):
    prof, prep, model, _ = trained
    good = prep.records[0].path
    corrupt = tmp_path / "in" / "corrupt.png"
    corrupt.parent.mkdir()
    corrupt.write_bytes(good.read_bytes()[:60])  # a truncated PNG
    folder = tmp_path / "folder"
    folder.mkdir()
    for r in prep.records[1:3]:
        (folder / r.path.name).write_bytes(r.path.read_bytes())
    (folder / "notes.txt").write_text("not an image")
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    results = seg.segment_files([good, corrupt, folder, empty], out, None, prof)
    by = {Path(p).name: err for p, err in results}
    assert set(by) == {good.name, "corrupt.png", prep.records[1].path.name, prep.records[2].path.name, "empty"}
    assert by["corrupt.png"].startswith(str(corrupt)) and "\n" not in by["corrupt.png"]
    assert by["empty"].startswith(str(empty))
    for name in (good.name, prep.records[1].path.name, prep.records[2].path.name):
        assert by[name] is None
        stem = Path(name).stem
        assert (out / f"{stem}_mask.png").is_file() and (out / f"{stem}_lungs.png").is_file()
    assert not (out / "corrupt_mask.png").exists()
    # a one-pixel "X-ray" is readable; it is segmented (whole image, with a note) or gets
    # its own one-line error, never a traceback that stops the other files
    speck = tmp_path / "speck.png"
    Image.fromarray(np.full((1, 1), 128, np.uint8)).save(speck)
    (res,) = seg.segment_files([speck], out, None, prof)
    assert (res.error is None and res.note and res.mask.is_file()) or \
        (res.error.startswith(str(speck)) and "\n" not in res.error), res
    ok = [r for r in results if r.error is None]
    assert all(r.mask.is_file() and r.extracted.is_file() for r in ok)


def test_segment_files_without_checkpoint(tiny, tmp_path):
    prof, prep = tiny
    with pytest.raises(data.DataError, match="no U-Net checkpoint"):
        seg.segment_files([prep.records[0].path], tmp_path / "o", tmp_path / "missing.pt", prof)


def test_cli_segment(trained, tmp_path, monkeypatch, capsys):
    from tbkd_helpers import cli

    prof, prep, _, _ = trained
    # the command uses the quick profile's checkpoint unless told otherwise: put ours there
    quick = config.get_profile("quick")
    seg.checkpoint_path(quick).parent.mkdir(parents=True, exist_ok=True)
    seg.checkpoint_path(quick).write_bytes(seg.checkpoint_path(prof).read_bytes())
    good = prep.records[0].path
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / prep.records[1].path.name).write_bytes(prep.records[1].path.read_bytes())
    out = tmp_path / "out"
    rc = cli.main(["segment", str(good), str(corrupt), str(folder), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc != 0
    assert [line for line in err.splitlines() if str(corrupt) in line]
    for p in (good, prep.records[1].path):
        assert (out / f"{p.stem}_mask.png").is_file() and (out / f"{p.stem}_lungs.png").is_file()


# ---------------------------------------------------------------------------- the benchmark

def test_segmentation_benchmark_runs_on_xrays(trained, tmp_path, monkeypatch):
    """benchmarks/bench_segmentation.py times the pipeline on chest X-rays (the profile's
    own when present), with the trained U-Net, and records how many fell back."""
    import importlib.util

    prof, prep, _, _ = trained
    spec = importlib.util.spec_from_file_location("bench_segmentation",
                                                  Path(__file__).resolve().parents[1] / "benchmarks" / "bench_segmentation.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    images, source = bench._inputs(prof, 3, 64)
    assert len(images) == 3 and str(prof.data_dir) in source
    assert all(im.shape == (64, 64) and im.dtype == np.float32 for im in images)
    phantoms, source = bench._inputs(config.get_profile("quick"), 2, 64)
    assert len(phantoms) == 2 and "phantom" in source
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    monkeypatch.setattr(config, "get_profile", lambda name, **kw: prof.replace(**kw))
    assert bench.main(["--profile", "real", "--repeats", "1", "--batch-sizes", "2"]) == 0
    out = json.loads((tmp_path / "benchmarks" / "out" / "segmentation_real.json").read_text())
    assert out["weights"].endswith("unet.pt") and str(prof.data_dir) in out["inputs"]
    pipe = [r for r in out["runs"] if r["what"] == "pipeline"]
    assert pipe and pipe[0]["images_per_s"] > 0 and 0 <= pipe[0]["fallbacks"] <= 2


def test_the_unet_trains_with_the_classifiers_epoch_loop(tiny, monkeypatch, tmp_path):
    """Progress, resumable state and best weights have one home (train.EpochLoop): the
    U-Net and a classifier both run through it, which a recording stand-in shows."""
    from tbkd_helpers import models, train

    used = []

    class Recording(train.EpochLoop):
        def end_epoch(self, epoch, state, **kw):
            used.append((self.name, epoch, sorted(state)))
            super().end_epoch(epoch, state, **kw)

    monkeypatch.setattr(train, "EpochLoop", Recording)
    prof, prep = tiny
    seg.train_unet(prof.replace(seg_epochs=1), prep, progress=False)
    x = torch.rand(8, 1, 32, 32)
    ds = torch.utils.data.TensorDataset(x, torch.arange(8) % 2)
    train.fit(models.build_model("resnet18", seed=0), ds, ds, train.TrainSettings(epochs=1, batch_size=4),
              tmp_path / "clf", device="cpu", progress=False)
    assert used == [("U-Net", 1, ["best", "history"]), ("resnet18", 1, ["history"])]
