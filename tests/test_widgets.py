"""The CAM explorer (tbkd_helpers.widgets) and chapter 03's reporting helpers.

The explorer is driven as a user would drive it: by setting widget values. The tests
check what it then shows (the figure's panels and titles, the text under the controls,
the PNG bytes, the image menu), on tiny untrained models and random images: nothing
is trained or downloaded.
"""
from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tbkd_helpers import cam, pipeline, reports, viz, widgets
from tbkd_helpers.models import build_model

SIZE = 32
N = 8


def _records():
    # shenzhen: 0-4, montgomery: 5-7; labels alternate
    return [SimpleNamespace(key=f"{'shenzhen' if i < 5 else 'montgomery'}/img_{i}_{i % 2}",
                            dataset="shenzhen" if i < 5 else "montgomery", label=i % 2) for i in range(N)]


@functools.lru_cache(maxsize=None)
def _model(arch):
    return build_model(arch, pretrained=False, seed=0).eval()


def _images(n=N, size=SIZE):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0))


def _masks(n=N, size=SIZE, lo=6, hi=26):
    m = np.zeros((n, size, size), bool)
    m[:, lo:hi, lo:hi] = True
    return m


# model A ("res") is right on images 0-5 and wrong on 6 and 7
PROBS_A = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.9, 0.1])
PROBS_B = np.array([0.6, 0.6, 0.6, 0.6, 0.4, 0.4, 0.4, 0.4])


def _state(lesions=True):
    les = np.zeros((N, SIZE, SIZE), bool)
    les[1::2, 8:12, 8:12] = True  # lesions on the TB images
    st = widgets.ExplorerState(_records(), images={SIZE: _images()}, lung_masks=_masks(),
                               lesion_masks=les if lesions else None)
    st.add_model("res", _model("resnet18"), "resnet18", probs=PROBS_A, threshold=0.5)
    st.add_model("mob", _model("mobilenet_v3_small"), "mobilenet_v3_small", probs=PROBS_B, threshold=0.5)
    return st


@pytest.fixture
def explorer():
    return widgets.CamExplorer(_state())


def _n_contours(fig):
    return sum(len(ax.collections) for ax in fig.axes)


# --------------------------------------------------------------------------- state
def test_add_model_computes_probabilities_and_checks_sizes():
    st = widgets.ExplorerState(_records(), images={SIZE: _images()})
    m = st.add_model("res", _model("resnet18"), "resnet18")  # size: the only one held
    assert m.size == SIZE and m.probs.shape == (N,) and ((m.probs >= 0) & (m.probs <= 1)).all()
    with torch.no_grad():
        ref = torch.softmax(_model("resnet18")(_images()), 1)[:, 1].numpy()
    np.testing.assert_allclose(m.probs, ref, atol=1e-6)
    with pytest.raises(ValueError, match="4 probabilities for 8 images"):
        st.add_model("bad", _model("resnet18"), "resnet18", probs=[0.5] * 4)
    st.images[48] = _images(size=48)
    with pytest.raises(ValueError, match="pass size="):
        st.add_model("x", _model("resnet18"), "resnet18")


def test_images_at_another_size_come_from_the_loader_or_a_resize():
    calls = []

    def loader(size):
        calls.append(size)
        return _images(size=size)

    st = widgets.ExplorerState(_records(), images={SIZE: _images()}, image_loader=loader)
    assert st.images_at(40).shape == (N, 1, 40, 40) and calls == [40]
    st.images_at(40)
    assert calls == [40]  # kept
    st2 = widgets.ExplorerState(_records(), images={SIZE: _images()})
    assert st2.images_at(40).shape == (N, 1, 40, 40)
    with pytest.raises(ValueError, match="lung_masks"):
        widgets.ExplorerState(_records(), images={SIZE: _images()}, lung_masks=_masks(n=3))


def test_state_without_lesions_has_none():
    st = widgets.ExplorerState(_records(), images={SIZE: _images()},
                               lesion_masks=np.zeros((N, SIZE, SIZE), bool))
    assert st.lesion_masks is None  # real data: nothing to draw


