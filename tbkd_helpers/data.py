"""The data layer: find chest X-rays in the official layouts, read them, split them.

Layouts read (the root may be given at any level: the folder holding both sets, one
set's own folder, or its ``CXR_png`` folder):

- Shenzhen: ``ChinaSet_AllFiles/CXR_png/CHNCXR_NNNN_L.png``; the public Shenzhen lung
  masks ``CHNCXR_NNNN_L_mask.png`` in a ``mask/`` (or ``masks/``) folder beside
  ``CXR_png`` or beside the set's folder (Montgomery masks ``MCUCXR_*`` that some bundles
  keep in the same folder are left to their own set).
- Montgomery: ``MontgomerySet/CXR_png/MCUCXR_NNNN_L.png`` with
  ``ManualMask/leftMask/`` and ``ManualMask/rightMask/`` (same file names).
- Folder-per-class: ``<root>/<class>/*.png|jpg`` with class folders such as
  ``normal/`` and ``tuberculosis/`` (see ``CLASS_NAMES``).
- The kit's phantoms are written in the Shenzhen and Montgomery layouts, plus a
  ``LesionMask/`` folder holding where the lesions are.

``L`` in a file name is the label: ``0`` normal, ``1`` tuberculosis. Every image is read
as a single-channel ``float32`` array in [0, 1] whatever its bit depth, colour mode,
format or size. Bad input raises :class:`DataError` with one line that names the file:
a corrupt image or mask, a mask without its image, a subfolder holding images (they
would not be read), ... ``scan(..., skip_bad=True)`` lists them instead.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import store

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Files and folders an operating system or tool leaves behind (and any name starting with
# "."); they are ignored, never read as images.
JUNK_NAMES = {"thumbs.db", "desktop.ini", ".ds_store", "__macosx"}
CLASS_NAMES = {
    "normal": 0, "negative": 0, "healthy": 0, "0": 0,
    "tuberculosis": 1, "tb": 1, "positive": 1, "abnormal": 1, "1": 1,
}
SET_FOLDERS = {"shenzhen": "ChinaSet_AllFiles", "montgomery": "MontgomerySet"}
_NLM_NAME = re.compile(r"^(?P<pid>(?P<prefix>CHNCXR|MCUCXR)_(?P<num>\d{4}))_(?P<label>[^._]+)$")
_PREFIX_SET = {"CHNCXR": "shenzhen", "MCUCXR": "montgomery"}


class DataError(ValueError):
    """Bad input. The message is one line that starts with the offending path."""


@dataclass(frozen=True)
class Record:
    """One chest X-ray and what is known of it."""

    key: str  # unique and stable: "<dataset>/<file stem>"
    path: Path  # the image
    dataset: str  # "shenzhen", "montgomery", or the folder name of a folder-per-class set
    label: int  # 0 normal, 1 tuberculosis
    patient_id: str
    left_mask: Path | None = None  # patient's left lung (appears on the image's right)
    right_mask: Path | None = None
    mask: Path | None = None  # a combined lung mask (the public Shenzhen masks)
    lesion_mask: Path | None = None  # phantoms only: where the lesions are

    @property
    def has_lung_mask(self) -> bool:
        return self.mask is not None or (self.left_mask is not None and self.right_mask is not None)

    def with_path(self, path: str | Path) -> "Record":
        """The same record reading its image from elsewhere (e.g. a lung-extracted copy)."""
        return dataclasses.replace(self, path=Path(path))


@dataclass
class Scan:
    """What :func:`scan` found: the records, and every file it skipped with the reason."""

    root: Path
    records: list[Record]
    skipped: list[tuple[Path, str]]

    def report(self) -> str:
        if not self.skipped:
            return f"{len(self.records)} images read from {self.root}; none skipped."
        lines = [f"{len(self.records)} images read from {self.root}; "
                 f"{len(self.skipped)} skipped:"]
        lines += [f"  {p}: {why}" for p, why in self.skipped]
        return "\n".join(lines)


# --------------------------------------------------------------------------- reading

def read_image(path: str | Path) -> np.ndarray:
    """Read any PNG/JPEG chest X-ray as ``float32`` (H, W) in [0, 1].

    8-bit images are divided by 255. 16-bit images are divided by the largest value
    of their bit depth: 4095 when every pixel fits in 12 bits (the Montgomery set is
    12-bit data stored in 16-bit PNGs), else 65535. RGB is turned into luminance;
    an alpha channel is dropped.
    """
    path = Path(path)
    arr = _decode(path)
    if arr.ndim == 3:
        rgb = arr[..., :3].astype(np.float32)
        arr = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(arr / 255.0, 0, 1).astype(np.float32)  # colour is decoded as 8-bit
    if arr.dtype == np.uint8:
        return (arr.astype(np.float32) / 255.0)
    if arr.dtype == bool:
        return arr.astype(np.float32)
    arr = arr.astype(np.float32)
    return np.clip(arr / _depth(arr), 0, 1).astype(np.float32)


def _depth(arr: np.ndarray) -> float:
    top = float(arr.max()) if arr.size else 0.0
    if top <= 255:
        return 255.0
    return 4095.0 if top <= 4095 else 65535.0


def _decode(path: Path) -> np.ndarray:
    """Decode an image file, turning every failure into a one-line DataError."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGB", "RGBA", "LA", "P", "CMYK", "YCbCr"):
                im = im.convert("RGBA" if im.mode in ("RGBA", "LA", "P") else "RGB")
                arr = np.asarray(im)
                return arr[..., :3] if arr.shape[-1] == 4 else arr
            if im.mode == "1":
                return np.asarray(im, dtype=bool)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                return np.asarray(im).astype(np.int64).clip(0, 65535).astype(np.uint16)
            if im.mode == "F":
                raise DataError(f"{path}: floating-point images are not supported")
            return np.asarray(im.convert("L"))
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image (unrecognised file format)") from None
    except (OSError, SyntaxError, ValueError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "truncated" in msg.lower() or isinstance(err, (SyntaxError,)):
            raise DataError(f"{path}: truncated or corrupt image ({msg})") from None
        raise DataError(f"{path}: unreadable image ({msg})") from None


def check_image(path: str | Path) -> None:
    """Raise DataError unless the file is a complete, decodable image."""
    _decode(Path(path))


def read_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A binary mask (any bit depth, any size) as bool, resized to ``shape`` (H, W) if given."""
    arr = _decode(Path(path))
    if arr.ndim == 3:
        arr = arr.max(axis=-1)
    m = arr > (arr.max() / 2 if arr.max() > 0 else 0)
    if shape is not None and m.shape != tuple(shape):
        m = resize(m.astype(np.float32), shape, order=1) >= 0.5
    return m


def resize(img: np.ndarray, shape: int | tuple[int, int], order: int = 1) -> np.ndarray:
    """Resize a 2-D float array to ``shape`` (H, W) (an int means square).

    ``order=1`` is bilinear with antialiasing when shrinking (Pillow), 0 is nearest.
    """
    if isinstance(shape, int):
        shape = (shape, shape)
    h, w = shape
    if img.shape == (h, w):
        return img.astype(np.float32, copy=False)
    im = Image.fromarray(img.astype(np.float32), mode="F")
    resample = Image.Resampling.BILINEAR if order else Image.Resampling.NEAREST
    return np.asarray(im.resize((w, h), resample=resample, reducing_gap=None), dtype=np.float32)


def lung_mask(record: Record, shape: tuple[int, int] | None = None, side: str = "both") -> np.ndarray:
    """The record's lung mask as bool (H, W): ``side`` is "left", "right" or "both".

    "left" is the patient's left lung, which is on the image's right. With a combined
    mask only (public Shenzhen masks), only "both" is available.
    """
    if shape is None:
        shape = read_image(record.path).shape
    if side not in ("left", "right", "both"):
        raise ValueError(f"side must be 'left', 'right' or 'both', not {side!r}")
    if record.left_mask is not None and record.right_mask is not None:
        left = read_mask(record.left_mask, shape)
        right = read_mask(record.right_mask, shape)
        return {"left": left, "right": right, "both": left | right}[side]
    if record.mask is not None:
        if side != "both":
            raise DataError(f"{record.mask}: a combined lung mask has no separate {side} lung")
        return read_mask(record.mask, shape)
    raise DataError(f"{record.path}: no lung mask for this image")


def lesion_mask(record: Record, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Ground-truth lesions (phantoms only) as bool (H, W)."""
    if record.lesion_mask is None:
        raise DataError(f"{record.path}: no lesion mask for this image")
    return read_mask(record.lesion_mask, shape)


# --------------------------------------------------------------------------- discovery

def discover(root: str | Path, check_images: bool = True) -> list[Record]:
    """All records under ``root``; the first bad file raises :class:`DataError`."""
    return scan(root, check_images=check_images, skip_bad=False).records


def scan(root: str | Path, check_images: bool = True, skip_bad: bool = False) -> Scan:
    """Find every image under ``root`` in any supported layout.

    With ``skip_bad=True`` a bad file is left out and listed in ``Scan.skipped`` with
    its reason (print ``Scan.report()``); otherwise the first one raises DataError.
    ``check_images`` decodes every image and every lung or lesion mask once so that a
    truncated file is caught here rather than in the middle of training; a record whose
    image or mask is bad is left out as a whole (with ``skip_bad``).
    """
    root = Path(root).expanduser().absolute()
    if not root.exists():
        raise DataError(f"{root}: folder not found")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    skipped: list[tuple[Path, str]] = []

    def bad(path: Path, why: str) -> None:
        if not skip_bad:
            raise DataError(f"{path}: {why}")
        skipped.append((path, why))

    sets = _find_nlm_sets(root)
    records: list[Record] = []
    if sets:
        for name, folder in sets:
            records += _scan_nlm_set(name, folder, bad)
    else:
        records = _scan_class_folders(root, bad)
    if check_images:
        good = []
        for rec in records:
            for path in (rec.path, *_mask_paths(rec)):
                try:
                    check_image(path)
                except DataError as err:
                    bad(path, _reason(err))
                    break
            else:
                good.append(rec)
        records = good
    if not records:
        raise DataError(f"{root}: no chest X-ray images found (expected ChinaSet_AllFiles/CXR_png, "
                        "MontgomerySet/CXR_png, or one folder per class such as normal/ and tuberculosis/)")
    records.sort(key=lambda r: r.key)
    return Scan(root=root, records=records, skipped=skipped)


def _mask_paths(rec: Record) -> list[Path]:
    """The record's mask files (lung and lesion masks) that exist."""
    return [p for p in (rec.left_mask, rec.right_mask, rec.mask, rec.lesion_mask) if p is not None]


def _reason(err: DataError) -> str:
    """A DataError's message without its leading path."""
    text = str(err)
    return text.split(": ", 1)[1] if ": " in text else text


def _unread_subfolders(folder: Path, bad) -> None:
    """Report each subfolder of ``folder`` holding image files: they would not be read."""
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not _is_junk(p)):
        n = sum(1 for f in sub.rglob("*")
                if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
                and not any(_is_junk(part) for part in f.relative_to(sub).parts))
        if n:
            bad(sub, f"{n} image(s) in a subfolder are not read; move them up into {folder}")


