"""The ``tbkd`` command.

    tbkd reproduce [--profile quick|real|full] [--data-dir DIR] [--skip-bad] [--weights random|imagenet|cxr]
                                                                        run every notebook headlessly
    tbkd check-data DIR [--skip-bad]                                read a data folder, report it
    tbkd phantoms OUTDIR [--shenzhen N] [--montgomery N] [--size PX] [--seed S]
    tbkd segment IMAGE|DIR... -o OUTDIR [--checkpoint UNET] [--profile P]   lung masks and extracted lungs
    tbkd predict IMAGE|DIR... [--model CKPT] [--cam OUT.png|OUTDIR/] [--json] [--profile P]
                                                                    P(TB), decision, Grad-CAM overlay
    tbkd screen DIR [--out REPORT/] [--model CKPT] [--batch-size N] [--profile P]
                                                                    a folder in batches: screen.csv, report.html
    tbkd export --format torchscript|onnx [--model CKPT] [-o OUT] [--profile P]
                                                                    the student for deployment, checked

Every failure is one line on stderr that names the file, and a non-zero exit status.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

PROFILES = ("quick", "real", "full")



from .screen import MIN_IMAGE_SIDE, Predictor, check_image_size, write_overlay  # noqa: E402,F401


def _reproduce(args) -> int:
    import os

    from .config import get_profile
    from .notebooks import NotebookFailure, reproduce
    from .weights import WeightsError, preflight

    if args.weights:
        os.environ["TBKD_WEIGHTS"] = args.weights  # the notebooks' kernels inherit it
    try:  # every starting-weights file is here (or downloaded) before anything runs
        prof = get_profile(args.profile)
        preflight(prof.weights, (*prof.teachers, prof.student))
    except (WeightsError, ValueError) as err:
        print(f"tbkd reproduce: {err}", file=sys.stderr)
        return 2
    try:
        times = reproduce(args.profile, data_dir=args.data_dir, out_dir=args.out, skip_bad=args.skip_bad)
    except NotebookFailure as err:
        print(f"tbkd reproduce: {err}", file=sys.stderr)
        return 1
    out = args.out or Path("runs") / prof.run_name
    print(f"executed {len(times)} notebooks in {sum(times.values()) / 60:.1f} min; "
          f"executed copies in {out}/")
    for name, sec in times.items():
        print(f"  {name:32s} {sec:7.1f} s")
    return 0


def _check_data(args) -> int:
    from .data import DataError, count_table, scan

    try:
        result = scan(args.folder, skip_bad=args.skip_bad)
    except DataError as err:
        print(f"tbkd check-data: {err}", file=sys.stderr)
        return 1
    print(result.report())
    for row in count_table(result.records):
        print(f"  {row['dataset']:12s} normal {row['normal']:4d}  tb {row['tb']:4d}  "
              f"total {row['total']:4d}  with lung masks {row['lung_masks']:4d}")
    return 1 if result.skipped else 0


def _phantoms(args) -> int:
    from .phantom import write_phantom_sets

    counts = {k: v for k, v in (("shenzhen", args.shenzhen), ("montgomery", args.montgomery)) if v}
    root = write_phantom_sets(args.outdir, counts=counts, size=args.size, seed=args.seed,
                              difficulty=args.difficulty)
    print(f"phantom chest X-rays in {root}")
    return 0


# --------------------------------------------------------------------------- tbkd segment

def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:400]


def _segment(args) -> int:
    from .config import get_profile
    from .data import DataError
    from .segmentation import segment_files

    profile = get_profile(args.profile)
    try:
        results = segment_files(args.images, args.outdir, args.checkpoint, profile)
    except (DataError, OSError) as err:
        print(f"tbkd segment: {_one_line(err)}", file=sys.stderr)
        return 1
    failed = 0
    for r in results:
        if r.error:
            failed += 1
            print(f"tbkd segment: {r.error}", file=sys.stderr)
            continue
        if r.note:
            print(f"tbkd segment: note: {r.note}", file=sys.stderr)
        print(f"{r.path}: mask {r.mask}, lungs {r.extracted}")
    done = len(results) - failed
    print(f"{done} of {len(results)} image(s) segmented into {args.outdir}" + (f"; {failed} failed" if failed else ""),
          file=sys.stderr)
    return 1 if failed else 0


# --------------------------------------------------------------------------- tbkd predict

def cam_is_folder(cam: str | os.PathLike) -> bool:
    """Whether ``--cam`` names a folder: it ends with a path separator (``out/``, which
    need not exist yet) or is an existing folder. Decided on the text as typed: a
    ``Path`` drops the trailing separator."""
    text = os.fspath(cam)
    seps = tuple(sep for sep in (os.sep, os.altsep) if sep)
    return text.endswith(seps) or Path(text).is_dir()


def _cam_path(cam: str | os.PathLike, image: Path, many: bool, folder: bool | None = None) -> Path:
    """Where an image's overlay goes: ``--cam`` itself for one image; for several, beside
    it as ``<cam stem>_<image stem>.png``; in a folder ``--cam`` names (``out/`` or an
    existing folder, see :func:`cam_is_folder`): ``<image stem>_cam.png``."""
    if folder is None:
        folder = cam_is_folder(cam)
    cam = Path(cam)
    if folder:
        return cam / f"{image.stem}_cam.png"
    if not many:
        return cam
    return cam.with_name(f"{cam.stem}_{image.stem}{cam.suffix or '.png'}")


def _predict(args) -> int:
    from .config import get_profile
    from .data import DataError
    from .segmentation import expand_inputs

    profile = get_profile(args.profile)
    try:
        predictor = Predictor(profile, args.model, args.unet, args.threshold)
    except (DataError, ValueError, OSError) as err:
        print(f"tbkd predict: {_one_line(err)}", file=sys.stderr)
        return 1
    inputs = expand_inputs(args.images)
    many = len(inputs) > 1
    cam_folder = bool(args.cam) and cam_is_folder(args.cam)
    if cam_folder:  # decided once, before the first overlay exists: out/ is made here, not guessed per image
        try:
            Path(args.cam).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            why = "a file of that name exists" if isinstance(err, FileExistsError) else (err.strerror or _one_line(err))
            print(f"tbkd predict: {args.cam}: cannot make the Grad-CAM folder ({why})", file=sys.stderr)
            return 1
    failed, used = 0, set()
    for path, err in inputs:
        out = None
        if err is None:
            try:
                out = predictor.predict(path)
                if args.cam:
                    cp = _cam_path(args.cam, path, many, cam_folder)
                    while cp in used:
                        cp = cp.with_name(cp.stem + "-2" + cp.suffix)
                    used.add(cp)
                    out["cam"] = str(write_overlay(out["_image"], out["_cam"], cp))
                else:
                    out["cam"] = None
            except (DataError, ValueError, OSError, RuntimeError) as e:
                err = _one_line(e) if str(e).startswith(str(path)) else f"{path}: {_one_line(e)}"
        if err is not None:
            failed += 1
            print(f"tbkd predict: {err}", file=sys.stderr)
            if args.json:
                print(json.dumps({"file": str(path), "error": err}))
            continue
        shown = {k: v for k, v in out.items() if not k.startswith("_")}
        if args.json:
            print(json.dumps(shown))
        else:
            lungs = "lungs extracted" if out["lungs"] == "extracted" else \
                f"whole image used (implausible lung mask: {out['lung_check']})"
            print(f"{path}: P(TB) = {out['prob_tb']:.3f} -> {out['decision']} "
                  f"(threshold {out['threshold']:.3f}; {lungs})" + (f"; Grad-CAM overlay {out['cam']}" if out["cam"] else ""))
    if not args.json:
        print(f"model {predictor.checkpoint} ({predictor.arch}, {predictor.size} px); threshold "
              f"{predictor.threshold:.3f} ({predictor.threshold_source})", file=sys.stderr)
    return 1 if failed else 0


# --------------------------------------------------------------------------- tbkd export

def probabilities_module(model):
    """The classifier followed by a softmax: the exported module gives P(normal), P(TB)
    for a ``(N, 1, S, S)`` batch in [0, 1]."""
    import torch

    class Probabilities(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.model = m

        def forward(self, x):
            return torch.softmax(self.model(x), dim=1)

    return Probabilities(model).eval()


def export_model(model, size: int, path, fmt: str) -> Path:
    """Export a classifier as TorchScript (``torch.jit.trace``) or ONNX (the TorchScript-based
    ``torch.onnx.export``, which needs nothing beyond torch and onnx), with a dynamic batch.

    Input ``image`` ``(N, 1, size, size)`` float32 in [0, 1]; output ``probabilities``
    ``(N, 2)``: normal, TB. The normalisation is inside the model.
    """
    import warnings

    import torch

    from . import store

    from .models import export_onnx, for_inference

    wrapped = probabilities_module(for_inference(model.cpu()))  # fused activations, BatchNorm folded
    example = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notes and tracer notes on shape checks
        with store.atomic_path(path) as tmp, torch.no_grad():
            if fmt == "torchscript":
                traced = torch.jit.trace(wrapped, example)
                traced.save(str(tmp))
            elif fmt == "onnx":
                export_onnx(wrapped, example, tmp, "image", "probabilities")
            else:
                raise ValueError(f"unknown export format {fmt!r}: torchscript or onnx")
    return path


def run_exported(path, fmt: str, images):
    """Probabilities ``(N, 2)`` of an exported file on ``images`` ``(N, 1, S, S)`` (numpy)."""
    import numpy as np

    x = np.ascontiguousarray(images, dtype=np.float32)
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return sess.run(["probabilities"], {"image": x})[0]
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def export_difference(model, path, fmt: str, images) -> float:
    """Largest absolute difference between the PyTorch model's probabilities and the
    exported file's on ``images``."""
    import numpy as np
    import torch

    with torch.no_grad():
        ref = torch.softmax(model.cpu().eval()(torch.as_tensor(np.asarray(images, np.float32))), 1).numpy()
    return float(np.abs(run_exported(path, fmt, images) - ref).max())


