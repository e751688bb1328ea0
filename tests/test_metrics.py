"""tbkd_helpers.metrics against hand-computed cases."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tbkd_helpers.metrics import (METRICS, bootstrap_ci, choose_threshold,
                                  classification_report, confusion, roc_points, summarize)

# 10 images: 4 TB, 6 normal. At threshold 0.5:
#   TB      0.9 0.8 0.6 | 0.3        -> tp=3, fn=1
#   normal  0.7 | 0.4 0.2 0.2 0.1 0.05 -> fp=1, tn=5
Y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
P = [0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.2, 0.1, 0.05]


def test_report_by_hand():
    r = classification_report(Y, P, 0.5)
    assert (r["tp"], r["fn"], r["fp"], r["tn"]) == (3, 1, 1, 5)
    assert r["n"] == 10 and r["n_pos"] == 4 and r["n_neg"] == 6 and r["threshold"] == 0.5
    assert r["accuracy"] == pytest.approx(8 / 10)
    assert r["sensitivity"] == pytest.approx(3 / 4)
    assert r["specificity"] == pytest.approx(5 / 6)
    assert r["precision"] == pytest.approx(3 / 4)
    assert r["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    # AUC = P(score of a TB image > score of a normal one): 24 pairs; the pairs a TB
    # image loses: 0.6 < 0.7, 0.3 < 0.7, 0.3 < 0.4 -> 21/24
    assert r["auc"] == pytest.approx(21 / 24)


def test_threshold_is_inclusive_and_undefined_metrics_are_nan():
    r = classification_report([1, 0], [0.5, 0.2], 0.5)
    assert r["tp"] == 1  # prob >= threshold is positive
    r = classification_report([0, 0, 0], [0.1, 0.2, 0.3], 0.5)
    assert math.isnan(r["auc"]) and math.isnan(r["sensitivity"]) and math.isnan(r["precision"])
    assert r["specificity"] == 1.0 and r["accuracy"] == 1.0


def test_confusion_and_input_checks():
    assert confusion([1, 1, 0, 0], [1, 0, 0, 1]) == {"tn": 1, "fp": 1, "fn": 1, "tp": 1}
    assert confusion([0, 0], [0, 0]) == {"tn": 2, "fp": 0, "fn": 0, "tp": 0}
    with pytest.raises(ValueError, match="0 \\(normal\\) and 1"):
        classification_report([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="has 2 values"):
        classification_report([0, 1], [0.1, 0.2, 0.3])


def test_roc_points():
    roc = roc_points(Y, P)
    assert roc["fpr"][0] == 0 and roc["tpr"][0] == 0 and np.isinf(roc["thresholds"][0])
    assert roc["fpr"][-1] == 1 and roc["tpr"][-1] == 1
    assert roc["auc"] == pytest.approx(21 / 24)
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(21 / 24)


def test_youden_threshold_by_hand():
    # J = sens + spec - 1 at each candidate (prob >= t is positive):
    #   t=0.9: 1/4 + 6/6 - 1 = 0.25   t=0.8: 0.5   t=0.7: 2/4 + 5/6 - 1 = 0.333
    #   t=0.6: 3/4 + 5/6 - 1 = 0.583  t=0.4: 3/4 + 4/6 - 1 = 0.417
    #   t=0.3: 4/4 + 4/6 - 1 = 0.667 (the maximum)   t=0.2: 1 + 2/6 - 1 = 0.333
    assert choose_threshold(Y, P, "youden") == pytest.approx(0.3)
    r = classification_report(Y, P, choose_threshold(Y, P))
    assert r["sensitivity"] + r["specificity"] - 1 == pytest.approx(2 / 3)
    # ties go to the highest threshold
    assert choose_threshold([0, 1, 0, 1], [0.1, 0.4, 0.6, 0.9], "youden") == pytest.approx(0.9)


def test_sensitivity_rule_gives_the_highest_threshold_reaching_it():
    # sensitivity >= 0.9 means all 4 TB images -> the lowest TB score, 0.3
    assert choose_threshold(Y, P, "sens>=0.9") == pytest.approx(0.3)
    assert choose_threshold(Y, P, "sens>=0.75") == pytest.approx(0.6)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    t = choose_threshold(y, p, "sens>=0.9")
    assert classification_report(y, p, t)["sensitivity"] >= 0.9
    higher = np.nextafter(t, 1)
    assert classification_report(y, p, higher)["sensitivity"] < 0.9


def test_specificity_fixed_and_bad_rules():
    # spec >= 0.8 allows one false positive (5/6): the lowest such threshold is 0.6
    assert choose_threshold(Y, P, "spec>=0.8") == pytest.approx(0.6)
    assert classification_report(Y, P, choose_threshold(Y, P, "spec>=0.8"))["specificity"] >= 0.8
    assert choose_threshold(Y, P, "0.5") == 0.5
    assert choose_threshold(Y, P, 0.3) == 0.3
    with pytest.raises(ValueError, match="unknown threshold rule"):
        choose_threshold(Y, P, "f1")
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold([1, 1], [0.2, 0.3], "youden")


def _sample(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    p = 1 / (1 + np.exp(-rng.normal(0.8 * (2 * y - 1), 1.5)))  # AUC about 0.77
    return y, p


def test_bootstrap_ci_contains_the_estimate_and_narrows_with_n():
    widths = {}
    for n in (80, 1600):
        y, p = _sample(n)
        point = classification_report(y, p, 0.5)
        ci = bootstrap_ci(y, p, 0.5, METRICS, n_boot=500, seed=0)
        assert set(ci) == set(METRICS)
        for m, (lo, hi) in ci.items():
            assert lo <= point[m] <= hi, (n, m, lo, point[m], hi)
        widths[n] = {m: hi - lo for m, (lo, hi) in ci.items()}
    for m in METRICS:
        assert widths[1600][m] < 0.5 * widths[80][m], m  # expected ratio sqrt(1/20) = 0.22


def test_bootstrap_is_seeded_stratified_and_its_auc_matches_sklearn():
    y, p = _sample(40)
    a = bootstrap_ci(y, p, 0.5, ["auc", "sensitivity"], n_boot=300, seed=1)
    assert a == bootstrap_ci(y, p, 0.5, ["auc", "sensitivity"], n_boot=300, seed=1)
    assert a != bootstrap_ci(y, p, 0.5, ["auc", "sensitivity"], n_boot=300, seed=2)
    # the vectorised AUC of one resample equals scikit-learn's on that resample
    from sklearn.metrics import roc_auc_score

    from tbkd_helpers.metrics import _boot_auc

    rng = np.random.default_rng(0)
    pos = np.round(rng.random((3, 7)), 1)  # ties on purpose
    neg = np.round(rng.random((3, 5)), 1)
    for b in range(3):
        ref = roc_auc_score(np.r_[np.ones(7), np.zeros(5)], np.r_[pos[b], neg[b]])
        assert _boot_auc(pos, neg)[b] == pytest.approx(ref)
    with pytest.raises(ValueError, match="unknown metric"):
        bootstrap_ci(y, p, 0.5, ["auroc"])
    with pytest.raises(ValueError, match="both classes"):
        bootstrap_ci([1, 1, 1], [0.2, 0.5, 0.9], 0.5)


def test_summarize_is_flat_rounded_and_json_ready():
    s = summarize(Y, P, 0.5, n_boot=200, seed=0)
    assert s["accuracy"] == 0.8 and s["specificity"] == 0.8333 and s["tp"] == 3
    for m in METRICS:
        assert s[f"{m}_lo"] <= s[m] <= s[f"{m}_hi"]
    assert s["ci_level"] == 0.95 and s["n_boot"] == 200
    assert all(not isinstance(v, (dict, list, tuple)) for v in s.values())
    for v in s.values():
        if isinstance(v, float):
            assert v == round(v, 4)
    assert json.loads(json.dumps(s, allow_nan=False)) == s
    one_class = summarize([0, 0, 0], [0.1, 0.2, 0.7], 0.5, n_boot=50)
    assert one_class["auc"] is None and one_class["auc_lo"] is None
    assert one_class["specificity"] == 0.6667