def _find_nlm_sets(root: Path) -> list[tuple[str, Path]]:
    """(set name, set folder) for each Shenzhen/Montgomery set at or just below ``root``."""
    found = []
    candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    for folder in candidates:
        for name, official in SET_FOLDERS.items():
            if folder.name.lower() == official.lower():
                found.append((name, folder))
    if found:
        return found
    # given the CXR_png folder itself, or a set folder under another name
    cxr = root if root.name.lower() == "cxr_png" else root / "CXR_png"
    if cxr.is_dir():
        names = [p.name for p in cxr.iterdir() if p.suffix.lower() == ".png"]
        for name, prefix in (("shenzhen", "CHNCXR_"), ("montgomery", "MCUCXR_")):
            if any(n.startswith(prefix) for n in names):
                return [(name, cxr.parent)]
    return []


def _is_junk(p: Path | str) -> bool:
    name = p if isinstance(p, str) else p.name
    return name.startswith(".") or name.lower() in JUNK_NAMES


def _scan_nlm_set(name: str, folder: Path, bad) -> list[Record]:
    cxr = folder / "CXR_png"
    if not cxr.is_dir():
        raise DataError(f"{cxr}: folder not found (the {SET_FOLDERS[name]} layout keeps its images there)")
    _unread_subfolders(cxr, bad)
    files = sorted(p for p in cxr.iterdir() if p.is_file() and not _is_junk(p))
    if not files:
        raise DataError(f"{cxr}: folder is empty")
    masks = _mask_folders(name, folder)
    lesion_dir = folder / "LesionMask"
    records, stems = [], set()
    for path in files:
        m = _NLM_NAME.match(path.stem)
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            bad(path, f"not an image file (expected .png, got '{path.suffix or 'no suffix'}')")
            continue
        if not m:
            bad(path, "file name does not follow the NLM pattern PREFIX_NNNN_L (e.g. CHNCXR_0001_0.png)")
            continue
        if m["label"] not in ("0", "1"):
            bad(path, f"unknown label suffix '_{m['label']}' (expected _0 normal or _1 tuberculosis)")
            continue
        stems.add(path.stem)
        kw = {}
        if masks.get("left") is not None:
            kw["left_mask"] = _existing(masks["left"] / path.name)
            kw["right_mask"] = _existing(masks["right"] / path.name)
            if (kw["left_mask"] is None) != (kw["right_mask"] is None):
                side = "rightMask" if kw["right_mask"] is None else "leftMask"
                bad(path, f"has a lung mask for one side only ({side}/{path.name} is missing)")
                continue
        if masks.get("combined") is not None:
            kw["mask"] = _existing(masks["combined"] / f"{path.stem}_mask.png") or \
                _existing(masks["combined"] / path.name)
        kw["lesion_mask"] = _existing(lesion_dir / path.name)
        records.append(Record(key=f"{name}/{path.stem}", path=path, dataset=name,
                              label=int(m["label"]), patient_id=m["pid"], **kw))
    # a mask whose image is not there is an error too: something was lost or misnamed.
    # The combined mask folder of some public bundles also holds the other set's masks
    # (MCUCXR_* beside CHNCXR_*): those belong to the other set and are not looked at.
    others = tuple(f"{p}_" for p, s in _PREFIX_SET.items() if s != name)
    mask_dirs = dict(masks)
    if lesion_dir.is_dir():
        mask_dirs["lesion"] = lesion_dir
    for kind, mdir in mask_dirs.items():
        if mdir is None:
            continue
        for mp in sorted(mdir.iterdir()):
            if not mp.is_file() or _is_junk(mp):
                continue
            if kind == "combined" and mp.name.startswith(others):
                continue
            stem = mp.stem[:-5] if mp.stem.endswith("_mask") else mp.stem
            if stem not in stems and not (cxr / f"{stem}.png").exists():
                bad(mp, f"mask without its image (no {cxr / (stem + '.png')})")
    return records


