"""Throughput of distillation runs side by side: N worker processes x T torch threads on this machine.

    PYTHONPATH=. .venv/bin/python bench/study_workers.py --run-dir runs/default --steps 40

Runs the same KD job (testbed config, tiny-32b -> tiny-32b-short, `--steps` optimizer steps) as
1 process x all cores' threads, then as one process per core with 1 thread each (what `laid study`
and `laid compare` do, laid_workflows/jobs.py), and prints steps per second of each layout. Write the
table into bench/study_workers.md with the machine's load at the time.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from laid_workflows.jobs import Job, cores, run_jobs

REPO = Path(__file__).resolve().parents[1]


def one_run(run_dir: str, steps: int, seed: int) -> dict:
    from trainers.config import load_config
    from trainers.recipe import distill

    run, out = Path(run_dir), Path(tempfile.mkdtemp(prefix="study_workers_"))
    cfg = load_config(REPO / "configs" / "distill" / "tiny-32b_testbed.yaml", {
        "teacher_dir": str(run / "zoo" / "tiny-32b"), "student_dir": str(run / "zoo" / "tiny-32b-short"),
        "output_dir": str(out), "method": "kd", "max_steps": steps, "seed": seed, "save_every": 0,
        "data.train_dir": str(run / "data" / "train"), "data.image_root": str(run / "data")})
    distill(cfg, progress=False)
    shutil.rmtree(out, ignore_errors=True)
    return {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default="runs/default")
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    n = cores()
    rows = []
    for workers, label in ((1, f"1 process x {n} threads"), (n, f"{n} processes x 1 thread")):
        jobs = [Job(f"kd seed {s}", one_run, dict(run_dir=args.run_dir, steps=args.steps, seed=s)) for s in range(n)]
        t = time.time()
        if workers == 1:  # one process using every core: run the jobs one after the other with n threads
            import torch

            torch.set_num_threads(n)
            for job in jobs:
                job.fn(**job.kwargs)
        else:
            run_jobs(jobs, workers=workers, log=lambda *a: None)
        seconds = time.time() - t
        rows.append((label, seconds, n * args.steps / seconds))
    print(f"\n| layout | {n} runs x {args.steps} steps (s) | steps / s |\n|---|---|---|")
    for label, seconds, rate in rows:
        print(f"| {label} | {seconds:.0f} | {rate:.2f} |")


if __name__ == "__main__":
    main()
