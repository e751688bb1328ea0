"""The attention figures results.json carries, against their chance levels."""
import numpy as np

from tbkd_helpers import pipeline, reports


def _masks(n=6, s=16):
    lungs = np.zeros((n, s, s), bool)
    lungs[:, 2:14, 2:7] = lungs[:, 2:14, 9:14] = True
    lesions = np.zeros((n, s, s), bool)
    for i in range(n // 2):  # half the images have a lesion (the TB ones)
        lesions[i, 3 + i:5 + i, 3:5] = True
    return lungs, lesions


def test_a_map_on_the_lesion_scores_far_above_chance_and_a_uniform_map_at_chance():
    lungs, lesions = _masks()
    on_lesion = lesions.astype(np.float32) + 0.01 * lungs
    uniform = np.ones(lesions.shape, np.float32)
    chance = pipeline.attention_chance(lungs, lesions)
    good = pipeline.attention_figures(on_lesion, lungs, lesions, guide_maps=on_lesion, n_boot=100)
    flat = pipeline.attention_figures(uniform, lungs, lesions, n_boot=100)
    assert good["pointing"]["mean"] == 1.0 and good["pointing"]["n"] == 3
    assert good["lesion_share"]["lo"] > 10 * chance["lesion_share"]
    assert good["agreement"]["mean"] == 1.0
    assert abs(flat["in_lung"]["mean"] - chance["in_lung"]) < 1e-4
    assert abs(flat["lesion_share"]["mean"] - chance["lesion_share"]) < 1e-4
    assert flat["agreement"]["mean"] is None  # no guide given


def test_without_lesion_masks_the_lesion_figures_are_undefined():
    lungs, _ = _masks()
    none = np.zeros_like(lungs)
    maps = np.random.default_rng(0).random(lungs.shape).astype(np.float32)
    figs = pipeline.attention_figures(maps, lungs, none, n_boot=50)
    assert figs["pointing"]["mean"] is None and figs["lesion_share"]["mean"] is None
    assert figs["in_lung"]["mean"] is not None
    assert pipeline.attention_chance(lungs, none)["pointing"] is None
    lines = reports.attention_lines({"chance": pipeline.attention_chance(lungs, none), "models": {"m": figs}})
    assert "pointing game n/a" in lines[1] and lines[0].strip().startswith("chance")
