"""Stage 5: the kit's results beside the paper's, written to ``results/<profile>/results.json``.

Like ``pipeline`` (whose machinery it uses) this module sits on top of the others. What
it measures, each a function the notebook calls in turn and :func:`collect` calls all
at once:

- :func:`test_metrics` — every teacher and student on the **test split**, per data set
  and pooled, at the threshold chosen on validation (Youden), with bootstrap CIs;
- :func:`who_operating_point` — the same models at the threshold that reaches 90 %
  sensitivity **on validation**, against the WHO target product profile for a TB
  triage test (sensitivity >= 90 % with specificity >= 70 %) on the test split;
- :func:`costs` — parameters, FLOPs, weights size, CPU latency at batch 1 and 32;
- :func:`kfold` — k-fold cross-validation (mean ± sd over the folds);
- :func:`cross_dataset` — trained on one data set, tested on the other;
- :func:`kfold_students` — the students over the same folds, each fold with its own
  teachers (not in the chapters: a teacher run per fold; ``scripts/kfold_students.py``).

The paper reports accuracy only (91.2 % Shenzhen, 85.7 % Montgomery: :data:`PAPER`).
:func:`readme_table` turns ``results.json`` into the README's table (the script
``scripts/results_table.py`` prints it or puts it into README.md).

**What the k-fold and cross-data-set models are.** Both train the student's
architecture with plain cross-entropy (the "ce" student of chapter 04), with the same
recipe as chapter 04 (``pipeline.student_settings``, from ``recipes.STUDENT``). The distilled student needs
teachers, and an honest distilled student per fold needs five teachers per fold that
never saw that fold's held-out images (and, for the cross-data-set test, five teachers
trained on one data set only): six times the training of the whole kit, per fold. The
cheap honest choice is made instead: the folds measure how much the *architecture's*
accuracy moves with the split, the cross-data-set runs how far it carries to another
hospital's X-rays, and the distillation's own effect is measured on the fixed split
(chapter 04's ablation, and :func:`test_metrics` here). In the ``full`` profile the
teachers are cross-validated as well (:func:`default_cv_models`). The costly comparison
exists too, outside the chapters: :func:`kfold_students` (``scripts/kfold_students.py``)
trains each fold's own teachers and compares the students over the same folds, paired.
The folds cover every image of the profile (each is held out exactly once); their
models serve nothing else: no setting of the main pipeline is chosen on them.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from . import data as _data
from . import distill as _distill
from . import metrics as _metrics
from . import models as _models
from . import pipeline as _pipe
from . import parallel as _parallel
from . import reports as _reports
from . import store
from . import weights as _weights
from .config import seed_everything

SCHEMA = "tbkd-results/1"
# The paper's figures (its abstract; the only numbers it publishes): test accuracy.
PAPER = {"shenzhen": 0.912, "montgomery": 0.857}
PAPER_SOURCE = "Ding et al. 2023 (ICIM, doi 10.1109/ICIM58774.2023.00019), abstract: accuracy"
# WHO target product profile for a TB triage test (minimal targets).
WHO_TPP = {"sensitivity": 0.90, "specificity": 0.70}
WHO_RULE = "sens>=0.9"
STUDENT_VARIANTS = ("kd+cam", "ce")
THRESHOLD_FILE = "threshold.json"
# Epochs of the k-fold and cross-data-set models when not given: the profile's student
# epochs, fewer on quick so that chapter 05 adds well under a minute to the quick kit.
CV_EPOCHS = {"quick": 3}


def student_name(variant: str) -> str:
    """The results' name of a student variant: ``"student (kd+cam)"``."""
    return f"student ({variant})"


def is_student(name: str) -> bool:
    return name.startswith("student (")


def _variant(name: str) -> str:
    return re.match(r"^student \((.+)\)$", name).group(1)


# --------------------------------------------------------------------------- the models

def model_specs(profile, students: Sequence[str] = STUDENT_VARIANTS) -> dict[str, dict]:
    """``{name: {"arch", "role", "dir"[, "variant"]}}`` for every teacher and student."""
    out = {a: {"arch": a, "role": "teacher", "dir": _pipe.teacher_dir(profile, a)} for a in profile.teachers}
    for v in students:
        out[student_name(v)] = {"arch": profile.student, "role": "student", "variant": v,
                                "dir": _pipe.student_dir(profile, v)}
    return out


def ensure_models(profile, prep: _data.Prepared, students: Sequence[str] = STUDENT_VARIANTS,
                  progress: bool = False) -> dict[str, dict]:
    """:func:`model_specs`, training (through the pipeline) whatever is not finished yet."""
    specs = model_specs(profile, students)
    for name, s in specs.items():
        if (s["dir"] / "done.json").is_file() and (s["dir"] / "best.pt").is_file():
            continue
        if s["role"] == "teacher":
            _pipe.train_teacher(profile, s["arch"], prep, progress=progress)
        else:
            _pipe.train_student(profile, s["variant"], prep, progress=progress)
    return specs


def all_predictions(profile, prep: _data.Prepared, specs: dict[str, dict]) -> dict[str, dict]:
    """Each model's probabilities on the validation and test splits (cached beside it)."""
    return {name: _pipe.predictions(profile, s["dir"], s["arch"], prep) for name, s in specs.items()}


# --------------------------------------------------------------------------- thresholds

def save_threshold(model_dir: str | Path, preds: dict, rule: str = "youden") -> dict:
    """Choose a model's decision threshold on its **validation** predictions and save it
    as ``<model_dir>/threshold.json`` (what ``tbkd predict`` applies)."""
    model_dir = Path(model_dir)
    val = preds["val"]
    thr = _metrics.choose_threshold(np.array(val["labels"]), np.array(val["probs"]), rule=rule)
    info = {"threshold": round(float(thr), 6), "rule": rule, "chosen_on": "validation split, data sets pooled",
            "n_val": len(val["labels"]), "checkpoint_sha256": store.file_sha256(model_dir / "best.pt")}
    store.write_json(model_dir / THRESHOLD_FILE, info)
    return info


