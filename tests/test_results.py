"""Stage 5: results against the paper, WHO operating point, k-fold, cross-data-set, the
README table and its script; figures of the results section."""
from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tbkd_helpers import config, data, metrics, models, pipeline, results, store, viz  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _part(rng, datasets=("montgomery", "shenzhen"), n=30, signal=0.5):
    part = {"keys": [], "datasets": [], "labels": [], "probs": []}
    for ds in datasets:
        y = np.array([0, 1] * (n // 2))
        p = np.clip(signal * y + rng.uniform(0, 1 - signal, len(y)), 0, 1)
        part["keys"] += [f"{ds}/{i}" for i in range(len(y))]
        part["datasets"] += [ds] * len(y)
        part["labels"] += y.tolist()
        part["probs"] += p.round(6).tolist()
    return part


def _preds(seed=0, signal=0.5):
    rng = np.random.default_rng(seed)
    return {"val": _part(rng, n=20, signal=signal), "test": _part(rng, n=40, signal=signal)}


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


# --------------------------------------------------------------------------- the paper

@pytest.mark.parametrize("v, lo, hi, want", [
    (0.95, 0.92, 0.98, "beats"), (0.90, 0.85, 0.95, "matches"), (0.80, 0.70, 0.90, "misses"),
    (0.912, 0.912, 0.912, "matches"), (0.93, None, None, "beats"), (None, None, None, "n/a"),
])
def test_verdict(v, lo, hi, want):
    assert results.verdict(v, lo, hi, 0.912) == want


def _test_rows(signals: dict) -> dict:
    return {m: pipeline.evaluate(_preds(i, s), n_boot=200) for i, (m, s) in enumerate(signals.items())}


def test_paper_comparison_and_student_vs_teacher():
    test = _test_rows({"densenet121": 0.6, "resnet18": 0.3, results.student_name("kd+cam"): 0.45,
                       results.student_name("ce"): 0.9})
    comp = results.paper_comparison(test)
    assert [c["dataset"] for c in comp] == list(results.PAPER)
    for c in comp:
        row = next(r for r in test[results.student_name("kd+cam")] if r["dataset"] == c["dataset"])
        assert c["accuracy"] == row["accuracy"] and c["paper"] == results.PAPER[c["dataset"]]
        assert c["verdict"] == results.verdict(row["accuracy"], row["accuracy_lo"], row["accuracy_hi"], c["paper"])
        # the best teacher is a teacher (never the other student), the highest on that set
        teacher_acc = {m: next(r["accuracy"] for r in rows if r["dataset"] == c["dataset"])
                       for m, rows in test.items() if not results.is_student(m)}
        assert c["best_teacher"] == max(teacher_acc, key=teacher_acc.get)
    sv = results.student_vs_teacher(test)
    assert sv["teacher"] in ("densenet121", "resnet18")
    assert sv["gap_pp"] == pytest.approx(100 * (sv["teacher_accuracy"] - sv["student_accuracy"]), abs=0.01)
    assert sv["within"] == (sv["gap_pp"] <= 1.0)
    assert results.student_vs_teacher({"densenet121": test["densenet121"]}) is None


def test_who_operating_point_threshold_from_validation():
    preds = {"a": _preds(0, 0.6), "b": _preds(1, 0.1)}
    who = results.who_operating_point(preds, n_boot=200)
    for m, rows in who.items():
        val = preds[m]["val"]
        thr = metrics.choose_threshold(val["labels"], val["probs"], rule="sens>=0.9")
        for r in rows:
            assert r["threshold"] == round(thr, 4)
            sel = [i for i, d in enumerate(preds[m]["test"]["datasets"]) if r["dataset"] in (d, "all")]
            y = np.array(preds[m]["test"]["labels"])[sel]
            p = np.array(preds[m]["test"]["probs"])[sel]
            rep = metrics.classification_report(y, p, thr)
            assert r["sensitivity"] == pytest.approx(rep["sensitivity"], abs=1e-4)
            assert r["meets"] == (rep["sensitivity"] >= 0.9 and rep["specificity"] >= 0.7)
            assert not r["meets_ci"] or r["meets"]
    assert any(r["meets"] for r in who["a"]) and not any(r["meets"] for r in who["b"])


def test_thresholds_saved_for_the_checkpoint_only(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    ckpt = models.save_checkpoint(d / "best.pt", models.build_model("resnet18", seed=0))
    preds = _preds(0, 0.5)
    info = results.save_threshold(d, preds)
    want = metrics.choose_threshold(preds["val"]["labels"], preds["val"]["probs"])
    assert info["threshold"] == pytest.approx(want) and results.read_threshold(ckpt)["threshold"] == info["threshold"]
    ckpt.write_bytes(ckpt.read_bytes() + b"x")  # another checkpoint: the saved threshold is not its own
    assert results.read_threshold(ckpt) is None
    store.write_json(d / "predictions.json", {"key": {"checkpoint_sha256": store.file_sha256(ckpt)},
                                              "parts": preds})
    assert results.read_threshold(ckpt)["threshold"] == pytest.approx(want)  # from the cached predictions


# --------------------------------------------------------------------------- the README table

def _results_doc() -> dict:
    test = _test_rows({"densenet121": 0.6, results.student_name("kd+cam"): 0.55})
    cv = {"k": 3, "models": {results.student_name("ce"): {"summary": {
        "shenzhen": {"accuracy": {"mean": 0.81, "sd": 0.03, "n": 3}},
        "montgomery": {"accuracy": {"mean": 0.7, "sd": 0.05, "n": 3}}}}}}
    cross_row = pipeline.evaluate(_preds(5, 0.3), n_boot=100)[0]
    cross = {"runs": [{"train": "montgomery", "test": "shenzhen", "in_domain": cross_row, "cross": cross_row},
                      {"train": "shenzhen", "test": "montgomery", "in_domain": cross_row, "cross": cross_row}]}
    cost = {"densenet121": {"size": 224, "params": 6_955_906, "latency_ms_b1": 120.0},
            results.student_name("kd+cam"): {"size": 224, "params": 1_519_906, "latency_ms_b1": 6.0}}
    return {"schema": results.SCHEMA, "profile": "real", "data": "real",
            "settings": {"ci_level": 0.95, "n_boot": 1000}, "paper_comparison": results.paper_comparison(test),
            "student_vs_teacher": results.student_vs_teacher(test), "kfold": cv, "cross": cross, "cost": cost}


def test_readme_table_from_results_alone():
    doc = _results_doc()
    table = results.readme_table(doc)
    lines = table.splitlines()
    assert lines[0].startswith("| data set | paper |") and set(lines[1]) <= {"|", "-"}
    rows = {ln.split("|")[1].strip(): ln for ln in lines[2:4]}
    assert set(rows) == {"Shenzhen", "Montgomery"}
    assert "91.2 %" in rows["Shenzhen"] and "85.7 %" in rows["Montgomery"]
    for c in doc["paper_comparison"]:
        row = rows[c["dataset"].capitalize()]
        assert f"{100 * c['accuracy']:.1f} % [" in row and f"| {c['verdict']} |" in row
    assert "81.0 ± 3.0 %" in rows["Shenzhen"] and "3-fold CV" in lines[0]
    assert "trained on the other set" in lines[0]
    assert "results/real/results.json" in table and "4.6× fewer" in table
    assert "20.0× faster" in table


def _teacher_seeds_doc(profile: str = "real") -> dict:
    """What scripts/teacher_seeds.py writes, for DenseNet121 and a second teacher, 2 seeds."""
    def spread(mean, sd):
        return {"mean": mean, "sd": sd, "n": 2}
    summ = {"densenet121": {"shenzhen": {"accuracy": spread(0.845, 0.016), "auc": spread(0.93, 0.01)},
                            "montgomery": {"accuracy": spread(0.75, 0.0), "auc": spread(0.81, 0.02)}},
            "resnet18": {"shenzhen": {"accuracy": spread(0.849, 0.0), "auc": spread(0.91, 0.0)},
                         "montgomery": {"accuracy": spread(0.7, 0.05), "auc": spread(0.74, 0.03)}}}
    return {"profile": profile, "seeds": [0, 1], "teachers": ["densenet121", "resnet18"], "summary": summ,
            "best_on_validation": {"0": "densenet121", "1": "resnet18"}, "reference": "densenet121"}


def test_readme_table_gives_the_teachers_over_seeds_when_measured():
    doc, ts = _results_doc(), _teacher_seeds_doc()
    assert "seeds" not in results.readme_table(doc).splitlines()[0]  # without the file: as before
    table = results.readme_table(doc, teacher_seeds=ts)
    lines = table.splitlines()
    head = [c.strip() for c in lines[0].split("|")]
    col = head.index("that teacher, 2 seeds")
    assert head[col - 1] == "best teacher, test split"
    best = {c["dataset"]: c["best_teacher"] for c in doc["paper_comparison"]}
    for ln in lines[2:4]:
        cells = [c.strip() for c in ln.split("|")]
        ds = cells[1].lower()
        want = ts["summary"][best[ds]][ds]["accuracy"]
        assert cells[col] == f"{100 * want['mean']:.1f} ± {100 * want['sd']:.1f} %"
    assert ("Teachers over 2 training seeds [0, 1] on the same split (`scripts/teacher_seeds.py`, "
            "`results/real/teacher_seeds.json`), test AUC (Shenzhen, Montgomery), mean ± SD: "
            "densenet121 0.93 ± 0.01, 0.81 ± 0.02; resnet18 0.91 ± 0.00, 0.74 ± 0.03. Best on validation: "
            "densenet121 with 1 of 2, resnet18 with 1 of 2.") in table
    ts["own_seed_from"] = "results/real/teachers.json"
    assert ("`results/real/teacher_seeds.json`; seed 0: chapter 02's teachers, read from "
            "`results/real/teachers.json`, not retrained), test AUC") in results.readme_table(doc, teacher_seeds=ts)
    # with the run's own test figures the line tells this run's teachers from an earlier run's
    doc["test"] = {a: [{"dataset": ds, "auc": 0.9} for ds in ("shenzhen", "montgomery")] for a in ts["teachers"]}
    ts["runs"] = {a: [{"test": {ds: {"auc": 0.9} for ds in ("shenzhen", "montgomery")}}] for a in ts["teachers"]}
    assert "seed 0: this run's chapter 02 teachers, read from" in results.readme_table(doc, teacher_seeds=ts)
    ts["runs"]["resnet18"][0]["test"]["montgomery"]["auc"] = 0.8
    assert "seed 0: an earlier run's chapter 02 teachers, not this run's" in \
        results.readme_table(doc, teacher_seeds=ts)
    del doc["test"]
    sv = doc["student_vs_teacher"]
    tp = ts["summary"][sv["teacher"]][sv["dataset"]]["accuracy"]
    assert f"That teacher over 2 training seeds: {100 * tp['mean']:.1f} % (SD {100 * tp['sd']:.1f} points)." in table


def _kfold_students_doc(profile: str = "real") -> dict:
    """What scripts/kfold_students.py writes, for folds 1 and 3 of 5 (ce, kd+cam; one fold teacher)."""
    def run(acc, in_lung):
        return {"test": {ds: {m: acc for m in pipeline.SEED_METRICS} for ds in ("shenzhen", "montgomery", "all")},
                "attention": {k: in_lung for k in pipeline.SEED_ATTENTION}}
    runs = {"ce": [run(0.80, 0.36), run(0.84, 0.38)], "kd+cam": [run(0.83, 0.50), run(0.85, 0.49)]}
    folds = [{"fold": f, "n_test": 160, "guide": "densenet121",
              "teachers": {"densenet121": {"val_in_lung": m, "test": {"shenzhen": {"auc": a}}}},
              "runs": {v: r[i] for v, r in runs.items()}} for i, (f, a, m) in enumerate(((1, 0.90, 0.36), (3, 0.94, 0.52)))]
    return {"profile": profile, "k": 5, "variants": ["ce", "kd+cam"], "reference": "ce", "teachers": ["densenet121"],
            "seed": 0, "folds": folds, **pipeline.summarize_variant_runs(runs),
            "teacher_summary": {"densenet121": {"shenzhen": {"auc": metrics.mean_sd([0.90, 0.94])}}}}


def test_readme_table_gives_the_students_over_folds_when_measured():
    doc, ks = _results_doc(), _kfold_students_doc()
    assert "folds" not in results.readme_table(doc)  # without the file: as before
    table = results.readme_table(doc, kfold_students=ks)
    rows = {ln.split("|")[1].strip(): ln for ln in table.splitlines() if ln.startswith("| ce |")
            or ln.startswith("| kd+cam |")}
    assert "| 82.0 ± 2.8 % |" in rows["ce"] and "| 84.0 ± 1.4 % |" in rows["kd+cam"]
    assert "| +2.0 pt [" in rows["kd+cam"] and "| +0.12 [" in rows["kd+cam"]  # paired by fold
    assert ("Students over 2 of the 5 folds (1, 3; the others not run yet) of `scripts/kfold_students.py` "
            "(`results/real/kfold_students.json`): on each fold its own teachers (densenet121)") in table
    assert "The fold teachers' test AUC (Shenzhen), mean ± SD: densenet121 0.92 ± 0.03." in table
    assert "the in-lung share of the guide's maps on the fold's validation images: 0.36, 0.52;" in table


def test_update_readme_between_markers_only(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\n<!-- results:begin -->\nold\n<!-- results:end -->\n\nafter\n")
    assert results.update_readme(readme, "| new | table |\n")
    text = readme.read_text()
    assert "old" not in text and "| new | table |" in text and text.endswith("after\n")
    assert text.startswith("# title\n\n<!-- results:begin -->\n| new")
    results.update_readme(readme, "| new | table |\n")
    assert readme.read_text() == text  # idempotent
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert not results.update_readme(plain, "| x |") and plain.read_text() == "no markers\n"


def test_results_table_script(tmp_path, capsys, monkeypatch):
    path = store.write_json(tmp_path / "results.json", _results_doc())
    readme = tmp_path / "README.md"
    readme.write_text("top\n<!-- results:begin -->\n<!-- results:end -->\n")
    monkeypatch.setattr(sys, "argv", ["results_table.py", "--results", str(path), "--update-readme",
                                      "--readme", str(readme)])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(REPO / "scripts" / "results_table.py"), run_name="__main__")
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("| data set | paper |") and out.strip() in readme.read_text()
    assert "Produced by `make reproduce PROFILE=real TBKD_DATA_DIR=...`, run of 20" in out
    assert "training seeds" not in out
    # the teachers over seeds, read from beside results.json when the script has written them
    store.write_json(tmp_path / "teacher_seeds.json", _teacher_seeds_doc())
    with pytest.raises(SystemExit):
        runpy.run_path(str(REPO / "scripts" / "results_table.py"), run_name="__main__")
    assert "Teachers over 2 training seeds" in capsys.readouterr().out
    store.write_json(tmp_path / "teacher_seeds.json", _teacher_seeds_doc("quick"))  # another profile's
    with pytest.raises(SystemExit):
        runpy.run_path(str(REPO / "scripts" / "results_table.py"), run_name="__main__")
    printed = capsys.readouterr()
    assert "training seeds" not in printed.out and "teacher_seeds.json: written for profile 'quick'" in printed.err
    # the students over folds likewise
    store.write_json(tmp_path / "kfold_students.json", _kfold_students_doc())
    with pytest.raises(SystemExit):
        runpy.run_path(str(REPO / "scripts" / "results_table.py"), run_name="__main__")
    assert "Students over 2 of the 5 folds" in capsys.readouterr().out
    store.write_json(tmp_path / "kfold_students.json", _kfold_students_doc("quick"))
    with pytest.raises(SystemExit):
        runpy.run_path(str(REPO / "scripts" / "results_table.py"), run_name="__main__")
    printed = capsys.readouterr()
    assert "folds" not in printed.out and "kfold_students.json: written for profile 'quick'" in printed.err
    monkeypatch.setattr(sys, "argv", ["results_table.py", "--results", str(tmp_path / "none.json")])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(REPO / "scripts" / "results_table.py"), run_name="__main__")
    assert exit_.value.code == 1 and "none.json" in capsys.readouterr().err


# --------------------------------------------------------------------------- figures

def test_result_figures_draw():
    test = _test_rows({"densenet121": 0.6, "resnet18": 0.3, results.student_name("kd+cam"): 0.45})
    fig = viz.paper_bars(test, results.PAPER)
    ax = fig.axes[0]
    assert len(ax.patches) == 3 * len(results.PAPER)
    assert [t.get_text() for t in ax.get_xticklabels()] == list(results.PAPER)
    who = results.who_operating_point({m: _preds(i, 0.5) for i, m in enumerate(test)}, n_boot=100)
    fig = viz.who_targets(who, results.WHO_TPP)
    assert len(fig.axes[0].get_legend().get_texts()) == 1 + len(test)
    cost = {m: {"params": 1e6 * (i + 1), "latency_ms_b1": 5.0 * (i + 1)} for i, m in enumerate(test)}
    fig = viz.cost_accuracy(cost, test)
    assert fig.axes[0].get_xscale() == "log"
    doc = _results_doc()
    fig = viz.cross_bars(doc["cross"])
    assert len(fig.axes[0].patches) == 4
    fold = {"test": pipeline.evaluate(_preds(2, 0.4), n_boot=0)}
    cv = {"k": 2, "models": {"m": {"folds": [fold, fold], "summary": {
        "shenzhen": {"accuracy": {"mean": 0.8, "sd": 0.0}}}}}}
    fig = viz.kfold_points(cv, datasets=["shenzhen"])
    assert len(fig.axes) == 1


# --------------------------------------------------------------------------- end to end, tiny

TINY = dict(phantom_counts={"shenzhen": 24, "montgomery": 16}, phantom_size=64, seg_size=32, seg_epochs=2,
            seg_batch_size=8, seg_decoder_channels=(16, 16, 16, 16, 16), image_size=32, inception_size=32,
            seg_extract_size=48, teachers=("resnet18",), teacher_epochs=1, student_epochs=1, batch_size=8,
            kfold=2, cam_size=8, device="cpu")


@pytest.mark.slow
def test_collect_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("TBKD_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("TBKD_RESULTS", str(tmp_path / "results"))
    prof = config.get_profile("quick", **TINY)
    prep = data.prepare(prof, progress=False)
    res = results.collect(prof, prep, n_boot=100, latency_repeats=1, fold_epochs=1)
    path = results.write(res, prof)
    assert path == tmp_path / "results" / "quick" / "results.json"
    back = results.load(prof)
    assert back == json.loads(json.dumps(res, default=store._jsonable))

    names = ["resnet18", results.student_name("kd+cam"), results.student_name("ce")]
    assert back["model_order"] == names
    assert set(back["models"]) == set(back["test"]) == set(back["cost"]) == set(back["who"]["models"]) == set(names)
    for m in names:
        assert [r["dataset"] for r in back["test"][m]] == ["montgomery", "shenzhen", "all"]
        assert back["cost"][m]["latency_ms_b32"] > 0 and back["cost"][m]["file_mb"] > 0
        assert all(r["threshold"] == back["who"]["models"][m][0]["threshold"] for r in back["who"]["models"][m])
        ckpt = tmp_path / "artifacts" / "quick" / back["models"][m]["checkpoint"]
        assert results.read_threshold(ckpt)["threshold"] == back["models"][m]["threshold"]

    # k-fold: every image held out exactly once; train, validation and held-out disjoint
    cv = back["kfold"]
    assert cv["k"] == 2 and list(cv["models"]) == [results.student_name("ce")]
    held = []
    for i in (1, 2):
        split = store.read_json(tmp_path / "artifacts" / "quick" / "kfold" / "student_ce" / f"fold{i}" / "split.json")
        tr, va, te = (set(split[p]) for p in ("train", "val", "test"))
        assert not (tr & va or tr & te or va & te) and len(tr | va | te) == len(prep.records)
        held += split["test"]
    assert sorted(held) == sorted(r.key for r in prep.records)
    summ = cv["models"][results.student_name("ce")]["summary"]["all"]["accuracy"]
    accs = [next(r["accuracy"] for r in f["test"] if r["dataset"] == "all")
            for f in cv["models"][results.student_name("ce")]["folds"]]
    assert summ["mean"] == pytest.approx(np.mean(accs), abs=1e-4)
    assert summ["sd"] == pytest.approx(np.std(accs, ddof=1), abs=1e-4)

    # cross-data-set: trained and validated on one set only, tested on all of the other
    runs = {(r["train"], r["test"]): r for r in back["cross"]["runs"]}
    assert set(runs) == {("shenzhen", "montgomery"), ("montgomery", "shenzhen")}
    for (src, dst), run in runs.items():
        split = store.read_json(tmp_path / "artifacts" / "quick" / "cross" / f"{src}_to_{dst}" / "split.json")
        assert all(k.startswith(src + "/") for k in split["train"] + split["val"])
        assert run["cross"]["n"] == sum(r.dataset == dst for r in prep.records)
        assert run["in_domain"]["n"] == len(prep.part("test", src))

    table = results.readme_table(back)
    assert "| Shenzhen |" in table and "| Montgomery |" in table

    # a second run trains nothing: no checkpoint is rewritten
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "artifacts").rglob("best.pt")}
    assert len(stamps) == 3 + 2 + 2
    again = results.collect(prof, prep, n_boot=100, latency_repeats=1, fold_epochs=1)
    assert again["test"] == res["test"] and again["kfold"] == res["kfold"] and again["cross"] == res["cross"]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "artifacts").rglob("best.pt")} == stamps


def test_latencies_live_in_timings_json(tmp_path, monkeypatch):
    """results.json holds what a second run reproduces; wall-clock latencies go beside it."""
    monkeypatch.setenv("TBKD_RESULTS", str(tmp_path))
    prof = config.get_profile("quick")
    doc = _results_doc()
    doc["cost"] = {"densenet121": {"params": 7_000_000, "latency_ms_b1": 12.5, "latency_ms_b32": 300.0},
                   "student": {"params": 1_500_000, "latency_ms_b1": 1.25, "latency_ms_b32": 20.0}}
    path = results.write(doc, prof)
    on_disk = json.loads(path.read_text())
    assert on_disk["cost"] == {"densenet121": {"params": 7_000_000}, "student": {"params": 1_500_000}}
    timings = json.loads((path.parent / "timings.json").read_text())
    assert timings["cost"]["student"] == {"latency_ms_b1": 1.25, "latency_ms_b32": 20.0}
    assert results.load(prof) == json.loads(json.dumps(doc))  # load puts them back
    assert doc["cost"]["student"]["latency_ms_b1"] == 1.25  # the caller's dict is untouched