# --------------------------------------------------------------------------- pure functions
def test_matching_images_filters():
    st = _state()
    sel = widgets.Selection(a="res")
    assert widgets.matching_images(st, sel) == list(range(N))
    assert widgets.matching_images(st, widgets.Selection(a="res", label="TB")) == [1, 3, 5, 7]
    assert widgets.matching_images(st, widgets.Selection(a="res", dataset="montgomery")) == [5, 6, 7]
    assert widgets.matching_images(st, widgets.Selection(a="res", outcome="wrong")) == [6, 7]
    assert widgets.matching_images(st, widgets.Selection(a="res", outcome="correct", label="TB")) == [1, 3, 5]
    # judged by model A: "mob" says TB for 0-3 and normal for 4-7
    assert widgets.matching_images(st, widgets.Selection(a="mob", outcome="wrong")) == [0, 2, 5, 7]
    for bad in (dict(label="sick"), dict(outcome="maybe"), dict(method="nope"), dict(a="vgg"),
                dict(target="lungs"), dict(alpha=2.0)):
        with pytest.raises(ValueError):
            widgets.matching_images(st, widgets.Selection(**{"a": "res", **bad}))


def test_compute_view_panels_and_targets():
    st = _state()
    v = widgets.compute_view(st, widgets.Selection(a="res", image=st.keys[3]))
    assert v.index == 3 and v.key == st.keys[3] and len(v.panels) == 1
    p = v.panels[0]
    assert p.cam.shape == (SIZE, SIZE) and 0 <= p.cam.min() and p.cam.max() <= 1
    assert p.prob == pytest.approx(0.8) and p.predicted == 1 and p.correct and p.target_class == 1
    assert p.lungs is not None and p.lesions is None  # lesions are off by default
    v2 = widgets.compute_view(st, widgets.Selection(a="res", b="mob", image=st.keys[3], show_lesions=True,
                                                     show_lungs=False))
    assert [q.model for q in v2.panels] == ["res", "mob"]
    assert v2.panels[0].lesions.any() and v2.panels[0].lungs is None
    assert len(widgets.compute_view(st, widgets.Selection(a="res", b="res")).panels) == 1
    # "predicted": each model's own decision (res says TB on image 6, mob says normal)
    v3 = widgets.compute_view(st, widgets.Selection(a="res", b="mob", image=st.keys[6], target="predicted"))
    assert [q.target_class for q in v3.panels] == [1, 0]
    assert widgets.compute_view(st, widgets.Selection(a="res", image="not/there")).index == 0
    empty = widgets.compute_view(st, widgets.Selection(a="res", dataset="shenzhen", outcome="wrong"))
    assert empty.index is None and not empty.panels and "no image" in empty.message


def test_maps_are_computed_once_and_match_the_library():
    st = _state()
    a = st.cam("res", 2, "gradcam", 1)
    assert st.cam("res", 2, "gradcam", 1) is a
    ref = cam.compute_cams(_model("resnet18"), st.models["res"].layer, _images()[2:3], target_class=1)[0]
    np.testing.assert_allclose(a, ref, atol=1e-6)
    st.add_model("res", _model("resnet18"), "resnet18", probs=PROBS_A)  # replaced: its maps forgotten
    assert not any(k[0] == "res" for k in st._cams)


# --------------------------------------------------------------------------- the widget
def test_explorer_shows_model_probability_and_decision(explorer):
    fig = explorer.figure
    assert len(fig.axes) == 1
    title = fig.axes[0].get_title()
    first = explorer.controls["image"].value
    i = explorer.state.keys.index(first)
    assert "res" in title and f"P(TB) = {PROBS_A[i]:.2f}" in title
    assert first in fig._suptitle.get_text()
    assert f"P(TB) = {PROBS_A[i]:.3f}" in explorer.info.value
    assert explorer.image.value[:8] == b"\x89PNG\r\n\x1a\n"


def test_second_model_doubles_the_panels(explorer):
    explorer.controls["b"].value = "mob"
    assert len(explorer.figure.axes) == 2
    assert "mob" in explorer.figure.axes[1].get_title()
    assert "<b>mob</b>" in explorer.info.value
    explorer.controls["b"].value = "(none)"
    assert len(explorer.figure.axes) == 1


def test_mask_toggles_add_and_remove_contours(explorer):
    explorer.set(show_lungs=False, show_lesions=False, label="TB")
    base = _n_contours(explorer.figure)
    explorer.controls["show_lungs"].value = True
    assert _n_contours(explorer.figure) == base + 1
    explorer.controls["show_lesions"].value = True
    assert _n_contours(explorer.figure) == base + 2
    explorer.controls["show_lungs"].value = False
    assert _n_contours(explorer.figure) == base + 1