def read_threshold(checkpoint: str | Path) -> dict | None:
    """The saved decision threshold of a checkpoint, or None.

    ``threshold.json`` beside the checkpoint if it was made for this very file; else
    Youden's threshold from the validation predictions cached beside it
    (``predictions.json``, same check); else None.
    """
    checkpoint = Path(checkpoint)
    sha = store.file_sha256(checkpoint)
    path = checkpoint.parent / THRESHOLD_FILE
    if path.is_file():
        try:
            info = store.read_json(path)
        except ValueError:
            info = {}
        if info.get("checkpoint_sha256") == sha and "threshold" in info:
            return info
    cached = checkpoint.parent / "predictions.json"
    if cached.is_file():
        try:
            pred = store.read_json(cached)
        except ValueError:
            return None
        if pred.get("key", {}).get("checkpoint_sha256") == sha and "val" in pred.get("parts", {}):
            val = pred["parts"]["val"]
            if len(set(val["labels"])) == 2:
                thr = _metrics.choose_threshold(np.array(val["labels"]), np.array(val["probs"]))
                return {"threshold": round(float(thr), 6), "rule": "youden",
                        "chosen_on": "validation split, data sets pooled", "n_val": len(val["labels"]),
                        "checkpoint_sha256": sha}
    return None


# --------------------------------------------------------------------------- test split, WHO

def test_metrics(preds: dict[str, dict], n_boot: int = 1000, seed: int = 0,
                 rule: str = "youden") -> dict[str, list[dict]]:
    """``{model: pipeline.evaluate rows}``: test metrics with CIs per data set and pooled."""
    return {name: _pipe.evaluate(p, rule=rule, n_boot=n_boot, seed=seed) for name, p in preds.items()}


def who_operating_point(preds: dict[str, dict], n_boot: int = 1000, seed: int = 0,
                        target: dict = WHO_TPP, rule: str = WHO_RULE) -> dict[str, list[dict]]:
    """Each model at the threshold that reaches the target sensitivity **on validation**,
    measured on the test split: rows of ``pipeline.evaluate`` plus ``meets`` (both point
    estimates reach the targets) and ``meets_ci`` (both CIs' lower bounds do)."""
    out = {}
    for name, p in preds.items():
        rows = _pipe.evaluate(p, rule=rule, n_boot=n_boot, seed=seed)
        for r in rows:
            r["meets"] = bool(_ge(r["sensitivity"], target["sensitivity"]) and _ge(r["specificity"], target["specificity"]))
            r["meets_ci"] = bool(_ge(r["sensitivity_lo"], target["sensitivity"])
                                 and _ge(r["specificity_lo"], target["specificity"]))
        out[name] = rows
    return out


def _ge(v, target) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and v >= target - 1e-9


# --------------------------------------------------------------------------- cost

def costs(profile, specs: dict[str, dict], repeats: int = 10, repeats_b32: int = 2) -> dict[str, dict]:
    """Per model: input size, parameters, FLOPs, weights (MB of float32 parameters), the
    checkpoint file's size (MB) and the median CPU latency (ms) at batch 1 and 32."""
    out = {}
    for name, s in specs.items():
        ckpt = s["dir"] / "best.pt"
        model = _pipe.load_classifier(ckpt)
        size = profile.size_for(s["arch"])
        c = _pipe.cost(model, size, repeats=repeats)
        b32 = _models.cpu_latency(model, size, batch=32, repeats=repeats_b32, warmup=1)
        out[name] = {"size": size, **c, "latency_ms_b32": round(b32 * 1000, 2),
                     "file_mb": round(ckpt.stat().st_size / 2**20, 2)}
    return out


# --------------------------------------------------------------------------- k-fold, cross-data-set

def cv_epochs(profile, epochs: int | None = None) -> int:
    return int(epochs or CV_EPOCHS.get(profile.name) or profile.student_epochs)


def default_cv_models(profile) -> tuple[str, ...]:
    """What is cross-validated: the student (CE) always; every teacher too in ``full``."""
    student = student_name("ce")
    return (*profile.teachers, student) if profile.name == "full" else (student,)


def _sub_prep(prep: _data.Prepared, path: Path, train, val, test, **about) -> _data.Prepared:
    """``prep`` with another split (saved as ``path``, which the trained models' settings name)."""
    split = _data.Split(train=sorted(train), val=sorted(val), test=sorted(test), seed=prep.split.seed,
                        fractions=prep.split.fractions)
    store.write_json(path, {"train": split.train, "val": split.val, "test": split.test, "seed": split.seed,
                            "main_split_sha256": store.file_sha256(prep.split_path), **about})
    return _data.Prepared(root=prep.root, records=prep.records, split=split, split_path=path)


def _train_one(profile, sub: _data.Prepared, name: str, ckpt_dir: Path, epochs: int, progress: bool,
               extra: dict, on_epoch_end=None):
    """Train model ``name`` (a teacher's arch or ``student (ce)``) on ``sub``'s split
    (``on_epoch_end``: ``train.fit``'s)."""
    if is_student(name):
        if _variant(name) != "ce":
            raise ValueError(f"{name}: only the CE student is cross-validated (see the module doc)")
        arch, settings = profile.student, _pipe.student_settings(profile, epochs)
        extra = {"variant": "ce", **extra}
    else:
        arch = name
        settings = _pipe.teacher_settings(profile, arch, epochs)
    model = _pipe.new_model(profile, arch)
    _pipe._fit(profile, sub, arch, ckpt_dir, settings, progress, model=model, extra=extra, on_epoch_end=on_epoch_end)
    return arch


def fold_splits(profile, prep: _data.Prepared, k: int | None = None) -> list[tuple[int, _data.Split, list[str]]]:
    """The k folds every k-fold run of the profile shares: ``(i, inner split, held-out keys)``
    for fold ``i`` = 1..k. The held-out images are the fold's test part (``data.kfold_splits``,
    stratified by data set and label, seeded); the rest is split again into train and
    validation in the main split's proportions (stratified, seeded by ``profile.seed + i``)."""
    k = int(k or profile.kfold)
    by_key = {r.key: r for r in prep.records}
    tr, va, _ = profile.split_fractions
    val_share = va / (tr + va)
    out = []
    for i, (rest, held) in enumerate(_data.kfold_splits(prep.records, k=k, seed=profile.seed), 1):
        inner = _data.make_split([by_key[key] for key in rest], seed=profile.seed + i,
                                 fractions=(1 - val_share, val_share, 0.0))
        out.append((i, inner, held))
    return out


