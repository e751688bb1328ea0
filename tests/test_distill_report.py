"""Stage 4 reporting: the distillation chapter's tables (pipeline) and figures (viz), on
tiny synthetic inputs."""
from __future__ import annotations

from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from tbkd_helpers import cam, config, pipeline, reports, viz  # noqa: E402
from tbkd_helpers.metrics import summarize  # noqa: E402
from tbkd_helpers.train import History  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _rows(seed: int, datasets=("montgomery", "shenzhen"), n: int = 20) -> list[dict]:
    """evaluate()-shaped rows: per data set and pooled."""
    rng = np.random.default_rng(seed)
    ys, ps, rows = [], [], []
    for ds in datasets:
        y = np.array([0, 1] * (n // 2))
        p = np.clip(0.45 * y + rng.uniform(0, 0.6, len(y)), 0, 1)
        ys.append(y)
        ps.append(p)
        rows.append({"dataset": ds, **summarize(y, p, 0.5, n_boot=200, seed=0)})
    rows.append({"dataset": "all", **summarize(np.concatenate(ys), np.concatenate(ps), 0.5, n_boot=200, seed=0)})
    return rows


# --------------------------------------------------------------------------- mean_ci

def test_mean_ci_brackets_the_mean_and_narrows_with_more_images():
    rng = np.random.default_rng(0)
    small = rng.normal(0.5, 0.1, 10)
    big = rng.normal(0.5, 0.1, 1000)
    m, lo, hi = pipeline.mean_ci(small, n_boot=500, seed=1)
    assert m == pytest.approx(small.mean())
    assert lo < m < hi
    mb, lob, hib = pipeline.mean_ci(big, n_boot=500, seed=1)
    assert hib - lob < (hi - lo) / 5  # about 1/sqrt(100) as wide
    assert pipeline.mean_ci(small, n_boot=500, seed=1) == (m, lo, hi)  # seeded


def test_mean_ci_edge_cases():
    m, lo, hi = pipeline.mean_ci([0.3, np.nan, 0.3, 0.3])
    assert (m, lo, hi) == pytest.approx((0.3, 0.3, 0.3))  # NaNs left out; constant: no spread
    assert np.isnan(pipeline.mean_ci([0.4], n_boot=100)[1])  # one value: no interval
    assert pipeline.mean_ci([0.4, 0.6], n_boot=0)[0] == pytest.approx(0.5)
    assert np.isnan(pipeline.mean_ci([0.4, 0.6], n_boot=0)[2])
    assert all(np.isnan(pipeline.mean_ci([np.nan, np.nan])))


# --------------------------------------------------------------------------- attention_by_dataset

def _maps_and_masks():
    """4 images of 8x8: lungs = left half. Maps 0, 1 (data set "a") lie inside the lungs;
    maps 2, 3 ("b") half in, half out."""
    lungs = np.zeros((4, 8, 8), bool)
    lungs[:, :, :4] = True
    maps = np.zeros((4, 8, 8), np.float32)
    maps[0, 2, 1] = maps[1, 5, 2] = 1.0
    maps[2, 3, 3] = maps[2, 3, 4] = 1.0
    maps[3, 6, 0] = maps[3, 6, 7] = 1.0
    return maps, lungs, ["a", "a", "b", "b"]


def test_attention_by_dataset_in_lung_share_per_dataset_and_pooled():
    maps, lungs, ds = _maps_and_masks()
    rows = pipeline.attention_by_dataset(maps, lungs, maps, ds, n_boot=100)
    assert [r["dataset"] for r in rows] == ["a", "b", "all"]
    assert [r["n"] for r in rows] == [2, 2, 4]
    assert [r["in_lung"] for r in rows] == pytest.approx([1.0, 0.5, 0.75])
    assert rows[0]["in_lung_lo"] == rows[0]["in_lung_hi"] == pytest.approx(1.0)
    assert rows[2]["in_lung_lo"] <= 0.75 <= rows[2]["in_lung_hi"]
    assert all(r["agreement"] == pytest.approx(1.0) for r in rows)  # the guide is the map itself


def test_attention_by_dataset_agreement_uses_the_guide_of_the_same_image():
    rng = np.random.default_rng(0)
    guide = rng.uniform(size=(6, 4, 4)).astype(np.float32)
    lungs = np.ones((6, 16, 16), bool)
    student = cam.resize_maps(guide, 16)  # the guide's maps, at the student's size
    rows = pipeline.attention_by_dataset(student, lungs, guide, ["x"] * 6, n_boot=50)
    assert rows[-1]["agreement"] > 0.99
    assert rows[-1]["in_lung"] == pytest.approx(1.0)
    shuffled = pipeline.attention_by_dataset(student, lungs, guide[::-1], ["x"] * 6, n_boot=50)
    assert shuffled[-1]["agreement"] < 0.6  # another image's map does not agree
    anti = pipeline.attention_by_dataset(student, lungs, 1 - guide, ["x"] * 6, n_boot=50)
    assert anti[-1]["agreement"] < -0.99


def test_attention_by_dataset_undefined_values_are_none_and_lengths_checked():
    maps = np.zeros((2, 4, 4), np.float32)  # no mass, constant: both measures undefined
    rows = pipeline.attention_by_dataset(maps, np.ones((2, 4, 4), bool), maps, ["a", "a"], n_boot=10)
    assert rows[-1]["in_lung"] is None and rows[-1]["agreement_lo"] is None
    with pytest.raises(ValueError, match="data set names"):
        pipeline.attention_by_dataset(maps, np.ones((2, 4, 4), bool), maps, ["a"])


# --------------------------------------------------------------------------- tables

def test_ablation_table_formats_every_cell_and_keeps_order():
    results = {"ce": _rows(0), "kd+cam": _rows(1)}
    maps, lungs, _ = _maps_and_masks()
    att = {"kd+cam": pipeline.attention_by_dataset(maps, lungs, maps, ["montgomery", "montgomery",
                                                                       "shenzhen", "shenzhen"], n_boot=50)}
    table = reports.ablation_table(results, att)
    assert list(table.index) == [(m, d) for m in ("ce", "kd+cam") for d in ("montgomery", "shenzhen", "all")]
    assert list(table.columns) == ["n (TB)", "accuracy", "AUC", "sensitivity", "specificity", "F1",
                                   "in-lung share", "agreement with guide"]
    r = results["ce"][2]
    assert table.loc[("ce", "all"), "AUC"] == f"{r['auc']:.2f} [{r['auc_lo']:.2f}, {r['auc_hi']:.2f}]"
    assert table.loc[("ce", "all"), "n (TB)"] == "40 (20)"
    assert table.loc[("ce", "shenzhen"), "in-lung share"] == "—"  # no attention measured for "ce"
    assert table.loc[("kd+cam", "montgomery"), "in-lung share"] == "1.00 [1.00, 1.00]"
    assert table.loc[("kd+cam", "all"), "agreement with guide"].startswith("1.00 [")
    plain = reports.ablation_table(results)
    assert "in-lung share" not in plain.columns and len(plain) == 6


def test_ablation_points_picks_one_dataset_with_nan_for_undefined():
    results = {"ce": _rows(0), "kd": _rows(2)}
    results["kd"][-1]["f1_lo"] = None
    maps, lungs, _ = _maps_and_masks()
    att = {"ce": pipeline.attention_by_dataset(maps, lungs, maps, ["montgomery"] * 4, n_boot=20)}
    pts = reports.ablation_points(results, att)
    assert list(pts) == ["ce", "kd"]
    r = results["ce"][-1]
    assert pts["ce"]["AUC"] == pytest.approx((r["auc"], r["auc_lo"], r["auc_hi"]))
    assert pts["ce"]["in-lung share"][0] == pytest.approx(0.75)
    assert "in-lung share" not in pts["kd"]
    assert np.isnan(pts["kd"]["F1"][1])
    assert "in-lung share" not in reports.ablation_points(results, att, dataset="shenzhen")["ce"]


# --------------------------------------------------------------------------- gallery

def test_distill_gallery_picks_the_guides_surest_images():
    labels = [1, 0, 1, 1, 0, 1]
    probs = [0.7, 0.4, 0.9, 0.7, 0.1, 0.2]
    picks = reports.distill_gallery_picks(labels, probs)
    assert picks == {"TB": [2, 0, 3], "normal": [4]}  # ties keep the split's order
    assert reports.distill_gallery_picks(labels, probs, {"TB": 1, "normal": 5}) == {"TB": [2], "normal": [4, 1]}


def test_distill_gallery_rows_resize_maps_and_judge_decisions():
    records = [SimpleNamespace(key=f"ds/img{i}", label=i % 2) for i in range(3)]
    images = torch.rand(3, 1, 8, 8)
    columns = {"guide": {"maps": np.random.default_rng(0).uniform(size=(3, 4, 4)).astype(np.float32),
                         "probs": np.array([0.2, 0.8, 0.9]), "threshold": 0.5},
               "student": {"maps": np.ones((3, 8, 8), np.float32), "probs": np.array([0.6, 0.3, 0.1]),
                           "threshold": 0.5}}
    rows = reports.distill_gallery_rows(records, images, columns, {"TB": [1], "normal": [], "x": [0, 2]},
                                         lungs=np.ones((3, 8, 8), bool))
    assert [r["group"] for r in rows] == ["TB", "normal: none on this split", "x", "x"]
    assert "key" not in rows[1]
    r = rows[0]
    assert r["key"] == "ds/img1" and r["image"].shape == (8, 8) and r["lungs"].shape == (8, 8)
    assert r["panels"]["guide"]["cam"].shape == (8, 8)  # resized to the image
    assert r["panels"]["guide"]["correct"] and not r["panels"]["student"]["correct"]
    assert rows[3]["panels"]["guide"]["correct"] is False  # normal image called TB
    fig = viz.cam_gallery(rows, ["guide", "student"])
    assert len(fig.axes) == 4 * 3


# --------------------------------------------------------------------------- guide_for_part

def test_guide_for_part_trains_missing_teachers_and_reads_that_parts_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("TBKD_ARTIFACTS", str(tmp_path))
    profile = config.get_profile("quick", teachers=("resnet18", "vgg16"))
    (pipeline.teacher_dir(profile, "resnet18")).mkdir(parents=True)
    (pipeline.teacher_dir(profile, "resnet18") / "done.json").write_text("{}")
    trained, parts = [], []
    monkeypatch.setattr(pipeline, "train_teacher", lambda p, a, prep, progress=False: trained.append(a))
    monkeypatch.setattr(pipeline, "teacher_val_auc", lambda p, prep: {"resnet18": 0.9, "vgg16": 0.7})

    def fake_cache(p, arch, prep, part, progress=False):
        parts.append((arch, part))
        value = 1.0 if arch == "resnet18" else 0.0
        return cam.CamCache(cams=np.full((2, 4, 4), value, np.float16), logits=np.full((2, 2), value, np.float32),
                            labels=np.array([0, 1]), key={}, ids=np.array(["a", "b"]), path=tmp_path / arch)

    monkeypatch.setattr(pipeline, "cam_cache", fake_cache)
    best = pipeline.guide_for_part(profile, None, "best", "test")
    assert trained == ["vgg16"]
    assert best.source == "resnet18" and parts == [("resnet18", "test")]
    assert best.cams.shape == (2, 4, 4) and np.allclose(best.cams, 1.0)
    fused = pipeline.guide_for_part(profile, None, "fusion", "val")
    assert fused.source == "fusion" and ("vgg16", "val") in parts
    assert fused.weights == pytest.approx({"resnet18": 0.4 / 0.6, "vgg16": 0.2 / 0.6})
    assert np.allclose(fused.cams, 0.4 / 0.6)


# --------------------------------------------------------------------------- figures

def test_joint_augmentation_stretches_each_map_over_its_image():
    img = np.random.default_rng(0).uniform(size=(16, 16))
    samples = [("original", img, np.eye(4)), ("draw 1", img[::-1], np.eye(4)[::-1])]
    fig = viz.joint_augmentation(samples)
    assert len(fig.axes) == 4
    top, bottom = fig.axes[0], fig.axes[2]  # row-major: (0, 0), (0, 1), (1, 0), (1, 1)
    assert len(top.images) == 1 and len(bottom.images) == 2
    assert bottom.images[1].get_extent() == [-0.5, 15.5, 15.5, -0.5]
    assert top.get_title() == "original" and fig.axes[1].get_title() == "draw 1"


def _history(n: int, loss: float) -> History:
    ep = list(range(1, n + 1))
    return History(epoch=ep, train_loss=[loss / e for e in ep], val_loss=[0.7] * n, val_auc=[0.6] * n,
                   val_acc=[0.5] * n, lr=[1e-3] * n, seconds=[1.0] * n, best_epoch=1)


def test_distill_curves_relabels_the_training_loss():
    fig = viz.distill_curves({"ce": _history(3, 0.7), "kd": _history(3, 2.0)})
    assert "own objective" in fig.axes[0].get_ylabel()
    assert [ln.get_label() for ln in fig.axes[1].lines if ln.get_label() in ("ce", "kd")] == ["ce", "kd"]
    wide = viz.distill_curves({"ce": _history(3, 0.01), "kd": _history(3, 5.0)})  # > 20x: log scale
    assert wide.axes[0].get_ylabel().endswith("(log)")


def test_ablation_intervals_one_bar_and_dot_per_model_and_quantity():
    pts = {"ce": {"AUC": (0.7, 0.6, 0.8), "F1": (0.5, 0.4, 0.6)},
           "kd": {"AUC": (0.75, 0.65, 0.85), "F1": (0.55, np.nan, np.nan)},
           "cam": {"AUC": (np.nan, np.nan, np.nan)}}
    fig = viz.ablation_intervals(pts, reference={"AUC": 0.5})
    auc, f1 = fig.axes
    assert auc.get_title() == "AUC" and f1.get_title() == "F1"
    bars = [ln for ln in auc.lines if len(ln.get_xdata()) == 2 and ln.get_linestyle() == "-"]
    dots = [ln for ln in auc.lines if ln.get_marker() == "o"]
    assert len(bars) == 2 and len(dots) == 2  # cam's NaN point is left out
    assert [tuple(b.get_xdata()) for b in bars] == [(0.6, 0.8), (0.65, 0.85)]
    assert list(bars[1].get_ydata()) == [1, 1]  # the second model, second row
    assert any(ln.get_linestyle() == ":" for ln in auc.lines)  # the chance line
    assert len([ln for ln in f1.lines if ln.get_marker() == "o"]) == 2
    assert len([ln for ln in f1.lines if ln.get_marker() != "o"]) == 1  # kd's F1 has no interval
    assert [t.get_text() for t in auc.get_yticklabels()] == ["ce", "kd", "cam"]
    assert auc.get_ylim()[0] > auc.get_ylim()[1]  # first model on top


def test_guide_predictions_are_the_softmax_of_the_guides_logits(monkeypatch):
    from tbkd_helpers.distill import Guide

    recs = {"val": [SimpleNamespace(key=f"v{i}", dataset="a", label=i % 2) for i in range(2)],
            "test": [SimpleNamespace(key=f"t{i}", dataset="b", label=i % 2) for i in range(3)]}
    logits = {"val": np.array([[0.0, 0.0], [0.0, np.log(3.0)]], np.float32),
              "test": np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]], np.float32)}
    monkeypatch.setattr(pipeline, "classifier_records", lambda p, prep, part: recs[part])
    guides = {part: Guide(cams=np.zeros((len(recs[part]), 2, 2), np.float32), logits=logits[part],
                          ids=[r.key for r in recs[part]], source="resnet18", weights={"resnet18": 1.0})
              for part in recs}
    monkeypatch.setattr(pipeline, "guide_for_part", lambda p, prep, guide, part: guides[part])
    preds = pipeline.guide_predictions(None, None)
    assert preds["val"]["probs"] == pytest.approx([0.5, 0.75])
    assert preds["test"]["probs"] == pytest.approx([1 / (1 + np.e), np.e / (1 + np.e), 0.5], abs=1e-6)  # 6 digits
    assert preds["test"]["keys"] == ["t0", "t1", "t2"] and preds["test"]["labels"] == [0, 1, 0]
    assert preds["test"]["datasets"] == ["b"] * 3
    rows = pipeline.evaluate(preds, n_boot=50)
    assert [r["dataset"] for r in rows] == ["b", "all"]
    recs["test"] = recs["test"][::-1]  # the cache no longer matches the split
    with pytest.raises(ValueError, match="rebuild the CAM caches"):
        pipeline.guide_predictions(None, None)


