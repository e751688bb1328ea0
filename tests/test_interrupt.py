"""Stopping a real run in the middle of a training stage and starting it again redoes
only the unfinished stage, resumes it where it stopped, and ends with the same model as
a run that was never stopped (kill -9 a real run on phantom data)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

SCRIPT = textwrap.dedent("""
    import sys
    import torch
    torch.set_num_threads(1)
    import tbkd_helpers as tk
    p = tk.config.get_profile("quick", phantom_counts={"shenzhen": 24, "montgomery": 16},
                              phantom_size=64, seg_epochs=2, teachers=("resnet18",),
                              teacher_epochs=int(sys.argv[1]))
    prep = tk.data.prepare(p, progress=False)
    tk.pipeline.lungs(p, prep, progress=False)
    print("STAGE1-DONE", flush=True)
    model, hist = tk.pipeline.train_teacher(p, "resnet18", prep, progress=True)
    print("STAGE2-DONE", hist.best_epoch, flush=True)
""")
EPOCHS = 6


def _start(tmp: Path, artifacts: Path, log=subprocess.PIPE) -> subprocess.Popen:
    script = tmp / "run.py"
    if not script.exists():  # written once: a second run must not rewrite it while another starts from it
        script.write_text(SCRIPT)
    env = {**os.environ, "TBKD_ARTIFACTS": str(artifacts), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(EPOCHS)], env=env, text=True,
                            stdout=log, stderr=subprocess.STDOUT)


def _state(path: Path) -> dict:
    return torch.load(path, weights_only=True)["state_dict"]


def _stop_then_restart(tmp: Path, art: Path) -> None:
    """Start a run in ``art``, kill -9 it once its teacher has finished an epoch but not the
    stage, start it again, and check that only the unfinished stage is redone, resumed."""
    teacher = art / "quick" / "teachers" / "resnet18"
    unet = art / "quick" / "segmentation" / "unet.pt"
    proc = _start(tmp, art)
    deadline = time.time() + 600
    # wait until the teacher has finished at least one epoch but not the stage, then kill -9
    while time.time() < deadline:
        if (teacher / "last.pt").is_file() and not (teacher / "done.json").is_file():
            break
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be stopped:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the teacher never started training")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (teacher / "done.json").exists(), "a stopped stage must not look finished"
    unet_stamp = unet.stat().st_mtime_ns
    manifest_stamp = (art / "quick" / "segmentation" / "manifest.json").stat().st_mtime_ns
    stopped_at = torch.load(teacher / "last.pt", weights_only=True)["epoch"]
    assert 1 <= stopped_at < EPOCHS

    again = _start(tmp, art)
    out, _ = again.communicate(timeout=900)
    assert again.returncode == 0, out[-3000:]
    assert "STAGE2-DONE" in out
    assert "resuming after epoch" in out, out[-2000:]
    # stage 1 was complete: not redone
    assert unet.stat().st_mtime_ns == unet_stamp
    assert (art / "quick" / "segmentation" / "manifest.json").stat().st_mtime_ns == manifest_stamp
    assert (teacher / "done.json").is_file()


@pytest.mark.slow
def test_kill_mid_training_then_restart(tmp_path):
    art, ref = tmp_path / "killed", tmp_path / "reference"
    # the same run, never stopped, trains beside the stopped one (one thread each): the reference
    with open(tmp_path / "reference.log", "w") as log:
        clean = _start(tmp_path, ref, log)
    try:
        _stop_then_restart(tmp_path, art)
        assert clean.wait(timeout=900) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    finally:
        if clean.poll() is None:
            clean.kill()
            clean.wait()
    # and both end with the same weights
    a = _state(art / "quick" / "teachers" / "resnet18" / "best.pt")
    b = _state(ref / "quick" / "teachers" / "resnet18" / "best.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resuming"