def kfold(profile, prep: _data.Prepared, models: Sequence[str] | None = None, k: int | None = None,
          epochs: int | None = None, progress: bool = False) -> dict:
    """Stratified k-fold cross-validation (``data.kfold_splits`` over every image).

    For each fold: the held-out images are that fold's test part; the rest is split again
    into train and validation in the main split's proportions (stratified, seeded); the
    model is trained on the train part with the kit's recipe, its threshold chosen on the
    validation part (Youden), and it is measured on the held-out images. Checkpoints:
    ``artifacts/<profile>/kfold/<model>/fold<i>/``. Returns ``{"k", "epochs", "models":
    {model: {"folds": [...], "summary": {dataset: {metric: {"mean", "sd", "n"}}}}}}``.
    """
    k = int(k or profile.kfold)
    models = list(models or default_cv_models(profile))
    epochs = cv_epochs(profile, epochs)
    root = Path(profile.artifacts) / "kfold"
    out = {"k": k, "epochs": epochs, "seed": profile.seed, "models": {}}
    folds_of = {name: [] for name in models}  # per model: (fold, inner split, held-out keys, folder, Prepared)
    for name in models:
        for i, inner, held in fold_splits(profile, prep, k):
            fold_dir = root / _slug(name) / f"fold{i}"
            sub = _sub_prep(prep, fold_dir / "split.json", inner.train, inner.val, held, fold=i, k=k)
            folds_of[name].append((i, inner, held, fold_dir, sub))

    def train_args(name, i, fold_dir, sub, show):
        return (profile, sub, name, fold_dir, epochs if is_student(name) else None, show, {"fold": i, "k": k})

    # the students' folds side by side (parallel.run), then loaded below; teachers (full) one at a time
    _parallel.run(profile, [_parallel.Job(f"{name} fold {i}", _train_one, train_args(name, i, d, sub, False),
                                          run_dir=d, epochs=epochs)
                            for name in models if is_student(name) for i, _, _, d, sub in folds_of[name]],
                  progress=progress, desc=f"{k}-fold")
    for name in models:
        runs = []
        for i, inner, held, fold_dir, sub in folds_of[name]:
            arch = _train_one(*train_args(name, i, fold_dir, sub, progress))
            preds = _pipe.predictions(profile, fold_dir, arch, sub)
            rows = _pipe.evaluate(preds, rule="youden", n_boot=0, seed=profile.seed)
            runs.append({"fold": i, "n_train": len(inner.train), "n_val": len(inner.val), "n_test": len(held),
                         "threshold": rows[0]["threshold"],
                         "test": [{k_: r[k_] for k_ in ("dataset", "n", "n_pos", *_metrics.METRICS)} for r in rows]})
        datasets = [r["dataset"] for r in runs[0]["test"]]
        summary = {ds: {m: _metrics.mean_sd([next(r[m] for r in run["test"] if r["dataset"] == ds) for run in runs])
                        for m in _metrics.METRICS} for ds in datasets}
        out["models"][name] = {"folds": runs, "summary": summary}
    return out


#: where the k-fold students' runs live, under the profile's artifacts: one derived run per fold
KFOLD_STUDENTS_DIR = "kfold-students"


def fold_profile(profile, i: int, teachers: Sequence[str] | None = None):
    """Fold ``i``'s distillation run: the profile with its own split, teachers, maps and
    students in ``artifacts/<profile>/kfold-students/fold<i>/`` (``Profile.subrun``), the lung
    extraction shared, and ``teachers`` (default: the profile's) as its teachers."""
    return profile.replace(subrun=f"{KFOLD_STUDENTS_DIR}/fold{int(i)}", teachers=tuple(teachers or profile.teachers))


def kfold_students(profile, prep: _data.Prepared, variants: Sequence[str] = ("ce", "kd+cam"),
                   teachers: Sequence[str] | None = None, k: int | None = None, folds: Sequence[int] | None = None,
                   reference: str = "ce", on_fold=None, progress: bool = False) -> dict:
    """The students compared over the k folds, each fold with **its own teachers**.

    A distilled student measured on a fold's held-out images must learn from teachers that
    never saw them. So every fold is a whole run of chapters 02 to 04 (:func:`fold_profile`)
    on :func:`fold_splits`' fold (the folds of :func:`kfold`): ``teachers`` (default: the
    profile's five; fewer cost less, and the guide is then chosen among them) are trained on
    the fold's train part, the guide is chosen by the profile's rule on the fold's validation
    part, and every variant of ``variants`` is trained with the profile's seed and measured on
    the held-out part like chapter 04's students (``pipeline.student_seeds``: threshold chosen
    on validation). The variants are paired by fold. The U-Net is the profile's, trained once
    on the main split's training masks: it saw lung outlines of some held-out images, never
    their labels.

    ``folds`` runs a subset (1-based); ``on_fold`` is called with the summary so far after each
    fold. Every run is cached in its fold's folder, so a stopped call resumes. Returns ``{"k",
    "variants", "reference", "teachers", "guide_mode", "folds": [{"fold", "n_train", "n_val",
    "n_test", "guide", "teachers": {arch: {"val_auc", "val_in_lung", "test"}}, "runs": {variant: row}}],
    "teacher_summary": {arch: {dataset: {metric: mean_sd}}}}`` and
    ``pipeline.summarize_variant_runs``' ``summary``, ``attention`` and ``paired`` over the folds.
    """
    k = int(k or profile.kfold)
    teachers = tuple(teachers or profile.teachers)
    want = None if folds is None else {int(f) for f in folds}
    done = []

    def summary() -> dict:
        out = {"k": k, "variants": list(variants), "reference": reference, "teachers": list(teachers),
               "guide_mode": _pipe.guide_rule(profile), "seed": profile.seed, "folds": list(done)}
        if done:
            out.update(_pipe.summarize_variant_runs({v: [f["runs"][v] for f in done] for v in variants}, reference))
            datasets = list(done[0]["runs"][variants[0]]["test"])
            out["teacher_summary"] = {a: {ds: {m: _metrics.mean_sd([f["teachers"][a]["test"][ds][m] for f in done])
                                               for m in _pipe.SEED_METRICS} for ds in datasets} for a in teachers}
        return out

    for i, inner, held in fold_splits(profile, prep, k):
        if want is not None and i not in want:
            continue
        p = fold_profile(profile, i, teachers)
        sub = _sub_prep(prep, Path(p.artifacts) / "splits.json", inner.train, inner.val, held, fold=i, k=k)
        for arch in teachers:  # one at a time, with the machine's threads (the students then side by side)
            _pipe.train_teacher(p, arch, sub, progress=progress)
        res = _pipe.student_seeds(p, sub, [p.seed], variants=variants, reference=reference, progress=progress)
        teach, att = {}, _pipe.teacher_val_attention(p, sub, teachers)  # what the guide rule read
        for arch in teachers:
            preds = _pipe.predictions(p, _pipe.teacher_dir(p, arch), arch, sub)
            rows = _pipe.evaluate(preds, rule="youden", n_boot=0, seed=p.seed)
            teach[arch] = {"val_auc": round(_pipe.val_auc(preds), 4), "val_in_lung": att[arch],
                           "test": {r["dataset"]: {m: r[m] for m in _pipe.SEED_METRICS} for r in rows}}
        done.append({"fold": i, "n_train": len(inner.train), "n_val": len(inner.val), "n_test": len(held),
                     "guide": res["guide"], "teachers": teach, "runs": {v: res["runs"][v][0] for v in variants}})
        if on_fold is not None:
            on_fold(summary())
    return summary()


