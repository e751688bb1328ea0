"""Training runs side by side (``tbkd_helpers.parallel``): which jobs run, where, and that a
run trained in a worker process is the run this process would have trained with one thread."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import tbkd_helpers as tk
from tbkd_helpers import parallel, store


def _profile(n):
    return tk.config.get_profile("quick", student_processes=n)


def test_jobs_run_in_workers_longest_first_and_finished_runs_are_skipped(tmp_path):
    done = tmp_path / "done_before"
    store.write_json(done / "done.json", {"finished": True})
    jobs = [parallel.Job(f"run {i}", store.write_json, (tmp_path / f"r{i}" / "done.json", {"i": i}),
                         run_dir=tmp_path / f"r{i}", cost=i) for i in range(3)]
    jobs.append(parallel.Job("finished", int, ("not a number",), run_dir=done))  # would fail if run
    seconds = parallel.run(_profile(2), jobs, progress=False)
    assert set(seconds) == {"run 0", "run 1", "run 2"}
    assert all(store.read_json(tmp_path / f"r{i}" / "done.json") == {"i": i} for i in range(3))
    assert parallel.run(_profile(2), jobs, progress=False) == {}  # all done now: nothing starts


def test_the_bar_counts_epochs_and_tops_up_a_resumed_run():
    jobs = [parallel.Job("a", int, epochs=3), parallel.Job("b", int, epochs=2)]
    bar = parallel._Progress(jobs, "students", show=False)
    assert (bar.by_epoch, bar.total) == (True, 5)
    for _ in range(3):
        bar.epoch("a")  # its last epoch counts when the run ends
    assert bar.count == 2
    bar.finished("a", ["b"])
    bar.finished("b", [])  # resumed: it reported none of its epochs
    assert bar.count == bar.total == 5
    runs = parallel._Progress([parallel.Job("a", int, epochs=3), parallel.Job("c", int)], "k-fold", show=False)
    assert (runs.by_epoch, runs.total) == (False, 2)  # one job does not say: the bar counts runs


def test_a_failing_run_stops_the_others_and_names_itself(tmp_path):
    jobs = [parallel.Job("the bad one", int, ("not a number",), cost=2),
            parallel.Job("a good one", store.write_json, (tmp_path / "ok.json", {}))]
    with pytest.raises(RuntimeError, match="the bad one"):
        parallel.run(_profile(2), jobs, progress=False)


def test_how_many_processes(monkeypatch):
    monkeypatch.delenv(parallel.ENV, raising=False)
    assert parallel.processes(_profile(3), n_jobs=10) == 3
    assert parallel.processes(_profile(3), n_jobs=2) == 2  # never more than the jobs
    cores = parallel.cpu_cores()
    assert parallel.processes(_profile(0).replace(device="cpu"), n_jobs=64) == cores
    monkeypatch.setenv(parallel.ENV, "1")
    assert parallel.processes(_profile(3), n_jobs=10) == 1
    monkeypatch.setenv(parallel.ENV, "two")
    with pytest.raises(ValueError, match=parallel.ENV):
        parallel.processes(_profile(0), n_jobs=4)


def test_a_script_without_a_main_guard_starts_its_workers_once(tmp_path):
    """spawn re-runs the parent's main script in every worker unless told otherwise: a
    user's script without ``if __name__ == "__main__"`` would run again in each."""
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        from pathlib import Path
        import tbkd_helpers as tk
        from tbkd_helpers import parallel, store
        with open({str(tmp_path / 'starts.txt')!r}, "a") as f:
            f.write("started\\n")
        out = Path({str(tmp_path)!r})
        jobs = [parallel.Job(f"run {{i}}", store.write_json, (out / f"r{{i}}" / "done.json", {{}}),
                             run_dir=out / f"r{{i}}") for i in range(2)]
        print(sorted(parallel.run(tk.config.get_profile("quick", student_processes=2), jobs, progress=False)))
    """))
    proc = subprocess.run([sys.executable, str(script)], text=True, capture_output=True, timeout=300,
                          env={**os.environ, "TBKD_PROGRESS": "off"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "['run 0', 'run 1']" in proc.stdout
    assert (tmp_path / "starts.txt").read_text() == "started\n"


@pytest.mark.slow
def test_a_student_trained_in_a_worker_is_the_one_trained_here_with_one_thread(monkeypatch, tmp_path,
                                                                               one_torch_thread):
    """What makes the side-by-side runs honest: a worker changes nothing but the thread count,
    so two students trained by ``train_students`` in two processes have, tensor for tensor,
    the weights that this process trains with one thread."""
    monkeypatch.delenv(parallel.ENV, raising=False)
    monkeypatch.setenv("TBKD_ARTIFACTS", str(tmp_path / "artifacts"))  # the workers inherit it
    p = tk.config.get_profile("quick", phantom_counts={"shenzhen": 24, "montgomery": 16}, phantom_size=64,
                              seg_epochs=1, teachers=("resnet18",), teacher_epochs=2, student_epochs=2,
                              image_size=32, inception_size=32, cam_size=8, guide_views=2, student_processes=2)
    prep = tk.data.prepare(p, progress=False)
    runs = [{"variant": "ce", "seed": 1}, {"variant": "kd+cam", "seed": 1}]
    epochs = []
    monkeypatch.setattr(parallel._Progress, "epoch", lambda self, label: epochs.append(label))
    trained = tk.pipeline.train_students(p, prep, runs, progress=False)
    assert set(epochs) == {"ce seed 1", "kd+cam seed 1"}  # the workers report their epochs
    assert all((tk.pipeline.student_dir(p, r["variant"], seed=1) / "done.json").is_file() for r in runs)
    assert torch.get_num_threads() == 1
    for r, (model, hist, _) in zip(runs, trained):
        here, _, _ = tk.pipeline.train_student(p, r["variant"], prep, progress=False, seed=1,
                                               ckpt_dir=tk.config.artifacts_dir("here") / r["variant"])
        a, b = model.state_dict(), here.state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{r['variant']}: the worker's weights differ"
