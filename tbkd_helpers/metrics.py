"""Accuracy, AUC, sensitivity, specificity, F1 and their bootstrap confidence intervals.

Conventions: label 1 is TB (positive); ``prob`` is the predicted probability of TB; an
image is called positive when ``prob >= threshold``. A metric that is undefined on the
data (specificity without negatives, precision without positive calls, AUC with one
class) is ``nan`` here and ``None`` in :func:`summarize`'s JSON-ready output.

The threshold is a choice made on the **validation** split (:func:`choose_threshold`)
and then applied unchanged to the test split; choosing it on the test split would
report an optimistic result.

>>> summarize([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], threshold=0.5, n_boot=200)["accuracy"]
0.5
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "METRICS", "classification_report", "choose_threshold", "bootstrap_ci", "roc_points",
    "confusion", "summarize", "mean_sd", "paired_difference", "auc",
]

METRICS = ("accuracy", "auc", "sensitivity", "specificity", "precision", "f1")


def _arrays(y_true, prob) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(np.int64).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} values, prob has {p.size}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold 0 (normal) and 1 (TB) only")
    if np.isnan(p).any():
        raise ValueError("prob contains NaN")
    return y, p


def _div(a, b):
    """a / b elementwise, nan where b == 0."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)
    return out if out.ndim else float(out)


def confusion(y_true: Sequence[int], pred: Sequence[int]) -> dict[str, int]:
    """``{"tn", "fp", "fn", "tp"}`` counts of 0/1 predictions (scikit-learn)."""
    from sklearn.metrics import confusion_matrix

    y = np.asarray(y_true).astype(np.int64).ravel()
    yhat = np.asarray(pred).astype(np.int64).ravel()
    tn, fp, fn, tp = confusion_matrix(y, yhat, labels=[0, 1]).ravel()
    return {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)}


def auc(y, p) -> float:
    """ROC AUC (scikit-learn); NaN when only one class is present."""
    y, p = np.asarray(y), np.asarray(p)
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, p))


def _from_counts(tp, fp, tn, fn) -> dict:
    """Threshold metrics from confusion counts (scalars or arrays of bootstrap samples)."""
    return {
        "accuracy": _div(np.add(tp, tn), np.add(np.add(tp, tn), np.add(fp, fn))),
        "sensitivity": _div(tp, np.add(tp, fn)),
        "specificity": _div(tn, np.add(tn, fp)),
        "precision": _div(tp, np.add(tp, fp)),
        "f1": _div(np.multiply(2, tp), np.add(np.multiply(2, tp), np.add(fp, fn))),
    }


def classification_report(y_true: Sequence[int], prob: Sequence[float],
                          threshold: float = 0.5) -> dict:
    """Accuracy, AUC, sensitivity (recall of TB), specificity, precision, F1 and the
    confusion counts at ``threshold`` (positive when ``prob >= threshold``)."""
    y, p = _arrays(y_true, prob)
    c = confusion(y, p >= threshold)
    report = {"n": int(y.size), "n_pos": int((y == 1).sum()), "n_neg": int((y == 0).sum()),
              "threshold": float(threshold), "auc": auc(y, p)}
    report.update({k: float(v) for k, v in _from_counts(c["tp"], c["fp"], c["tn"], c["fn"]).items()})
    report.update(c)
    return report


def roc_points(y_true: Sequence[int], prob: Sequence[float]) -> dict:
    """ROC curve: ``{"fpr", "tpr", "thresholds"}`` arrays (scikit-learn's ``roc_curve``;
    the first threshold is ``inf``: nothing called positive) and ``"auc"``."""
    from sklearn.metrics import roc_curve

    y, p = _arrays(y_true, prob)
    if len(np.unique(y)) < 2:
        raise ValueError("roc_points needs both classes in y_true")
    fpr, tpr, thr = roc_curve(y, p)
    return {"fpr": fpr, "tpr": tpr, "thresholds": thr, "auc": auc(y, p)}


_RULE = re.compile(r"^\s*(sens|spec)\s*>=\s*([0-9.]+)\s*$")


def choose_threshold(y_true: Sequence[int], prob: Sequence[float], rule: str = "youden") -> float:
    """The decision threshold, chosen on the **validation split only** (then applied to
    the test split unchanged).

    - ``"youden"``: maximises sensitivity + specificity - 1 (ties: the highest threshold).
    - ``"sens>=0.9"``: the highest threshold whose sensitivity is at least 0.9, the WHO
      target for a TB triage test (any ``"sens>=x"`` works; ``"spec>=x"``: the lowest
      threshold with specificity at least x).
    - ``"0.5"`` (or any number): that fixed threshold.

    Candidate thresholds are the observed probabilities (positive when ``prob >= t``).
    """
    try:
        return float(rule)
    except (TypeError, ValueError):
        pass
    from sklearn.metrics import roc_curve

    y, p = _arrays(y_true, prob)
    if len(np.unique(y)) < 2:
        raise ValueError(f"choose_threshold({rule!r}) needs both classes in y_true")
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    finite = np.isfinite(thr)  # the first one (inf) calls nothing positive
    fpr, tpr, thr = fpr[finite], tpr[finite], thr[finite]
    if rule == "youden":
        return float(thr[int(np.argmax(tpr - fpr))])  # thresholds decrease: first = highest
    m = _RULE.match(str(rule))
    if not m:
        raise ValueError(f"unknown threshold rule {rule!r}: use 'youden', 'sens>=0.9', "
                         "'spec>=0.9' or a number")
    kind, target = m.group(1), float(m.group(2))
    if kind == "sens":
        ok = np.nonzero(tpr >= target - 1e-12)[0]
        return float(thr[ok[0]])  # the lowest threshold has tpr = 1, so ok is not empty
    ok = np.nonzero(1 - fpr >= target - 1e-12)[0]
    if not len(ok):
        return float(np.nextafter(p.max(), np.inf))  # only "nothing positive" is specific enough
    return float(thr[ok[-1]])


