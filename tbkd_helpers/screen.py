"""Inference on image files: one X-ray (``tbkd predict``) or a whole folder (``tbkd screen``).

:class:`Predictor` does to a file what the kit's stages do to a data set: read it (any
PNG/JPEG, any bit depth), find the lungs with the profile's U-Net and cut them out as stage
1 does, run a classifier (by default the distilled student) and apply the threshold saved
for it on the validation split, with the Grad-CAM map of the TB class.

:func:`screen` streams a folder of any size through the same steps in batches, on the
fastest faithful path (the student through ``models.for_inference``: fused activations,
BatchNorm folded; the U-Net with BatchNorm folded, in ONNX Runtime when it is installed:
:class:`LungRunner`), and writes ``screen.csv`` (file, P(TB), decision, threshold, lung
check), one Grad-CAM overlay per image (JPEG), and ``report.html``, the overlays sorted by
P(TB). A stopped screening resumes
where it stopped: the files already in ``screen.csv`` (or refused, in ``refused.csv``) are
not redone. A file that cannot be read gets one line on stderr and the rest go on.
"""
from __future__ import annotations

import copy
import csv
import html
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .data import DataError, read_image

# Smallest side (px) of an image `tbkd predict` accepts. Below it a file cannot hold a
# chest X-ray: the smallest images the kit ever uses are the quick profile's 128-px
# phantoms (the NLM images are 299 px in the kit's downscaled copy and thousands of px
# officially), and anything smaller than the classifier's and the U-Net's 32-px inputs
# (the tiniest settings the kit trains with) would only be blown up from a few pixels
# and still get a meaningless P(TB).
MIN_IMAGE_SIDE = 32


class Predictor:
    """A classifier checkpoint and the U-Net of a profile, ready for image files.

    ``predict(path)`` does to one file what the kit's stages do to a data set: read it
    (any PNG/JPEG, any bit depth: ``data.read_image``; an image under ``MIN_IMAGE_SIDE`` px
    a side is refused with a DataError), predict its lung mask
    with the U-Net and cut out the lungs as stage 1 does (``segmentation.process_image``,
    the same 8-bit rounding as the stored extracted images), resize to the classifier's
    input and return P(TB), the decision at the saved threshold and the Grad-CAM map of
    the TB class (``cam.compute_cams_and_logits``: one forward pass gives both).
    """

    def __init__(self, profile, checkpoint=None, unet=None, threshold: float | None = None):
        from . import models, pipeline, results
        from . import segmentation as seg

        self.profile = profile
        self.checkpoint = Path(checkpoint) if checkpoint else pipeline.student_dir(profile, "kd+cam") / "best.pt"
        if not self.checkpoint.is_file():
            hint = "" if checkpoint else " (train the student first: notebook 04, or `tbkd reproduce`)"
            raise FileNotFoundError(f"{self.checkpoint}: no classifier checkpoint here{hint}")
        self.model, ckpt = models.load_checkpoint(self.checkpoint)
        self.arch = ckpt["arch"]
        extra = (ckpt.get("settings") or {}).get("extra") or {}
        self.size = int(extra.get("size") or profile.size_for(self.arch))
        self.layer_stride = int(extra.get("cam_stride") or profile.cam_stride)
        self.layer = models.target_layer(self.model, self.arch, stride=self.layer_stride)
        self.unet, useg = seg.load_unet(unet or seg.checkpoint_path(profile))
        self.seg_size = int(useg["seg_size"])
        if threshold is not None:
            self.threshold, self.threshold_source = float(threshold), "given on the command line"
        else:
            info = results.read_threshold(self.checkpoint)
            if info is None:
                self.threshold, self.threshold_source = 0.5, "default 0.5: no saved threshold for this checkpoint"
            else:
                self.threshold = float(info["threshold"])
                self.threshold_source = f"{info['rule']}, chosen on the {info['chosen_on']}"

    def prepare(self, img, lung_prob) -> tuple[np.ndarray, dict]:
        """The classifier's input from an image and its U-Net probabilities: the lungs cut
        out as stage 1 does (the same 8-bit rounding as the stored extracted images)."""
        x, info, _ = self.extract(img, lung_prob)
        return x, info

    def extract(self, img, lung_prob) -> tuple[np.ndarray, dict, np.ndarray]:
        """:meth:`prepare` and the post-processed lung mask it used (for :meth:`shown`)."""
        from . import segmentation as seg
        from .data import resize

        mask, ext, info = seg.process_image(img, lung_prob, self.profile)
        return resize(seg._to_u8(ext).astype(np.float32) / 255.0, self.size), info, mask

    def shown(self, img, lung_prob, info, mask=None) -> np.ndarray:
        """The extracted lungs at a size fit for looking at (up to 512 px); ``mask``: the
        lung mask :meth:`extract` returned, which spares post-processing it again."""
        from . import segmentation as seg

        side = int(min(512, max(seg.extract_size(self.profile), info["box"][2])))
        if mask is None:
            return seg.process_image(img, lung_prob, self.profile.replace(seg_extract_size=side))[1]
        return seg.cut_out(img, mask, not info["fallback"], side, self.profile.seg_margin)[0]

    def row(self, path, prob: float, info: dict) -> dict:
        return {"file": str(path), "prob_tb": round(prob, 6), "decision": "TB" if prob >= self.threshold else "normal",
                "threshold": round(self.threshold, 6), "threshold_source": self.threshold_source,
                "lungs": "whole image" if info["fallback"] else "extracted", "lung_check": info["reason"],
                "model": str(self.checkpoint)}

    def predict(self, path) -> dict:
        """One file: P(TB), the decision, the lung check, and (``_cam``, ``_image``) the
        Grad-CAM map of the TB class and the extracted lungs to draw it on."""
        from . import cam as _cam
        from . import segmentation as seg

        img = read_image(path)
        check_image_size(img, path)
        lung_prob = seg.predict_probs(self.unet, [img], self.seg_size)[0]
        x, info = self.prepare(img, lung_prob)
        maps, logits = _cam.compute_cams_and_logits(self.model, self.layer, torch.tensor(x)[None, None],
                                                    target_class=1, method="gradcam")
        prob = float(torch.softmax(torch.from_numpy(logits).double(), 1)[0, 1])
        return {**self.row(path, prob, info), "_cam": maps[0], "_image": self.shown(img, lung_prob, info)}


