"""The CAM explorer: pick an X-ray and one or two models, see where they look.

Three layers, so that everything but the drawing can be tested without a screen:

- :class:`ExplorerState` holds what the explorer shows: the images (one tensor per input
  size), their records (key, data set, label), lung and lesion masks, and the models
  (:class:`ExplorerModel`: the network, its architecture, input size, Grad-CAM target
  layer, its probability of TB for every image and its decision threshold). Maps are
  computed on demand, one image at a time, and kept.
- :class:`Selection` is what the user chose; :func:`matching_images` and
  :func:`compute_view` are pure functions of ``(state, selection)`` that say which images
  match and what to show (:class:`View`: one :class:`Panel` per model).
- :class:`CamExplorer` wires ipywidgets controls to those functions. Its callbacks read
  the controls and the explorer's own ``state``, never notebook globals; the figure
  (``tk.viz.cam_explorer_figure``) is drawn into an ``ipywidgets.Image`` as PNG bytes,
  and the last one is kept as ``explorer.figure`` (and its view as ``explorer.view``).

In a notebook::

    explorer = tk.widgets.explorer_for_profile(profile, prep)   # the five teachers
    explorer.add_model("student", student, "mobilenet_v3_small", size=64, threshold=0.5)
    explorer                                                     # shows it
    explorer.set(a="resnet18", b="vgg16", method="gradcam++")    # or drive it from code
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from . import cam as _cam
from . import models as _models

__all__ = ["ExplorerModel", "ExplorerState", "Selection", "Panel", "View", "matching_images",
           "compute_view", "describe", "CamExplorer", "explorer_for_profile", "state_from_attention",
           "LABELS", "TARGETS", "OUTCOMES"]

#: label filter → label (None: any)
LABELS = {"all": None, "normal": 0, "TB": 1}
#: target class of the map → class index (None: the model's own decision)
TARGETS = {"TB": 1, "normal": 0, "predicted": None}
#: outcome filter, judged by model A's decision
OUTCOMES = ("all", "correct", "wrong")
_CLASS = {0: "normal", 1: "TB"}
_NONE = "(none)"


# --------------------------------------------------------------------------- state
@dataclass
class ExplorerModel:
    """One model of the explorer and what it predicted for every image of the state."""

    name: str
    model: torch.nn.Module
    arch: str
    size: int
    layer: torch.nn.Module
    probs: np.ndarray  # P(TB), (N,)
    threshold: float = 0.5

    @property
    def predicted(self) -> np.ndarray:
        """The decision for every image: 1 (TB) when ``probs >= threshold``."""
        return (self.probs >= self.threshold).astype(int)


@dataclass
class ExplorerState:
    """What the explorer can show.

    ``records``: objects with ``key``, ``dataset`` and ``label`` (``data.Record``).
    ``images``: ``{size: (N, 1, size, size) tensor in [0, 1]}``, row ``i`` is record ``i``;
    other sizes are made by ``image_loader(size)`` when given, else resized from the
    largest one held. ``lung_masks`` / ``lesion_masks``: ``(N, h, w)`` bool or ``None``
    (resized to each model's size when drawn). Models are added with :meth:`add_model`.
    """

    records: Sequence[Any]
    images: dict[int, torch.Tensor]
    lung_masks: np.ndarray | None = None
    lesion_masks: np.ndarray | None = None
    models: dict[str, ExplorerModel] = field(default_factory=dict)
    cam_stride: int = 16
    image_loader: Callable[[int], torch.Tensor] | None = None
    _cams: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.records = list(self.records)
        n = len(self.records)
        if not self.images and self.image_loader is None:
            raise ValueError("ExplorerState: give images ({size: tensor}) or an image_loader")
        self.images = {int(s): _check_images(t, n, f"images[{s}]") for s, t in self.images.items()}
        for name in ("lung_masks", "lesion_masks"):
            m = getattr(self, name)
            if m is not None:
                m = np.asarray(m).astype(bool)
                if m.ndim != 3 or len(m) != n:
                    raise ValueError(f"ExplorerState: {name} must be (N={n}, h, w), got {m.shape}")
                setattr(self, name, m)
        if self.lesion_masks is not None and not self.lesion_masks.any():
            self.lesion_masks = None  # nothing to draw (real data)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def keys(self) -> list[str]:
        return [str(r.key) for r in self.records]

    @property
    def labels(self) -> np.ndarray:
        return np.array([int(r.label) for r in self.records], dtype=int)

    @property
    def datasets(self) -> list[str]:
        return sorted({str(r.dataset) for r in self.records})

    def images_at(self, size: int) -> torch.Tensor:
        """All images at ``size`` px, ``(N, 1, size, size)`` (made once, then kept)."""
        size = int(size)
        if size not in self.images:
            if self.image_loader is not None:
                imgs = self.image_loader(size)
            else:
                src = self.images[max(self.images)]
                imgs = torch.nn.functional.interpolate(src, size=(size, size), mode="bilinear",
                                                       align_corners=False, antialias=True).clamp(0, 1)
            self.images[size] = _check_images(imgs, len(self), f"images at {size} px")
        return self.images[size]

    def add_model(self, name: str, model: torch.nn.Module, arch: str, size: int | None = None,
                  probs: Sequence[float] | None = None, threshold: float = 0.5,
                  layer: torch.nn.Module | None = None) -> ExplorerModel:
        """Add (or replace) a model: a teacher, a student, anything ``models.build_model`` made.

        ``size``: its input size (default: the only image size held). ``probs``: its P(TB)
        for every image (default: computed here). ``threshold``: its decision threshold
        (choose it on validation data). ``layer``: the Grad-CAM layer (default:
        ``models.target_layer(model, arch, stride=state.cam_stride)``).
        """
        if size is None:
            if len(self.images) != 1:
                raise ValueError(f"add_model({name!r}): pass size= (images are held at "
                                 f"{sorted(self.images) or 'no size'} px)")
            size = next(iter(self.images))
        model = model.eval()
        layer = layer if layer is not None else _models.target_layer(model, arch, stride=self.cam_stride)
        if probs is None:
            probs = _probabilities(model, self.images_at(size))
        probs = np.asarray(probs, dtype=np.float64).reshape(-1)
        if len(probs) != len(self):
            raise ValueError(f"add_model({name!r}): {len(probs)} probabilities for {len(self)} images")
        entry = ExplorerModel(name, model, arch, int(size), layer, probs, float(threshold))
        self.models[name] = entry
        self._cams = {k: v for k, v in self._cams.items() if k[0] != name}
        return entry

    def target_class(self, name: str, index: int, target: str) -> int:
        """The class whose map is shown: ``TARGETS[target]``, or the model's decision."""
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}: choose one of {', '.join(TARGETS)}")
        t = TARGETS[target]
        return int(self.models[name].predicted[index]) if t is None else t

    def cam(self, name: str, index: int, method: str = "gradcam", target_class: int = 1) -> np.ndarray:
        """Model ``name``'s map of image ``index`` at its input size, ``(size, size)`` in [0, 1]."""
        key = (name, int(index), method, int(target_class))
        if key not in self._cams:
            m = self.models[name]
            x = self.images_at(m.size)[index:index + 1]
            self._cams[key] = _cam.compute_cams(m.model, m.layer, x, target_class=int(target_class),
                                                method=method)[0]
        return self._cams[key]

    def mask(self, kind: str, index: int, size: int) -> np.ndarray | None:
        """The lung (``"lung"``) or lesion (``"lesion"``) mask of image ``index`` at ``size`` px."""
        masks = self.lung_masks if kind == "lung" else self.lesion_masks
        if masks is None:
            return None
        m = masks[index]
        if m.shape != (size, size):
            m = _cam.resize_maps(m.astype(np.float32), size, mode="bilinear") >= 0.5
        return m


