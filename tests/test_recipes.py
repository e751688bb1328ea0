"""One recipe per role: every run of a role trains with what ``recipes`` declares."""
import dataclasses

import pytest
import torch

import tbkd_helpers as tk
from tbkd_helpers import data, models, pipeline, recipes, results
from tbkd_helpers.config import TEACHERS, get_profile


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("recipe", [recipes.TEACHER, recipes.STUDENT, recipes.UNET], ids=lambda r: r.role)
def test_no_recipe_stops_before_its_schedule_has_annealed(recipe):
    assert recipe.patience is None


@pytest.mark.parametrize("name", ["quick", "real", "full"])
@pytest.mark.parametrize("i", range(len(TEACHERS)))
def test_teacher_settings_are_the_teacher_recipe(name, i):
    prof = get_profile(name)
    arch = prof.teachers[i]
    s = pipeline.teacher_settings(prof, arch)
    r = recipes.TEACHER
    assert (s.optimizer, s.schedule, s.class_balance, s.bn_recalibrate, s.weight_decay) == (
        r.optimizer, r.schedule, r.class_balance, r.bn_recalibrate, r.weight_decay)
    assert s.lr == r.lr_for(arch) and s.patience is None
    assert s.epochs == r.epochs_for(arch, prof.teacher_epochs) and s.batch_size == prof.batch_size
    assert pipeline.teacher_settings(prof, arch, epochs=3).epochs == r.epochs_for(arch, 3)


def test_a_teacher_that_learns_slowly_gets_more_epochs_of_every_profile():
    r = recipes.TEACHER
    assert r.epochs_for("resnet18", 10) == 10
    assert r.epochs_for("mobilenet_v3_large", 10) == 20  # scripts/teacher_epochs_study.py chose it
    for name in ("quick", "real", "full"):
        prof = get_profile(name)
        assert pipeline.teacher_settings(prof, "mobilenet_v3_large").epochs == 2 * prof.teacher_epochs
    assert "16 epochs" in recipes.recipe_card(r, r.epochs_for("mobilenet_v3_large", 8), 16, "mobilenet_v3_large")


def test_vgg16_gets_its_own_learning_rate():
    assert recipes.TEACHER.lr_for("vgg16") < recipes.TEACHER.lr_for("resnet18")


class _Captured(Exception):
    pass


def test_chapter_04_and_the_kfold_train_the_student_with_one_recipe(monkeypatch):
    """The CE student of chapter 04 (``train_student``) and of the k-fold run
    (``results._train_one``) reach ``_fit`` with the same settings: nothing is declared
    twice."""
    seen = []

    def fake_fit(profile, prep, arch, ckpt_dir, settings, progress, **kw):
        seen.append((arch, settings))
        raise _Captured

    monkeypatch.setattr(pipeline, "_fit", fake_fit)
    monkeypatch.setattr(pipeline, "new_model", lambda profile, arch, **kw: None)
    prof = get_profile("quick")
    with pytest.raises(_Captured):
        pipeline.train_student(prof, "ce", prep=object(), progress=False)
    with pytest.raises(_Captured):
        results._train_one(prof, object(), results.student_name("ce"), None, prof.student_epochs, False, {})
    (a1, s1), (a2, s2) = seen
    assert a1 == a2 == prof.student
    assert s1.to_dict() == s2.to_dict() == pipeline.student_settings(prof).to_dict()


def test_the_augmentation_is_read_from_the_recipe(monkeypatch):
    """An edit to ``recipes.CLASSIFIER_AUGMENT`` reaches the transforms of every classifier."""
    geo, jitter = data.augmenters()
    assert geo.degrees == [-recipes.CLASSIFIER_AUGMENT.degrees, recipes.CLASSIFIER_AUGMENT.degrees]
    stronger = dataclasses.replace(recipes.CLASSIFIER_AUGMENT, degrees=20.0)
    monkeypatch.setattr(recipes, "CLASSIFIER_AUGMENT", stronger)
    assert data.augmenters()[0].degrees == [-20.0, 20.0]


def test_recipe_card_says_how_a_teacher_trains():
    card = recipes.recipe_card(recipes.TEACHER, 8, 16, "vgg16")
    assert "8 epochs" in card and "lr 0.0002" in card and "every epoch runs" in card


def test_heads_from_scratch_start_near_fifty_fifty():
    """torchvision's Inception V3 draws its fc from N(0, 0.1): logits of several units and a
    starting loss above 2, which a few hundred steps could not pull back. Every head built
    from scratch now starts small. (Train mode, as the first training step sees it: in
    eval mode a fresh network's BatchNorm has no statistics yet.)"""
    torch.manual_seed(0)
    for arch in ("inception_v3", "resnet18", "densenet121"):
        m = models.build_model(arch, seed=0).train()
        size = 80 if arch == "inception_v3" else 64
        with torch.no_grad():
            logits = m(torch.rand(8, 1, size, size))
        margin = (logits[:, 0] - logits[:, 1]).abs().mean()
        assert margin < 1.0, (arch, logits)  # torchvision's Inception V3 head: about 5


@pytest.mark.parametrize("arch", ["densenet121", "resnet18", "mobilenet_v3_small", "mobilenet_v3_large", "vgg16",
                                  "inception_v3"])
def test_stride_8_layer_doubles_the_map_of_stride_16(arch):
    m = models.build_model(arch, seed=0).eval()
    size = 80 if arch == "inception_v3" else 64
    shapes = {}
    for stride in (8, 16):
        seen = []
        h = models.target_layer(m, arch, stride=stride).register_forward_hook(
            lambda mod, i, o: seen.append(tuple(o.shape[-2:])))
        with torch.no_grad():
            m(torch.zeros(1, 1, size, size))
        h.remove()
        shapes[stride] = seen[-1]
    assert shapes[8][0] >= 2 * shapes[16][0] - 1
    with pytest.raises(ValueError, match="stride"):
        models.target_layer(m, arch, stride=4)