def _check_images(profile, size: int, n: int = 16):
    """Up to ``n`` lung-extracted test-split images of the profile at ``size`` px, and what
    they are; random images when the profile's artifacts are not there."""
    import numpy as np

    from . import segmentation as seg
    from . import store
    from .data import DataError, read_image, resize

    try:
        ext = seg.load_extraction(profile)
        split = store.read_json(Path(profile.artifacts) / "splits.json")
        keys = [k for k in split["test"] if k in ext.entries][:n]
        if keys:
            x = np.stack([resize(read_image(ext.path(k)), size) for k in keys])[:, None]
            return x, f"{len(keys)} test-split images of the {profile.name} profile"
    except (DataError, OSError, ValueError, KeyError):
        pass
    x = np.random.default_rng(0).random((n, 1, size, size), dtype=np.float32)
    return x, f"{n} random images (no {profile.name} test images found)"


def _export(args) -> int:
    from . import models, pipeline, results, store
    from .config import get_profile

    profile = get_profile(args.profile)
    ckpt = Path(args.model) if args.model else pipeline.student_dir(profile, "kd+cam") / "best.pt"
    try:
        model, info = models.load_checkpoint(ckpt)
    except (ValueError, OSError) as err:
        print(f"tbkd export: {_one_line(err)}", file=sys.stderr)
        return 1
    size = int(((info.get("settings") or {}).get("extra") or {}).get("size") or profile.size_for(info["arch"]))
    suffix = {"torchscript": ".torchscript.pt", "onnx": ".onnx"}[args.format]
    out = Path(args.out) if args.out else ckpt.parent / f"model{suffix}"
    try:
        export_model(model, size, out, args.format)
        images, what = _check_images(profile, size)
        diff = export_difference(model, out, args.format, images)
    except Exception as err:  # noqa: BLE001 - an exporter failure is reported in one line
        print(f"tbkd export: {out}: export failed ({_one_line(err)})", file=sys.stderr)
        return 1
    thr = results.read_threshold(ckpt)
    store.write_json(out.with_name(out.name + ".json"), {
        "format": args.format, "arch": info["arch"], "source_checkpoint": str(ckpt),
        "source_checkpoint_sha256": store.file_sha256(ckpt), "input": {"name": "image", "shape": ["N", 1, size, size],
                                                                      "dtype": "float32", "range": [0, 1]},
        "output": {"name": "probabilities", "shape": ["N", 2], "classes": ["normal", "TB"]},
        "preprocessing": "lung extraction by the kit's U-Net (tbkd segment), then resize to the input size; "
                         "the intensity normalisation is inside the model",
        "threshold": thr, "check": {"images": what, "max_abs_difference": diff}})
    ok = diff <= args.tolerance
    print(f"{out}: {args.format} export of {ckpt} ({info['arch']}, input 1x{size}x{size}); largest difference "
          f"from PyTorch on {what}: {diff:.2e} ({'within' if ok else 'OVER'} {args.tolerance:g})")
    if not ok:
        print(f"tbkd export: {out}: probabilities differ from PyTorch by {diff:.2e}", file=sys.stderr)
    return 0 if ok else 1