def _check_images(t: Any, n: int, what: str) -> torch.Tensor:
    t = torch.as_tensor(t).float()
    if t.ndim != 4 or t.shape[1] != 1 or len(t) != n:
        raise ValueError(f"ExplorerState: {what} must be (N={n}, 1, H, W), got {tuple(t.shape)}")
    return t


@torch.no_grad()
def _probabilities(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    device = next(model.parameters()).device
    out = [torch.softmax(_cam._logits_of(model(images[i:i + batch_size].to(device))).float(), 1)[:, 1].cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


# --------------------------------------------------------------------------- what to show
@dataclass(frozen=True)
class Selection:
    """What the user picked. ``image``: a record key (``None``: the first that matches).

    ``outcome`` ("all", "correct", "wrong") is judged by model ``a``'s decision.
    ``target``: "TB", "normal" or "predicted" (each model's own decision).
    """

    dataset: str = "all"
    label: str = "all"
    outcome: str = "all"
    image: str | None = None
    a: str | None = None
    b: str | None = None
    method: str = "gradcam"
    target: str = "TB"
    alpha: float = 0.5
    show_lungs: bool = True
    show_lesions: bool = False


@dataclass
class Panel:
    """One model's view of the chosen image."""

    model: str
    arch: str
    image: np.ndarray  # (s, s) in [0, 1], the model's input
    cam: np.ndarray  # (s, s) in [0, 1]
    prob: float  # P(TB)
    threshold: float
    predicted: int
    correct: bool
    target_class: int
    lungs: np.ndarray | None = None
    lesions: np.ndarray | None = None

    @property
    def title(self) -> str:
        mark = "✓" if self.correct else "✗"
        return (f"{self.model}\nP(TB) = {self.prob:.2f} → {_CLASS[self.predicted]} {mark}"
                f"\nmap of class {_CLASS[self.target_class]}")


@dataclass
class View:
    """Everything the explorer shows for one selection."""

    selection: Selection
    candidates: list[int]  # indices of the images that match the filters
    index: int | None = None  # the image shown
    key: str = ""
    dataset: str = ""
    label: int | None = None
    panels: list[Panel] = field(default_factory=list)
    message: str = ""  # why nothing is shown

    @property
    def title(self) -> str:
        if self.index is None:
            return self.message
        return (f"{self.key} · {self.dataset} · true label {_CLASS[self.label]} · "
                f"{self.selection.method}")


def _check_selection(state: ExplorerState, sel: Selection) -> None:
    if sel.label not in LABELS:
        raise ValueError(f"unknown label filter {sel.label!r}: choose one of {', '.join(LABELS)}")
    if sel.outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome filter {sel.outcome!r}: choose one of {', '.join(OUTCOMES)}")
    if sel.method not in _cam.CAM_METHODS:
        raise ValueError(f"unknown CAM method {sel.method!r}: choose one of {', '.join(_cam.CAM_METHODS)}")
    if sel.target not in TARGETS:
        raise ValueError(f"unknown target {sel.target!r}: choose one of {', '.join(TARGETS)}")
    for m in (sel.a, sel.b):
        if m is not None and m not in state.models:
            raise ValueError(f"unknown model {m!r}: the explorer has {', '.join(state.models) or 'none'}")
    if not 0.0 <= sel.alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {sel.alpha}")


def matching_images(state: ExplorerState, sel: Selection) -> list[int]:
    """Indices of the images that pass the data set, label and outcome filters."""
    _check_selection(state, sel)
    labels = state.labels
    ok = np.ones(len(state), bool)
    if sel.dataset != "all":
        ok &= np.array([r.dataset == sel.dataset for r in state.records], bool)
    if LABELS[sel.label] is not None:
        ok &= labels == LABELS[sel.label]
    if sel.outcome != "all":
        if sel.a is None:
            raise ValueError("the outcome filter needs a model (a) to judge by")
        right = state.models[sel.a].predicted == labels
        ok &= right if sel.outcome == "correct" else ~right
    return np.flatnonzero(ok).tolist()


def compute_view(state: ExplorerState, sel: Selection) -> View:
    """What to show for ``sel``: the chosen image (or the first that matches) under model
    ``a`` and, when given, model ``b``."""
    candidates = matching_images(state, sel)
    view = View(selection=sel, candidates=candidates)
    if not candidates:
        view.message = "no image matches these filters"
        return view
    keys = state.keys
    index = next((i for i in candidates if keys[i] == sel.image), candidates[0])
    rec = state.records[index]
    view.index, view.key, view.dataset, view.label = index, keys[index], str(rec.dataset), int(rec.label)
    names = [m for m in (sel.a, sel.b) if m is not None]
    if not names:
        view.message = "choose a model"
        return view
    for name in dict.fromkeys(names):  # the same model twice: one panel
        m = state.models[name]
        tc = state.target_class(name, index, sel.target)
        pred = int(m.predicted[index])
        view.panels.append(Panel(
            model=name, arch=m.arch, image=state.images_at(m.size)[index, 0].numpy(),
            cam=state.cam(name, index, sel.method, tc), prob=float(m.probs[index]),
            threshold=m.threshold, predicted=pred, correct=pred == view.label, target_class=tc,
            lungs=state.mask("lung", index, m.size) if sel.show_lungs else None,
            lesions=state.mask("lesion", index, m.size) if sel.show_lesions else None))
    return view


def describe(view: View) -> str:
    """The view as a few lines of HTML (the explorer's text under the controls)."""
    if view.index is None:
        return f"<b>{view.message}</b>"
    n = len(view.candidates)
    lines = [f"<b>{view.key}</b> ({view.dataset}), true label <b>{_CLASS[view.label]}</b> — "
             f"image {view.candidates.index(view.index) + 1} of {n} matching"]
    for p in view.panels:
        verdict = "correct" if p.correct else "wrong"
        lines.append(f"<b>{p.model}</b>: P(TB) = {p.prob:.3f} (threshold {p.threshold:.3f}) → "
                     f"{_CLASS[p.predicted]}, {verdict}; showing the map of class {_CLASS[p.target_class]}")
    if not view.panels:
        lines.append(view.message)
    return "<br>".join(lines)


# --------------------------------------------------------------------------- the widget
class CamExplorer:
    """ipywidgets explorer over an :class:`ExplorerState`.

    Controls (``explorer.controls[name]``): ``dataset``, ``label``, ``outcome``,
    ``image``, ``a``, ``b``, ``method``, ``target``, ``alpha``, ``show_lungs``,
    ``show_lesions``. Changing any of them redraws: ``explorer.view`` (the
    :class:`View`), ``explorer.figure`` (the matplotlib figure), ``explorer.image``
    (an ``ipywidgets.Image`` holding it as PNG) and ``explorer.info`` (an HTML line per
    model with its probability and decision). ``explorer.set(**values)`` changes several
    controls and redraws once. Shown in a notebook by being the last expression of a
    cell (or ``display(explorer)``); ``explorer.widget`` is the ipywidgets box.
    """

    def __init__(self, state: ExplorerState, selection: Selection | None = None):
        import ipywidgets as W

        self.state = state
        names = list(state.models)
        sel = selection or Selection()
        if sel.a is None and names:
            sel = replace(sel, a=names[0])
        _check_selection(state, sel)
        wide = {"description_width": "initial"}
        toggles = {"description_width": "initial", "button_width": "5.5em"}
        c = self.controls = {
            "dataset": W.Dropdown(options=["all", *state.datasets], value=sel.dataset,
                                  description="data set", style=wide),
            "label": W.ToggleButtons(options=list(LABELS), value=sel.label, description="label", style=toggles),
            "outcome": W.ToggleButtons(options=list(OUTCOMES), value=sel.outcome,
                                       description="model A was", style=toggles),
            "image": W.Dropdown(options=[], description="image", style=wide,
                                layout=W.Layout(width="28em")),
            "a": W.Dropdown(options=names, value=sel.a, description="model A", style=wide),
            "b": W.Dropdown(options=[_NONE, *names], value=sel.b or _NONE, description="model B", style=wide),
            "method": W.Dropdown(options=list(_cam.CAM_METHODS), value=sel.method, description="CAM method",
                                 style=wide),
            "target": W.ToggleButtons(options=list(TARGETS), value=sel.target, description="map of class",
                                      style=toggles),
            "alpha": W.FloatSlider(value=sel.alpha, min=0.0, max=1.0, step=0.05, description="opacity",
                                   continuous_update=False, style=wide),
            "show_lungs": W.Checkbox(value=sel.show_lungs, description="lung mask", indent=False),
            "show_lesions": W.Checkbox(value=sel.show_lesions, description="lesions (phantoms)",
                                       indent=False, disabled=state.lesion_masks is None),
        }
        c["method"].tooltip = "scorecam runs the model once per channel: tens of seconds on a CPU"
        # align_self: shown at its own size, not stretched to the box's width
        self.image = W.Image(format="png", layout=W.Layout(max_width="100%", align_self="flex-start"))
        self.info = W.HTML()
        self.status = W.HTML()
        self.figure = None
        self.view: View | None = None
        self._busy = False
        self._sync_images(sel.image)
        rows = [W.HBox([c["dataset"], c["label"]]), W.HBox([c["outcome"], c["image"]]),
                W.HBox([c["a"], c["b"], c["method"]]),
                W.HBox([c["target"], c["alpha"], c["show_lungs"], c["show_lesions"]])]
        self.widget = W.VBox([*rows, self.status, self.info, self.image])
        self.widget.add_class("tbkd-cam-explorer")
        for name, w in c.items():
            w.observe(self._on_change, names="value")
        self.refresh()

    # ---- reading the controls
    def selection(self) -> Selection:
        """The current :class:`Selection`, read from the controls."""
        c = self.controls
        b = c["b"].value
        return Selection(dataset=c["dataset"].value, label=c["label"].value, outcome=c["outcome"].value,
                         image=c["image"].value, a=c["a"].value, b=None if b == _NONE else b,
                         method=c["method"].value, target=c["target"].value, alpha=float(c["alpha"].value),
                         show_lungs=bool(c["show_lungs"].value), show_lesions=bool(c["show_lesions"].value))

    def _sync_images(self, keep: str | None = None) -> None:
        """Offer the images that match the filters, keeping ``keep`` when it still matches."""
        sel = self.selection() if keep is None else replace(self.selection(), image=keep)
        try:
            idx = matching_images(self.state, sel)
        except ValueError:
            idx = []
        keys = self.state.keys
        opts = [(f"{keys[i]} ({_CLASS[int(self.state.records[i].label)]})", keys[i]) for i in idx]
        w = self.controls["image"]
        w.options = opts
        valid = [k for _, k in opts]
        w.value = sel.image if sel.image in valid else (valid[0] if valid else None)

    # ---- reacting
    @contextlib.contextmanager
    def _hold(self) -> Iterator[None]:
        was, self._busy = self._busy, True
        try:
            yield
        finally:
            self._busy = was

    def _on_change(self, change) -> None:
        if self._busy:
            return
        with self._hold():
            if change["owner"] is not self.controls["image"]:
                self._sync_images(self.controls["image"].value)
        self.refresh()

    def set(self, **values) -> "CamExplorer":
        """Change several controls (names as in ``controls``; ``b=None`` for no second model)
        and redraw once."""
        unknown = set(values) - set(self.controls)
        if unknown:
            raise ValueError(f"unknown control(s): {', '.join(sorted(unknown))}")
        with self._hold():
            for name, value in values.items():
                if name != "image":
                    self.controls[name].value = _NONE if (name == "b" and value is None) else value
            self._sync_images(values.get("image", self.controls["image"].value))
        self.refresh()
        return self

    def refresh(self) -> View:
        """Recompute the view from the controls and redraw."""
        from . import viz

        sel = self.selection()
        self.status.value = "<i>computing…</i>"
        try:
            view = compute_view(self.state, sel)
        except (ValueError, RuntimeError) as err:
            self.status.value = f"<span style='color:#b00'>{err}</span>"
            raise
        fig = viz.cam_explorer_figure(view, alpha=sel.alpha)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        self.view, self.figure = view, fig
        self.image.value = buf.getvalue()
        self.info.value = describe(view)
        self.status.value = ""
        return view

    # ---- models
    def add_model(self, name: str, model: torch.nn.Module, arch: str, size: int | None = None,
                  probs: Sequence[float] | None = None, threshold: float = 0.5,
                  layer: torch.nn.Module | None = None, show: bool = False) -> ExplorerModel:
        """Add a model (see :meth:`ExplorerState.add_model`) and offer it in both model menus;
        ``show=True`` also puts it beside model A as model B."""
        entry = self.state.add_model(name, model, arch, size=size, probs=probs, threshold=threshold,
                                     layer=layer)
        names = list(self.state.models)
        with self._hold():
            a, b = self.controls["a"].value, self.controls["b"].value
            self.controls["a"].options = names
            self.controls["a"].value = a if a in names else names[0]
            self.controls["b"].options = [_NONE, *names]
            self.controls["b"].value = name if show else b
        self.refresh()
        return entry

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def __repr__(self) -> str:
        return (f"CamExplorer({len(self.state)} images, models: {', '.join(self.state.models)}; "
                f"showing {self.view.title if self.view else 'nothing'})")


# --------------------------------------------------------------------------- from a profile
def explorer_for_profile(profile, prep=None, models: Sequence[str] | None = None, part: str = "test",
                         selection: Selection | None = None, attention=None) -> CamExplorer:
    """An explorer of the profile's trained teachers on one split part, in one line.

    ``models``: teacher architectures (default: all of ``profile.teachers``; a missing
    one is trained first). Probabilities come from ``pipeline.predictions`` (cached beside
    each checkpoint) and each teacher's threshold is chosen on the validation split, as in
    ``pipeline.evaluate``. Lung masks are the U-Net's; lesion masks (phantoms) the ground
    truth. ``attention``: a ``pipeline.TeacherAttention`` of the same part (chapter 03
    has one): its models, images, masks, probabilities and thresholds are used as they
    are, and nothing is read again. Add a student afterwards with
    :meth:`CamExplorer.add_model`.
    """
    sel = selection or Selection(method=profile.cam_method if profile.cam_method in _cam.CAM_METHODS
                                 else "gradcam")
    if attention is not None and attention.part == part:
        return CamExplorer(state_from_attention(attention, models, cam_stride=profile.cam_stride), sel)
    from . import data as _data
    from . import metrics as _metrics
    from . import pipeline as _pl

    prep = prep or _data.prepare(profile, progress=False)
    archs = list(models) if models else list(profile.teachers)
    records = _pl.classifier_records(profile, prep, part)
    if not records:
        raise ValueError(f"explorer_for_profile: the {part!r} part has no images")
    size0 = profile.image_size

    def loader(size: int) -> torch.Tensor:
        return _data.CXRDataset(records, size=size).images

    lesions = _pl.lung_masks(profile, records, size0, what="lesion")
    state = ExplorerState(records, images={size0: loader(size0)},
                          lung_masks=_pl.lung_masks(profile, records, size0, what="lung"),
                          lesion_masks=lesions if lesions.any() else None,
                          cam_stride=profile.cam_stride, image_loader=loader)
    for arch in archs:
        d = _pl.teacher_dir(profile, arch)
        if not (d / "done.json").is_file():
            _pl.train_teacher(profile, arch, prep, progress=False)
        model = _pl.load_classifier(d / "best.pt")
        preds = _pl.predictions(profile, d, arch, prep, model=model)
        val = preds["val"]
        thr = _metrics.choose_threshold(np.array(val["labels"]), np.array(val["probs"]))
        probs = None
        if part in preds:
            by_key = dict(zip(preds[part]["keys"], preds[part]["probs"]))
            probs = [by_key[r.key] for r in records]
        state.add_model(arch, model, arch, size=profile.size_for(arch), probs=probs, threshold=thr)
    return CamExplorer(state, sel)


def state_from_attention(att, models: Sequence[str] | None = None, cam_stride: int = 16) -> ExplorerState:
    """An :class:`ExplorerState` from a ``pipeline.TeacherAttention``: its records, images
    (every input size), U-Net lung masks, lesions, and each teacher with its
    probabilities and validation threshold."""
    names = list(models) if models else list(att.teachers)
    first = att.sizes[names[0]]
    lesions = att.lesions.get(first)
    state = ExplorerState(att.records, images=dict(att.images), lung_masks=att.lungs.get(first),
                          lesion_masks=lesions if lesions is not None and lesions.any() else None,
                          cam_stride=cam_stride)
    for arch in names:
        state.add_model(arch, att.models[arch], arch, size=att.sizes[arch], probs=att.probs[arch],
                        threshold=att.thresholds[arch])
    return state