def test_filters_change_the_image_menu_and_the_image(explorer):
    c = explorer.controls
    c["label"].value = "TB"
    keys = [k for _, k in c["image"].options]
    assert keys == [explorer.state.keys[i] for i in (1, 3, 5, 7)]
    assert explorer.view.label == 1 and explorer.view.index == 1
    c["image"].value = explorer.state.keys[5]
    assert explorer.view.index == 5 and explorer.state.keys[5] in explorer.figure._suptitle.get_text()
    c["dataset"].value = "montgomery"  # image 5 still matches: kept
    assert explorer.view.index == 5 and len(c["image"].options) == 2
    c["outcome"].value = "wrong"  # res is wrong only on image 7 among TB montgomery images
    assert [k for _, k in c["image"].options] == [explorer.state.keys[7]]
    assert explorer.view.index == 7 and "✗" in explorer.figure.axes[0].get_title()
    c["label"].value = "normal"  # and right on the one normal montgomery image but 6
    assert explorer.view.index == 6
    c["dataset"].value = "shenzhen"  # no wrong normal image there
    assert explorer.view.index is None and c["image"].value is None
    assert "no image matches" in explorer.info.value and not explorer.figure.axes[0].images


def test_method_target_and_opacity_redraw(explorer):
    c = explorer.controls
    png0, cam0 = explorer.image.value, explorer.view.panels[0].cam.copy()
    c["method"].value = "gradcam++"
    assert explorer.view.selection.method == "gradcam++" and "gradcam++" in explorer.figure._suptitle.get_text()
    assert explorer.image.value != png0
    c["method"].value = "gradcam"
    np.testing.assert_array_equal(explorer.view.panels[0].cam, cam0)
    c["target"].value = "normal"
    assert explorer.view.panels[0].target_class == 0
    assert "map of class normal" in explorer.figure.axes[0].get_title()
    png1 = explorer.image.value
    c["alpha"].value = 0.0
    assert explorer.image.value != png1
    assert len(explorer.figure.axes[0].images) == 1  # opacity 0: the X-ray alone
    c["alpha"].value = 0.8
    ims = explorer.figure.axes[0].images
    assert len(ims) == 2 and ims[1].get_alpha() == pytest.approx(0.8)


def test_set_and_add_model(explorer):
    explorer.set(a="mob", b="res", image=explorer.state.keys[4])
    assert [p.model for p in explorer.view.panels] == ["mob", "res"] and explorer.view.index == 4
    with pytest.raises(ValueError, match="unknown control"):
        explorer.set(colour="red")
    student = build_model("mobilenet_v3_small", pretrained=False, seed=1).eval()
    explorer.add_model("student", student, "mobilenet_v3_small", size=SIZE, show=True)
    assert "student" in explorer.controls["a"].options and "student" in explorer.controls["b"].options
    assert [p.model for p in explorer.view.panels] == ["mob", "student"]
    assert "student" in explorer.figure.axes[1].get_title()
    assert "CamExplorer(8 images" in repr(explorer)


def test_explorer_without_lesions_disables_the_toggle():
    ex = widgets.CamExplorer(_state(lesions=False), widgets.Selection(show_lesions=True))
    assert ex.controls["show_lesions"].disabled
    assert ex.view.panels[0].lesions is None


def test_explorer_callbacks_use_the_explorers_own_state():
    """Two explorers side by side do not see each other's models or choices."""
    a, b = widgets.CamExplorer(_state()), widgets.CamExplorer(_state())
    b.add_model("extra", _model("resnet18"), "resnet18", probs=PROBS_A)
    assert "extra" not in a.state.models and "extra" not in a.controls["a"].options
    a.controls["label"].value = "TB"
    assert b.view.selection.label == "all"


