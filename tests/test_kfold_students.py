"""The students compared over k folds, each fold with its own teachers (``results.kfold_students``),
on a tiny profile."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json

import numpy as np
import pytest

from tbkd_helpers import config, data, pipeline, results, segmentation, store

TINY = dict(phantom_counts={"shenzhen": 24, "montgomery": 16}, phantom_size=64, seg_size=32, seg_epochs=1,
            seg_batch_size=8, seg_decoder_channels=(16, 16, 16, 16, 16), image_size=32, inception_size=32,
            seg_extract_size=48, teachers=("resnet18", "densenet121"), teacher_epochs=1,
            student_epochs=1, guide_views=2, batch_size=8, kfold=2, cam_size=8, device="cpu")
FOLD_TEACHERS = ("resnet18",)


def _script():
    spec = importlib.util.spec_from_file_location("kfold_students", config.REPO_ROOT / "scripts" / "kfold_students.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The script runs the comparison (its results file is rewritten after each fold); then
    ``results.kfold_students`` is called again, which must train nothing."""
    base = tmp_path_factory.mktemp("kfold-students")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TBKD_ARTIFACTS", str(base / "artifacts"))
        mp.setenv("TBKD_RESULTS", str(base / "results"))
        prof = config.get_profile("quick", **TINY)
        prep = data.prepare(prof, progress=False)
        pipeline.lungs(prof, prep, progress=False)
        unet = segmentation.seg_dir(prof) / "unet.pt"
        before = unet.stat().st_mtime_ns
        mp.setattr(config, "get_profile", lambda name="quick", data_dir=None, **kw: prof)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert _script().main(["--teachers", *FOLD_TEACHERS, "--out", "ks.json"]) == 0
        doc = json.loads((prof.results / "ks.json").read_text())
        stamps = {p: p.stat().st_mtime_ns for p in prof.artifacts.rglob("best.pt")}
        out = results.kfold_students(prof, prep, teachers=FOLD_TEACHERS)
        assert {p: p.stat().st_mtime_ns for p in prof.artifacts.rglob("best.pt")} == stamps
        yield prof, prep, out, doc, printed.getvalue(), before


def test_each_fold_has_its_own_teachers_that_never_saw_its_held_out_images(run):
    prof, prep, _, _, _, _ = run
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
    prof, _, _, _, _, before = run
    assert (segmentation.seg_dir(prof) / "unet.pt").stat().st_mtime_ns == before
    assert not list((prof.artifacts / "kfold-students").rglob("segmentation"))
    assert segmentation.seg_dir(results.fold_profile(prof, 1)) == segmentation.seg_dir(prof)


def test_variants_are_paired_by_fold_and_summed_up(run):
    _, _, out, doc, printed, _ = run
    assert [f["fold"] for f in out["folds"]] == [1, 2] and out["k"] == 2
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


def test_the_script_writes_after_each_fold_and_a_second_call_trains_nothing(run):
    prof, prep, out, doc, printed, _ = run
    # the script's file holds what the (cached) second call returns
    assert doc["profile"] == "quick" and {k: v for k, v in doc.items() if k not in ("profile", "seconds")} == \
        json.loads(json.dumps(out, default=store._jsonable))
    assert printed.index("fold 1 (") < printed.index("fold 2 (") < printed.index("over 2 paired folds")
    assert "ks.json" in printed
    assert len(list(prof.artifacts.rglob("best.pt"))) == 2 * (len(FOLD_TEACHERS) + 2)
    one = results.kfold_students(prof, prep, teachers=FOLD_TEACHERS, folds=[2])
    assert [f["fold"] for f in one["folds"]] == [2] and one["folds"][0] == out["folds"][1]


def test_the_readme_gives_the_folds_as_measured_and_says_which_are_missing(run):
    prof, prep, out, doc, _, _ = run
    table = results.readme_folds_table(doc)
    lines = table.splitlines()
    assert lines[0].startswith("| student | ") and "accuracy − ce" in lines[0]
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[1:-1]] for ln in lines[2:4]}
    assert set(rows) == {"ce", "kd+cam"} and rows["ce"][-2:] == ["—", "—"]
    head = [c.strip() for c in lines[0].split("|")[1:-1]]
    ds = head[1].split()[0].lower()
    acc = doc["summary"]["kd+cam"][ds]["accuracy"]
    assert rows["kd+cam"][1] == f"{100 * acc['mean']:.1f} ± {100 * acc['sd']:.1f} %"
    diff = doc["paired"]["kd+cam"]["test"][ds]["accuracy"]
    assert rows["kd+cam"][head.index(f"accuracy − ce ({ds.capitalize()})")].startswith(f"{100 * diff['mean']:+.1f} pt")
    assert "Students over all 2 of the 2 folds (1, 2) of `scripts/kfold_students.py`" in table
    assert "(resnet18)" in table and "not run yet" not in table
    guide_att = [f["teachers"][f["guide"].split(",")[0]]["val_in_lung"] for f in doc["folds"]]
    assert "guide's maps on the fold's validation images: " + ", ".join(f"{m:.2f}" for m in guide_att) in table
    # a part of the folds: the note says which ran and that the others did not
    part = results.readme_folds_table({"profile": "quick", **results.kfold_students(prof, prep, teachers=FOLD_TEACHERS,
                                                                                  folds=[2])})
    assert "Students over 1 of the 2 folds (2; the others not run yet)" in part
    assert results.readme_folds_table({"profile": "quick", "k": 2, "folds": []}) is None
