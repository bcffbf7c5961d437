"""Independent training / evaluation jobs run side by side in worker processes.

The toy models use a CPU core better one per process than several threads in one process (two
1-thread KD runs side by side do 1.16x the steps per second of the same runs in one 2-thread
process on 2 cores; bench/study_workers.md). The comparison and the study therefore train their
runs in `workers` processes, each with cores // workers torch threads. On a GPU machine
(`device="cuda"`) several processes share the GPU: the tiny models leave it mostly idle, so running
runs side by side is what makes a grid fast there.

A job is a top-level function and its keyword arguments (picklable); it writes its results to disk
and returns a small dict (timings). Jobs are independent: a failure stops the pool and is raised
in the parent naming the job; finished jobs' files stay, so a rerun resumes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

DEVICES = ("cpu", "cuda", "auto")


@dataclass
class Job:
    key: str  # what the job is, for progress lines and errors (e.g. "tiny-32b-short kd seed 1")
    fn: Callable[..., dict]
    kwargs: dict[str, Any] = field(default_factory=dict)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers(device: str) -> int:
    """One process per core on the CPU; four processes sharing one GPU."""
    return 4 if device == "cuda" else cores()


def _die_with_parent() -> None:
    """Linux: a worker gets SIGTERM when the process that started it dies (a killed `laid study`
    leaves no orphan training on); elsewhere a no-op."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _init_worker(threads: int, device: str) -> None:
    _die_with_parent()
    if device == "cpu":  # before anything touches CUDA in this process: train and evaluate on the CPU
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    torch.set_num_threads(threads)


def _timed(job: Job) -> dict:
    t = time.time()
    out = job.fn(**job.kwargs) or {}
    return {**out, "seconds": round(time.time() - t, 1)}


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise ValueError(f"device {device!r} is not one of {DEVICES}")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is visible here; use --device cpu")
    return device


def log_line(*args) -> None:
    print(*args, flush=True)  # progress lines reach a log file as they happen


def run_jobs(jobs: list[Job], workers: int | None = None, device: str = "cpu", log=log_line,
             on_done: Callable[[str, dict], None] | None = None) -> dict[str, dict]:
    """Run `jobs` in `workers` processes (1 = in this process); returns {key: job result + seconds}.
    `on_done(key, result)` is called as each job finishes, so what a killed invocation finished is
    recorded (a study's job seconds) before the next job ends."""
    device = check_device(device)
    if not jobs:
        return {}
    workers = max(1, min(workers or default_workers(device), len(jobs)))
    threads = max(1, cores() // workers)
    results: dict[str, dict] = {}
    if workers == 1:
        for i, job in enumerate(jobs, 1):
            try:
                results[job.key] = _timed(job)
            except Exception as e:  # the same one line as from a worker: which job, then why
                raise RuntimeError(f"{job.key}: {e}") from e
            log(f"[{i}/{len(jobs)}] {job.key}: {results[job.key]['seconds']:.0f} s")
            if on_done is not None:
                on_done(job.key, results[job.key])
        return results
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=(threads, device)) as pool:
        futures = {pool.submit(_timed, job): job for job in jobs}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)  # a line per finished job, the first failure at once
            for f in done:
                job = futures[f]
                if f.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise RuntimeError(f"{job.key}: {f.exception()}") from f.exception()
                results[job.key] = f.result()
                log(f"[{len(results)}/{len(jobs)}] {job.key}: {results[job.key]['seconds']:.0f} s")
                if on_done is not None:
                    on_done(job.key, results[job.key])
    return results
