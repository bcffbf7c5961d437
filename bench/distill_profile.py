"""Where a distillation step's time goes: cProfile of a few steps per method, the same data and pair.

    PYTHONPATH=. .venv/bin/python bench/distill_profile.py --run-dir runs/default --steps 20 --methods kd laid

Trains `--steps` optimizer steps of each method with configs/distill/tiny-32b_testbed.yaml
(teacher `--teacher`, student `--student`, global batch 8 = 4 x 2) from the run folder's zoo and
data, one torch thread, and prints per method the seconds per step and the cumulative seconds
per step of the functions a step is made of (teacher forward, student forward, each loss term,
backward, optimizer, telemetry, data). Steps and data are the same for every method, so the
difference between two rows is what the extra terms cost. Results: bench/distill_speed.md.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import tempfile
import time
from pathlib import Path

import torch

from trainers.config import load_config
from trainers.recipe import distill

REPO = Path(__file__).resolve().parents[1]
# (label, file suffix, function name): the parts of a step, as cProfile names them.
PARTS = [
    ("teacher forward", "distill_module.py", "teacher_forward"),
    ("student module (forward + losses)", "distill_module.py", "forward"),
    ("attention matching loss", "attention_matching.py", "forward"),
    ("attention pattern (mask)", "base.py", "attention_pattern"),
    ("rope positions", "distill_module.py", "rope_positions"),
    ("telemetry (health)", "distill_module.py", "_health"),
    ("backward", "accelerator.py", "backward"),
    ("optimizer step", "optimizer.py", "wrapper"),
    ("collate (data)", "data.py", "collate"),
    ("least-squares mixer init", "recipe.py", "init_mixers"),
]


# Arms: a trained method with the testbed config's settings, or with the paper's LAid weights (both LAid
# terms at 1, so the Q/K alignment term and its mixers train; the toy's default has it off).
ARMS = {"kd": ("kd", {}), "sft": ("sft", {}), "laid": ("laid", {}),
        "laid-paper-weights": ("laid", {"lambdas.laid": 1.0, "lambdas.attn": 1.0})}


def profile_method(run: Path, teacher: str, student: str, arm: str, steps: int, log_every: int, data: str, ops: int):
    """(CPU seconds per step of the whole run, {part: cumulative CPU s per step}, op table or "")."""
    out = Path(tempfile.mkdtemp(prefix="distill_profile_"))
    cfg_path = REPO / "configs" / "distill" / "tiny-32b_testbed.yaml"
    cfg = load_config(cfg_path, overrides := {
        "teacher_dir": str(run / "zoo" / teacher), "student_dir": str(run / "zoo" / student),
        "output_dir": str(out), "method": ARMS[arm][0], **ARMS[arm][1], "max_steps": steps, "log_every": log_every, "save_every": 0,
        "data.train_dir": str(run / data / "train"), "data.image_root": str(run / data),
        "data.min_haystack": 1, "data.max_haystack": 20,
    })  # fmt: skip
    prof = cProfile.Profile(time.process_time)  # CPU seconds of this process: other jobs on a shared machine don't count
    table = ""
    if ops:  # aten ops by self CPU time, a separate 3-step run (the profilers would distort each other;
        # torch.profiler keeps every op event: ~0.4 GB per step here)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as tp:
            distill(load_config(cfg_path, {**overrides, "max_steps": 3}), progress=False)
        table = tp.key_averages().table(sort_by="self_cpu_time_total", row_limit=ops)
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
    prof.enable()
    distill(cfg, progress=False)
    prof.disable()
    shutil.rmtree(out, ignore_errors=True)
    stats = pstats.Stats(prof).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
    loop = sum(v[3] for (f, _, n), v in stats.items() if n == "distill" and f.endswith("recipe.py")) / steps
    parts = {}
    for label, suffix, name in PARTS:
        parts[label] = sum(v[3] for (f, _, n), v in stats.items() if n == name and f.endswith(suffix)) / steps
    ours = sorted(((v[3] / steps, f"{Path(f).parent.name}/{Path(f).name}:{n}") for (f, _, n), v in stats.items()
                   if "/trainers/" in f or "/laid/" in f), reverse=True)
    return loop, parts, table, ours


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default="runs/default", help="run folder with zoo/ and data/")
    ap.add_argument("--teacher", default="tiny-32b")
    ap.add_argument("--student", default="tiny-32b-short")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--log-every", type=int, default=25, help="telemetry interval (the testbed config's 25)")
    ap.add_argument("--methods", nargs="+", default=["kd", "laid"], choices=sorted(ARMS))
    ap.add_argument("--data", default="data", help="data folder inside the run folder (the main job's has the <= 5-image split)")
    ap.add_argument("--ops", type=int, default=0, help="also print the top N aten ops of each method (torch.profiler)")
    ap.add_argument("--top", type=int, default=0, help="also print the N project functions with the most cumulative time")
    ap.add_argument("--warmup", action="store_true",
                    help="one untimed run of the first method first: every method then reads the same decoded images")
    args = ap.parse_args()
    torch.set_num_threads(1)
    run = Path(args.run_dir)
    if args.warmup:
        profile_method(run, args.teacher, args.student, args.methods[0], args.steps, args.log_every, args.data, 0)
    rows = {m: profile_method(run, args.teacher, args.student, m, args.steps, args.log_every, args.data, args.ops) for m in args.methods}
    for m in args.methods:
        if args.top:
            print(f"\n{m}: project functions by cumulative CPU s per step\n" +
                  "\n".join(f"  {t:.4f}  {name}" for t, name in rows[m][3][:args.top]))
        if rows[m][2]:
            print(f"\n{m}: top aten ops by self CPU time, 3 steps with load and export\n{rows[m][2]}")
    print(f"\nseconds per step, {args.steps} steps, {args.teacher} -> {args.student}, data {args.data} "
          "(CPU seconds of this process; cProfile adds overhead to Python-heavy parts)\n")
    print("| part | " + " | ".join(args.methods) + " |\n|---|" + "---|" * len(args.methods))
    print("| whole run incl. load and export / steps | " + " | ".join(f"{rows[m][0]:.3f}" for m in args.methods) + " |")
    for label, _, _ in PARTS:
        print(f"| {label} | " + " | ".join(f"{rows[m][1][label]:.3f}" for m in args.methods) + " |")


if __name__ == "__main__":
    main()
