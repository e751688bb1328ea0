"""Consistent distillation views, students over seeds, and the loss code in the fingerprint."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tbkd_helpers import data, distill, metrics, pipeline, recipes, reports
from tbkd_helpers.config import get_profile
from tbkd_helpers.data import Record


def _base(n=3, size=32):
    recs = [Record(key=f"x/{i}", path=None, dataset="x", label=i % 2, patient_id=str(i)) for i in range(n)]
    base = data.CXRDataset.__new__(data.CXRDataset)
    base.records, base.size, base.augment = recs, size, False
    g = torch.Generator().manual_seed(0)
    base.images = torch.rand(n, 1, size, size, generator=g)
    base.labels = torch.tensor([r.label for r in recs])
    base._tf = None
    return base


def test_view_params_are_seeded_and_inside_the_recipe_ranges():
    a = recipes.CLASSIFIER_AUGMENT
    p = data.view_params(50, 4, seed=3)
    assert p.shape == (50, 4, len(data.VIEW_COLUMNS))
    assert np.array_equal(p, data.view_params(50, 4, seed=3))
    assert not np.array_equal(p, data.view_params(50, 4, seed=4))
    assert np.abs(p[..., 0]).max() <= a.degrees and np.abs(p[..., 1:3]).max() <= a.translate
    assert p[..., 3].min() >= a.scale[0] and p[..., 3].max() <= a.scale[1]
    assert np.abs(p[..., 4] - 1).max() <= a.brightness and np.abs(p[..., 5] - 1).max() <= a.contrast


def test_a_view_is_the_same_view_at_another_size():
    """The teacher (at its size) and the student (at its own) see the same geometry."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 96), torch.linspace(-1, 1, 96), indexing="ij")
    big = ((xx - 0.3) ** 2 + (yy + 0.2) ** 2 < 0.1).float()[None]  # an off-centre disc
    params = np.array([12.0, 0.1, -0.08, 1.05, 1.0, 1.0], np.float32)
    small = F.interpolate(big[None], size=(48, 48), mode="area")[0]
    a = F.interpolate(data.apply_view(big, params)[None], size=(48, 48), mode="area")[0]
    b = data.apply_view(small, params)
    assert (a - b).abs().mean() < 0.03
    assert (data.apply_view(small, np.array([0, 0, 0, 1, 1, 1], np.float32)) - small).abs().max() < 1e-5
    assert (b - small).abs().mean() > 0.05  # the view did move the disc


def test_views_dataset_rows_and_keys():
    base = _base()
    params = data.view_params(len(base), 2, seed=0)
    v = data.ViewsDataset(base, params)
    assert len(v) == 6 and [r.key for r in v.records][:2] == ["x/0@0", "x/0@1"]
    assert torch.equal(v.images[3], data.apply_view(base.images[1], params[1, 1]))
    assert v.labels.tolist() == [0, 0, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="view parameters"):
        data.ViewsDataset(base, params[:2])


def test_the_student_gets_the_teachers_targets_of_the_view_it_sees():
    base = _base(n=3)
    params = data.view_params(3, 4, seed=1)
    n = 3 * 4
    cams = np.stack([np.full((4, 4), j / n, np.float32) for j in range(n)])  # row j marks itself
    logits = np.stack([[float(j), -float(j)] for j in range(n)]).astype(np.float32)
    guide = distill.Guide(cams=cams, logits=logits, ids=[f"x/{i}@{v}" for i in range(3) for v in range(4)],
                          source="t", weights={"t": 1.0})
    ds = distill.DistillDataset(base, guide, augment=True, views=params)
    torch.manual_seed(0)
    seen = set()
    for _ in range(40):
        for i in range(3):
            x, y, m, z = ds[i]
            j = int(round(float(m[0, 0]) * n))
            assert j // 4 == i and float(z[0]) == j  # the map and the logits of one of image i's views
            assert torch.equal(x, data.apply_view(base.images[i], params[i, j % 4]))  # ... the one it sees
            seen.add(j)
    assert len(seen) == n  # every view gets drawn
    with pytest.raises(ValueError, match="views"):
        distill.DistillDataset(base, guide, augment=True, views=None)


