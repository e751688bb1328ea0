"""Profiles, paths and seeds: the one place that says how big a run is.

Every notebook's ``parameters`` cell names a profile; everything else is read from it
here, so that a runner (papermill, ``make reproduce PROFILE=...``) changes one word.

- ``quick``: the built-in phantom chest X-rays, tiny images, few epochs; the whole kit
  runs in minutes on a 2-core CPU, offline. Committed notebook outputs show this one.
- ``real``: the NLM Shenzhen + Montgomery sets from ``TBKD_DATA_DIR``, sized so that a
  2-core CPU finishes the whole kit in about 90 minutes (its students train longest).
- ``full``: the paper's settings (224 px, 299 px for Inception V3) on real data; for a GPU.
"""
from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
TEACHERS = ("densenet121", "inception_v3", "resnet18", "mobilenet_v3_large", "vgg16")


@dataclass(frozen=True)
class Profile:
    """Every size, count and switch a run depends on. Frozen: derive with ``replace``."""

    name: str
    data: str  # "phantom" (built-in, generated) or "real" (NLM folders under data_dir)
    data_dir: Path | None = None
    seed: int = 0
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    skip_bad: bool = False  # leave bad data files out (listed in artifacts' skipped.json) instead of
    # stopping at the first; default from TBKD_SKIP_BAD (``tbkd reproduce --skip-bad`` sets it)
    # phantom data (quick profile)
    phantom_size: int = 128
    phantom_counts: dict = field(default_factory=lambda: {"shenzhen": 120, "montgomery": 60})
    phantom_difficulty: float = 0.25  # 0 easy .. 1 hard lesions; quick: learnable in a few epochs
    # stage 1: lung segmentation
    seg_size: int = 64
    seg_encoder: str = "resnet18"
    seg_epochs: int = 4
    seg_batch_size: int = 16
    seg_decoder_channels: tuple[int, ...] = (64, 32, 16, 16, 16)  # U-Net decoder widths; smp's default:
    # (256, 128, 64, 32, 16), used by real and full
    seg_threshold: float = 0.5  # lung probability above which a pixel is lung
    seg_margin: float = 0.03  # dilation margin around the lungs, share of the image's larger side
    seg_area_bounds: tuple[float, float] = (0.08, 0.60)  # plausible lung share of the image
    seg_min_lung_ratio: float = 0.25  # plausible: smaller lung >= this share of the larger
    seg_mask_max_side: int = 1024  # masks are kept at the image's size, at most this long side
    seg_extract_size: int = 0  # stored extracted images (px); 0: max(image_size, inception_size)
    seg_pretrained: bool = False  # ImageNet encoder weights for the U-Net (from scratch it already
    # reaches a Dice of 0.97 on Montgomery; the weights setting is the classifiers')
    # stage 2: teachers
    teachers: tuple[str, ...] = TEACHERS
    image_size: int = 64  # classifier input (lung-extracted image)
    inception_size: int = 80  # Inception V3 needs >= 75 px; the paper uses 299
    teacher_epochs: int = 4
    batch_size: int = 16
    weights: str = "random"  # starting weights of the classifiers: "random", "imagenet" or "cxr" (see
    # tbkd_helpers/weights.py); default from TBKD_WEIGHTS (make reproduce WEIGHTS=...)
    vgg_head: str = "classic"  # VGG16's classifier: "classic" (torchvision's, for 224 px) or
    # "gap" (global average pool + 512-wide layers; see models.VGG_HEADS)
    # stage 3: Grad-CAM
    cam_stride: int = 16  # Grad-CAM layer: last block at stride 8 (quick's 64 px), 16 (finer maps) or 32 (classic)
    cam_size: int = 16  # cached teacher maps are stored at this size (px)
    cam_method: str = "gradcam"
    cam_order: str = "second"  # the map term reaches the student through its Grad-CAM weights too
    # (second order, create_graph) or through its activations only (first: a cheaper step;
    # benchmarks/bench_cam_order.py measures both, on validation)
    guide_views: int = 0  # fixed augmented views per training image on which the guide's logits and
    # maps are cached (the student trains on exactly those views); 0: maps warped with the image,
    # logits of the unaugmented image
    # stage 4: student
    student: str = "mobilenet_v3_small"
    guide: str = "best"  # whose logits and maps the student learns from: "best" (the teacher with the
    # best validation AUC), "fusion" (all, weighted by validation AUC), "lungs" (the teacher whose
    # validation Grad-CAM maps put the largest share of their mass inside the lungs), a teacher's name, or
    # two of these joined by a comma, the maps' then the logits' ("lungs,best": distill.split_guide)
    student_epochs: int = 5
    kd_alpha: float = 1.0  # weight of logit distillation (T^2 KL)
    kd_temperature: float = 4.0
    cam_beta: float = 1.0  # weight of the Grad-CAM term (2 - 2 cos for "mse": in [0, 4] for a signed map)
    kfold: int = 3
    # hardware
    device: str = "auto"  # "auto" picks CUDA when present
    num_workers: int = 0
    student_processes: int = 0  # students (and k-fold runs) trained side by side in this many processes
    # of one thread each; 0: one per CPU core on a CPU, 1 on a GPU; TBKD_STUDENT_PROCESSES overrides
    # (see tbkd_helpers/parallel.py)
    # a derived run: its own split, teachers, maps and students in this folder under the profile's
    # artifacts (e.g. "kfold-students/fold1"), sharing the profile's lung extraction; "" for the run itself
    subrun: str = ""

    def replace(self, **changes) -> "Profile":
        return dataclasses.replace(self, **changes)

    @property
    def pretrained(self) -> bool:
        """Whether the classifiers start from pretrained weights (``weights`` not "random")."""
        return self.weights != "random"

    @property
    def run_name(self) -> str:
        """The folder name of this profile's artifacts and results: the profile's name, with
        the weights appended when they are not the profile's default (``real-imagenet``)."""
        default = PROFILES[self.name].weights if self.name in PROFILES else "random"
        return self.name if self.weights == default else f"{self.name}-{self.weights}"

    def size_for(self, arch: str) -> int:
        """Input size of a classifier: Inception V3 has its own."""
        return self.inception_size if arch.startswith("inception") else self.image_size

    def model_options(self, arch: str) -> dict:
        """The ``models.build_model`` options this profile sets for ``arch``."""
        return {"vgg_head": self.vgg_head} if arch.startswith("vgg") else {}

    @property
    def base_artifacts(self) -> Path:
        """The run's own artifacts folder, ``artifacts/<run_name>``: a derived run
        (``subrun``) reads the lung extraction from here."""
        return artifacts_dir(self.run_name)

    @property
    def artifacts(self) -> Path:
        """Where this run's split, teachers, maps and students live: ``base_artifacts``, or
        the ``subrun`` folder in it."""
        return self.base_artifacts / self.subrun if self.subrun else self.base_artifacts

    @property
    def results(self) -> Path:
        return results_dir(self.run_name)


