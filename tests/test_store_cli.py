"""Atomic artifacts and the command line."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tbkd_helpers import cli, store


def test_atomic_path_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "a.json"
    store.write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with store.atomic_path(target) as tmp:
            tmp.write_text("half a fi")
            raise RuntimeError("stopped mid-write")
    assert store.read_json(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left


def test_manifest_marks_completion_and_settings(tmp_path):
    man = tmp_path / "stage" / "manifest.json"
    assert not store.manifest_complete(man)
    store.write_manifest(man, {"epochs": 3}, files=["x"])
    assert store.manifest_complete(man, {"epochs": 3})
    assert not store.manifest_complete(man, {"epochs": 4})
    man.write_text("{not json")
    assert not store.manifest_complete(man)


def test_save_torch_roundtrip(tmp_path):
    import torch

    path = store.save_torch({"w": torch.ones(2)}, tmp_path / "ck.pt")
    assert torch.load(path, weights_only=True)["w"].sum() == 2


def test_check_data_cli(tmp_path, capsys):
    cxr = tmp_path / "ChinaSet_AllFiles" / "CXR_png"
    cxr.mkdir(parents=True)
    for i, lab in ((1, 0), (2, 1)):
        Image.fromarray(np.full((8, 8), 100, np.uint8)).save(cxr / f"CHNCXR_{i:04d}_{lab}.png")
    assert cli.main(["check-data", str(tmp_path)]) == 0
    assert "shenzhen" in capsys.readouterr().out
    (cxr / "CHNCXR_0003_1.png").write_bytes(b"")
    assert cli.main(["check-data", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "CHNCXR_0003_1.png: empty file" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["check-data", str(tmp_path), "--skip-bad"]) == 1
    assert "1 skipped" in capsys.readouterr().out


def test_file_sha256_is_remembered_only_for_settled_files(tmp_path):
    import hashlib
    import os

    p = tmp_path / "w.bin"
    p.write_bytes(b"a" * 10)
    assert store.file_sha256(p) == hashlib.sha256(b"a" * 10).hexdigest()
    # rewritten in place at once, same size: a fresh file is never taken from the memo
    p.write_bytes(b"b" * 10)
    assert store.file_sha256(p) == hashlib.sha256(b"b" * 10).hexdigest()
    # a settled file (mtime 10 s ago) is remembered; any later write changes the mtime
    old = p.stat().st_mtime_ns - 10_000_000_000
    os.utime(p, ns=(old, old))
    first = store.file_sha256(p)
    assert first in store._SHA_MEMO.values()
    p.write_bytes(b"c" * 10)
    assert store.file_sha256(p) == hashlib.sha256(b"c" * 10).hexdigest() != first
