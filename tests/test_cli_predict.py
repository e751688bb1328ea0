"""``tbkd segment``, ``tbkd predict`` and ``tbkd export`` on a tiny kit.

The kit is the quick profile shrunk to 40 phantom X-rays of 64 px: a U-Net trained for
two epochs at 32 px, the lung extraction of every image, one ResNet18 teacher and the
distilled (kd+cam) student, one epoch each at 32 px. Built once for the module (about
10-30 s, hence ``slow``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tbkd_helpers import cli, config, data, pipeline, results, segmentation as seg

pytestmark = pytest.mark.slow

TINY = dict(phantom_counts={"shenzhen": 24, "montgomery": 16}, phantom_size=64, seg_size=32, seg_epochs=2,
            seg_batch_size=8, seg_decoder_channels=(16, 16, 16, 16, 16), image_size=32, inception_size=32,
            seg_extract_size=48, teachers=("resnet18",), teacher_epochs=1, student_epochs=1, batch_size=8,
            kfold=2, cam_size=8, device="cpu")


def tiny_profile():
    return config.get_profile("quick", **TINY)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """(profile, prep, student checkpoint) with artifacts in a temporary folder; the
    TBKD_ARTIFACTS variable points there for the whole module."""
    base = tmp_path_factory.mktemp("kit")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TBKD_ARTIFACTS", str(base / "artifacts"))
        mp.setenv("TBKD_RESULTS", str(base / "results"))
        prof = tiny_profile()
        prep = data.prepare(prof, progress=False)
        pipeline.lungs(prof, prep, progress=False)
        pipeline.train_teacher(prof, "resnet18", prep, progress=False)
        pipeline.train_student(prof, "kd+cam", prep, progress=False)
        d = pipeline.student_dir(prof, "kd+cam")
        results.save_threshold(d, pipeline.predictions(prof, d, prof.student, prep))
        yield prof, prep, d / "best.pt"


def _quick_defaults(monkeypatch, prof):
    """Make ``--profile quick`` (the CLI's default) mean the tiny kit's profile."""
    monkeypatch.setattr(config, "get_profile", lambda name="quick", data_dir=None, **kw: prof)


def _images(tmp_path: Path, prep) -> dict[str, Path]:
    """A good 8-bit PNG (a test record), a 16-bit PNG of odd size, an RGB JPEG, a corrupt PNG,
    an empty file and a missing one."""
    rec = prep.part("test")[0]
    rng = np.random.default_rng(0)
    img = data.read_image(rec.path)
    big = data.resize(img, (131, 97))
    p16 = tmp_path / "deep.png"
    Image.fromarray((big * 4095).astype(np.uint16)).save(p16)
    jpg = tmp_path / "colour.jpg"
    rgb = np.stack([big * 255] * 3, -1).astype(np.uint8)
    rgb[..., 0] = np.clip(rgb[..., 0].astype(int) + rng.integers(0, 9, big.shape), 0, 255)
    Image.fromarray(rgb).save(jpg, quality=92)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(rec.path.read_bytes()[:70])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    return {"good": rec.path, "deep": p16, "jpg": jpg, "corrupt": corrupt, "empty": empty,
            "missing": tmp_path / "missing.png"}


# --------------------------------------------------------------------------- predict

def test_predict_matches_the_pipeline_on_a_test_image(kit):
    """One file through ``Predictor`` gives the probability stage 4's predictions gave the
    same image (same U-Net, same extraction, same student)."""
    prof, prep, ckpt = kit
    preds = pipeline.predictions(prof, ckpt.parent, prof.student, prep)["test"]
    pr = cli.Predictor(prof, ckpt)
    for key, want in list(zip(preds["keys"], preds["probs"]))[:4]:
        rec = next(r for r in prep.records if r.key == key)
        got = pr.predict(rec.path)
        assert got["prob_tb"] == pytest.approx(want, abs=2e-5), key
    saved = results.read_threshold(ckpt)
    assert saved is not None and pr.threshold == pytest.approx(saved["threshold"])
    assert "validation" in pr.threshold_source


def test_predict_cli_good_and_bad_files(kit, tmp_path, monkeypatch, capsys):
    prof, prep, ckpt = kit
    _quick_defaults(monkeypatch, prof)
    im = _images(tmp_path, prep)
    cams = tmp_path / "cams"
    cams.mkdir()
    order = ["good", "corrupt", "deep", "empty", "jpg", "missing"]
    rc = cli.main(["predict", *(str(im[k]) for k in order), "--cam", str(cams)])
    out, err = capsys.readouterr()
    assert rc == 1
    lines = out.strip().splitlines()
    assert len(lines) == 3
    for k, line in zip(("good", "deep", "jpg"), lines):
        assert line.startswith(f"{im[k]}: P(TB) = ") and ("-> TB" in line or "-> normal" in line)
        overlay = cams / f"{im[k].stem}_cam.png"
        assert overlay.is_file()
        arr = np.asarray(Image.open(overlay))
        assert arr.ndim == 3 and arr.shape[2] == 3 and min(arr.shape[:2]) >= 32
    bad = [ln for ln in err.splitlines() if ln.startswith("tbkd predict: ")
           and not ln.startswith("tbkd predict: note")]
    for k in ("corrupt", "empty", "missing"):
        assert sum(str(im[k]) in ln for ln in bad) == 1, k
    assert "threshold" in err  # the summary says which threshold was applied


def test_predict_json_one_object_per_image(kit, tmp_path, monkeypatch, capsys):
    prof, prep, ckpt = kit
    _quick_defaults(monkeypatch, prof)
    im = _images(tmp_path, prep)
    cam = tmp_path / "one.png"
    rc = cli.main(["predict", str(im["deep"]), "--model", str(ckpt), "--cam", str(cam), "--json"])
    assert rc == 0
    (obj,) = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert obj["file"] == str(im["deep"]) and obj["cam"] == str(cam) and cam.is_file()
    assert 0 <= obj["prob_tb"] <= 1 and obj["decision"] == ("TB" if obj["prob_tb"] >= obj["threshold"] else "normal")
    assert obj["threshold"] == pytest.approx(results.read_threshold(ckpt)["threshold"])
    rc = cli.main(["predict", str(im["good"]), str(im["corrupt"]), "--model", str(ckpt), "--json"])
    assert rc == 1
    objs = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [("error" in o) for o in objs] == [False, True]
    assert objs[1]["error"].startswith(str(im["corrupt"]))


def test_predict_cam_folder_that_does_not_exist_yet(kit, tmp_path, monkeypatch, capsys):
    """``--cam out/`` (a trailing separator, the folder not there yet) makes the folder and
    writes ``<image>_cam.png`` in it, for several images and for one; ``--cam o.png`` with
    several images still writes ``o_<image>.png`` beside it."""
    prof, prep, _ = kit
    _quick_defaults(monkeypatch, prof)
    im = _images(tmp_path, prep)
    out = tmp_path / "new" / "cams"
    rc = cli.main(["predict", str(im["good"]), str(im["deep"]), "--cam", str(out) + "/"])
    stdout, _ = capsys.readouterr()
    assert rc == 0 and out.is_dir()
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{im[k].stem}_cam.png" for k in ("good", "deep"))
    assert not list(out.parent.glob("cams_*")) and str(out / f"{im['deep'].stem}_cam.png") in stdout
    one = tmp_path / "one"
    assert cli.main(["predict", str(im["jpg"]), "--cam", str(one) + "/", "--json"]) == 0
    (obj,) = [json.loads(ln) for ln in capsys.readouterr().out.strip().splitlines()]
    assert one.is_dir() and obj["cam"] == str(one / "colour_cam.png") and (one / "colour_cam.png").is_file()
    beside = tmp_path / "o.png"
    assert cli.main(["predict", str(im["good"]), str(im["deep"]), "--cam", str(beside)]) == 0
    capsys.readouterr()
    assert not beside.exists()
    assert (tmp_path / f"o_{im['good'].stem}.png").is_file() and (tmp_path / "o_deep.png").is_file()


def test_predict_cam_folder_over_a_file_is_one_line(kit, tmp_path, monkeypatch, capsys):
    prof, prep, _ = kit
    _quick_defaults(monkeypatch, prof)
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    rc = cli.main(["predict", str(prep.records[0].path), "--cam", str(taken) + "/"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and str(taken) in err and "folder" in err
    assert taken.read_text() == "not a folder"


def test_predict_refuses_a_tiny_image_and_does_the_others(kit, tmp_path, monkeypatch, capsys):
    """A 1x1 PNG (and a 500x8 strip) is refused in one line naming the file; the other
    files are still predicted, an image of exactly ``MIN_IMAGE_SIDE`` px is accepted,
    and the exit status says one failed."""
    prof, prep, _ = kit
    _quick_defaults(monkeypatch, prof)
    im = _images(tmp_path, prep)
    dot = tmp_path / "dot.png"
    Image.fromarray(np.full((1, 1), 128, np.uint8)).save(dot)
    strip = tmp_path / "strip.png"
    Image.fromarray(np.full((8, 500), 128, np.uint8)).save(strip)
    edge = tmp_path / "edge.png"
    side = cli.MIN_IMAGE_SIDE
    Image.fromarray((data.resize(data.read_image(im["good"]), side) * 255).astype(np.uint8)).save(edge)
    rc = cli.main(["predict", str(im["good"]), str(dot), str(strip), str(edge)])
    out, err = capsys.readouterr()
    assert rc == 1
    printed = out.strip().splitlines()
    assert [ln.split(": P(TB) = ")[0] for ln in printed] == [str(im["good"]), str(edge)]
    bad = [ln for ln in err.splitlines() if ln.startswith("tbkd predict: ") and "note" not in ln]
    assert bad == [f"tbkd predict: {dot}: image too small (1x1 px; a chest X-ray needs at least {side}x{side} px)",
                   f"tbkd predict: {strip}: image too small (500x8 px; a chest X-ray needs at least {side}x{side} px)"]
    assert "Traceback" not in err
    assert cli.main(["predict", str(dot), "--json"]) == 1
    (obj,) = [json.loads(ln) for ln in capsys.readouterr().out.strip().splitlines()]
    assert obj["file"] == str(dot) and obj["error"].startswith(f"{dot}: image too small") and "prob_tb" not in obj
    with pytest.raises(data.DataError, match="too small"):
        cli.Predictor(prof).predict(dot)


def test_predict_missing_model_is_one_line(kit, tmp_path, capsys):
    rc = cli.main(["predict", str(kit[1].records[0].path), "--model", str(tmp_path / "nope.pt")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and str(tmp_path / "nope.pt") in err


def test_predict_without_saved_threshold_falls_back(kit, tmp_path, capsys):
    prof, prep, ckpt = kit
    alone = tmp_path / "alone" / "best.pt"
    alone.parent.mkdir()
    alone.write_bytes(ckpt.read_bytes())  # no threshold.json, no predictions.json beside it
    assert results.read_threshold(alone) is None
    pr = cli.Predictor(prof, alone)
    assert pr.threshold == 0.5 and "default" in pr.threshold_source


# --------------------------------------------------------------------------- segment

def test_segment_cli_good_corrupt_and_folder(kit, tmp_path, monkeypatch, capsys):
    prof, prep, _ = kit
    _quick_defaults(monkeypatch, prof)
    good = prep.records[0].path
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    folder = tmp_path / "folder"
    folder.mkdir()
    for r in prep.records[1:3]:
        (folder / r.path.name).write_bytes(r.path.read_bytes())
    out = tmp_path / "out"
    rc = cli.main(["segment", str(good), str(corrupt), str(folder), "-o", str(out)])
    stdout, err = capsys.readouterr()
    assert rc == 1
    assert len([ln for ln in err.splitlines() if str(corrupt) in ln]) == 1
    for p in (good, folder / prep.records[1].path.name, folder / prep.records[2].path.name):
        assert (out / f"{p.stem}_mask.png").is_file() and (out / f"{p.stem}_lungs.png").is_file()
        assert str(p) in stdout
    assert not (out / "corrupt_mask.png").exists()
    assert cli.main(["segment", str(good), "-o", str(tmp_path / "o2")]) == 0


def test_segment_cli_missing_checkpoint(kit, tmp_path, capsys):
    rc = cli.main(["segment", str(kit[1].records[0].path), "-o", str(tmp_path / "o"),
                   "--checkpoint", str(tmp_path / "none.pt")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "no U-Net checkpoint" in err


# --------------------------------------------------------------------------- export

@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_gives_the_same_probabilities(kit, tmp_path, monkeypatch, capsys, fmt):
    prof, prep, ckpt = kit
    _quick_defaults(monkeypatch, prof)
    out = tmp_path / f"student.{fmt}"
    assert cli.main(["export", "--format", fmt, "--model", str(ckpt), "-o", str(out)]) == 0
    assert "test-split images" in capsys.readouterr().out
    side = json.loads(out.with_name(out.name + ".json").read_text())
    assert side["check"]["max_abs_difference"] <= 1e-4 and side["input"]["shape"][1:] == [1, 32, 32]
    # and independently, on the test images and on a batch size never seen at export
    model = pipeline.load_classifier(ckpt)
    ds = pipeline.classifier_dataset(prof, prep, prof.student, "test")
    x = ds.images[:5].numpy()
    assert cli.export_difference(model, out, fmt, x) <= 1e-4
    probs = cli.run_exported(out, fmt, x)
    assert probs.shape == (5, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    want = pipeline.predictions(prof, ckpt.parent, prof.student, prep)["test"]["probs"][:5]
    assert np.allclose(probs[:, 1], want, atol=1e-4)


def test_export_default_path_beside_the_checkpoint(kit, monkeypatch, capsys):
    prof, _, ckpt = kit
    _quick_defaults(monkeypatch, prof)
    assert cli.main(["export", "--format", "onnx"]) == 0
    assert (ckpt.parent / "model.onnx").is_file()
    assert seg.checkpoint_path(prof).is_file()


# --------------------------------------------------------------------------- screen

def _screen_folder(tmp_path, prep, n_good=5):
    folder = tmp_path / "xrays"
    (folder / "sub").mkdir(parents=True)
    recs = prep.part("test")[:n_good]
    for i, r in enumerate(recs):
        (folder / ("sub" if i % 2 else "") / r.path.name).write_bytes(r.path.read_bytes())
    (folder / "corrupt.png").write_bytes(recs[0].path.read_bytes()[:70])
    (folder / "empty.png").write_bytes(b"")
    return folder, recs


def test_screen_a_folder_agrees_with_predict_and_refuses_bad_files(kit, tmp_path, monkeypatch, capsys):
    prof, prep, ckpt = kit
    _quick_defaults(monkeypatch, prof)
    folder, recs = _screen_folder(tmp_path, prep)
    out = tmp_path / "report"
    rc = cli.main(["screen", str(folder), "--out", str(out), "--batch-size", "2", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    bad_lines = [line for line in captured.err.splitlines() if line.startswith("tbkd screen:")]
    assert len(bad_lines) == 2 and any("corrupt.png" in line for line in bad_lines) \
        and any("empty.png" in line for line in bad_lines)
    rows = list(__import__("csv").DictReader(open(out / "screen.csv")))
    assert len(rows) == len(recs) and set(rows[0]) == set(__import__("tbkd_helpers.screen").screen.SCREEN_FIELDS)
    pr = cli.Predictor(prof, ckpt)
    for r in rows:
        want = pr.predict(r["file"])
        assert float(r["prob_tb"]) == pytest.approx(want["prob_tb"], abs=1e-4)  # the fast path is faithful
        assert r["decision"] == want["decision"] and (out / r["overlay"]).is_file()
    page = (out / "report.html").read_text()
    order = sorted(rows, key=lambda r: -float(r["prob_tb"]))
    positions = [page.index(r["overlay"]) for r in order]
    assert positions == sorted(positions)  # most likely TB first
    assert "corrupt.png" in page and f"{len(recs)} images screened" in page


def test_screen_resumes_where_it_stopped(kit, tmp_path, monkeypatch):
    from tbkd_helpers import screen as scr

    prof, prep, ckpt = kit
    folder, recs = _screen_folder(tmp_path, prep)
    out = tmp_path / "report"
    first = scr.screen(folder, out, prof, ckpt, progress=False, batch_size=2)
    assert first["new"] == len(recs) and first["refused"] == 2
    lines = (out / "screen.csv").read_text().splitlines(keepends=True)
    # a stop in the middle of the last batch: one row missing, the next one cut in half
    (out / "screen.csv").write_text("".join(lines[:-2]) + lines[-2][: len(lines[-2]) // 3])
    again = scr.screen(folder, out, prof, ckpt, progress=False, batch_size=2)
    assert again["new"] == 2 and again["screened"] == len(recs) and again["refused"] == 2
    rows = list(__import__("csv").DictReader(open(out / "screen.csv")))
    assert sorted(r["file"] for r in rows) == sorted(str(p) for p in folder.rglob("*.png")
                                                    if p.name not in ("corrupt.png", "empty.png"))
    assert scr.screen(folder, out, prof, ckpt, progress=False)["new"] == 0  # nothing left to do


def test_lung_runner_gives_the_unets_probabilities_in_either_runtime(monkeypatch):
    """The screening path's U-Net (BatchNorm folded; ONNX Runtime, or PyTorch without it)
    computes what segmentation.predict_probs computes, up to float rounding."""
    import builtins

    import numpy as np

    from tbkd_helpers import screen as scr
    from tbkd_helpers import segmentation as seg

    unet = seg.build_unet("resnet18", False, (32, 16, 16, 8, 8)).eval()
    imgs = [np.random.default_rng(i).random((90 + 7 * i, 80)).astype(np.float32) for i in range(3)]
    want = seg.predict_probs(unet, imgs, 64)
    fast = scr.LungRunner(unet, 64)
    assert fast.runtime == "ONNX Runtime"
    np.testing.assert_allclose(fast(imgs), want, atol=1e-4)
    real_import = builtins.__import__

    def no_ort(name, *a, **kw):
        if name == "onnxruntime":
            raise ImportError("no onnxruntime here")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    plain = scr.LungRunner(unet, 64)
    assert plain.runtime == "PyTorch"
    np.testing.assert_allclose(plain(imgs), want, atol=1e-4)