def _screen(args) -> int:
    from .config import get_profile
    from .data import DataError
    from .screen import screen

    profile = get_profile(args.profile)
    out = args.out or Path(args.folder).with_name(Path(args.folder).name + "_screening")
    try:
        summary = screen(args.folder, out, profile, args.model, args.unet, args.threshold,
                         batch_size=args.batch_size, progress=not args.quiet)
    except (DataError, ValueError, OSError) as err:
        print(f"tbkd screen: {_one_line(err)}", file=sys.stderr)
        return 1
    rate = f", {summary['images_per_s']:.1f} images/s" if summary["images_per_s"] else ""
    print(f"{summary['screened']} images screened ({summary['new']} now{rate}); "
          f"{summary['refused']} refused; report: {out / 'report.html'}, table: {out / 'screen.csv'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tbkd", description="Grad-CAM knowledge distillation for TB detection: "
                                "the tbkd teaching kit's command line")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("reproduce", help="execute every numbered notebook headlessly (papermill)")
    r.add_argument("--profile", default="quick", choices=("quick", "real", "full"))
    r.add_argument("--data-dir", default=None, help="NLM data folder (default: $TBKD_DATA_DIR)")
    r.add_argument("--out", type=Path, default=None, help="folder for executed copies (default runs/<profile>)")
    r.add_argument("--skip-bad", action="store_true",
                   help="leave bad data files out instead of stopping (sets TBKD_SKIP_BAD=1 for the notebooks); "
                        "each notebook prints what was skipped, listed in artifacts/<profile>/skipped.json")
    r.add_argument("--weights", default=None, choices=("random", "imagenet", "cxr"),
                   help="starting weights of the classifiers (default: the profile's; random for quick and real, "
                        "imagenet for full); sets TBKD_WEIGHTS for the notebooks; files are looked for in "
                        "$TBKD_WEIGHTS_DIR and the usual caches, downloaded once when missing")
    r.set_defaults(func=_reproduce)

    sc = sub.add_parser("screen", help="screen a folder of X-rays in batches: screen.csv and report.html, resumable")
    sc.add_argument("folder", type=Path)
    sc.add_argument("--out", type=Path, default=None, help="report folder (default: <folder>_screening beside it)")
    sc.add_argument("--profile", default="quick", choices=("quick", "real", "full"))
    sc.add_argument("--model", default=None, help="classifier checkpoint (default: the profile's kd+cam student)")
    sc.add_argument("--unet", default=None, help="U-Net checkpoint (default: the profile's)")
    sc.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the saved one)")
    sc.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    sc.add_argument("--quiet", action="store_true", help="no progress bar")
    sc.set_defaults(func=_screen)

    c = sub.add_parser("check-data", help="read a data folder in any supported layout and report it")
    c.add_argument("folder", type=Path)
    c.add_argument("--skip-bad", action="store_true", help="skip bad files and list them instead of stopping")
    c.set_defaults(func=_check_data)

    ph = sub.add_parser("phantoms", help="write synthetic chest X-rays in the official NLM layouts")
    ph.add_argument("outdir", type=Path)
    ph.add_argument("--shenzhen", type=int, default=160)
    ph.add_argument("--montgomery", type=int, default=80)
    ph.add_argument("--size", type=int, default=128)
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--difficulty", type=float, default=0.5)
    ph.set_defaults(func=_phantoms)

    s = sub.add_parser("segment", help="lung mask and lung-extracted image of image files (the stage-1 U-Net)")
    s.add_argument("images", nargs="+", help="PNG/JPEG files or folders of them")
    s.add_argument("-o", "--outdir", type=Path, required=True, help="folder for <name>_mask.png and <name>_lungs.png")
    s.add_argument("--checkpoint", type=Path, default=None,
                   help="U-Net checkpoint (default: the profile's, artifacts/<profile>/segmentation/unet.pt)")
    s.add_argument("--profile", default="quick", choices=PROFILES)
    s.set_defaults(func=_segment)

    pr = sub.add_parser("predict", help="P(TB), the decision and a Grad-CAM overlay for image files")
    pr.add_argument("images", nargs="+", help="PNG/JPEG files (any bit depth, at least "
                    f"{MIN_IMAGE_SIDE} px a side) or folders of them")
    pr.add_argument("--model", type=Path, default=None,
                    help="classifier checkpoint (default: the profile's distilled student, "
                         "artifacts/<profile>/students/kd+cam-best/best.pt)")
    pr.add_argument("--cam", default=None,  # a str, not a Path: a Path drops the trailing "/" of "out/"
                    help="write the Grad-CAM overlay here (several images: <stem>_<image>.png beside it; "
                         "a folder, i.e. an existing one or a name ending in '/' (made if missing): "
                         "<image>_cam.png in it)")
    pr.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    pr.add_argument("--profile", default="quick", choices=PROFILES,
                    help="whose student and U-Net to use (default quick)")
    pr.add_argument("--unet", type=Path, default=None, help="U-Net checkpoint (default: the profile's)")
    pr.add_argument("--threshold", type=float, default=None,
                    help="decision threshold (default: the one saved beside the checkpoint, chosen on validation)")
    pr.set_defaults(func=_predict)

    ex = sub.add_parser("export", help="export the student as TorchScript or ONNX and check its probabilities")
    ex.add_argument("--format", required=True, choices=("torchscript", "onnx"))
    ex.add_argument("--model", type=Path, default=None, help="classifier checkpoint (default: the profile's student)")
    ex.add_argument("-o", "--out", type=Path, default=None,
                    help="output file (default: model.onnx / model.torchscript.pt beside the checkpoint)")
    ex.add_argument("--profile", default="quick", choices=PROFILES)
    ex.add_argument("--tolerance", type=float, default=1e-4,
                    help="largest allowed difference of the probabilities from PyTorch's")
    ex.set_defaults(func=_export)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