def _mask_folders(name: str, folder: Path) -> dict[str, Path | None]:
    out: dict[str, Path | None] = {}
    manual = folder / "ManualMask"
    if manual.is_dir():
        left, right = manual / "leftMask", manual / "rightMask"
        if left.is_dir() != right.is_dir():
            missing = right if left.is_dir() else left
            raise DataError(f"{missing}: folder not found (ManualMask needs leftMask and rightMask)")
        if left.is_dir():
            out["left"], out["right"] = left, right
    for cand in (folder / "mask", folder / "masks", folder.parent / "mask", folder.parent / "masks"):
        if cand.is_dir() and name == "shenzhen":
            out["combined"] = cand
            break
    return out


def _existing(p: Path) -> Path | None:
    return p if p.is_file() else None


def _scan_class_folders(root: Path, bad) -> list[Record]:
    sub = sorted(p for p in root.iterdir() if p.is_dir() and not _is_junk(p))
    if not sub:
        raise DataError(f"{root}: no images found: expected ChinaSet_AllFiles/, MontgomerySet/, "
                        "or one folder per class (normal/, tuberculosis/)")
    records = []
    for cdir in sub:
        label = CLASS_NAMES.get(cdir.name.lower())
        if label is None:
            raise DataError(f"{cdir}: unknown class folder '{cdir.name}' "
                            f"(known: {', '.join(sorted(CLASS_NAMES))})")
        _unread_subfolders(cdir, bad)
        files = sorted(p for p in cdir.iterdir() if p.is_file() and not _is_junk(p))
        if not files:
            raise DataError(f"{cdir}: folder is empty")
        for path in files:
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                bad(path, f"not an image file (expected .png or .jpg, got '{path.suffix or 'no suffix'}')")
                continue
            records.append(Record(key=f"{root.name}/{cdir.name}/{path.stem}", path=path,
                                  dataset=root.name, label=label, patient_id=path.stem))
    return records