def cross_dataset(profile, prep: _data.Prepared, n_boot: int = 1000, epochs: int | None = None,
                  progress: bool = False) -> dict:
    """Train on one data set, test on the other (each way round).

    The student's architecture (CE, chapter 04's recipe) learns on the source set's train
    part, chooses its best epoch and threshold (Youden) on the source's validation part,
    and is measured on the source's test part (in-domain, for comparison) and on
    **every** image of the other set, none of which it saw. Checkpoints:
    ``artifacts/<profile>/cross/<source>/``. Returns ``{"epochs", "runs": [{"train",
    "test", "threshold", "in_domain": row, "cross": row}]}`` (rows as ``pipeline.evaluate``).
    """
    datasets = sorted({r.dataset for r in prep.records})
    epochs = cv_epochs(profile, epochs)
    out = {"epochs": epochs, "model": student_name("ce"), "runs": []}
    if len(datasets) < 2:
        return out
    for src in datasets:
        for dst in datasets:
            if dst == src:
                continue
            train = [r.key for r in prep.part("train", src)]
            val = [r.key for r in prep.part("val", src)]
            test = [r.key for r in prep.part("test", src)] + [r.key for r in prep.records if r.dataset == dst]
            d = Path(profile.artifacts) / "cross" / f"{src}_to_{dst}"
            sub = _sub_prep(prep, d / "split.json", train, val, test, train_dataset=src, test_dataset=dst)
            arch = _train_one(profile, sub, student_name("ce"), d, epochs, progress,
                              {"cross": f"{src}->{dst}"})
            preds = _pipe.predictions(profile, d, arch, sub)
            rows = {r["dataset"]: r for r in _pipe.evaluate(preds, rule="youden", n_boot=n_boot, seed=profile.seed,
                                                              datasets=[src, dst])}
            out["runs"].append({"train": src, "test": dst, "n_train": len(train), "n_val": len(val),
                                "threshold": rows[src]["threshold"], "in_domain": rows[src], "cross": rows[dst]})
    return out


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9+_-]+", "_", name).strip("_")


# --------------------------------------------------------------------------- the paper

def verdict(value, lo, hi, paper: float) -> str:
    """``"beats"`` (the CI lies above the paper's figure), ``"matches"`` (it contains it),
    ``"misses"`` (it lies below); ``"n/a"`` without a value."""
    if value is None:
        return "n/a"
    lo = value if lo is None else lo
    hi = value if hi is None else hi
    if lo > paper:
        return "beats"
    if hi < paper:
        return "misses"
    return "matches"


def _row(rows: list[dict], dataset: str) -> dict | None:
    return next((r for r in rows if r["dataset"] == dataset), None)


def paper_comparison(test: dict[str, list[dict]], model: str = student_name("kd+cam")) -> list[dict]:
    """Per data set of the paper: its accuracy, ``model``'s test accuracy with CI, the verdict,
    and the best teacher's accuracy (by test accuracy on that set, for comparison only)."""
    out = []
    for ds, paper in PAPER.items():
        r = _row(test.get(model, []), ds)
        if r is None:
            continue
        teachers = {m: _row(rows, ds) for m, rows in test.items() if not is_student(m)}
        teachers = {m: t for m, t in teachers.items() if t is not None and t["accuracy"] is not None}
        best = max(teachers, key=lambda m: (teachers[m]["accuracy"], m)) if teachers else None
        out.append({"dataset": ds, "paper": paper, "model": model, "accuracy": r["accuracy"],
                    "accuracy_lo": r["accuracy_lo"], "accuracy_hi": r["accuracy_hi"], "n": r["n"],
                    "verdict": verdict(r["accuracy"], r["accuracy_lo"], r["accuracy_hi"], paper),
                    "best_teacher": best,
                    "best_teacher_accuracy": teachers[best]["accuracy"] if best else None,
                    "best_teacher_accuracy_lo": teachers[best]["accuracy_lo"] if best else None,
                    "best_teacher_accuracy_hi": teachers[best]["accuracy_hi"] if best else None})
    return out


def student_vs_teacher(test: dict[str, list[dict]], dataset: str = "shenzhen",
                       model: str = student_name("kd+cam"), tolerance_pp: float = 1.0) -> dict | None:
    """The student's test accuracy against the best teacher's (highest test accuracy) on one
    data set: the gap in percentage points and whether it is within ``tolerance_pp``."""
    r = _row(test.get(model, []), dataset)
    teachers = {m: _row(rows, dataset) for m, rows in test.items() if not is_student(m)}
    teachers = {m: t for m, t in teachers.items() if t is not None and t["accuracy"] is not None}
    if r is None or not teachers:
        return None
    best = max(teachers, key=lambda m: (teachers[m]["accuracy"], m))
    gap = round(100 * (teachers[best]["accuracy"] - r["accuracy"]), 2)
    return {"dataset": dataset, "student": model, "student_accuracy": r["accuracy"], "teacher": best,
            "teacher_accuracy": teachers[best]["accuracy"], "gap_pp": gap, "tolerance_pp": tolerance_pp,
            "within": bool(gap <= tolerance_pp)}


# --------------------------------------------------------------------------- all of it