def _boot_auc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC of each row: ``pos`` (B, n_pos) and ``neg`` (B, n_neg) scores."""
    from scipy.stats import rankdata

    n_pos, n_neg = pos.shape[1], neg.shape[1]
    ranks = rankdata(np.concatenate([pos, neg], axis=1), method="average", axis=1)
    return (ranks[:, :n_pos].sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def bootstrap_ci(y_true: Sequence[int], prob: Sequence[float], threshold: float = 0.5,
                 metric_names: Iterable[str] = METRICS, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap ``(1 - alpha)`` intervals: ``{metric: (lo, hi)}``.

    Resampling is stratified: positives and negatives are drawn with replacement within
    their class, so every resample has both classes (AUC always defined) and the
    prevalence of the data. All resamples are computed at once (vectorised).
    """
    names = list(metric_names)
    unknown = set(names) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(sorted(unknown))}: use {', '.join(METRICS)}")
    y, p = _arrays(y_true, prob)
    pos, neg = p[y == 1], p[y == 0]
    if not len(pos) or not len(neg):
        raise ValueError("bootstrap_ci needs both classes in y_true")
    rng = np.random.default_rng(seed)
    bpos = pos[rng.integers(0, len(pos), size=(n_boot, len(pos)))]
    bneg = neg[rng.integers(0, len(neg), size=(n_boot, len(neg)))]
    tp = (bpos >= threshold).sum(1)
    fp = (bneg >= threshold).sum(1)
    values = _from_counts(tp, fp, len(neg) - fp, len(pos) - tp)
    if "auc" in names:
        values["auc"] = _boot_auc(bpos, bneg)
    out = {}
    for name in names:
        v = values[name]
        v = v[~np.isnan(v)]
        if not len(v):
            out[name] = (math.nan, math.nan)
        else:
            lo, hi = np.quantile(v, [alpha / 2, 1 - alpha / 2])
            out[name] = (float(lo), float(hi))
    return out


def _json_number(v, ndigits: int = 4):
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    v = float(v)
    return None if math.isnan(v) or math.isinf(v) else round(v, ndigits)


def summarize(y_true: Sequence[int], prob: Sequence[float], threshold: float = 0.5,
              n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
              metric_names: Iterable[str] = METRICS) -> dict:
    """:func:`classification_report` plus ``<metric>_lo`` / ``<metric>_hi`` bootstrap
    bounds, flat and JSON-ready (floats rounded to 4 decimals, undefined → ``None``).
    With one class only (or ``n_boot=0``) the bounds are ``None``."""
    report = classification_report(y_true, prob, threshold)
    out = {k: _json_number(v) for k, v in report.items()}
    names = list(metric_names)
    if n_boot and report["n_pos"] and report["n_neg"]:
        cis = bootstrap_ci(y_true, prob, threshold, names, n_boot=n_boot, seed=seed, alpha=alpha)
    else:
        cis = {m: (math.nan, math.nan) for m in names}
    for m, (lo, hi) in cis.items():
        out[f"{m}_lo"], out[f"{m}_hi"] = _json_number(lo), _json_number(hi)
    out["ci_level"] = round(1 - alpha, 4)
    out["n_boot"] = int(n_boot)
    return out


# --------------------------------------------------------------------------- run-to-run spread

def mean_sd(values) -> dict:
    """``{"mean", "sd", "n"}`` of the finite values (sample SD; ``None`` when undefined):
    the spread of a figure over training runs (seeds or folds)."""
    v = np.array([x for x in values if x is not None], float)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": round(float(v.mean()), 4), "sd": round(float(v.std(ddof=1)), 4) if len(v) > 1 else None,
            "n": int(len(v))}


def paired_difference(a, b, level: float = 0.95) -> dict:
    """The mean of ``a[i] - b[i]`` over paired runs (the same seed or fold for both) and
    its Student-t interval: ``{"mean", "lo", "hi", "sd", "n"}`` (bounds ``None`` with
    fewer than two pairs). Pairs where either value is undefined are left out."""
    from scipy import stats

    pairs = [(float(x), float(y)) for x, y in zip(a, b) if x is not None and y is not None
             and math.isfinite(float(x)) and math.isfinite(float(y))]
    d = np.array([x - y for x, y in pairs])
    out = {"mean": None, "lo": None, "hi": None, "sd": None, "n": int(len(d))}
    if not len(d):
        return out
    out["mean"] = round(float(d.mean()), 4)
    if len(d) > 1:
        sd = float(d.std(ddof=1))
        half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1)) * sd / math.sqrt(len(d))
        out.update(lo=round(out["mean"] - half, 4), hi=round(out["mean"] + half, 4), sd=round(sd, 4))
    return out