def check_image_size(image, path) -> None:
    """Raise DataError (one line naming the file) when an image is smaller than
    ``MIN_IMAGE_SIDE`` px on either side: too small to be a chest X-ray."""
    from .data import DataError

    h, w = image.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise DataError(f"{path}: image too small ({w}x{h} px; a chest X-ray needs at least "
                        f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} px)")


def write_overlay(image, cam_map, path) -> Path:
    """The Grad-CAM overlay (``cam.overlay``) as an 8-bit RGB image, written atomically:
    PNG, or JPEG (quality 90, several times faster to encode) when ``path`` ends in .jpg."""
    import numpy as np
    from PIL import Image

    from . import store
    from .cam import overlay

    rgb = np.round(np.clip(overlay(image, cam_map, alpha=0.4), 0, 1) * 255).astype(np.uint8)
    path = Path(path)
    jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    with store.atomic_path(path, suffix=path.suffix or ".png") as tmp:
        if jpeg:
            Image.fromarray(rgb).save(tmp, format="JPEG", quality=90)
        else:
            Image.fromarray(rgb).save(tmp, format="PNG")
    return path


# --------------------------------------------------------------------------- a folder

SCREEN_FIELDS = ("file", "prob_tb", "decision", "threshold", "lungs", "lung_check", "overlay")
REFUSED_FIELDS = ("file", "error")