# --------------------------------------------------------------------------- splits

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class Split:
    """Record keys per split, with the settings that made it."""

    train: list[str]
    val: list[str]
    test: list[str]
    seed: int
    fractions: tuple[float, float, float]

    def __getitem__(self, name: str) -> list[str]:
        return getattr(self, name)

    def select(self, records: Sequence[Record], name: str) -> list[Record]:
        keys = set(self[name])
        return [r for r in records if r.key in keys]

    def table(self, records: Sequence[Record]) -> list[dict]:
        """Rows (split, dataset, normal, tb, total) for a quick look."""
        rows = []
        for name in SPLIT_NAMES:
            sel = self.select(records, name)
            for ds in sorted({r.dataset for r in records}):
                part = [r for r in sel if r.dataset == ds]
                rows.append({"split": name, "dataset": ds,
                             "normal": sum(r.label == 0 for r in part),
                             "tb": sum(r.label == 1 for r in part), "total": len(part)})
        return rows


def make_split(records: Sequence[Record], seed: int = 0,
               fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)) -> Split:
    """A stratified (by data set and label), seeded train/val/test split.

    Within each stratum the records are shuffled with ``seed`` and cut by the
    fractions (largest-remainder rounding), so every stratum is split alike.
    """
    if abs(sum(fractions) - 1) > 1e-6 or any(f < 0 for f in fractions):
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    out: dict[str, list[str]] = {n: [] for n in SPLIT_NAMES}
    rng = np.random.default_rng(seed)
    for stratum in sorted({(r.dataset, r.label) for r in records}):
        keys = sorted(r.key for r in records if (r.dataset, r.label) == stratum)
        keys = [keys[i] for i in rng.permutation(len(keys))]
        counts = _largest_remainder(len(keys), fractions)
        start = 0
        for name, c in zip(SPLIT_NAMES, counts):
            out[name] += keys[start:start + c]
            start += c
    return Split(**{k: sorted(v) for k, v in out.items()}, seed=seed, fractions=tuple(fractions))


