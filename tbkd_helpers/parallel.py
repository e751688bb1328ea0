"""Independent training runs side by side, in processes of one thread each.

A student (MobileNet V3 Small at 112 px) is too small to keep two cores busy with one run:
on the 2-core machine kind one run with two threads takes 4.5 s an epoch, while two runs
of one thread each, side by side, take 6.7 s an epoch each, 1.34x the throughput. The
ablation's students, its seeds and the k-fold students are independent runs, so they are
trained that way: :func:`run` hands each job to one of ``processes`` worker processes
(each with one torch thread), longest first, and the caller then loads the finished
checkpoints as if it had trained them itself (every run folder is a cache).

- The workers start fresh interpreters (``spawn``), so a job is a module-level function
  with picklable arguments; it writes its results to disk and returns nothing.
- A job whose run folder already holds a finished run (``done.json``) is not started.
- The number of processes is ``profile.student_processes`` (``TBKD_STUDENT_PROCESSES``);
  0 means one per CPU core on a CPU, and 1 on a GPU. With one process the jobs run here,
  one after the other, with this process's threads.
- A job's result depends on its thread count (the order of floating-point sums), not on how
  many jobs run beside it: the same job gives the same weights in any worker.
- Progress: a job that says how many ``epochs`` it trains gets an ``on_epoch_end`` callback
  (:func:`epoch_done`; its function must accept it, as ``pipeline.train_student`` does), and
  the bar counts epochs over all jobs; otherwise it counts finished runs.
- Stopped (Ctrl-C, a failed job), the workers are ended; each run resumes from its last
  finished epoch next time (``train.EpochLoop``; a dead worker's run lock is taken over).
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

ENV = "TBKD_STUDENT_PROCESSES"


@dataclass(frozen=True)
class Job:
    """One training run: ``fn(*args, **kwargs)`` (a module-level function) that trains into
    ``run_dir``. ``cost``: its expected cost relative to the other jobs (the longest start
    first, so that no process is left with a long job at the end). ``epochs``: how many it
    trains (0: not said; see the module doc on progress)."""

    label: str
    fn: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    run_dir: Path | None = None
    cost: float = 1.0
    epochs: int = 0

    @property
    def done(self) -> bool:
        return self.run_dir is not None and (Path(self.run_dir) / "done.json").is_file()


def cpu_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def processes(profile, n_jobs: int | None = None) -> int:
    """How many worker processes train side by side (at most one per job): the profile's
    ``student_processes``, or ``TBKD_STUDENT_PROCESSES``, or, when both are 0, one per CPU
    core on a CPU and 1 on a GPU."""
    from .config import torch_device

    raw = os.environ.get(ENV, "").strip()
    try:
        n = int(raw) if raw else int(profile.student_processes)
    except ValueError:
        raise ValueError(f"{ENV}={raw!r}: expected a whole number of processes (0: one per core)") from None
    if n <= 0:
        n = cpu_cores() if torch_device(profile.device).type == "cpu" else 1
    return max(1, min(n, n_jobs if n_jobs is not None else n))


@contextmanager
def _main_not_reimported():
    """``spawn`` starts each worker by re-running the parent's main script or module, which
    would re-run a user's script that has no ``if __name__ == "__main__"`` guard. The jobs
    are functions of this package, never of ``__main__``, so the workers are started as
    from an interactive session (a notebook's kernel, a REPL): without the main script."""
    main = sys.modules["__main__"]
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    try:
        main.__dict__.pop("__file__", None)
        if "__spec__" in saved:
            main.__spec__ = None  # spawn reads it; None: no module to import
        yield
    finally:
        main.__dict__.update(saved)


_EPOCH_SINK: Callable | None = None  # where epoch_done reports: a queue in a worker, the bar here


def epoch_done(label: str, epoch: int, history=None) -> None:
    """A job's ``on_epoch_end`` (bound to its label): one more epoch of ``label`` finished."""
    if _EPOCH_SINK is not None:
        _EPOCH_SINK(label)


def _start_worker(threads: int, epochs=None) -> None:
    global _EPOCH_SINK
    import torch

    torch.set_num_threads(threads)
    _EPOCH_SINK = epochs.put if epochs is not None else None


def _call(job: Job) -> tuple[str, float]:
    from functools import partial

    t0 = time.perf_counter()
    extra = {"on_epoch_end": partial(epoch_done, job.label)} if job.epochs else {}
    job.fn(*job.args, **job.kwargs, **extra)
    return job.label, time.perf_counter() - t0


class _Progress:
    """The bar of :func:`run`: epochs over all jobs when every job says its count, else runs."""

    def __init__(self, jobs: Sequence[Job], desc: str, show: bool):
        from tqdm.auto import tqdm

        self.by_epoch = all(j.epochs for j in jobs)
        self.left = {j.label: (j.epochs if self.by_epoch else 1) for j in jobs}
        self.total, self.count = sum(self.left.values()), 0
        self.bar = tqdm(total=self.total, desc=desc, unit="epoch" if self.by_epoch else "run", disable=not show)

    def _add(self, k: int) -> None:
        self.count += k
        self.bar.update(k)

    def epoch(self, label: str) -> None:
        if self.by_epoch and self.left.get(label, 0) > 1:  # the last one is counted when the run ends
            self.left[label] -= 1
            self._add(1)

    def finished(self, label: str, running: Sequence[str]) -> None:
        self._add(self.left.pop(label, 0))  # a resumed run reports fewer epochs
        self.bar.set_postfix_str(", ".join(running))


def run(profile, jobs: Sequence[Job], progress: bool = True, desc: str = "training") -> dict[str, float]:
    """Run the ``jobs`` not yet done (see the module doc); returns ``{label: seconds}`` of
    the jobs it ran. A job that fails stops the others and raises, naming the job."""
    global _EPOCH_SINK
    todo = sorted((j for j in jobs if not j.done), key=lambda j: -j.cost)
    if not todo:
        return {}
    n = processes(profile, len(todo))
    where = f"{n} processes of 1 thread" if n > 1 else "in this process"
    bar = _Progress(todo, f"{desc} ({where})", progress)
    seconds: dict[str, float] = {}
    try:
        if n == 1:
            _EPOCH_SINK = bar.epoch
            for i, job in enumerate(todo):
                bar.bar.set_postfix_str(job.label)
                label, seconds[job.label] = _call(job)
                bar.finished(label, [j.label for j in todo[i + 1:i + 2]])
            return seconds
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        epochs = ctx.Queue()
        with _main_not_reimported():  # the workers start here
            pool = ctx.Pool(n, initializer=_start_worker, initargs=(1, epochs))
        with pool:
            pending = {job.label: pool.apply_async(_call, (job,)) for job in todo}
            bar.bar.set_postfix_str(", ".join(j.label for j in todo[:n]))
            while pending:
                time.sleep(0.5)
                while not epochs.empty():
                    bar.epoch(epochs.get())
                for label, res in list(pending.items()):
                    if res.ready():
                        try:
                            seconds[label] = res.get()[1]
                        except Exception as e:
                            raise RuntimeError(f"{desc}: the run {label!r} failed: {e}") from e
                        del pending[label]
                        bar.finished(label, [j.label for j in todo if j.label in pending][:n])
        return seconds
    finally:
        _EPOCH_SINK = None
        bar.bar.close()