def _read_rows(path: Path, fields) -> list[dict]:
    """The complete rows of a CSV this module wrote (a last line cut by a stop is dropped,
    and the file rewritten without it)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    good = [r for r in rows if all(r.get(k) not in (None, "") for k in fields[:2])]
    if len(good) != len(rows):
        _write_rows(path, fields, good)
    return good


def _write_rows(path: Path, fields, rows) -> None:
    from . import store

    with store.atomic_path(path, suffix=".csv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)


def _append(path: Path, fields, rows) -> None:
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerows(rows)
        f.flush()
        os.fsync(f.fileno())


def _overlay_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
    return "__".join(rel.with_suffix("").parts) + "_cam.jpg"  # JPEG: a report of any size stays fast


class LungRunner:
    """The profile's U-Net on the fastest faithful path for a stream of images: BatchNorm
    folded into the decoder's convolutions, run by ONNX Runtime when it is installed (the
    same function exported with a dynamic batch; PyTorch otherwise). ``runner(images)``
    gives the lung probabilities ``(N, size, size)``, as ``segmentation.predict_probs``
    does, up to float rounding; ``runtime`` says which engine runs."""

    def __init__(self, unet, size: int):
        import shutil
        import tempfile

        from . import models

        self.size, self.session, self.runtime = int(size), None, "PyTorch"
        self.net = copy.deepcopy(unet).cpu().eval()
        with torch.no_grad():
            models.fold_batchnorm(self.net)
        try:
            import onnxruntime as ort
        except ImportError:
            return
        tmp = Path(tempfile.mkdtemp(prefix="tbkd-screen-"))
        try:
            example = torch.rand(2, 1, self.size, self.size, generator=torch.Generator().manual_seed(0))
            models.export_onnx(_Sigmoid(self.net), example, tmp / "unet.onnx", "image", "lungs")
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = torch.get_num_threads(), 1
            self.session = ort.InferenceSession(str(tmp / "unet.onnx"), opts, providers=["CPUExecutionProvider"])
            self.runtime = "ONNX Runtime"
        except Exception:  # noqa: BLE001 - an export the runtime cannot take: PyTorch does the job
            self.session = None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def __call__(self, images) -> np.ndarray:
        from .data import resize

        x = np.ascontiguousarray(np.stack([resize(np.asarray(im, np.float32), self.size) for im in images])[:, None])
        if self.session is not None:
            return self.session.run(["lungs"], {"image": x})[0][:, 0]
        with torch.inference_mode():
            return torch.sigmoid(self.net(torch.from_numpy(x)))[:, 0].numpy()


class _Sigmoid(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.sigmoid(self.net(x))


def screen(folder, out, profile, checkpoint=None, unet=None, threshold: float | None = None,
           batch_size: int = 32, progress: bool = True, limit: int | None = None) -> dict:
    """Screen every image below ``folder`` into the report folder ``out`` (see the module
    doc). Returns ``{"screened", "new", "refused", "seconds", "images_per_s"}``: ``new``
    counts the images done by this call, and the rate is theirs (U-Net, student and
    Grad-CAM, overlays and CSV included)."""
    from tqdm.auto import tqdm

    from . import cam as _cam
    from . import models
    from . import segmentation as seg

    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    files = [p for p, err in seg.expand_inputs([folder]) if err is None]
    if limit:
        files = files[:limit]
    out.mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(exist_ok=True)
    done_rows = _read_rows(out / "screen.csv", SCREEN_FIELDS)
    refused_rows = _read_rows(out / "refused.csv", REFUSED_FIELDS)
    seen = {r["file"] for r in done_rows} | {r["file"] for r in refused_rows}
    todo = [p for p in files if str(p) not in seen]
    pred = Predictor(profile, checkpoint, unet, threshold)
    fast = models.for_inference(pred.model)
    layer = models.target_layer(fast, pred.arch, stride=pred.layer_stride)
    lungs = LungRunner(pred.unet, pred.seg_size)
    t0, new, refused = time.perf_counter(), 0, 0
    bar = tqdm(total=len(files), initial=len(files) - len(todo), desc="screening", unit="img",
               disable=not progress)
    for i in range(0, len(todo), batch_size):
        chunk, imgs, bad = todo[i:i + batch_size], [], []
        for p in chunk:
            try:
                img = read_image(p)
                check_image_size(img, p)
                imgs.append((p, img))
            except (DataError, OSError, ValueError) as err:
                msg = " ".join(str(err).split()) or type(err).__name__
                reason = msg.removeprefix(f"{p}: ")  # the readers' messages start with the file
                print(f"tbkd screen: {p}: {reason}", file=sys.stderr)
                bad.append({"file": str(p), "error": reason})
        rows = []
        if imgs:
            probs_lung = lungs([im for _, im in imgs])
            prepared = [pred.extract(im, lp) for (_, im), lp in zip(imgs, probs_lung)]
            x = torch.from_numpy(np.stack([xx for xx, _, _ in prepared]))[:, None]
            maps, logits = _cam.compute_cams_and_logits(fast, layer, x, target_class=1, method="gradcam",
                                                        batch_size=batch_size)
            probs = torch.softmax(torch.from_numpy(logits).double(), 1)[:, 1].numpy()
            for (p, im), lp, (_, info, mask), m, pr in zip(imgs, probs_lung, prepared, maps, probs):
                name = _overlay_name(Path(p), folder)
                write_overlay(pred.shown(im, lp, info, mask), m, out / "overlays" / name)
                r = pred.row(p, float(pr), info)
                rows.append({k: r.get(k) for k in SCREEN_FIELDS[:-1]} | {"overlay": f"overlays/{name}"})
        if rows:
            _append(out / "screen.csv", SCREEN_FIELDS, rows)
        if bad:
            _append(out / "refused.csv", REFUSED_FIELDS, bad)
        new, refused = new + len(rows), refused + len(bad)
        bar.update(len(chunk))
    bar.close()
    seconds = time.perf_counter() - t0
    all_rows = _read_rows(out / "screen.csv", SCREEN_FIELDS)
    write_report(all_rows, _read_rows(out / "refused.csv", REFUSED_FIELDS), out / "report.html", pred)
    return {"screened": len(all_rows), "new": new, "refused": refused + len(refused_rows),
            "seconds": round(seconds, 2), "images_per_s": round(new / seconds, 2) if new and seconds > 0 else None}


def write_report(rows: list[dict], refused: list[dict], path: Path, pred: Predictor | None = None) -> Path:
    """``report.html``: every screened image's Grad-CAM overlay, the most likely TB first."""
    from . import store

    rows = sorted(rows, key=lambda r: -float(r["prob_tb"]))
    n_tb = sum(r["decision"] == "TB" for r in rows)
    head = (f"<p>{len(rows)} images screened: {n_tb} flagged TB, {len(rows) - n_tb} normal"
            + (f"; {len(refused)} refused" if refused else "") + ".")
    if pred is not None:
        head += (f" Model <code>{html.escape(str(pred.checkpoint))}</code>, threshold {pred.threshold:.3f} "
                 f"({html.escape(pred.threshold_source)}).")
    head += " Sorted by P(TB), highest first. The map shows where the model looked for TB.</p>"
    cards = []
    for r in rows:
        cls = "tb" if r["decision"] == "TB" else "normal"
        note = "" if r["lungs"] == "extracted" else f"<br><em>whole image used: {html.escape(r['lung_check'])}</em>"
        cards.append(f'<figure class="{cls}"><img src="{html.escape(r["overlay"])}" alt="Grad-CAM overlay" loading="lazy">'
                     f"<figcaption><b>{float(r['prob_tb']):.2f}</b> {r['decision']}<br>"
                     f"{html.escape(Path(r['file']).name)}{note}</figcaption></figure>")
    bad = "".join(f"<li>{html.escape(r['file'])}: {html.escape(r['error'])}</li>" for r in refused)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>tbkd screening report</title>
<style>body{{font-family:sans-serif;margin:1.5em}}figure{{display:inline-block;margin:.4em;width:180px;
vertical-align:top}}img{{width:180px;height:180px;object-fit:contain;background:#000}}
figcaption{{font-size:12px}}figure.tb figcaption b{{color:#c00}}figure.normal figcaption b{{color:#080}}</style>
</head><body><h1>TB screening report</h1>{head}{''.join(cards)}
{f'<h2>Refused files</h2><ul>{bad}</ul>' if bad else ''}
<p><small>A screening aid, not a diagnosis: every flagged X-ray needs a confirmatory test.</small></p>
</body></html>"""
    with store.atomic_path(Path(path), suffix=".html") as tmp:
        Path(tmp).write_text(page)
    return Path(path)