def assemble(profile, specs: dict[str, dict], preds: dict[str, dict], test: dict, who: dict, cost: dict,
             cv: dict | None, cross: dict | None, n_boot: int, thresholds: dict | None = None,
             attention: dict | None = None, seeds: dict | None = None) -> dict:
    """The ``results.json`` document (see :func:`collect`). ``attention``: where each model
    looks (``pipeline.attention_report``), with the chance levels; ``seeds``: the students
    over seeds, paired (``pipeline.student_seeds``, as chapter 04 saved it)."""
    models = {}
    for name, s in specs.items():
        ckpt = s["dir"] / "best.pt"
        models[name] = {"role": s["role"], "arch": s["arch"], "input_size": profile.size_for(s["arch"]),
                        "weights": _weights.kind_for(profile.weights, s["arch"]),
                        "checkpoint": _rel(ckpt, profile), "weights_sha256": _models.weights_sha256(ckpt),
                        **({"variant": s["variant"]} if "variant" in s else {}),
                        "val_auc": _metrics.summarize(preds[name]["val"]["labels"], preds[name]["val"]["probs"],
                                                      n_boot=0)["auc"],
                        "threshold": (thresholds or {}).get(name, {}).get("threshold")}
    return {
        "schema": SCHEMA, "profile": profile.name, "data": profile.data, "seed": profile.seed,
        "paper": {"accuracy": dict(PAPER), "source": PAPER_SOURCE},
        "settings": {"n_boot": n_boot, "ci_level": 0.95, "threshold_rule": "youden",
                     "threshold_chosen_on": "validation split, data sets pooled",
                     "image_size": profile.image_size, "inception_size": profile.inception_size,
                     "student": profile.student, "pretrained": profile.pretrained,
                     "weights": profile.weights,
                     "split_sha256": store.file_sha256(Path(profile.artifacts) / "splits.json")},
        "model_order": list(specs),  # the JSON file's keys are sorted; this is the reading order
        "models": models,
        "test": test,
        "who": {"target": dict(WHO_TPP), "rule": WHO_RULE, "models": who},
        "cost": cost,
        "kfold": cv,
        "cross": cross,
        "paper_comparison": paper_comparison(test),
        "student_vs_teacher": student_vs_teacher(test),
        "attention": attention,
        "seeds": seeds,
    }


def seeds_from_ablation(profile) -> dict | None:
    """The students over seeds that chapter 04 wrote into ``ablation.json`` (None when it
    has not run, or ran before the comparison existed)."""
    path = Path(profile.results) / "ablation.json"
    return store.read_json(path).get("seeds") if path.is_file() else None


def seed_lines(seeds: dict | None, variant: str = "kd+cam") -> list[str]:
    """Per data set: ``variant``'s test accuracy over seeds (mean ± SD) beside the paper's,
    and its paired difference from the reference student, as chapter 05 prints them."""
    if not seeds:
        return ["no students over seeds in ablation.json: run chapter 04 first"]
    n, ref, out = len(seeds["seeds"]), seeds["reference"], []
    for ds, paper in PAPER.items():
        sp = seeds["summary"].get(variant, {}).get(ds, {}).get("accuracy")
        if not sp or sp.get("mean") is None:
            continue
        d = seeds["paired"].get(variant, {}).get("test", {}).get(ds, {}).get("accuracy", {})
        diff = "n/a" if d.get("mean") is None else f"{100 * d['mean']:+.1f} points" + (
            "" if d.get("lo") is None else f" [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]")
        out.append(f"{ds}: paper {100 * paper:.1f} %; {variant} over {n} seeds {100 * sp['mean']:.1f} ± "
                   f"{100 * (sp['sd'] or 0):.1f} %; paired difference from {ref}: {diff}")
    return out


def _rel(path: Path, profile) -> str:
    try:
        return str(Path(path).relative_to(Path(profile.artifacts)))
    except ValueError:
        return str(path)


def collect(profile, prep: _data.Prepared | None = None, students: Sequence[str] = STUDENT_VARIANTS,
            cv_models: Sequence[str] | None = None, n_boot: int = 1000, latency_repeats: int = 10,
            fold_epochs: int | None = None, progress: bool = False) -> dict:
    """Everything chapter 05 reports, as one JSON-ready dict (models missing from the
    artifacts are trained first). Also saves each model's decision threshold beside its
    checkpoint (:func:`save_threshold`). ``cv_models=()`` skips the k-fold."""
    prep = prep or _data.prepare(profile, progress=progress)
    seed_everything(profile.seed)
    specs = ensure_models(profile, prep, students, progress)
    preds = all_predictions(profile, prep, specs)
    thresholds = {name: save_threshold(specs[name]["dir"], p) for name, p in preds.items()}
    test = test_metrics(preds, n_boot, profile.seed)
    who = who_operating_point(preds, n_boot, profile.seed)
    cost = costs(profile, specs, repeats=latency_repeats)
    cv = kfold(profile, prep, cv_models, epochs=fold_epochs, progress=progress) if cv_models != () else None
    cross = cross_dataset(profile, prep, n_boot, epochs=fold_epochs, progress=progress)
    loaded = {name: (_pipe.load_classifier(s["dir"] / "best.pt"), s["arch"]) for name, s in specs.items()}
    attention = _pipe.attention_report(profile, prep, loaded, n_boot=n_boot)
    return assemble(profile, specs, preds, test, who, cost, cv, cross, n_boot, thresholds, attention,
                    seeds_from_ablation(profile))


def results_path(profile) -> Path:
    return Path(profile.results) / "results.json"


# Wall-clock measurements: they change with the machine and with what else runs on it,
# so they live in ``timings.json`` beside ``results.json``, which then holds only what the
# same profile and seed give again on the same machine (tested: tests/test_determinism.py).
TIMING_KEYS = ("latency_ms_b1", "latency_ms_b32")
TIMINGS_FILE = "timings.json"
TEACHER_SEEDS_FILE = "teacher_seeds.json"  # scripts/teacher_seeds.py, beside results.json
KFOLD_STUDENTS_FILE = "kfold_students.json"  # scripts/kfold_students.py, beside results.json


def split_timings(results: dict) -> tuple[dict, dict]:
    """``(results without wall-clock figures, those figures)``: the inverse of :func:`merge_timings`.
    The day of the run goes with the timings (``written``), so that ``results.json`` stays
    byte-identical between two runs of the same code."""
    import copy
    import datetime

    results = copy.deepcopy(results)
    timings = {"cost": {}, "written": datetime.date.today().isoformat()}
    for name, c in (results.get("cost") or {}).items():
        timings["cost"][name] = {k: c.pop(k) for k in TIMING_KEYS if k in c}
    return results, timings


def merge_timings(results: dict, timings: dict) -> dict:
    for name, t in (timings.get("cost") or {}).items():
        results.setdefault("cost", {}).setdefault(name, {}).update(t)
    return results


def write(results: dict, profile) -> Path:
    """``results/<profile>/results.json`` (atomically), with the latencies in ``timings.json``."""
    stable, timings = split_timings(results)
    store.write_json(results_path(profile).with_name(TIMINGS_FILE), timings)
    return store.write_json(results_path(profile), stable)


