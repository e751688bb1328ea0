"""How ``tbkd predict`` reads its ``--cam`` value and which images it refuses as too small
(no model needed; the end-to-end checks are in test_cli_predict.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tbkd_helpers import cli
from tbkd_helpers.data import DataError


def test_cam_value_keeps_the_trailing_separator(tmp_path):
    """``--cam out/`` stays ``"out/"`` after argparse: a Path would drop the slash."""
    args = cli.build_parser().parse_args(["predict", "x.png", "--cam", f"{tmp_path}/out/"])
    assert args.cam.endswith("/")
    assert cli.cam_is_folder(args.cam) and not (tmp_path / "out").exists()  # deciding makes nothing


def test_cam_is_folder(tmp_path):
    (tmp_path / "there").mkdir()
    assert cli.cam_is_folder(tmp_path / "there") and cli.cam_is_folder(str(tmp_path / "there"))
    assert cli.cam_is_folder(f"{tmp_path}/new/")
    assert not cli.cam_is_folder(tmp_path / "new") and not cli.cam_is_folder(f"{tmp_path}/o.png")


@pytest.mark.parametrize("many", [False, True])
def test_cam_path_in_a_new_folder(tmp_path, many):
    img = Path("scans/CHNCXR_0001_0.png")
    assert cli._cam_path(f"{tmp_path}/out/", img, many) == tmp_path / "out" / "CHNCXR_0001_0_cam.png"


def test_cam_path_documented_file_cases(tmp_path):
    img = Path("a/b.png")
    assert cli._cam_path(str(tmp_path / "o.png"), img, many=False) == tmp_path / "o.png"
    assert cli._cam_path(str(tmp_path / "o.png"), img, many=True) == tmp_path / "o_b.png"
    assert cli._cam_path(str(tmp_path / "o"), img, many=True) == tmp_path / "o_b.png"
    (tmp_path / "d").mkdir()
    assert cli._cam_path(str(tmp_path / "d"), img, many=False) == tmp_path / "d" / "b_cam.png"


def test_min_image_side_lets_phantoms_through():
    assert 1 < cli.MIN_IMAGE_SIDE <= 128  # the quick profile's phantoms are 128 px


@pytest.mark.parametrize("shape", [(1, 1), (8, 500), (500, 8), (cli.MIN_IMAGE_SIDE - 1, 400)])
def test_too_small_images_are_refused_in_one_line(shape):
    with pytest.raises(DataError) as info:
        cli.check_image_size(np.zeros(shape, np.float32), Path("tiny.png"))
    msg = str(info.value)
    h, w = shape
    assert msg.startswith("tiny.png: image too small") and f"({w}x{h} px;" in msg and "\n" not in msg


@pytest.mark.parametrize("shape", [(cli.MIN_IMAGE_SIDE, cli.MIN_IMAGE_SIDE), (128, 128), (299, 299), (97, 131)])
def test_big_enough_images_pass(shape):
    assert cli.check_image_size(np.zeros(shape, np.float32), "ok.png") is None