REAL_TEACHERS = tuple("vgg16_bn" if t == "vgg16" else t for t in TEACHERS)
SMP_DECODER = (256, 128, 64, 32, 16)  # segmentation-models-pytorch's default U-Net decoder widths
PROFILES: dict[str, Profile] = {
    # quick: VGG16 with the "gap" head (why: models.VGG_HEADS); the classic head was 101 s
    # of the 158 s of quick teacher training.
    # The easiest phantoms (many large lesions) and 8 teacher epochs at batch 8: 126 training
    # images give 128 steps, the fewest in which every teacher, trained from scratch, learned
    # the task (at 4 epochs of batch 16, 32 steps, three of the five stayed near chance).
    # Grad-CAM at stride 8 (8x8 maps at 64 px): at stride 16 a 4x4 map is coarser than the
    # lesions. The student costs a few ms an image: 15 epochs (240 steps); at 5 its maps had not
    # moved towards the guide's, and at 15 they follow them only a little (agreement with the guide
    # about 0.15 on validation, below), which 30 epochs did not raise.
    # cam_order "first": a kd+cam step costs 3.2x a ce step at stride 8 second-order, 1.4x first-order
    # (benchmarks/bench_student.py --profile quick). First-order, a fresh student cannot fit the
    # guide's maps of one batch alone (benchmarks/bench_cam_fit.py: the term stays near 0.9 where
    # second-order brings it to 0.07), but in 15 epochs of real training neither order made the
    # maps follow the guide's on validation: over 3 seeds paired, first minus second, agreement with
    # the guide -0.02 [-0.17, +0.14] (0.15 against 0.17), lesion share -0.011 [-0.047, +0.025], AUC
    # -0.004 [-0.093, +0.085], at half the time (33 s against 67 s a student, one thread), and
    # neither a 4x map weight, 30 epochs nor the student's map at stride 16 raised the agreement
    # (scripts/settings_study.py --profile quick --change cam_order=first --change cam_beta=4
    # --change cam_order=first,cam_beta=4 --change cam_order=first,student_epochs=30; 2026-12-07).
    # Nor did anything else tried move the kd+cam student's maps onto the lesions more than ce's
    # (validation, 3 seeds paired, kd+cam minus ce in lesion share; same script, 2026-12-07, second
    # session): a map term 16 or 64 times as strong, +0.003 [-0.013, +0.018] and +0.010 [-0.047,
    # +0.067]; second order at 16 times, -0.011 [-0.023, +0.002], at a validation AUC 0.14 below ce's;
    # 30 epochs, -0.019 [-0.052, +0.015], on 12 views -0.014 [-0.053, +0.025]. Trained 30 epochs,
    # every student reaches a validation AUC of about 1.00 (ce 0.901 -> 1.000, kd 0.979 -> 1.000,
    # kd+cam 0.901 -> 0.996) and the students no longer differ; at 15, in half the time, the kd
    # student is ahead of ce (0.979 against 0.901), which is what chapter 04 can show of distillation.
    "quick": Profile(name="quick", data="phantom", vgg_head="gap", phantom_difficulty=0.0, teacher_epochs=8,
                     batch_size=8, cam_stride=8, student_epochs=15, guide_views=6, cam_order="first"),
    # real: sized for a 2-core CPU (aimed at 90 minutes; from nothing 79.4 on 2026-12-07, the students side by side). Measured training cost per image
    # (batch 32) at 128 px: VGG16 271 ms, Inception V3 (160 px) 73, DenseNet121 65,
    # ResNet18 29, MobileNet V3 Large 14, Small 6 -- VGG16 alone is 60 % of the teachers.
    # 112 px (144 for Inception) and 10 epochs keep the five teachers near 35 minutes.
    # VGG16 takes the "gap" head here too: torchvision's classifier (102 M weights) is made
    # for the 7x7 maps of 224-px inputs; at 112 px the last map is 3x3, and 560 images
    # cannot train that many weights from scratch (its Montgomery AUC was 0.47).
    # And VGG16 with batch normalisation (torchvision's vgg16_bn): the plain VGG16, from random
    # weights on the real X-rays, kept a training loss of ln 2 for 5 of its 10 epochs (it had not
    # started to learn); vgg16_bn learns at the other teachers' learning rate.
    "real": Profile(
        name="real", data="real", vgg_head="gap", teachers=REAL_TEACHERS, seg_size=128, seg_epochs=25, seg_decoder_channels=SMP_DECODER, image_size=112,
        inception_size=144, teacher_epochs=10, batch_size=32,
        # the student trains 40 epochs on 8 fixed views per image: against 20 x 4, over 3 seeds
        # paired on the validation split, mean validation AUC +0.052 (ce) and +0.046 (kd+cam),
        # more than the TUNING_MARGIN of the kit's other choices, though with 3 seeds neither
        # interval excludes 0; and the kd+cam student's maps agree with its guide's far more
        # (+0.43 [+0.11, +0.74]) (scripts/patience_study.py, results/real/patience.json; guide: the best-AUC teacher).
        # It costs ~4.5 s (ce) to ~8 s (kd+cam) an epoch here
        student_epochs=40, kfold=5, guide_views=8,
        # chosen on the validation split by scripts/tune_student.py (results/real/tuning.json):
        # T = 1 gave the kd+cam student a validation AUC of 0.859 against 0.824 at T = 4, more
        # than the TUNING_MARGIN that moving away from the defaults needs
        kd_temperature=1.0,
        # the guide: the teacher whose maps lie most inside the lungs on the validation split. The
        # best-AUC teacher (DenseNet121) put 0.37 of its validation map mass inside the lungs, no
        # more than a uniform map (0.41), and its students' maps followed it there; VGG16-BN put 0.52.
        # Guided by it, over 3 seeds paired on validation, the kd+cam student's maps were more in the
        # lungs (0.52 against 0.37: +0.15 [+0.07, +0.23]) at the same validation AUC (+0.008
        # [-0.064, +0.080]) (scripts/guide_study.py, results/real/guides.json).
        # Its soft predictions, though, are a weaker teacher's: the guide is split, the maps of the in-lung
        # teacher with the soft predictions of the best-AUC one (DenseNet121). Against VGG16-BN for both,
        # over 3 seeds paired on validation, the kd+cam student's accuracy rose in every seed (+0.033
        # [+0.015, +0.051]), its AUC by +0.009 [-0.018, +0.035] (within the 0.02 margin) and its maps
        # stayed as much in the lungs (+0.006 [-0.065, +0.077]); the kd student, which learns no maps, did
        # not gain (AUC -0.015 [-0.059, +0.029]) (scripts/guide_study.py --variants kd+cam kd --guides lungs
        # lungs,best --out guides_split.json, results/real/guides_split.json)
        guide="lungs,best",
        # the map term's first-order gradient (Grad-CAM weights held constant): over 3 seeds paired on
        # validation against the second-order one, AUC -0.007 [-0.039, +0.025] and in-lung share -0.016
        # [-0.044, +0.011], both within the kit's 0.02 margin, at about half the training time (a kd+cam
        # step 1.08x a plain one against 2.01x; 155 s a student against 304 s); its maps agree less
        # with the guide's (0.75 against 0.90) (benchmarks/bench_cam_order.py, results/real/cam_order.json)
        cam_order="first",
    ),
    # full: the paper's sizes. At 224 px the classic Grad-CAM layer (the last block, stride 32)
    # already gives 7x7 maps (8x8 for Inception V3 at 299 px), so full uses it: the finer
    # stride-16 layer exists for the small inputs of quick and real, and costs the student's
    # distillation step more (its second-order backward runs through the whole last stage:
    # benchmarks/bench_student.py measured 1.92x a CE step at stride 16, 1.02x at stride 32, at 112 px;
    # with cam_order "first" 1.05x and 0.97x).
    "full": Profile(
        name="full", data="real", seg_size=256, seg_epochs=60, seg_batch_size=16, seg_decoder_channels=SMP_DECODER,
        image_size=224, inception_size=299, teacher_epochs=40, batch_size=32,
        student_epochs=60, kfold=5, cam_stride=32, guide_views=8, weights="imagenet",
    ),
}