def test_score_student_and_guide_measure_against_the_guides_test_maps(tmp_path, monkeypatch):
    from tbkd_helpers.distill import Guide

    monkeypatch.setenv("TBKD_ARTIFACTS", str(tmp_path))
    profile = config.get_profile("quick")
    recs = [SimpleNamespace(key=f"t{i}", dataset="ab"[i % 2], label=i // 2 % 2) for i in range(8)]
    rng = np.random.default_rng(0)
    guide_maps = rng.uniform(size=(8, 4, 4)).astype(np.float32)
    student = cam.resize_maps(guide_maps, 8)
    probs = [0.1, 0.2, 0.8, 0.9, 0.3, 0.1, 0.7, 0.6]
    part = lambda p: {"keys": [r.key for r in recs], "datasets": [r.dataset for r in recs],  # noqa: E731
                      "labels": [r.label for r in recs], "probs": p}
    calls = []
    monkeypatch.setattr(pipeline, "predictions", lambda prof, d, arch, prep, model=None: (
        calls.append(d.name), {"val": part(probs), "test": part(probs[::-1])})[1])
    monkeypatch.setattr(pipeline, "student_maps", lambda prof, model, prep, part: (student, recs))
    monkeypatch.setattr(pipeline, "classifier_records", lambda prof, prep, part: recs)
    monkeypatch.setattr(pipeline, "lung_masks", lambda prof, records, size, what: np.ones((8, size, size), bool))
    monkeypatch.setattr(pipeline, "guide_for_part", lambda prof, prep, guide, part: Guide(
        cams=guide_maps, logits=np.zeros((8, 2), np.float32), ids=[r.key for r in recs], source="resnet18",
        weights={"resnet18": 1.0}))
    monkeypatch.setattr(pipeline, "guide_predictions", lambda prof, prep, guide: {"val": part(probs),
                                                                                  "test": part(probs)})
    s = pipeline.score_student(profile, None, None, "kd+cam", "best", "at", n_boot=50)
    assert calls == ["kd+cam-best-at"]
    assert s["guide"] == "resnet18" and s["maps"].shape == (8, 8, 8)
    assert [r["dataset"] for r in s["test"]] == ["a", "b", "all"] == [r["dataset"] for r in s["attention"]]
    assert s["attention"][-1]["agreement"] > 0.99 and s["attention"][-1]["in_lung"] == pytest.approx(1.0)
    assert list(s["probs"]) == probs[::-1] and s["threshold"] == s["test"][0]["threshold"]
    g = pipeline.score_guide(profile, None, "best", n_boot=50)
    assert g["attention"][-1]["agreement"] == pytest.approx(1.0) and g["test"][-1]["auc"] == 1.0
    assert g["maps"] is guide_maps


def test_ablation_entry_keeps_the_json_parts_and_the_run():
    score = {"test": [{"dataset": "all", "auc": 0.7}], "attention": [{"dataset": "all", "in_lung": 0.5}],
             "guide": "resnet18", "maps": np.zeros((2, 4, 4)), "probs": np.zeros(2), "threshold": 0.5}
    h = _history(4, 0.7)
    h.final = {"val_auc": 0.81}
    e = pipeline.ablation_entry(score, h, variant="kd", guide_mode="best", cam_loss="mse")
    assert e == {"test": score["test"], "attention": score["attention"], "guide": "resnet18", "variant": "kd",
                 "guide_mode": "best", "cam_loss": "mse", "best_epoch": 1, "epochs_run": 4, "val_auc": 0.81}
    assert pipeline.ablation_entry(score) == {k: score[k] for k in ("test", "attention", "guide")}
    import json
    json.dumps(e)  # JSON-ready: no arrays