def load(profile_or_path) -> dict:
    """A written ``results.json`` (a profile, or the file's path)."""
    path = results_path(profile_or_path) if hasattr(profile_or_path, "results") else Path(profile_or_path)
    if not path.is_file():
        raise _data.DataError(f"{path}: no results here (run notebook 05 first)")
    res = store.read_json(path)
    if res.get("schema") != SCHEMA:
        raise _data.DataError(f"{path}: not a tbkd results file (schema {res.get('schema')!r})")
    timings = path.with_name(TIMINGS_FILE)
    return merge_timings(res, store.read_json(timings)) if timings.is_file() else res


# --------------------------------------------------------------------------- tables

def _pct(v, digits: int = 1) -> str:
    return "n/a" if v is None else f"{100 * v:.{digits}f} %"


def _pct_ci(v, lo, hi) -> str:
    if v is None:
        return "n/a"
    if lo is None or hi is None:
        return _pct(v)
    return f"{100 * v:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"


def comparison_table(results: dict, teacher_seeds: dict | None = None):
    """The paper against the kit, one row per data set (a DataFrame of strings); with
    ``teacher_seeds`` (``scripts/teacher_seeds.py``'s file), the best teacher's accuracy over
    its training seeds beside its one run."""
    import pandas as pd

    rows = []
    cv = (results.get("kfold") or {}).get("models", {}).get(student_name("ce"))
    cross = {r["test"]: r for r in (results.get("cross") or {}).get("runs", [])}
    for c in results["paper_comparison"]:
        ds = c["dataset"]
        row = {"data set": ds, "paper": _pct(c["paper"]),
               "weights": results["settings"].get("weights", "imagenet" if results["settings"].get("pretrained")
                                                  else "random"),
               f"{c['model']}, test split": _pct_ci(c["accuracy"], c["accuracy_lo"], c["accuracy_hi"]),
               "verdict": c["verdict"],
               "best teacher, test split": (f"{c['best_teacher']} " + _pct_ci(c["best_teacher_accuracy"],
                                            c["best_teacher_accuracy_lo"], c["best_teacher_accuracy_hi"])
                                            if c["best_teacher"] else "n/a")}
        if teacher_seeds:
            sp = teacher_seeds["summary"].get(c["best_teacher"], {}).get(ds, {}).get("accuracy", {})
            row[f"that teacher, {len(teacher_seeds['seeds'])} seeds"] = _reports.format_spread(sp, True)
        seeds = results.get("seeds")
        if seeds and ds in seeds["summary"].get("kd+cam", {}):
            n = len(seeds["seeds"])
            sp = seeds["summary"]["kd+cam"][ds]["accuracy"]
            row[f"{c['model']}, {n} seeds"] = (f"{100 * sp['mean']:.1f} ± {100 * (sp['sd'] or 0):.1f} %"
                                               if sp.get("mean") is not None else "n/a")
            d = seeds["paired"].get("kd+cam", {}).get("test", {}).get(ds, {}).get("accuracy", {})
            row[f"kd+cam − ce, {n} paired seeds"] = (
                "n/a" if d.get("mean") is None else f"{100 * d['mean']:+.1f} pt" +
                ("" if d.get("lo") is None else f" [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"))
        if cv is not None:
            s = cv["summary"].get(ds, {}).get("accuracy", {})
            row[f"{student_name('ce')}, {results['kfold']['k']}-fold CV"] = (
                "n/a" if s.get("mean") is None else
                f"{100 * s['mean']:.1f} ± {100 * (s['sd'] or 0):.1f} %")
        if ds in cross:
            r = cross[ds]["cross"]
            row["trained on the other set"] = _pct_ci(r["accuracy"], r["accuracy_lo"], r["accuracy_hi"])
        rows.append(row)
    return pd.DataFrame(rows).set_index("data set")