def _largest_remainder(n: int, fractions: Sequence[float]) -> list[int]:
    raw = [n * f for f in fractions]
    counts = [int(np.floor(x)) for x in raw]
    order = sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def kfold_splits(records: Sequence[Record], k: int = 5, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """Stratified (data set × label), seeded k-fold: a list of (train keys, held-out keys)."""
    from sklearn.model_selection import StratifiedKFold

    recs = sorted(records, key=lambda r: r.key)
    strata = [f"{r.dataset}:{r.label}" for r in recs]
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = []
    for tr, te in skf.split(np.zeros(len(recs)), strata):
        folds.append(([recs[i].key for i in tr], [recs[i].key for i in te]))
    return folds


def save_split(split: Split, path: str | Path, records: Sequence[Record]) -> Path:
    """Save the split as JSON with each file's size and SHA-256, so a later load can tell
    whether the images it names are still the same."""
    by_key = {r.key: r for r in records}
    files = {}
    for name in SPLIT_NAMES:
        for key in split[name]:
            p = by_key[key].path
            files[key] = {"file": p.name, "size": p.stat().st_size, "sha256": store.file_sha256(p)}
    return store.write_json(path, {"seed": split.seed, "fractions": list(split.fractions),
                                   **{n: split[n] for n in SPLIT_NAMES}, "files": files})


def load_split(path: str | Path, records: Sequence[Record]) -> Split:
    """Load a saved split and check that every file it names is still there, unchanged.

    Raises DataError naming the split file and what changed (missing, changed content,
    images not in the split); delete the split file to make a new one.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    raw = store.read_json(path)
    try:
        split = Split(train=raw["train"], val=raw["val"], test=raw["test"], seed=raw["seed"],
                      fractions=tuple(raw["fractions"]))
        files = raw["files"]
    except (KeyError, TypeError) as err:
        raise DataError(f"{path}: not a tbkd split file (missing {err})") from None
    by_key = {r.key: r for r in records}
    problems = []
    for key, info in sorted(files.items()):
        rec = by_key.get(key)
        if rec is None or not rec.path.is_file():
            problems.append(f"{info['file']} missing")
        elif rec.path.stat().st_size != info["size"] or store.file_sha256(rec.path) != info["sha256"]:
            problems.append(f"{info['file']} changed")
    extra = sorted(set(by_key) - set(files))
    if extra:
        problems.append(f"{len(extra)} image(s) not in the split, e.g. {by_key[extra[0]].path.name}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise DataError(f"{path}: the data changed since this split was made ({shown}); "
                        "delete the file to make a new split")
    return split


# --------------------------------------------------------------------------- summaries

def count_table(records: Iterable[Record]) -> list[dict]:
    """Rows (dataset, normal, tb, total, with lung masks) for a quick look."""
    records = list(records)
    rows = []
    for ds in sorted({r.dataset for r in records}):
        part = [r for r in records if r.dataset == ds]
        rows.append({"dataset": ds, "normal": sum(r.label == 0 for r in part),
                     "tb": sum(r.label == 1 for r in part), "total": len(part),
                     "lung_masks": sum(r.has_lung_mask for r in part)})
    return rows


# --------------------------------------------------------------------------- torch datasets

class CXRDataset:
    """A torch dataset of ``(image (1, size, size) float32 in [0, 1], label)``.

    Images are read and resized once, up front (a few hundred MB at most for the NLM
    sets), so epochs cost only the model. ``augment`` adds light, label-preserving
    changes, drawn from torch's global RNG (seeded by the training loop): a small
    rotation, shift and zoom, and a brightness/contrast change.
    """

    def __init__(self, records: Sequence[Record], size: int, augment: bool = False,
                 progress: bool = False, desc: str = "reading images"):
        import torch
        from tqdm.auto import tqdm

        self.records = list(records)
        self.size = size
        self.augment = augment
        imgs = [resize(read_image(r.path), size)
                for r in tqdm(self.records, desc=desc, disable=not progress, leave=False)]
        self.images = torch.from_numpy(np.stack(imgs)[:, None] if imgs else
                                       np.zeros((0, 1, size, size), np.float32))
        self.labels = torch.tensor([r.label for r in self.records], dtype=torch.long)
        self._tf = _augmenter() if augment else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        x = self.images[i]
        if self._tf is not None:
            x = self._tf(x).clamp(0, 1)
        return x, int(self.labels[i])


def augmenters(aug=None):
    """``(geometric, photometric)`` torchvision transforms of an ``recipes.Augmentation``
    (default: the classifiers', ``recipes.CLASSIFIER_AUGMENT``)."""
    from torchvision.transforms import v2

    from .recipes import CLASSIFIER_AUGMENT

    a = aug or CLASSIFIER_AUGMENT
    return (v2.RandomAffine(degrees=a.degrees, translate=(a.translate, a.translate), scale=a.scale),
            v2.ColorJitter(brightness=a.brightness, contrast=a.contrast))


#: the columns of :func:`view_params`: rotation (degrees), shift (share of the side, x and y),
#: zoom, brightness and contrast factors
VIEW_COLUMNS = ("degrees", "shift_x", "shift_y", "zoom", "brightness", "contrast")


def view_params(n_images: int, n_views: int, seed: int, aug=None) -> np.ndarray:
    """``(n_images, n_views, 6)`` fixed random views (:data:`VIEW_COLUMNS`), drawn from
    the recipe's augmentation ranges with a seeded generator.

    A view is stated in units that do not depend on the image size, so the same view can
    be shown to a teacher at its size and to the student at its own
    (:func:`apply_view`): that is how a teacher's logits and Grad-CAM map belong to the
    very view the student trains on.
    """
    from .recipes import CLASSIFIER_AUGMENT

    a = aug or CLASSIFIER_AUGMENT
    rng = np.random.default_rng(seed)
    shape = (n_images, n_views)
    out = np.stack([rng.uniform(-a.degrees, a.degrees, shape),
                    rng.uniform(-a.translate, a.translate, shape),
                    rng.uniform(-a.translate, a.translate, shape),
                    rng.uniform(a.scale[0], a.scale[1], shape),
                    rng.uniform(1 - a.brightness, 1 + a.brightness, shape),
                    rng.uniform(1 - a.contrast, 1 + a.contrast, shape)], axis=-1)
    return out.astype(np.float32)


def apply_view(x, params):
    """Image ``x`` ``(1, H, W)`` in [0, 1] seen through one row of :func:`view_params`:
    rotated, shifted and zoomed about its centre, then brightness and contrast."""
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import functional as TF

    deg, sx, sy, zoom, bright, contrast = (float(v) for v in params)
    h, w = x.shape[-2:]
    y = TF.affine(x, angle=deg, translate=[round(sx * w), round(sy * h)], scale=zoom, shear=[0.0, 0.0],
                  interpolation=v2.InterpolationMode.BILINEAR)
    y = TF.adjust_contrast(TF.adjust_brightness(y, bright), contrast)
    return y.clamp(0, 1)


class ViewsDataset:
    """Every image of ``base`` (a ``CXRDataset`` without augmentation) seen through its
    fixed views: row ``i * n_views + v`` is image ``i`` through ``params[i, v]``.

    Its images are computed once and held in memory (``images``), so a CAM cache can
    fingerprint them like a ``CXRDataset``'s; its records' keys are ``"<key>@<v>"``.
    """

    def __init__(self, base, params: np.ndarray):
        import torch

        params = np.asarray(params, np.float32)
        if params.ndim != 3 or params.shape[0] != len(base) or params.shape[2] != len(VIEW_COLUMNS):
            raise ValueError(f"view parameters of shape {params.shape} for {len(base)} images")
        self.params = params
        self.n_views = params.shape[1]
        self.augment = False
        self.records = [dataclasses.replace(r, key=f"{r.key}@{v}")
                        for r in base.records for v in range(self.n_views)]
        self.images = torch.stack([apply_view(base.images[i], params[i, v])
                                   for i in range(len(base)) for v in range(self.n_views)]) \
            if len(base) else base.images[:0]
        self.labels = base.labels.repeat_interleave(self.n_views)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


def _augmenter():
    from torchvision.transforms import v2

    return v2.Compose(list(augmenters()))


# --------------------------------------------------------------------------- one call per notebook

@dataclass
class Prepared:
    """What every stage starts from: the records, their saved split and where they came from."""

    root: Path
    records: list[Record]
    split: Split
    split_path: Path

    def part(self, name: str, dataset: str | None = None) -> list[Record]:
        recs = self.split.select(self.records, name)
        return [r for r in recs if dataset is None or r.dataset == dataset]


def prepare(profile, progress: bool = True) -> Prepared:
    """Make sure the profile's data exist (phantoms are generated once), read them, and
    load the saved split, making and saving it the first time.

    A real-data split that no longer matches the files raises DataError (never a
    silent re-split: test images must stay test images). A phantom split is remade
    when the phantoms were regenerated with other settings, since the kit made both.

    A bad file raises DataError, unless ``profile.skip_bad`` (``TBKD_SKIP_BAD=1``,
    ``tbkd reproduce --skip-bad``): then it is left out, the scan's report is printed and
    the list is saved as ``skipped.json`` in the profile's artifacts.
    """
    if profile.data == "phantom":
        from .phantom import write_phantom_sets

        write_phantom_sets(profile.data_dir, counts=dict(profile.phantom_counts),
                           size=profile.phantom_size, seed=profile.seed,
                           difficulty=profile.phantom_difficulty, progress=progress)
    root = Path(profile.data_dir)
    found = scan(root, skip_bad=profile.skip_bad)
    records = found.records
    skipped_path = profile.artifacts / "skipped.json"
    if found.skipped:
        print(found.report())
        store.write_json(skipped_path, [{"path": str(p), "reason": why} for p, why in found.skipped])
    elif skipped_path.exists():
        skipped_path.unlink()  # from an earlier run: nothing is skipped now
    split_path = profile.artifacts / "splits.json"
    if split_path.exists():
        try:
            split = load_split(split_path, records)
        except DataError:
            if profile.data != "phantom":
                raise
            split_path.unlink()
    if not split_path.exists():
        split = make_split(records, seed=profile.seed, fractions=profile.split_fractions)
        save_split(split, split_path, records)
    return Prepared(root=root, records=records, split=split, split_path=split_path)
