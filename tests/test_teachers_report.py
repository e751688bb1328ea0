"""Stage 2 reporting: the teachers' figures (viz) and tables (pipeline), on tiny synthetic inputs."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tbkd_helpers import pipeline, reports, viz  # noqa: E402
from tbkd_helpers.metrics import METRICS, summarize  # noqa: E402
from tbkd_helpers.train import History  # noqa: E402

MODELS = ("densenet121", "resnet18", "vgg16")


def _history(n_epochs: int, best: int) -> History:
    ep = list(range(1, n_epochs + 1))
    return History(epoch=ep, train_loss=[0.7 / e for e in ep], val_loss=[0.8 / e for e in ep],
                   val_auc=[0.5 + 0.1 * e for e in ep], val_acc=[0.5] * n_epochs, lr=[1e-3] * n_epochs,
                   seconds=[1.0] * n_epochs, best_epoch=best)


def _preds(seed: int, datasets=("montgomery", "shenzhen"), n: int = 24) -> dict:
    rng = np.random.default_rng(seed)
    part = {"keys": [], "datasets": [], "labels": [], "probs": []}
    for ds in datasets:
        y = np.array([0, 1] * (n // 2))
        p = np.clip(0.5 * y + rng.uniform(0, 0.6, len(y)), 0, 1)
        part["datasets"] += [ds] * len(y)
        part["labels"] += y.tolist()
        part["probs"] += p.round(6).tolist()
        part["keys"] += [f"{ds}/{i}" for i in range(len(y))]
    return part


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


# --------------------------------------------------------------------------- figures

def test_training_curves_one_line_per_model_per_panel():
    hists = {m: _history(3 + i, best=2) for i, m in enumerate(MODELS)}
    hists["vgg16"] = hists["vgg16"].to_dict()  # a stored history (dict) works as well
    fig = viz.training_curves(hists)
    assert len(fig.axes) == 3
    for ax in fig.axes:
        labelled = [ln for ln in ax.lines if ln.get_label() in MODELS]
        assert [ln.get_label() for ln in labelled] == list(MODELS)
        assert [len(ln.get_xdata()) for ln in labelled] == [3, 4, 5]
        assert len(ax.collections) == len(MODELS)  # the rings at the kept epochs
    assert len(fig.legends) == 1


def test_training_curves_log_scale_only_for_spread_losses():
    h = _history(3, best=1)
    h.val_loss = [50.0, 1.0, 0.5]
    fig = viz.training_curves({"resnet18": h})
    assert fig.axes[0].get_yscale() == "linear" and fig.axes[1].get_yscale() == "log"


def test_roc_curves_one_axis_per_dataset_and_operating_points():
    parts = {m: _preds(i) for i, m in enumerate(MODELS)}
    curves = reports.roc_by_dataset(parts, thresholds={m: 0.5 for m in MODELS})
    assert list(curves) == ["montgomery", "shenzhen", "all"]
    fig = viz.roc_curves(curves)
    assert len(fig.axes) == 3
    for ax in fig.axes:
        labels = [ln.get_label() for ln in ax.lines if not ln.get_label().startswith("_")]
        assert len(labels) == len(MODELS) and all(lab.split()[0] in MODELS for lab in labels)
        assert len(ax.collections) == len(MODELS)  # one operating point each
        assert "n = 24" in ax.get_title() or "n = 48" in ax.get_title()


def test_roc_by_dataset_matches_metrics():
    parts = {"a": _preds(0)}
    curves = reports.roc_by_dataset(parts, thresholds={"a": 0.6})
    rep = summarize(parts["a"]["labels"], parts["a"]["probs"], threshold=0.6, n_boot=0)
    c = curves["all"]["a"]
    assert c["auc"] == pytest.approx(rep["auc"], abs=1e-4)
    assert c["point"] == pytest.approx((1 - rep["specificity"], rep["sensitivity"]), abs=1e-4)
    assert c["n_pos"] + c["n_neg"] == 48
    one = reports.roc_by_dataset({"a": _preds(0, datasets=("shenzhen",))})
    assert list(one) == ["shenzhen"]  # no pooled "all" that would repeat the one data set
    assert "point" not in one["shenzhen"]["a"]


def test_confusion_grid_small_multiples():
    rows = [{"model": m, "dataset": ds, "tn": 5, "fp": 1, "fn": 2, "tp": 4}
            for m in MODELS for ds in ("montgomery", "shenzhen")]
    fig = viz.confusion_grid(rows)
    assert len(fig.axes) == 2 * len(MODELS)
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == ["1", "2", "4", "5"]
    assert fig.axes[0].get_title() == MODELS[0]
    fig = viz.confusion_grid(rows, models=["vgg16"], datasets=["shenzhen"])
    assert len(fig.axes) == 1


def test_model_colours_fixed_by_position():
    c = viz.model_colours(MODELS)
    assert len(set(c.values())) == len(MODELS)
    assert viz.model_colours(MODELS)["vgg16"] == c["vgg16"]


# --------------------------------------------------------------------------- tables

def test_format_ci():
    assert reports.format_ci(0.9123, 0.861, 0.95) == "0.91 [0.86, 0.95]"
    assert reports.format_ci(0.9, None, None) == "0.90"
    assert reports.format_ci(None) == "n/a"
    assert reports.format_ci(math.nan, 0.1, 0.2) == "n/a"
    assert reports.format_ci(0.5, 0.25, 0.75, digits=3) == "0.500 [0.250, 0.750]"


def test_metrics_table_from_evaluate_rows():
    preds = {"val": _preds(1), "test": _preds(2)}
    rows = pipeline.evaluate(preds, n_boot=50, seed=0)
    table = reports.metrics_table({"resnet18": rows, "vgg16": rows})
    assert list(table.index.names) == ["model", "dataset"]
    assert list(table.index) == [(m, d) for m in ("resnet18", "vgg16") for d in ("montgomery", "shenzhen", "all")]
    assert list(table.columns) == ["n (TB)"] + [reports.METRIC_LABELS[m] for m in METRICS]
    assert table.loc[("vgg16", "all"), "n (TB)"] == "48 (24)"
    r = rows[-1]
    assert table.loc[("resnet18", "all"), "AUC"] == reports.format_ci(r["auc"], r["auc_lo"], r["auc_hi"])


def test_cost_table_units():
    table = reports.cost_table({"resnet18": {"size": 64, "params": 11_170_000, "flops": 2_300_000_000,
                                              "weights_mb": 42.6, "latency_ms_b1": 3.1}})
    row = table.loc["resnet18"]
    assert row["parameters (M)"] == 11.17 and row["GFLOPs"] == 2.3 and row["input (px)"] == 64