def test_explorer_for_profile_builds_from_the_pipeline(monkeypatch, tmp_path):
    """The one-line constructor, with the pipeline's stages replaced by fakes."""
    recs = _records()
    profile = SimpleNamespace(image_size=SIZE, teachers=("resnet18", "inception_v3"), cam_stride=16,
                              cam_method="gradcam", size_for=lambda a: 80 if a.startswith("inception") else SIZE)
    built = {}

    def fake_dataset(records, size):
        built[size] = built.get(size, 0) + 1
        return SimpleNamespace(images=_images(len(records), size))

    def fake_masks(profile, records, size, what="lung"):
        return _masks(len(records), size) if what == "lung" else np.zeros((len(records), size, size), bool)

    def fake_preds(profile, d, arch, prep, parts=("val", "test"), model=None):
        return {"val": {"labels": [0, 1, 0, 1], "probs": [0.1, 0.45, 0.3, 0.9]},
                "test": {"keys": [r.key for r in reversed(recs)], "probs": list(PROBS_A[::-1])}}

    for arch in profile.teachers:
        (tmp_path / arch).mkdir()
        (tmp_path / arch / "done.json").write_text("{}")
    monkeypatch.setattr(pipeline, "classifier_records", lambda profile, prep, part: recs)
    monkeypatch.setattr(pipeline, "lung_masks", fake_masks)
    monkeypatch.setattr(pipeline, "teacher_dir", lambda profile, arch: tmp_path / arch)
    monkeypatch.setattr(pipeline, "load_classifier", lambda path: _model(
        "inception_v3" if "inception" in str(path) else "resnet18"))
    monkeypatch.setattr(pipeline, "predictions", fake_preds)
    monkeypatch.setattr("tbkd_helpers.data.CXRDataset", fake_dataset)
    ex = widgets.explorer_for_profile(profile, prep=object(), models=["resnet18"])
    assert list(ex.state.models) == ["resnet18"]
    m = ex.state.models["resnet18"]
    np.testing.assert_allclose(m.probs, PROBS_A)  # aligned by key, not by position
    assert m.threshold == pytest.approx(0.45)  # Youden on validation
    assert ex.state.lesion_masks is None and ex.view.panels[0].lungs is not None
    ex.add_model("inception_v3", _model("inception_v3"), "inception_v3", size=80, probs=PROBS_B, show=True)
    assert ex.view.panels[1].image.shape == (80, 80)
    assert built == {SIZE: 1, 80: 1}  # the other input size came from the loader


# --------------------------------------------------------------------------- chapter 03's helpers
TEACHERS = ("resnet18", "mobilenet_v3_small", "mobilenet_v3_large")
A, B, C = TEACHERS

def _attention():
    recs = _records()
    labels = np.array([r.label for r in recs])
    imgs = _images()
    les = np.zeros((N, SIZE, SIZE), bool)
    les[1::2, 8:14, 8:14] = True
    att = pipeline.TeacherAttention(part="test", method="gradcam", records=recs, labels=labels, maps={},
                                    probs={}, thresholds={}, sizes={}, models={}, images={SIZE: imgs},
                                    lungs={SIZE: _masks()}, lesions={SIZE: les})
    rng = np.random.default_rng(0)
    for name, probs in zip(TEACHERS, (PROBS_A, PROBS_B, PROBS_A[::-1].copy())):
        maps = rng.random((N, SIZE, SIZE)).astype(np.float32)
        att.maps[name], att.probs[name], att.thresholds[name] = maps, probs, 0.5
        att.sizes[name], att.models[name] = SIZE, _model(name)
    return att


def test_attention_table_measures_each_teacher():
    att = _attention()
    # teacher A: all mass inside the lungs and peaking on the lesions
    a = np.zeros((N, SIZE, SIZE), np.float32)
    a[:, 9:13, 9:13] = 1.0
    a[:, 10, 10] = 2.0
    att.maps[A] = a / 2
    rows = pipeline.attention_table(att, road_images=2, road_percentiles=(50,))
    by = {r["teacher"]: r for r in rows}
    assert list(by) == [*TEACHERS, "chance"]
    assert by[A]["in_lung"] == pytest.approx(1.0) and by[A]["pointing"] == pytest.approx(1.0)
    assert by[A]["n_lesion"] == 4 and by[A]["n_road"] == 2 and by[A]["n_images"] == N
    assert np.isfinite(by[B]["road"]) and 0 <= by[B]["in_lung"] <= 1
    assert by["chance"]["in_lung"] == pytest.approx(20 * 20 / SIZE ** 2)
    assert by["chance"]["pointing"] == pytest.approx(36 / SIZE ** 2)
    m = pipeline.attention_agreement(att)
    assert m.shape == (3, 3) and np.allclose(np.diag(m), 1) and np.allclose(m, m.T)
    assert by[B]["agreement"] == pytest.approx((m[1, 0] + m[1, 2]) / 2)
    assert pipeline.road_subset(att, 3).tolist() == [1, 3, 5]


