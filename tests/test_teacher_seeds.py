"""Teachers over training seeds on the fixed split (``pipeline.teacher_seeds``), on a tiny profile."""
from __future__ import annotations

import json

import pytest
import torch

from tbkd_helpers import config, data, models, pipeline, reports, store

TINY = dict(phantom_counts={"shenzhen": 24, "montgomery": 16}, phantom_size=64, seg_size=32, seg_epochs=1,
            seg_batch_size=8, seg_decoder_channels=(16, 16, 16, 16, 16), image_size=32, inception_size=32,
            seg_extract_size=48, teachers=("resnet18", "mobilenet_v3_large"), teacher_epochs=1, batch_size=8,
            cam_size=8, device="cpu")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("teacher-seeds")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TBKD_ARTIFACTS", str(base / "artifacts"))
        mp.setenv("TBKD_RESULTS", str(base / "results"))
        prof = config.get_profile("quick", **TINY)
        prep = data.prepare(prof, progress=False)
        pipeline.lungs(prof, prep, progress=False)
        seen = []
        out = pipeline.teacher_seeds(prof, prep, [0, 1], on_run=seen.append)
        yield prof, prep, out, seen


@pytest.fixture
def script(run, monkeypatch):
    """scripts/teacher_seeds.py as a module, its ``--profile`` meaning the tiny one."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("teacher_seeds", config.REPO_ROOT / "scripts" / "teacher_seeds.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(config, "get_profile", lambda name="quick", data_dir=None, **kw: run[0])
    return mod


def _weights(folder):
    return models.load_checkpoint(folder / "best.pt")[0].state_dict()


def test_the_profiles_own_seed_is_chapter_02s_teacher_and_another_seed_has_its_own_folder(run):
    prof, prep, out, _ = run
    own, other = pipeline.teacher_dir(prof, "resnet18"), pipeline.teacher_dir(prof, "resnet18", 1)
    assert own == pipeline.teacher_dir(prof, "resnet18", prof.seed) and other.name == "resnet18-seed1"
    assert (own / "done.json").is_file() and (other / "done.json").is_file()
    # train_teacher with no seed finds the seed-0 run finished: the same weights, nothing retrained
    model, _ = pipeline.train_teacher(prof, "resnet18", prep, progress=False)
    a, b = _weights(own), _weights(other)
    assert all(torch.equal(model.state_dict()[k], a[k]) for k in a)
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())  # another draw


def test_runs_summary_and_paired_differences(run):
    prof, _, out, seen = run
    assert out["seeds"] == [0, 1] and out["teachers"] == ["resnet18", "mobilenet_v3_large"]
    assert [(r["teacher"], r["seed"]) for r in seen] == [("resnet18", 0), ("mobilenet_v3_large", 0),
                                                         ("resnet18", 1), ("mobilenet_v3_large", 1)]
    for arch in out["teachers"]:
        runs = out["runs"][arch]
        assert [r["seed"] for r in runs] == [0, 1]
        aucs = [r["test"]["all"]["auc"] for r in runs]
        s = out["summary"][arch]["all"]["auc"]
        assert s["n"] == 2 and s["mean"] == pytest.approx(sum(aucs) / 2, abs=1e-4)
    # the reference is the teacher the profile's own seed picks on validation, not on test
    first = {a: out["runs"][a][0]["val_auc"] for a in out["teachers"]}
    assert out["reference"] == max(first, key=first.get) == out["best_on_validation"]["0"]
    other = next(a for a in out["teachers"] if a != out["reference"])
    assert set(out["paired"]) == {other}
    d = out["paired"][other]["all"]["auc"]
    diffs = [out["runs"][other][i]["test"]["all"]["auc"] - out["runs"][out["reference"]][i]["test"]["all"]["auc"]
             for i in range(2)]
    assert d["n"] == 2 and d["mean"] == pytest.approx(sum(diffs) / 2, abs=1e-4)
    json.loads(json.dumps(out))  # the whole result is what the script writes as JSON
    table = reports.teacher_seeds_table(out)
    assert list(table.index) == out["teachers"]
    assert table.loc[out["reference"], f"AUC − {out['reference']}"] == "—"
    assert table["best on validation"].str.endswith("of 2").all()


def test_the_script_writes_its_results_file(run, script, capsys):
    prof, _, _, _ = run
    mod = script
    assert mod.main(["--seeds", "2"]) == 0
    written = store.read_json(prof.results / "teacher_seeds.json")
    assert written["seeds"] == [0, 1] and written["profile"] == prof.name
    assert written["chosen_on"] == "validation split" and set(written["runs"]) == set(prof.teachers)
    printed = capsys.readouterr().out
    assert printed.count("kept epoch") == 4 and f"wrote {prof.results / 'teacher_seeds.json'}" in printed


def test_the_own_seed_can_come_from_chapter_02s_teachers_json(run, script, capsys, tmp_path):
    prof, prep, out, _ = run
    mod = script
    # chapter 02's file, as its last cell writes it; resnet18's figures marked so that a retrained
    # teacher could not give them
    entries = {}
    for arch in prof.teachers:
        preds = pipeline.predictions(prof, pipeline.teacher_dir(prof, arch), arch, prep)
        entries[arch] = {"best_epoch": 1, "epochs_run": 1, "val_auc": 0.123 if arch == "resnet18" else 0.9,
                         "test": pipeline.evaluate(preds, n_boot=0)}
    ch02 = store.write_json(tmp_path / "teachers.json", {"profile": prof.name, "seed": prof.seed, "teachers": entries})
    assert mod.main(["--seeds", "2", "--own-seed-from", str(ch02), "--out", "from_ch02.json"]) == 0
    written = store.read_json(prof.results / "from_ch02.json")
    assert written["own_seed_from"] == str(ch02)
    assert written["runs"]["resnet18"][0]["val_auc"] == 0.123 and written["runs"]["resnet18"][0]["seconds"] is None
    assert written["reference"] == "mobilenet_v3_large"  # the own seed's best on validation, as the file says
    assert written["runs"]["resnet18"][1] == out["runs"]["resnet18"][1]  # seed 1: the trained teacher
    assert f"from {ch02}" in capsys.readouterr().out
    other = store.write_json(tmp_path / "other.json", {"profile": "real", "seed": prof.seed, "teachers": entries})
    with pytest.raises(SystemExit, match="other.json: not chapter 02's teachers.json"):
        mod.main(["--seeds", "2", "--own-seed-from", str(other)])


def test_the_epochs_study_pairs_counts_by_seed_and_reads_validation_only(run, monkeypatch):
    prof, prep, _, _ = run
    parts = []
    real_predictions = pipeline.predictions
    monkeypatch.setattr(pipeline, "predictions",
                        lambda *a, **kw: parts.append(kw.get("parts")) or real_predictions(*a, **kw))
    seen = []
    out = pipeline.teacher_epochs_study(prof, prep, "resnet18", [0, 1], [1, 2], on_row=seen.append)
    assert parts and all(p == ("val",) for p in parts)  # the test split is not read
    assert [(r["seed"], r["epochs"]) for r in out["runs"]] == [(0, 1), (0, 2), (1, 1), (1, 2)] and seen == out["runs"]
    assert all(r["best_epoch"] <= r["epochs"] and 0 <= r["val_auc"] <= 1 for r in out["runs"])
    folder = config.artifacts_dir(prof.run_name) / "teachers" / "study" / "resnet18-e2-seed1"
    assert (folder / "done.json").is_file()
    assert out["reference"] == "1 epochs"
    d = out["paired"]["resnet18"]["2 epochs"]["val_auc"]
    by_seed = {(r["seed"], r["epochs"]): r["val_auc"] for r in out["runs"]}
    assert d["n"] == 2 and d["mean"] == pytest.approx(
        sum(by_seed[(s, 2)] - by_seed[(s, 1)] for s in (0, 1)) / 2, abs=1e-3)
    # a second call loads every run: the same rows
    again = pipeline.teacher_epochs_study(prof, prep, "resnet18", [0, 1], [1, 2])
    assert again["runs"] == out["runs"]


def test_the_epochs_script_writes_its_results_file(run, monkeypatch, capsys):
    import importlib.util

    prof, _, _, _ = run
    spec = importlib.util.spec_from_file_location("teacher_epochs_study",
                                                  config.REPO_ROOT / "scripts" / "teacher_epochs_study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(config, "get_profile", lambda name="quick", data_dir=None, **kw: prof)
    with pytest.raises(SystemExit, match="not one of the profile's teachers"):
        mod.main(["--teacher", "vgg16"])
    assert mod.main(["--teacher", "resnet18", "--epochs", "1", "2", "--seeds", "2"]) == 0
    written = store.read_json(prof.results / "teacher_epochs.json")
    assert written["chosen_on"] == "validation split" and written["epochs"] == [1, 2] and len(written["runs"]) == 4
    assert set(written["paired"]["resnet18"]) == {"2 epochs"}
    printed = capsys.readouterr().out
    assert printed.count("kept epoch") == 4 and "resnet18: 2 epochs minus 1 epochs" in printed