def test_mean_sd_and_paired_difference():
    assert metrics.mean_sd([1.0, 2.0, 3.0, None]) == {"mean": 2.0, "sd": 1.0, "n": 3}
    assert metrics.mean_sd([0.5]) == {"mean": 0.5, "sd": None, "n": 1}
    d = metrics.paired_difference([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    half = 4.302653 / math.sqrt(3)  # t(0.975, 2 df) * sd / sqrt(n), sd = 1
    assert d["mean"] == 2.0 and d["n"] == 3 and d["sd"] == 1.0
    assert d["lo"] == pytest.approx(2 - half, abs=1e-3) and d["hi"] == pytest.approx(2 + half, abs=1e-3)
    same = metrics.paired_difference([0.8, 0.7, 0.9], [0.8, 0.7, 0.9])
    assert same["mean"] == 0 and same["lo"] == 0 and same["hi"] == 0
    assert metrics.paired_difference([0.8], [0.7])["lo"] is None


def test_seed_dirs_and_seed_list():
    prof = get_profile("quick", seed=5)
    assert pipeline.seed_list(prof, 3) == [5, 6, 7]
    assert pipeline.student_dir(prof, "kd+cam") == pipeline.student_dir(prof, "kd+cam", seed=5)
    assert pipeline.student_dir(prof, "kd+cam", seed=6).name == "kd+cam-best-seed6"
    assert pipeline.student_dir(prof, "ce", seed=7).name == "ce-seed7"


def test_guide_mode_follows_the_profile_rule_and_resolves_lungs_on_validation(monkeypatch):
    """The guide defaults to the profile's rule; "lungs" becomes the teacher whose validation
    maps are most inside the lungs (ties: the profile's order); the run folders carry the rule."""
    quick, real = get_profile("quick"), get_profile("real", data_dir="/nonexistent")
    assert quick.guide == "best" and real.guide == "lungs,best"
    in_lung = {"densenet121": 0.37, "inception_v3": 0.36, "resnet18": 0.40, "mobilenet_v3_large": 0.35,
               "vgg16_bn": 0.52}
    monkeypatch.setattr(pipeline, "teacher_val_attention", lambda p, prep: dict(in_lung))
    assert pipeline.guide_mode(real, None) == "vgg16_bn,best"
    assert pipeline.guide_mode(real, None, "fusion") == "fusion"
    assert pipeline.guide_mode(quick, None) == "best"
    assert pipeline.guide_mode(quick.replace(teachers=real.teachers), None, "lungs") == "vgg16_bn"
    assert pipeline.lungs_guide(real, None, {**in_lung, "resnet18": 0.52}) == "resnet18"  # first in order
    assert pipeline.student_dir(real, "kd+cam").name == "kd+cam-lungs,best"
    assert pipeline.student_dir(real, "kd", "best", seed=2).name == "kd-best-seed2"
    # a split guide resolves "lungs" in either half, and names one teacher when both halves agree
    assert pipeline.guide_mode(real, None, "lungs") == "vgg16_bn"
    assert pipeline.guide_mode(real, None, "lungs,vgg16_bn") == "vgg16_bn"
    assert pipeline.student_dir(real, "kd+cam", "lungs").name == "kd+cam-lungs"


def _seed_result(acc_ce, acc_kc):
    def run(seed, acc):
        return {"seed": seed, "best_epoch": 1, "val_auc": 0.8,
                "test": {"all": {"accuracy": acc, "auc": acc, "sensitivity": acc, "specificity": acc}},
                "attention": {"in_lung": acc, "pointing": None, "lesion_share": None, "agreement": acc}}
    runs = {"ce": [run(i, a) for i, a in enumerate(acc_ce)], "kd+cam": [run(i, a) for i, a in enumerate(acc_kc)]}
    summary = {v: {"all": {m: metrics.mean_sd([r["test"]["all"][m] for r in rs]) for m in pipeline.SEED_METRICS}}
               for v, rs in runs.items()}
    att = {v: {k: metrics.mean_sd([r["attention"][k] for r in rs]) for k in pipeline.SEED_ATTENTION}
           for v, rs in runs.items()}
    paired = {"kd+cam": {"test": {"all": {m: metrics.paired_difference(
        [r["test"]["all"][m] for r in runs["kd+cam"]], [r["test"]["all"][m] for r in runs["ce"]])
        for m in pipeline.SEED_METRICS}}, "attention": {k: metrics.paired_difference(
            [r["attention"][k] for r in runs["kd+cam"]], [r["attention"][k] for r in runs["ce"]])
            for k in pipeline.SEED_ATTENTION}}}
    return {"seeds": list(range(len(acc_ce))), "variants": ["ce", "kd+cam"], "reference": "ce",
            "runs": runs, "summary": summary, "attention": att, "paired": paired}


def test_seed_verdicts_follow_the_paired_intervals():
    up = reports.seeds_verdicts(_seed_result([0.70, 0.72, 0.71], [0.80, 0.83, 0.81]))
    assert any(line.startswith("kd+cam: accuracy (all) higher than ce's") for line in up)
    level = reports.seeds_verdicts(_seed_result([0.70, 0.80, 0.75], [0.78, 0.71, 0.76]))
    assert any("accuracy (all) not told apart" in line for line in level)
    table = reports.seeds_table(_seed_result([0.70, 0.72, 0.71], [0.80, 0.83, 0.81]))
    assert table.loc["kd+cam", "accuracy"] == "81.3 ± 1.5 %" and table.loc["ce", "accuracy − ce"] == "—"


class _Captured(Exception):
    pass


def test_an_edit_of_the_loss_changes_the_students_fingerprint(monkeypatch):
    """The loss code is in every student's training fingerprint, so editing it retrains
    (``train.fit`` reuses a finished run only when the fingerprint is the same)."""
    seen = []

    def fake_fit(profile, prep, arch, ckpt_dir, settings, progress, **kw):
        seen.append(kw["extra"]["code_sha256"])
        raise _Captured

    monkeypatch.setattr(pipeline, "_fit", fake_fit)
    monkeypatch.setattr(pipeline, "new_model", lambda profile, arch, **kw: None)
    prof = get_profile("quick")
    with pytest.raises(_Captured):
        pipeline.train_student(prof, "ce", prep=object(), progress=False)

    def edited_kd_loss(student_logits, teacher_logits, temperature):
        return 2 * F.kl_div(F.log_softmax(student_logits / temperature, 1),
                            F.softmax(teacher_logits / temperature, 1), reduction="batchmean")

    monkeypatch.setattr(distill, "kd_loss", edited_kd_loss)
    with pytest.raises(_Captured):
        pipeline.train_student(prof, "ce", prep=object(), progress=False)
    assert seen[0] != seen[1]


def test_tuning_trains_each_setting_once_and_reads_only_validation(monkeypatch):
    """The grid starts with the profile's own settings; a change that is the profile's own
    setting (T = 4 on quick) is not trained twice; each row carries validation figures."""
    calls = []

    class Hist:
        best_epoch, seconds, final = 3, [1.0, 2.0], {"val_auc": 0.75, "val_loss": 0.5}

    def fake_train_student(p, variant, prep, guide="best", cam_loss="mse", progress=False, ckpt_dir=None):
        calls.append((p.kd_temperature, p.cam_beta, cam_loss, guide))
        return None, Hist(), None

    monkeypatch.setattr(pipeline, "train_student", fake_train_student)
    prof = get_profile("quick")
    rows = pipeline.tune_student(prof, prep=object())
    assert prof.kd_temperature == 4.0
    assert calls == [(4.0, 1.0, "mse", "best"), (1.0, 1.0, "mse", "best"), (4.0, 3.0, "mse", "best"),
                     (4.0, 1.0, "at", "best")]
    assert [r["val_auc"] for r in rows] == [0.75] * 4 and all("test" not in k for r in rows for k in r)


def test_patience_study_pairs_settings_by_seed_and_reads_only_validation(monkeypatch, tmp_path):
    """Every variant trains with the profile's own (epochs, views) and each grid setting,
    once per seed; the profile's own reuses chapter 04's folder, the others go to
    students/patience/; only the validation part is read; differences are paired by seed."""
    calls, parts = [], []
    prof = get_profile("quick", student_epochs=15, guide_views=6).replace(data_dir=tmp_path)

    class Hist:
        def __init__(self, epochs):
            self.best_epoch, self.seconds = epochs // 2, [1.0] * epochs
            self.final = {"val_auc": 0.70 + epochs / 1000, "val_loss": 0.5}

    def fake_train_student(p, variant, prep, progress=False, seed=0, ckpt_dir=None):
        calls.append((variant, p.student_epochs, p.guide_views, seed, None if ckpt_dir is None else ckpt_dir.name))
        return p.student_epochs, Hist(p.student_epochs), None

    recs = [Record(key=f"k{i}", path=tmp_path / f"{i}.png", dataset="shenzhen", label=i % 2, patient_id=str(i))
            for i in range(4)]
    monkeypatch.setattr(pipeline, "train_student", fake_train_student)
    monkeypatch.setattr(pipeline, "classifier_records", lambda p, prep, part: parts.append(part) or recs)
    monkeypatch.setattr(pipeline, "classifier_dataset", lambda p, prep, arch, part: parts.append(part) or part)
    monkeypatch.setattr(pipeline, "lung_masks", lambda p, r, size, what: np.ones((4, 8, 8), bool))
    monkeypatch.setattr(pipeline, "guide_for_part", lambda p, prep, g, part: parts.append(part) or
                        type("G", (), {"cams": np.random.default_rng(0).random((4, 8, 8), dtype=np.float32)})())
    monkeypatch.setattr(pipeline._train, "predict", lambda model, ds, device=None: (
        np.array([0.2, 0.8, 0.4, 0.6]) if model > 15 else np.array([0.6, 0.4, 0.4, 0.6]), np.array([0, 1, 0, 1])))
    monkeypatch.setattr(pipeline, "student_maps", lambda p, model, prep, part: (
        parts.append(part) or np.random.default_rng(model).random((4, 8, 8), dtype=np.float32), recs))
    out = pipeline.patience_study(prof, prep=None, seeds=[0, 1], variants=("kd",), grid=((40, 12), (15, 6)))
    assert set(parts) == {"val"}
    assert calls == [("kd", 15, 6, 0, None), ("kd", 40, 12, 0, "kd-e40-v12-seed0"),
                     ("kd", 15, 6, 1, None), ("kd", 40, 12, 1, "kd-e40-v12-seed1")]
    assert out["reference"] == "15 epochs x 6 views"
    d = out["paired"]["kd"]["40 epochs x 12 views"]
    assert d["val_auc"]["mean"] == pytest.approx(0.025) and d["val_auc"]["n"] == 2
    assert d["val_accuracy"]["mean"] == pytest.approx(0.5)  # 1.0 against 0.5 in both seeds
    assert out["summary"]["kd"]["15 epochs x 6 views"]["seconds"]["mean"] == 15


def test_guide_study_resolves_guides_on_validation_and_pairs_them_by_seed(monkeypatch, tmp_path):
    """"lungs" is the teacher whose validation maps are most inside the lungs, trained under its
    own name; a guide that is the best teacher trains as "best" (chapter 04's students, reused); only the
    validation part is read; each guide's difference from the first is paired by seed."""
    calls, parts = [], []
    prof = get_profile("quick", teachers=("densenet121", "resnet18", "vgg16")).replace(data_dir=tmp_path)
    aucs = {"densenet121": 0.90, "resnet18": 0.80, "vgg16": 0.70}
    in_lung = {"densenet121": 0.30, "resnet18": 0.40, "vgg16": 0.60}

    class Hist:
        best_epoch, seconds = 3, [1.0, 1.0]

        def __init__(self, auc):
            self.final = {"val_auc": auc, "val_loss": 0.5}

    gains = {"best": 0.0, "fusion": 0.01, "lungs": 0.03, "lungs,best": 0.02}

    def fake_train_student(p, variant, prep, guide="best", progress=False, seed=0):
        calls.append((variant, guide, seed))
        return guide, Hist(0.7 + gains[guide] + seed / 100), None

    recs = [Record(key=f"k{i}", path=tmp_path / f"{i}.png", dataset="shenzhen", label=i % 2, patient_id=str(i))
            for i in range(4)]
    monkeypatch.setattr(pipeline, "teacher_val_auc", lambda p, prep: dict(aucs))
    monkeypatch.setattr(pipeline, "teacher_val_attention", lambda p, prep: dict(in_lung))
    monkeypatch.setattr(pipeline, "train_student", fake_train_student)
    monkeypatch.setattr(pipeline, "classifier_records", lambda p, prep, part: parts.append(part) or recs)
    monkeypatch.setattr(pipeline, "classifier_dataset", lambda p, prep, arch, part: parts.append(part) or part)
    monkeypatch.setattr(pipeline, "lung_masks", lambda p, r, size, what: np.ones((4, 8, 8), bool))
    monkeypatch.setattr(pipeline, "guide_for_part", lambda p, prep, g, part: parts.append(part) or
                        type("G", (), {"cams": np.random.default_rng(len(g)).random((4, 8, 8), dtype=np.float32)})())
    monkeypatch.setattr(pipeline._train, "predict", lambda model, ds, device=None: (
        np.array([0.2, 0.8, 0.4, 0.6]), np.array([0, 1, 0, 1])))
    monkeypatch.setattr(pipeline, "student_maps", lambda p, model, prep, part: (
        parts.append(part) or np.random.default_rng(len(model)).random((4, 8, 8), dtype=np.float32), recs))
    out = pipeline.guide_study(prof, prep=None, seeds=[0, 1], guides=("best", "fusion", "lungs", "densenet121",
                                                                  "lungs,best"))
    assert set(parts) == {"val"}
    assert out["guides"] == {"best": "densenet121", "fusion": "fusion", "lungs": "vgg16", "densenet121": "densenet121",
                             "lungs,best": "vgg16,densenet121"}  # a split guide: maps of vgg16, logits of the best
    assert calls == [("kd+cam", g, s) for s in (0, 1) for g in ("best", "fusion", "lungs", "best", "lungs,best")]
    d = out["paired"]["kd+cam"]
    assert d["lungs"]["val_auc"]["mean"] == pytest.approx(0.03) and d["lungs"]["val_auc"]["n"] == 2
    assert d["densenet121"]["val_auc"]["mean"] == pytest.approx(0.0)
    assert out["teachers"]["vgg16"] == {"val_auc": 0.7, "val_in_lung": 0.6}
    assert [r["teacher"] for r in out["runs"][:3]] == ["densenet121", "fusion", "vgg16"]


def test_study_lines_say_each_run_and_each_paired_difference():
    """The two study scripts print through reports: a line per run, a line per paired setting."""
    from tbkd_helpers import reports

    rows = [{"seed": s, "variant": "kd", "epochs": e, "views": 4, "best_epoch": 3, "val_auc": 0.7 + e / 1000 + s / 100,
             "val_loss": 0.5, "val_accuracy": 0.6, "in_lung": 0.4, "agreement": 0.2, "seconds": 12.4}
            for s in (0, 1) for e in (20, 40)]
    out = pipeline.summarize_patience(rows, (20, 4), ["kd"])
    assert reports.study_row_line(rows[0], "20 epochs x 4 views") == (
        "seed 0     kd 20 epochs x 4 views: val AUC 0.72, val accuracy 0.6, in-lung 0.4, agreement 0.2, "
        "kept epoch 3, 12 s")
    lines = reports.study_paired_lines(out, "setting ")
    assert len(lines) == 1 and lines[0].startswith("kd: setting 40 epochs x 4 views minus 20 epochs x 4 views")
    assert "val_auc +0.020" in lines[0]


def test_settings_study_trains_each_change_side_by_side_and_compares_with_ce_within_each(monkeypatch, tmp_path):
    """The profile's own settings reuse chapter 04's folders; a ce student under a change of
    distillation settings alone is the profile's own ce (not trained again); other runs go to
    students/settings/<change>/; only validation is read; the lesion share is reported where
    lesions are known; each setting is paired with the own by seed, each variant with ce."""
    prof = get_profile("quick", cam_beta=1.0, student_epochs=15).replace(data_dir=tmp_path)
    parts, batches = [], []
    recs = [Record(key=f"k{i}", path=tmp_path / f"{i}.png", dataset="shenzhen", label=i % 2, patient_id=str(i))
            for i in range(4)]
    lesions = np.zeros((4, 8, 8), bool)
    lesions[1, :2, :2] = lesions[3, :2, :2] = True

    class Hist:
        def __init__(self, score):
            self.best_epoch, self.seconds, self.final = 2, [1.0], {"val_auc": score, "val_loss": 0.5}

    def fake_train_students(p, prep, runs, progress=False):
        batches.append([(r["variant"], r["seed"], r["profile"].cam_beta, r["profile"].student_epochs,
                         r["ckpt_dir"].relative_to(p.artifacts).as_posix() if r.get("ckpt_dir") else None)
                        for r in runs])
        return [((r["variant"], r["profile"].cam_beta, r["seed"]),
                 Hist(0.7 + 0.01 * r["seed"] + 0.05 * (r["variant"] != "ce") * r["profile"].cam_beta), None)
                for r in runs]

    def fake_maps(p, model, prep, part):
        parts.append(part)
        maps = np.full((4, 8, 8), 0.1, np.float32)
        if model[0] != "ce":  # the distilled student puts more mass on the lesions, more with a larger beta
            maps[:, :2, :2] = model[1]
        return maps, recs

    monkeypatch.setattr(pipeline, "train_students", fake_train_students)
    monkeypatch.setattr(pipeline, "student_maps", fake_maps)
    monkeypatch.setattr(pipeline, "classifier_records", lambda p, prep, part: parts.append(part) or recs)
    monkeypatch.setattr(pipeline, "classifier_dataset", lambda p, prep, arch, part: parts.append(part) or part)
    monkeypatch.setattr(pipeline, "lung_masks", lambda p, r, size, what: lesions if what == "lesion"
                        else np.ones((4, 8, 8), bool))
    monkeypatch.setattr(pipeline, "guide_for_part", lambda p, prep, g, part: parts.append(part) or
                        type("G", (), {"cams": np.random.default_rng(0).random((4, 8, 8), dtype=np.float32)})())
    monkeypatch.setattr(pipeline._train, "predict", lambda model, ds, device=None: (
        np.array([0.2, 0.8, 0.4, 0.6]), np.array([0, 1, 0, 1])))
    out = pipeline.settings_study(prof, None, [0, 1], ("ce", "kd+cam"),
                                  [{"cam_beta": 4.0}, {"cam_beta": 1.0}, {"student_epochs": 30}])
    assert set(parts) == {"val"}
    assert batches == [[("ce", 0, 1.0, 15, None), ("ce", 1, 1.0, 15, None),
                        ("kd+cam", 0, 1.0, 15, None), ("kd+cam", 1, 1.0, 15, None),
                        ("ce", 0, 4.0, 15, None), ("ce", 1, 4.0, 15, None),  # beta changes no ce student
                        ("kd+cam", 0, 4.0, 15, "students/settings/cam_beta-4.0/kd+cam-seed0"),
                        ("kd+cam", 1, 4.0, 15, "students/settings/cam_beta-4.0/kd+cam-seed1"),
                        ("ce", 0, 1.0, 30, "students/settings/student_epochs-30/ce-seed0"),
                        ("ce", 1, 1.0, 30, "students/settings/student_epochs-30/ce-seed1"),
                        ("kd+cam", 0, 1.0, 30, "students/settings/student_epochs-30/kd+cam-seed0"),
                        ("kd+cam", 1, 1.0, 30, "students/settings/student_epochs-30/kd+cam-seed1")]]
    assert out["settings"] == ["profile's own", "cam_beta=4.0", "student_epochs=30"]  # the no-op change is dropped
    assert out["paired"]["kd+cam"]["cam_beta=4.0"]["val_auc"]["mean"] == pytest.approx(0.15)
    within = out["versus_ce"]["cam_beta=4.0"]["kd+cam"]
    assert within["val_auc"]["mean"] == pytest.approx(0.2) and within["val_auc"]["n"] == 2
    assert within["lesion_share"]["mean"] > out["versus_ce"]["profile's own"]["kd+cam"]["lesion_share"]["mean"] > 0
    assert all("test" not in k for r in out["runs"] for k in r)
    with pytest.raises(ValueError, match="'batch_size' is not the student's"):  # it would retrain the teachers
        pipeline.settings_study(prof, None, [0], ("ce",), [{"cam_beta": 2.0, "batch_size": 4}])