def default_data_dir() -> Path:
    """``TBKD_DATA_DIR`` if set, else ``../shared/data`` beside the repository."""
    env = os.environ.get("TBKD_DATA_DIR")
    return Path(env).expanduser() if env else (REPO_ROOT.parent / "shared" / "data")


def artifacts_dir(profile_name: str) -> Path:
    """``$TBKD_ARTIFACTS/<profile>`` if set, else ``<repo>/artifacts/<profile>``."""
    base = os.environ.get("TBKD_ARTIFACTS")
    return (Path(base).expanduser() if base else REPO_ROOT / "artifacts") / profile_name


def results_dir(profile_name: str) -> Path:
    base = os.environ.get("TBKD_RESULTS")
    return (Path(base).expanduser() if base else REPO_ROOT / "results") / profile_name


_TRUE, _FALSE = ("1", "true", "yes"), ("", "0", "false", "no")
WEIGHT_KINDS = ("random", "imagenet", "cxr")  # weights.KINDS (config imports nothing of the package)


def env_skip_bad() -> bool:
    """``TBKD_SKIP_BAD`` as a bool: "1", "true", "yes" are True; unset, "", "0", "false",
    "no" are False; anything else is an error (a typo must not pass as False)."""
    raw = os.environ.get("TBKD_SKIP_BAD", "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(f"TBKD_SKIP_BAD={os.environ['TBKD_SKIP_BAD']!r}: expected 1/true/yes or 0/false/no")


def get_profile(name: str = "quick", data_dir: str | os.PathLike | None = None, **overrides) -> Profile:
    """The named profile, with ``data_dir`` resolved and any field overridden.

    ``skip_bad``, unless given, comes from the environment variable ``TBKD_SKIP_BAD``.

    >>> get_profile("quick", teacher_epochs=1).teacher_epochs
    1
    """
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}")
    prof = PROFILES[name]
    if prof.data == "real":
        data_dir = Path(data_dir).expanduser() if data_dir else default_data_dir()
    elif data_dir:
        data_dir = Path(data_dir).expanduser()
    else:
        data_dir = artifacts_dir(name) / "phantom_data"
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Profile)}
    if unknown:
        raise ValueError(f"unknown profile setting(s): {', '.join(sorted(unknown))}")
    if "skip_bad" not in overrides:
        overrides["skip_bad"] = env_skip_bad()
    if "weights" not in overrides and os.environ.get("TBKD_WEIGHTS"):
        overrides["weights"] = os.environ["TBKD_WEIGHTS"].strip()
    if "weights" in overrides and overrides["weights"] not in WEIGHT_KINDS:
        raise ValueError(f"weights={overrides['weights']!r}: choose one of {', '.join(WEIGHT_KINDS)}")
    return dataclasses.replace(prof, data_dir=Path(data_dir), **overrides)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that a repeated run prints the same numbers."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def torch_device(setting: str = "auto"):
    """``cuda`` when present (or asked for), else ``cpu``."""
    import torch

    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)
