"""The students compared over k folds, each fold with its own teachers (``results.kfold_students``),
on a tiny profile."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from tbkd_helpers import config, data, pipeline, results, segmentation, store

TINY = dict(phantom_counts={"shenzhen": 24, "montgomery": 16}, phantom_size=64, seg_size=32, seg_epochs=1,
            seg_batch_size=8, seg_decoder_channels=(16, 16, 16, 16, 16), image_size=32, inception_size=32,
            seg_extract_size=48, teachers=("resnet18", "densenet121"), teacher_epochs=1,
            student_epochs=1, guide_views=2, batch_size=8, kfold=2, cam_size=8, device="cpu")
FOLD_TEACHERS = ("resnet18",)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("kfold-students")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TBKD_ARTIFACTS", str(base / "artifacts"))
        mp.setenv("TBKD_RESULTS", str(base / "results"))
        prof = config.get_profile("quick", **TINY)
        prep = data.prepare(prof, progress=False)
        pipeline.lungs(prof, prep, progress=False)
        unet = segmentation.seg_dir(prof) / "unet.pt"
        before = unet.stat().st_mtime_ns
        seen = []
        out = results.kfold_students(prof, prep, teachers=FOLD_TEACHERS, on_fold=seen.append)
        yield prof, prep, out, seen, before


def test_each_fold_has_its_own_teachers_that_never_saw_its_held_out_images(run):
    prof, prep, out, _, _ = run
    held = []
    for i in (1, 2):
        fp = results.fold_profile(prof, i, FOLD_TEACHERS)
        assert fp.artifacts == prof.artifacts / "kfold-students" / f"fold{i}"
        split = store.read_json(fp.artifacts / "splits.json")
        tr, va, te = (set(split[p]) for p in ("train", "val", "test"))
        assert not (tr & va or tr & te or va & te) and len(tr | va | te) == len(prep.records)
        held += split["test"]
        # the folds are the k-fold run's (chapter 05's plain-student folds)
        assert split["test"] == sorted(results.fold_splits(prof, prep)[i - 1][2])
        for arch in FOLD_TEACHERS:
            done = store.read_json(pipeline.teacher_dir(fp, arch) / "done.json")
            assert done["settings"]["extra"]["split_sha256"] == store.file_sha256(fp.artifacts / "splits.json")
            assert done["settings"]["n_train"] == len(tr)
    assert sorted(held) == sorted(r.key for r in prep.records)
    # nothing was trained for the main split; densenet121, not asked for, nowhere
    assert not (prof.artifacts / "teachers").exists()
    assert not list(prof.artifacts.rglob("densenet121*"))


def test_the_lung_extraction_is_shared_not_redone(run):
    prof, _, _, _, before = run
    assert (segmentation.seg_dir(prof) / "unet.pt").stat().st_mtime_ns == before
    assert not list((prof.artifacts / "kfold-students").rglob("segmentation"))
    assert segmentation.seg_dir(results.fold_profile(prof, 1)) == segmentation.seg_dir(prof)


def test_variants_are_paired_by_fold_and_summed_up(run):
    _, _, out, seen, _ = run
    assert [f["fold"] for f in out["folds"]] == [1, 2] and out["k"] == 2
    assert [len(s["folds"]) for s in seen] == [1, 2] and seen[-1] == out
    assert out["teachers"] == list(FOLD_TEACHERS)
    for f in out["folds"]:
        assert set(f["runs"]) == {"ce", "kd+cam"} and set(f["teachers"]) == set(FOLD_TEACHERS)
        assert f["guide"].split(",")[0] in FOLD_TEACHERS  # chosen among the fold's own teachers
        assert f["n_train"] + f["n_val"] + f["n_test"] == 40
    ce = [f["runs"]["ce"]["test"]["all"]["accuracy"] for f in out["folds"]]
    kc = [f["runs"]["kd+cam"]["test"]["all"]["accuracy"] for f in out["folds"]]
    assert out["summary"]["ce"]["all"]["accuracy"]["mean"] == pytest.approx(np.mean(ce), abs=1e-4)
    diff = out["paired"]["kd+cam"]["test"]["all"]["accuracy"]
    assert diff["n"] == 2 and diff["mean"] == pytest.approx(np.mean(kc) - np.mean(ce), abs=1e-4)
    aucs = [f["teachers"]["resnet18"]["test"]["all"]["auc"] for f in out["folds"]]
    assert out["teacher_summary"]["resnet18"]["all"]["auc"]["mean"] == pytest.approx(np.mean(aucs), abs=1e-4)


def test_a_second_call_trains_nothing_and_a_subset_of_folds_runs_alone(run):
    prof, prep, out, _, _ = run
    stamps = {p: p.stat().st_mtime_ns for p in prof.artifacts.rglob("best.pt")}
    assert len(stamps) == 2 * (len(FOLD_TEACHERS) + 2)
    again = results.kfold_students(prof, prep, teachers=FOLD_TEACHERS, folds=[2])
    assert [f["fold"] for f in again["folds"]] == [2] and again["folds"][0] == out["folds"][1]
    assert {p: p.stat().st_mtime_ns for p in prof.artifacts.rglob("best.pt")} == stamps


def test_the_script_writes_its_results_file(run, monkeypatch, capsys):
    prof = run[0]
    spec = importlib.util.spec_from_file_location("kfold_students", config.REPO_ROOT / "scripts" / "kfold_students.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(config, "get_profile", lambda name="quick", data_dir=None, **kw: prof)
    assert mod.main(["--teachers", *FOLD_TEACHERS, "--out", "ks.json"]) == 0
    doc = json.loads((prof.results / "ks.json").read_text())
    assert doc["profile"] == "quick" and [f["fold"] for f in doc["folds"]] == [1, 2]
    assert doc["paired"] == run[2]["paired"]
    printed = capsys.readouterr().out
    assert "fold 1" in printed and "kd+cam" in printed and "ks.json" in printed