def test_gallery_picks_by_majority_vote():
    att = _attention()
    picks = reports.gallery_picks(att, per_group=2)
    # votes: A = PROBS_A, B = PROBS_B, C = reversed PROBS_A (all at 0.5)
    says = np.mean([att.predicted(k) for k in TEACHERS], 0) > 0.5
    for g, idx in picks.items():
        for i in idx:
            assert att.labels[i] == (0 if g == "FP" else 1)
            assert says[i] == (g != "FN")
    rows = reports.gallery_rows(att, {"TP": picks["TP"], "FP": []})
    assert rows[-1]["group"].startswith("FP: none")
    assert set(rows[0]["panels"]) == set(TEACHERS)
    fig = viz.cam_gallery(rows, att.teachers)
    assert len(fig.axes) == len(rows) * 4
    viz.plt.close(fig)


def test_stage3_figures_draw():
    att = _attention()
    fig = viz.agreement_matrix(pipeline.attention_agreement(att), att.teachers)
    assert "agreement" in fig.axes[0].get_title()
    fig2 = viz.cam_methods(att.images[SIZE][0, 0].numpy(), {"gradcam": att.maps[A][0], "x": att.maps[B][0]},
                           lungs=att.lungs[SIZE][0])
    assert [ax.get_title() for ax in fig2.axes] == ["X-ray", "gradcam", "x"]
    viz.plt.close(fig)
    viz.plt.close(fig2)


def test_explorer_from_attention_reuses_everything():
    att = _attention()
    profile = SimpleNamespace(cam_stride=16, cam_method="gradcam")
    ex = widgets.explorer_for_profile(profile, prep=None, attention=att)
    assert list(ex.state.models) == list(TEACHERS)
    np.testing.assert_array_equal(ex.state.models[B].probs, att.probs[B])
    assert ex.state.models[A].model is att.models[A] and ex.state.images[SIZE] is att.images[SIZE]
    assert ex.state.lesion_masks is not None and not ex.controls["show_lesions"].disabled
    ex.set(a=C, b=A, label="TB")
    assert [p.model for p in ex.view.panels] == [C, A]
    two = widgets.explorer_for_profile(profile, prep=None, attention=att, models=[B])
    assert list(two.state.models) == [B]


def test_cam_layers_names_the_layer_and_its_map():
    rows = pipeline.cam_layers(SimpleNamespace(size_for=lambda arch: 64), {"resnet18": _model("resnet18")})
    assert rows == [{"teacher": "resnet18", "input": "64×64", "layer (stride 8)": "layer2.1", "map (stride 8)": "8×8",
                     "layer (stride 16)": "layer3.1",
                     "map (stride 16)": "4×4", "layer (stride 32)": "layer4.1", "map (stride 32)": "2×2"}]


def test_attention_table_with_a_collapsed_teacher(recwarn):
    """A teacher whose maps are all empty: undefined shares, counted empties, no warnings,
    and the other teachers' agreement still measured."""
    att = _attention()
    att.maps[C] = np.zeros_like(att.maps[C])
    rows = pipeline.attention_table(att, road_images=2, road_percentiles=(50,))
    by = {r["teacher"]: r for r in rows}
    assert by[C]["n_empty"] == N and np.isnan(by[C]["in_lung"]) and np.isnan(by[C]["road"])
    assert by[C]["pointing"] == 0.0  # an empty map points nowhere: a miss
    assert np.isfinite(by[A]["agreement"]) and by[A]["n_empty"] == 0
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    lines = reports.attention_summary(rows)
    assert len(lines) == 3 and "every map is empty" in lines[2] and "against chance" in lines[0]
    assert set(pipeline.ATTENTION_COLUMNS) == set(rows[0]) - {"teacher"}


def test_attention_table_on_real_data_without_lesion_masks(recwarn):
    """Real X-rays come with no lesion masks: the pointing game is undefined (NaN) for every
    teacher and for chance, and the rest of the table is still measured."""
    att = _attention()
    att.lesions = {SIZE: np.zeros_like(att.lesions[SIZE])}
    rows = pipeline.attention_table(att, road_images=2, road_percentiles=(50,))
    by = {r["teacher"]: r for r in rows}
    assert all(np.isnan(r["pointing"]) and r["n_lesion"] == 0 for r in rows)
    assert all(np.isfinite(by[t]["in_lung"]) for t in TEACHERS) and by["chance"]["in_lung"] > 0
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
