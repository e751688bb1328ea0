"""What the chapters show: tables, lines and picks made from the stages' results.

The stages themselves (training, caches, measurements) live in :mod:`pipeline`; this
module only turns what they return into DataFrames, sentences and gallery choices, and
computes nothing that a later stage reads back.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import cam as _cam
from . import metrics as _metrics
from . import pipeline as _pipe
from . import store


METRIC_LABELS = {"accuracy": "accuracy", "auc": "AUC", "sensitivity": "sensitivity",
                 "specificity": "specificity", "precision": "precision", "f1": "F1"}


def _undefined(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def format_ci(value, lo=None, hi=None, digits: int = 2) -> str:
    """``"0.91 [0.86, 0.95]"``: a value with its confidence interval; ``"n/a"`` for an
    undefined value, the value alone when the interval is undefined."""
    if _undefined(value):
        return "n/a"
    text = f"{value:.{digits}f}"
    if _undefined(lo) or _undefined(hi):
        return text
    return f"{text} [{lo:.{digits}f}, {hi:.{digits}f}]"


def metrics_table(results: dict, metrics: Sequence[str] = _metrics.METRICS, digits: int = 2,
                  index_name: str = "model"):
    """``{model: pipeline.evaluate(...) rows}`` as a pandas DataFrame indexed by (model, data set):
    ``n (TB)`` and one column per metric, each ``"value [lo, hi]"``."""
    import pandas as pd

    records = []
    for model, rows in results.items():
        for r in rows:
            rec = {index_name: model, "dataset": r["dataset"], "n (TB)": f"{r['n']} ({r['n_pos']})"}
            rec.update({METRIC_LABELS.get(m, m): format_ci(r.get(m), r.get(f"{m}_lo"), r.get(f"{m}_hi"), digits)
                        for m in metrics})
            records.append(rec)
    return pd.DataFrame(records).set_index([index_name, "dataset"])


def cost_table(costs: dict):
    """``{model: cost(...)}`` (``pipeline.cost``, or chapter 05's ``results.costs`` with the
    checkpoint file and batch 32) as a pandas DataFrame with readable units; the columns
    of batch 32 and of the file appear when every model has them."""
    import pandas as pd

    table = pd.DataFrame.from_dict({m: {"input (px)": c.get("size"), "parameters (M)": round(c["params"] / 1e6, 2),
                                        "GFLOPs": round(c["flops"] / 1e9, 3), "weights (MB)": c["weights_mb"],
                                        "CPU latency, batch 1 (ms)": c["latency_ms_b1"]}
                                    for m, c in costs.items()}, orient="index")
    for key, label in (("file_mb", "checkpoint file (MB)"), ("latency_ms_b32", "CPU latency, batch 32 (ms)")):
        if costs and all(key in c for c in costs.values()):
            table[label] = [costs[m][key] for m in table.index]
    return table


def roc_by_dataset(parts: dict, thresholds: dict | None = None,
                   datasets: Sequence[str] | None = None) -> dict:
    """ROC curves of several models, per data set (and pooled, "all", when there are two
    or more): ``{dataset: {model: roc_points(...) + n_pos, n_neg[, point]}}``.

    ``parts``: ``{model: pipeline.predictions(...)[part]}``; ``thresholds``: ``{model: threshold}``
    adds ``point`` = (false-positive rate, sensitivity) at that threshold.
    """
    names = list(datasets) if datasets else sorted({d for p in parts.values() for d in p["datasets"]})
    out = {}
    for ds in names + (["all"] if len(names) > 1 else []):
        curves = {}
        for model, p in parts.items():
            sel = np.array([d == ds or ds == "all" for d in p["datasets"]], bool)
            y, prob = np.asarray(p["labels"])[sel], np.asarray(p["probs"], float)[sel]
            if len(np.unique(y)) < 2:
                continue
            c = _metrics.roc_points(y, prob)
            c.update(n_pos=int((y == 1).sum()), n_neg=int((y == 0).sum()))
            if thresholds and model in thresholds:
                rep = _metrics.classification_report(y, prob, thresholds[model])
                c["point"] = (1 - rep["specificity"], rep["sensitivity"])
            curves[model] = c
        if curves:
            out[ds] = curves
    return out


def attention_summary(rows: Sequence[dict]) -> list[str]:
    """One line per teacher of :func:`attention_table`: its in-lung share and pointing
    game against the chance row, its ROAD score, and its empty maps."""
    chance = next((r for r in rows if r["teacher"] == "chance"), None)

    def vs(r, key):
        if chance is None or not (np.isfinite(r[key]) and np.isfinite(chance[key])):
            return "n/a"
        return f"{r[key] - chance[key]:+.2f}"

    lines = []
    for r in rows:
        if r["teacher"] == "chance":
            continue
        if r["n_empty"] == r["n_images"]:
            lines.append(f"{r['teacher']:>20}: every map is empty — no pixel argues for TB (its output "
                         f"hardly depends on the image)")
            continue
        road = f"{r['road']:+.3f}" if np.isfinite(r["road"]) else "n/a"
        empty = f"; {r['n_empty']} empty maps" if r["n_empty"] else ""
        lines.append(f"{r['teacher']:>20}: in-lung share {vs(r, 'in_lung')} and pointing game "
                     f"{vs(r, 'pointing')} against chance; ROAD {road}{empty}")
    return lines


GALLERY_GROUPS = {"TP": "true positives: TB, and most teachers say TB",
                  "FP": "false positives: normal, but most teachers say TB",
                  "FN": "false negatives: TB, but most teachers say normal"}


def gallery_picks(att: _pipe.TeacherAttention, per_group: int = 2) -> dict[str, list[int]]:
    """Images for the gallery, ``{"TP" | "FP" | "FN": [index, ...]}``.

    An image's group is decided by the majority of the teachers' decisions (so that one
    row shows the same X-ray under every teacher); within a group the most confident
    images come first (highest mean P(TB) for TP and FP, lowest for FN). A group may be
    empty (e.g. no false positives on a small test split).
    """
    votes = np.mean([att.predicted(a) for a in att.teachers], axis=0)
    mean_p = np.mean([att.probs[a] for a in att.teachers], axis=0)
    says_tb = votes > 0.5
    y = att.labels
    groups = {"TP": (y == 1) & says_tb, "FP": (y == 0) & says_tb, "FN": (y == 1) & ~says_tb}
    out = {}
    for g, sel in groups.items():
        idx = np.flatnonzero(sel)
        order = np.argsort(mean_p[idx] if g == "FN" else -mean_p[idx], kind="stable")
        out[g] = idx[order][:per_group].tolist()
    return out


def gallery_rows(att: _pipe.TeacherAttention, picks: dict[str, list[int]]) -> list[dict]:
    """The rows ``viz.cam_gallery`` draws for :func:`gallery_picks` (an empty group
    becomes one row saying so)."""
    first = att.sizes[att.teachers[0]]
    rows = []
    for g, idx in picks.items():
        if not idx:
            rows.append({"group": f"{g}: none on this split ({GALLERY_GROUPS.get(g, g)})"})
        for i in idx:
            panels = {a: {"image": att.images[att.sizes[a]][i, 0].numpy(), "cam": att.maps[a][i],
                          "prob": float(att.probs[a][i]),
                          "correct": bool(att.predicted(a)[i] == att.labels[i])} for a in att.teachers}
            rows.append({"group": g, "key": att.records[i].key, "image": att.images[first][i, 0].numpy(),
                         "lungs": att.lungs[first][i], "lesions": att.lesions[first][i], "panels": panels})
    return rows


ATTENTION_LABELS = {"in_lung": "in-lung share", "agreement": "agreement with guide"}


def attention_lines(report: dict) -> list[str]:
    """:func:`attention_report` as one line per model: each figure with its interval,
    and the chance level first."""
    def fmt(f):
        if f is None or f.get("mean") is None:
            return "n/a"
        ci = f" [{f['lo']:.2f}, {f['hi']:.2f}]" if f.get("lo") is not None else ""
        return f"{f['mean']:.2f}{ci}"

    keys = list(_pipe.ATTENTION_FIGURES)
    ch = report["chance"]
    lines = [f"{'chance':>20}: " + "; ".join(f"{_pipe.ATTENTION_FIGURES[k]} {'n/a' if ch.get(k) is None else f'{ch[k]:.2f}'}"
                                            for k in keys)]
    for name, figs in report["models"].items():
        lines.append(f"{name:>20}: " + "; ".join(f"{_pipe.ATTENTION_FIGURES[k]} {fmt(figs.get(k))}" for k in keys))
    return lines


def ablation_table(results: dict, attention: dict | None = None, metrics: Sequence[str] = _pipe.ABLATION_METRICS,
                   digits: int = 2, index_name: str = "student"):
    """The distillation ablation as a pandas DataFrame indexed by (model, data set).

    ``results``: ``{model: pipeline.evaluate(...) rows}``; ``attention``: ``{model:
    pipeline.attention_by_dataset(...) rows}`` (a model or data set missing there shows "—").
    Columns: ``n (TB)``, one per metric and, with ``attention``, the in-lung share and
    the agreement with the guide, each as ``"value [lo, hi]"`` (:func:`format_ci`).
    Rows keep the order of ``results`` and of each model's rows.
    """
    import pandas as pd

    records = []
    for model, rows in results.items():
        att = {r["dataset"]: r for r in (attention or {}).get(model, [])}
        for r in rows:
            rec = {index_name: model, "dataset": r["dataset"], "n (TB)": f"{r['n']} ({r['n_pos']})"}
            rec.update({METRIC_LABELS.get(m, m): format_ci(r.get(m), r.get(f"{m}_lo"), r.get(f"{m}_hi"), digits)
                        for m in metrics})
            if attention is not None:
                a = att.get(r["dataset"])
                rec.update({label: format_ci(a.get(k), a.get(f"{k}_lo"), a.get(f"{k}_hi"), digits) if a else "—"
                            for k, label in ATTENTION_LABELS.items()})
            records.append(rec)
    return pd.DataFrame(records).set_index([index_name, "dataset"])


def ablation_points(results: dict, attention: dict | None = None, dataset: str = "all",
                    metrics: Sequence[str] = _pipe.ABLATION_METRICS) -> dict:
    """``{model: {label: (value, lo, hi)}}`` of one data set's rows, for
    ``viz.ablation_intervals`` (labels as in :func:`ablation_table`; undefined: NaN)."""
    def trio(r, k):
        return tuple(float("nan") if _undefined(r.get(x)) else float(r.get(x)) for x in (k, f"{k}_lo", f"{k}_hi"))

    out = {}
    for model, rows in results.items():
        r = next((x for x in rows if x["dataset"] == dataset), None)
        if r is None:
            continue
        out[model] = {METRIC_LABELS.get(m, m): trio(r, m) for m in metrics}
        a = next((x for x in (attention or {}).get(model, []) if x["dataset"] == dataset), None)
        if a is not None:
            out[model].update({label: trio(a, k) for k, label in ATTENTION_LABELS.items()})
    return out


def distill_gallery_picks(labels, guide_probs, per_group: dict | None = None) -> dict[str, list[int]]:
    """Images for the students' gallery, ``{"TB" | "normal": [index, ...]}``: the TB
    images the guide is surest are TB (highest P(TB) first) and the normal images it is
    surest are normal (lowest first); ``per_group`` defaults to 3 TB, 1 normal."""
    per_group = per_group or {"TB": 3, "normal": 1}
    y, p = np.asarray(labels, int), np.asarray(guide_probs, float)
    out = {}
    for group, n in per_group.items():
        idx = np.flatnonzero(y == (1 if group == "TB" else 0))
        order = np.argsort(-p[idx] if group == "TB" else p[idx], kind="stable")
        out[group] = idx[order][:n].tolist()
    return out


def distill_gallery_rows(records: Sequence, images, columns: dict, picks: dict[str, list[int]],
                         lungs=None, lesions=None) -> list[dict]:
    """Rows for ``viz.cam_gallery`` (one per picked image): every column shows the same
    X-ray (``images`` ``(N, 1, s, s)``) under one model's map. ``columns``: ``{name:
    {"maps": (N, h, w), "probs": (N,), "threshold": float}}``; maps of another size are
    resized to ``s``. ``lungs`` / ``lesions``: ``(N, s, s)`` masks for the first column."""
    imgs = np.asarray(images.detach().cpu() if isinstance(images, torch.Tensor) else images, np.float32)
    size = imgs.shape[-1]
    maps = {n: (c["maps"] if c["maps"].shape[-1] == size else _cam.resize_maps(np.asarray(c["maps"], np.float32),
                                                                                size))
            for n, c in columns.items()}
    labels = np.array([int(r.label) for r in records])
    rows = []
    for group, idx in picks.items():
        if not idx:
            rows.append({"group": f"{group}: none on this split"})
        for i in idx:
            panels = {n: {"image": imgs[i, 0], "cam": np.asarray(maps[n][i], np.float32),
                          "prob": float(c["probs"][i]),
                          "correct": bool(int(c["probs"][i] >= c["threshold"]) == labels[i])}
                      for n, c in columns.items()}
            rows.append({"group": group, "key": records[i].key, "image": imgs[i, 0],
                         "lungs": None if lungs is None else lungs[i],
                         "lesions": None if lesions is None else lesions[i], "panels": panels})
    return rows


def format_spread(s: dict, pct: bool, digits: int = 1) -> str:
    """``"80.8 ± 2.4 %"`` (``pct``) or ``"0.90 ± 0.03"``: a mean ± SD over runs; ``"n/a"`` without one."""
    if s.get("mean") is None:
        return "n/a"
    f = 100.0 if pct else 1.0
    d = digits if pct else 2
    return f"{f * s['mean']:.{d}f} ± {f * (s['sd'] or 0):.{d}f}" + (" %" if pct else "")


def format_diff(d: dict, pct: bool, digits: int | None = None) -> str:
    """``"+0.5 pt [-4.9, +5.9]"`` (``pct``) or ``"+0.13 [+0.07, +0.20]"``: a paired difference with
    its interval (``metrics.paired_difference``); ``"n/a"`` without one. ``digits``: other
    decimals than 1 (points) or 2."""
    if d.get("mean") is None:
        return "n/a"
    f, unit, dg = (100.0, " pt", 1) if pct else (1.0, "", 2)
    dg = dg if digits is None else digits
    if d.get("lo") is None:
        return f"{f * d['mean']:+.{dg}f}{unit}"
    return f"{f * d['mean']:+.{dg}f}{unit} [{f * d['lo']:+.{dg}f}, {f * d['hi']:+.{dg}f}]"


STUDY_FIGURES = ("val_auc", "val_accuracy", "in_lung", "lesion_share", "pointing", "agreement")


def study_row_line(row: dict, setting: str) -> str:
    """One student of a validation study (``pipeline.patience_study``, ``guide_study``,
    ``settings_study``), a line."""
    lesions = (f"lesion share {row['lesion_share']}, pointing {row['pointing']}, "
               if row.get("lesion_share") is not None else "")
    return (f"seed {row['seed']} {row['variant']:>6} {setting}: val AUC {row['val_auc']}, val accuracy "
            f"{row['val_accuracy']}, in-lung {row['in_lung']}, {lesions}agreement {row['agreement']}, "
            f"kept epoch {row['best_epoch']}, {row['seconds']:.0f} s")


def study_paired_lines(out: dict, label: str = "", by: str = "") -> list[str]:
    """A study's paired differences from its reference, a line per group and setting
    (``out["paired"]``: ``{group: {setting: {figure: difference}}}``; ``by`` names the group
    in the line, as in "within cam_beta=4: kd+cam minus ce")."""
    head = (lambda g, k: f"within {g}: {k}") if by else (lambda g, k: f"{g}: {label}{k}")
    return [f"{head(g, k)} minus {out['reference']} (paired by seed, 95 % t interval): " + ", ".join(
                f"{f} {format_diff(d[f], False, digits=3)}" for f in STUDY_FIGURES
                if f in d and d[f]["mean"] is not None)
            for g, group in out["paired"].items() for k, d in group.items()]


def seeds_table(seeds: dict, dataset: str = "all"):
    """:func:`student_seeds` as a DataFrame: per variant the mean ± SD over seeds of the
    test accuracy and AUC on ``dataset`` and of the attention figures, and the paired
    difference against the reference variant with its 95 % t-interval."""
    import pandas as pd

    rows = []
    for v in seeds["variants"]:
        s, a = seeds["summary"][v][dataset], seeds["attention"][v]
        row = {"student": v, "accuracy": format_spread(s["accuracy"], True), "AUC": format_spread(s["auc"], False),
               "in-lung share": format_spread(a["in_lung"], False)}
        if a["lesion_share"]["mean"] is not None:
            row["lesion share"] = format_spread(a["lesion_share"], False)
        p = seeds["paired"].get(v)
        ref = seeds["reference"]
        row[f"accuracy − {ref}"] = format_diff(p["test"][dataset]["accuracy"], True) if p else "—"
        row[f"AUC − {ref}"] = format_diff(p["test"][dataset]["auc"], False) if p else "—"
        row[f"in-lung − {ref}"] = format_diff(p["attention"]["in_lung"], False) if p else "—"
        if a["lesion_share"]["mean"] is not None:
            row[f"lesion share − {ref}"] = format_diff(p["attention"]["lesion_share"], False) if p else "—"
        rows.append(row)
    return pd.DataFrame(rows).set_index("student")


def seeds_verdicts(seeds: dict, dataset: str = "all", over: str = "seeds") -> list[str]:
    """One line per variant and figure: is its paired difference against the reference
    above zero, below, or undecided (the 95 % interval contains 0)? Read from the
    numbers, so that a chapter's conclusion follows its own run. ``over``: what the runs
    are paired by, "seeds" (:func:`pipeline.student_seeds`) or "folds"
    (:func:`results.kfold_students`)."""
    out, ref, n = [], seeds["reference"], len(seeds[over])
    names = {"accuracy": ("accuracy", True), "auc": ("AUC", False)}
    for v, p in seeds["paired"].items():
        for key, d, (label, pct) in [(k, p["test"][dataset][k], names[k]) for k in names] + \
                [(k, p["attention"][k], (_pipe.ATTENTION_FIGURES[k], False)) for k in ("in_lung", "lesion_share")]:
            if d.get("mean") is None:
                continue
            if d.get("lo") is None:
                word = f"one {over[:-1]} only: no interval"
            elif d["lo"] > 0:
                word = f"higher than {ref}'s"
            elif d["hi"] < 0:
                word = f"lower than {ref}'s"
            else:
                word = f"not told apart from {ref}'s (the interval contains 0)"
            out.append(f"{v}: {label} ({dataset}) {word}: {format_diff(d, pct)} over {n} paired {over}")
    return out


def teacher_seeds_table(out: dict, dataset: str = "all"):
    """:func:`pipeline.teacher_seeds` as a DataFrame: per teacher the mean ± SD over seeds
    of the test accuracy and AUC on ``dataset``, the paired difference in AUC against the
    reference teacher, and how often the teacher was the best on validation."""
    import pandas as pd

    ref, rows = out["reference"], []
    picked = list(out["best_on_validation"].values())
    for a in out["teachers"]:
        s, p = out["summary"][a][dataset], out["paired"].get(a)
        rows.append({"teacher": a, "accuracy": format_spread(s["accuracy"], True), "AUC": format_spread(s["auc"], False),
                     "AUC per seed": ", ".join(f"{r['test'][dataset]['auc']:.2f}" for r in out["runs"][a]),
                     f"AUC − {ref}": format_diff(p[dataset]["auc"], False) if p else "—",
                     "best on validation": f"{picked.count(a)} of {len(picked)}"})
    return pd.DataFrame(rows).set_index("teacher")


def tuning_report(profile) -> tuple[object, list[str]]:
    """``scripts/tune_student.py``'s table for this profile (a DataFrame, or None when it
    has not been run) and lines that say which setting had the best validation AUC and
    which settings the profile uses."""
    import pandas as pd

    path = Path(profile.results) / "tuning.json"
    used = (f"this profile uses alpha = {profile.kd_alpha:g}, beta = {profile.cam_beta:g}, "
            f"T = {profile.kd_temperature:g}")
    if not path.is_file():
        return None, [f"no tuning run for the {profile.name!r} profile "
                      f"(scripts/tune_student.py --profile {profile.name} makes one); {used}"]
    rows = store.read_json(path)["rows"]
    table = pd.DataFrame(rows)[["alpha", "beta", "temperature", "cam_loss", "guide", "val_auc", "best_epoch"]]
    best = max(rows, key=lambda r: -1 if r["val_auc"] is None else r["val_auc"])
    spread = [r["val_auc"] for r in rows if r["val_auc"] is not None]
    base = rows[0]  # the grid starts with the profile's defaults
    chosen = best if (best["val_auc"] or 0) > (base["val_auc"] or 0) + _pipe.TUNING_MARGIN else base
    lines = [f"best validation AUC {best['val_auc']:.3f}: alpha = {best['alpha']:g}, beta = {best['beta']:g}, "
             f"T = {best['temperature']:g}, map loss {best['cam_loss']}, guide {best['guide']} "
             f"(all settings: {min(spread):.3f} to {max(spread):.3f}, on {len(rows)} runs of one seed)",
             f"rule: keep the defaults (validation AUC {base['val_auc']:.3f}) unless another setting beats them by "
             f"more than {_pipe.TUNING_MARGIN:g} -> alpha = {chosen['alpha']:g}, beta = {chosen['beta']:g}, "
             f"T = {chosen['temperature']:g}, map loss {chosen['cam_loss']}", used]
    return table, lines