def _variants_table(block: dict) -> list[str]:
    """The students' rows (markdown) of a comparison over paired runs (seeds or folds):
    :func:`pipeline.summarize_variant_runs`' ``summary``, ``attention`` and ``paired`` with the
    block's ``variants`` and ``reference``."""
    ref = block["reference"]
    sets = [ds for ds in PAPER if any(ds in block["summary"].get(v, {}) for v in block["variants"])]
    head = ["student"] + [f"{ds.capitalize()} {m}" for ds in sets for m in ("accuracy", "AUC")] + [
        "in-lung share", f"accuracy − {ref} ({sets[0].capitalize()})", f"in-lung − {ref}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in block["variants"]:
        summ, pair = block["summary"].get(v, {}), block["paired"].get(v, {})
        cells = [v]
        for ds in sets:
            cells += [_reports.format_spread(summ.get(ds, {}).get("accuracy") or {}, True),
                      _reports.format_spread(summ.get(ds, {}).get("auc") or {}, False)]
        cells.append(_reports.format_spread(block["attention"].get(v, {}).get("in_lung") or {}, False))
        cells.append(_reports.format_diff(pair.get("test", {}).get(sets[0], {}).get("accuracy") or {}, True)
                     if v != ref else "—")
        cells.append(_reports.format_diff(pair.get("attention", {}).get("in_lung") or {}, False) if v != ref else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _uniform_in_lung(results: dict, end: str = ".") -> str:
    """`` (a uniform map: 0.41)`` and ``end``: the in-lung share of chance, when ``results`` has it."""
    chance = (results.get("attention") or {}).get("chance", {}).get("in_lung")
    return (f" (a uniform map: {chance:.2f})" if chance is not None else "") + end


def readme_seeds_table(results: dict) -> str | None:
    """The students over seeds (markdown): per variant, the mean ± SD of the test accuracy
    and AUC per data set and of the in-lung share of its maps, and the paired difference
    from the reference student with its t-interval. ``None`` without seeds."""
    seeds = results.get("seeds")
    if not seeds:
        return None
    note = (f"Students over {len(seeds['seeds'])} seeds {seeds['seeds']} (mean ± SD; same split, teachers and "
            f"guide {seeds['guide']}; the teachers {seeds['teachers']}); differences paired by seed with their "
            "95 % t-interval; in-lung share: the part of a student's Grad-CAM map that falls inside the lungs "
            "on the pooled test images" + _uniform_in_lung(results))
    return "\n".join(_variants_table(seeds)) + "\n\n" + note


def readme_folds_table(kfold_students: dict, results: dict | None = None) -> str | None:
    """The students over the k folds, each fold with its own teachers (markdown; the file
    ``scripts/kfold_students.py`` writes): per variant, the mean ± SD over the folds run so
    far and the paired difference from the reference, by fold. ``None`` without a fold."""
    ks = kfold_students
    folds = ks.get("folds") or []
    if not folds or not ks.get("summary"):
        return None
    n, k = len(folds), ks["k"]
    which = ", ".join(str(f["fold"]) for f in folds)
    guides = sorted({f["guide"] for f in folds})
    ts = ks["teacher_summary"]
    first = next(ds for ds in (*PAPER, "all") if ds in ts[ks["teachers"][0]])
    teach = "; ".join(f"{a} " + _reports.format_spread(ts[a][first]["auc"], False) for a in ks["teachers"])
    maps = [f["teachers"].get(f["guide"].split(_distill.GUIDE_SEP)[0], {}).get("val_in_lung") for f in folds]
    guide_att = ("" if None in maps else "; the in-lung share of the guide's maps on the fold's validation images: "
                 + ", ".join(f"{m:.2f}" for m in maps) + _uniform_in_lung(results or {}, end=""))
    note = (f"Students over {'all ' if n == k else ''}{n} of the {k} folds ({which}"
            + ("" if n == k else "; the others not run yet") + ") of `scripts/kfold_students.py` "
            f"(`results/{ks['profile']}/kfold_students.json`): on each fold its own teachers "
            f"({', '.join(ks['teachers'])}), trained on the fold's train part, so that no guide saw the fold's "
            f"held-out images; the guide chosen on the fold's validation part ({' / '.join(guides)}){guide_att}; every "
            f"student trained with seed {ks['seed']}; mean ± SD over the folds, differences paired by fold with "
            "their 95 % t-interval; the folds are chapter 05's. Held-out images a fold: "
            + ", ".join(str(f["n_test"]) for f in folds)
            + f". The fold teachers' test AUC ({first.capitalize()}), mean ± SD: {teach}. In-lung share: the part "
            "of a student's Grad-CAM map inside the lungs on the fold's held-out images" + _uniform_in_lung(results or {}))
    return "\n".join(_variants_table(ks)) + "\n\n" + note


def teachers_line(results: dict) -> str | None:
    """One line: each teacher's test AUC per data set, from ``results['test']``."""
    test, order = results.get("test") or {}, results.get("model_order") or []
    parts = []
    for name in order:
        if name.startswith("student") or name not in test:
            continue
        by = {r["dataset"]: r for r in test[name]}
        aucs = ", ".join(f"{by[ds]['auc']:.3f}" for ds in PAPER if ds in by)
        parts.append(f"{name} {aucs}")
    if not parts:
        return None
    return ("Teachers, test AUC (" + ", ".join(ds.capitalize() for ds in PAPER) + "), one run each: "
            + "; ".join(parts) + ".")


def _same_teachers(teacher_seeds: dict, results: dict | None) -> bool | None:
    """Whether the first seed's rows of ``teacher_seeds`` are the teachers of ``results``
    (the same test AUC on every data set) or another draw; None when either lacks the figures."""
    test = (results or {}).get("test") or {}
    runs = teacher_seeds.get("runs") or {}
    if not all(test.get(a) and runs.get(a) for a in teacher_seeds["teachers"]):
        return None
    for a in teacher_seeds["teachers"]:
        by = {r["dataset"]: r["auc"] for r in test[a]}
        if any(by.get(ds) != row["auc"] for ds, row in runs[a][0]["test"].items()):
            return False
    return True


def teacher_seeds_line(teacher_seeds: dict, profile_name: str, results: dict | None = None) -> str:
    """One line: each teacher's test AUC per data set over its training seeds (mean ± SD),
    and which teacher was the best on validation with each seed. With ``results`` (the run
    the README shows), says whether the first seed's teachers are that run's."""
    ts, n = teacher_seeds, len(teacher_seeds["seeds"])
    parts = [f"{a} " + ", ".join(_reports.format_spread(ts["summary"][a][ds]["auc"], False)
                                 for ds in PAPER if ds in ts["summary"][a]) for a in ts["teachers"]]
    picked = list(ts["best_on_validation"].values())
    best = ", ".join(f"{a} with {picked.count(a)} of {n}" for a in dict.fromkeys(picked))
    same = _same_teachers(ts, results)
    whose = {None: "chapter 02's teachers", True: "this run's chapter 02 teachers",
             False: "an earlier run's chapter 02 teachers, not this run's (another draw of the same seed)"}[same]
    own = (f"; seed {ts['seeds'][0]}: {whose}, read from `{ts['own_seed_from']}`, not retrained"
           if ts.get("own_seed_from") else "")
    return (f"Teachers over {n} training seeds {ts['seeds']} on the same split (`scripts/teacher_seeds.py`, "
            f"`results/{profile_name}/teacher_seeds.json`{own}), test AUC ("
            + ", ".join(ds.capitalize() for ds in PAPER) + "), mean ± SD: " + "; ".join(parts)
            + f". Best on validation: {best}.")


def reproduce_command(profile_name: str, data: str) -> str:
    """The command that writes a profile's ``results.json``."""
    return f"make reproduce PROFILE={profile_name}" + (" TBKD_DATA_DIR=..." if data == "real" else "")


def readme_table(results: dict, written: str | None = None, teacher_seeds: dict | None = None,
                 kfold_students: dict | None = None) -> str:
    """The README's results block (markdown), made from ``results.json`` (``written``: the
    date the run wrote it, e.g. the file's modification date) and, when given, the teachers
    over training seeds (``teacher_seeds``, the file ``scripts/teacher_seeds.py`` writes) and
    the students over folds (``kfold_students``, the file ``scripts/kfold_students.py`` writes)."""
    t = comparison_table(results, teacher_seeds)
    head = ["data set", *t.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for ds, row in t.iterrows():
        lines.append("| " + " | ".join([str(ds).capitalize(), *map(str, row.values)]) + " |")
    prof = results["profile"]
    notes = [f"Accuracy of the `{prof}` profile ({results['data']} data), from `results/{prof}/results.json` "
             "(written by `notebooks/05_results.ipynb`; this table by `scripts/results_table.py`). "
             f"Brackets: {round(100 * results['settings']['ci_level'])} % bootstrap CI "
             f"({results['settings']['n_boot']} resamples); threshold chosen on the validation split. "
             "Verdict: *beats* — the CI lies above the paper's figure; *matches* — it contains it; "
             "*misses* — it lies below. Best teacher: the teacher with the highest accuracy on that test "
             "set (ties: the name later in the alphabet), for comparison only; the guide is chosen on validation.",
             *([f"Seeds: the kd+cam student trained with {len(results['seeds']['seeds'])} seeds on the same "
                "split and teachers, mean ± SD of its test accuracy (run-to-run spread, beside the bootstrap "
                "interval of one run, which covers only the sampling of test images); kd+cam − ce: the paired "
                "difference from the plain student over the same seeds, with its 95 % t-interval."]
               if results.get("seeds") else []),
             f"Produced by `{reproduce_command(prof, results['data'])}`"
             + (f", run of {written}." if written else ".")]
    sv = results.get("student_vs_teacher")
    if sv:
        notes.append(f"Student against the best teacher on {sv['dataset'].capitalize()}: "
                     f"{_pct(sv['student_accuracy'])} vs {_pct(sv['teacher_accuracy'])} ({sv['teacher']}), "
                     f"a gap of {sv['gap_pp']:+.1f} points (target: within {sv['tolerance_pp']:g}; "
                     + ("met)." if sv["within"] else
                        f"missed by {sv['gap_pp'] - sv['tolerance_pp']:.1f} points)."))
        seeds = results.get("seeds")
        sp = (seeds or {}).get("summary", {}).get("kd+cam", {}).get(sv["dataset"], {}).get("accuracy", {})
        if sp.get("mean") is not None:
            gap = 100 * (sv["teacher_accuracy"] - sp["mean"])
            notes.append(f"Over {len(seeds['seeds'])} seeds the student's mean is {_pct(sp['mean'])} "
                         f"(SD {100 * (sp['sd'] or 0):.1f} points): {abs(gap):.1f} points "
                         f"{'below' if gap > 0 else 'above'} that teacher's one run.")
        tp = ((teacher_seeds or {}).get("summary", {}).get(sv["teacher"], {}).get(sv["dataset"], {})
              .get("accuracy", {}))
        if tp.get("mean") is not None:
            notes.append(f"That teacher over {len(teacher_seeds['seeds'])} training seeds: {_pct(tp['mean'])} "
                         f"(SD {100 * (tp['sd'] or 0):.1f} points).")
    extras = [teachers_line(results), teacher_seeds_line(teacher_seeds, prof, results) if teacher_seeds else None,
              readme_seeds_table(results),
              readme_folds_table(kfold_students, results) if kfold_students else None]
    for extra in extras:
        if extra:
            notes.append(extra)
    cost = results.get("cost", {})
    s_name = student_name("kd+cam")
    if s_name in cost and "densenet121" in cost:
        s, d = cost[s_name], cost["densenet121"]
        notes.append(f"Cost at {s['size']} px: the student has {s['params'] / 1e6:.2f} M parameters "
                     f"({d['params'] / s['params']:.1f}× fewer than DenseNet121) and runs "
                     f"{d['latency_ms_b1'] / s['latency_ms_b1']:.1f}× faster on one CPU image, as chapter 05 "
                     "times the models it trained (benchmarks/bench_latency.py measures the inference path).")
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"


BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def update_readme(readme: str | Path, table: str) -> bool:
    """Replace the text between the results markers of ``readme`` with ``table``.
    Returns False (and changes nothing) when the markers are absent."""
    readme = Path(readme)
    text = readme.read_text()
    i, j = text.find(BEGIN), text.find(END)
    if i < 0 or j < i:
        return False
    new = text[:i + len(BEGIN)] + "\n" + table.rstrip("\n") + "\n" + text[j:]
    if new != text:
        with store.atomic_path(readme) as tmp:
            tmp.write_text(new)
    return True


def who_table(who: dict[str, list[dict]], datasets: Sequence[str] | None = None):
    """The WHO operating points as a DataFrame: threshold, sensitivity and specificity with
    CIs, and whether the targets are met."""
    import pandas as pd

    recs = []
    for m, rows in who.items():
        for r in rows:
            if datasets and r["dataset"] not in datasets:
                continue
            recs.append({"model": m, "dataset": r["dataset"], "threshold": f"{r['threshold']:.3f}",
                         "sensitivity": _reports.format_ci(r["sensitivity"], r["sensitivity_lo"], r["sensitivity_hi"]),
                         "specificity": _reports.format_ci(r["specificity"], r["specificity_lo"], r["specificity_hi"]),
                         "meets WHO": "yes" if r["meets"] else "no",
                         "CI above targets": "yes" if r["meets_ci"] else "no"})
    return pd.DataFrame(recs).set_index(["model", "dataset"])


def kfold_table(cv: dict, metrics: Sequence[str] = ("accuracy", "auc", "sensitivity", "specificity")):
    """Mean ± sd over the folds, per model and data set (a DataFrame of strings)."""
    import pandas as pd

    recs = []
    for m, res in cv["models"].items():
        for ds, s in res["summary"].items():
            recs.append({"model": m, "dataset": ds, **{
                _reports.METRIC_LABELS.get(k, k): ("n/a" if s[k]["mean"] is None else
                                                f"{s[k]['mean']:.2f} ± {s[k]['sd'] or 0:.2f}") for k in metrics}})
    return pd.DataFrame(recs).set_index(["model", "dataset"])


def cross_table(cross: dict, metrics: Sequence[str] = ("accuracy", "auc", "sensitivity", "specificity")):
    """In-domain against cross-data-set test metrics (a DataFrame of strings)."""
    import pandas as pd

    recs = []
    for run in cross["runs"]:
        for kind, label in (("in_domain", f"{run['train']} test split"), ("cross", f"all of {run['test']}")):
            r = run[kind]
            recs.append({"trained on": run["train"], "tested on": label, "n (TB)": f"{r['n']} ({r['n_pos']})",
                         **{_reports.METRIC_LABELS.get(k, k): _reports.format_ci(r[k], r[f"{k}_lo"], r[f"{k}_hi"])
                            for k in metrics}})
    return pd.DataFrame(recs).set_index(["trained on", "tested on"])


__all__ = ["PAPER", "WHO_TPP", "WHO_RULE", "STUDENT_VARIANTS", "student_name", "model_specs", "ensure_models",
           "all_predictions", "save_threshold", "read_threshold", "test_metrics", "who_operating_point", "costs",
           "default_cv_models", "kfold", "cross_dataset", "verdict",
           "paper_comparison", "student_vs_teacher", "assemble", "collect", "write", "load", "readme_table",
           "update_readme", "comparison_table", "teacher_seeds_line", "who_table", "kfold_table", "cross_table"]
