"""Wall time of one Visual Haystacks evaluation of the toy zoo (CPU), without and with the pixel cache.

    PYTHONPATH=. .venv/bin/python bench/eval_speed.py --samples-per-size 20 --threads 1

Builds once, under --work, random-init tiny-7b and tiny-32b folders and the default synthetic
benchmark (`SynthConfig()`: test sizes 1-150, 100 single-needle questions per size, a pool of 3000
56 px images), then times `laid.eval.run.evaluate` (model load included, as the main job runs it)
for each model in three settings:

  before      pixel_cache=False: every image of every haystack decoded and preprocessed
  cold cache  a fresh PixelCache: each distinct image preprocessed once in this evaluation
  warm cache  the same cache again: what every evaluation after the first one of a process sees
              (the default `pixel_cache=True` is one process-wide cache)

The margins of the three settings must be identical (checked, exactly). Times are wall seconds
and CPU seconds of this process (time.process_time: with one torch thread, much less sensitive
than wall time to other jobs on a shared machine; speedups are taken on CPU seconds). Also
reported: the CPU seconds spent building inputs (encode_batch: decoding, preprocessing,
tokenizing), the projected cost of 17 evaluations in one process (before: 17 x before; after: 1
cold + 16 warm), and where the CPU time of one more warm evaluation goes (module hooks: vision
tower, its attention modules, M-RoPE index, language model).
Writes bench/results/eval_speed.md (atomically).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

import laid.eval.scoring as scoring
from laid.data.synth import SynthConfig, generate
from laid.eval.run import evaluate, evaluate_loaded, load_entries
from laid.eval.variants import load_for_eval
from laid.model.pixel_cache import PixelCache
from laid.zoo.build import build_random_folder
from laid.zoo.configs import load_zoo_config

REPO = Path(__file__).resolve().parents[1]
MODELS = ("tiny-7b", "tiny-32b")
N_EVALS = 17  # evaluations of the main job (base / variants / distilled students, both students)
INSIDE_VISION = "(in the vision tower: its attention modules)"


CLOCK = time.process_time  # CPU seconds of this process


class EncodeTimer:
    """CPU seconds spent in encode_batch as called by the scoring loop (wraps it while active)."""

    def __init__(self):
        self.seconds = 0.0
        self._original = scoring.encode_batch

    def __enter__(self):
        def timed(*args, **kwargs):
            t = CLOCK()
            try:
                return self._original(*args, **kwargs)
            finally:
                self.seconds += CLOCK() - t

        scoring.encode_batch = timed
        return self

    def __exit__(self, *exc):
        scoring.encode_batch = self._original


class Stopwatch:
    """CPU seconds spent inside some modules' forward calls (hooks) and some methods (wrapped)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._handles = []
        self._wrapped = []

    def modules(self, name: str, modules) -> None:
        self.seconds[name] = 0.0
        for module in modules:
            def pre(mod, args, kwargs):
                mod._bench_t0 = CLOCK()

            def post(mod, args, kwargs, out, name=name):
                self.seconds[name] += CLOCK() - mod._bench_t0

            self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            self._handles.append(module.register_forward_hook(post, with_kwargs=True))

    def method(self, name: str, owner, attr: str) -> None:
        self.seconds[name] = 0.0
        original = getattr(owner, attr)

        def timed(*args, **kwargs):
            t = CLOCK()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[name] += CLOCK() - t

        setattr(owner, attr, timed)  # an instance attribute shadows the class's method
        self._wrapped.append((owner, attr))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        for owner, attr in self._wrapped:
            delattr(owner, attr)


def breakdown(model_dir: Path, data: Path, samples: int, cache: PixelCache) -> dict[str, float]:
    """CPU seconds of one warm-cache evaluation (model already loaded) by part."""
    model, processor = load_for_eval(model_dir, device="cpu")
    entries = load_entries(data / "test", data, max_samples_per_size=samples)
    inner = model.model
    watch = Stopwatch()
    watch.modules("vision tower", [inner.visual])
    watch.modules(INSIDE_VISION, [block.attn for block in inner.visual.blocks])
    watch.method("M-RoPE position ids", inner, "compute_3d_position_ids")
    watch.modules("language model", [inner.language_model])
    try:
        with EncodeTimer() as enc:
            t = CLOCK()
            evaluate_loaded(model, processor, entries, progress=False, pixel_cache=cache)
            total = CLOCK() - t
    finally:
        watch.remove()
    parts = {"building inputs (encode_batch)": enc.seconds, **watch.seconds}
    outside = sum(v for k, v in parts.items() if k != INSIDE_VISION)
    return {**parts, "rest (planning, LM head, scoring, results)": total - outside, "total": total}


def prepare(work: Path) -> tuple[Path, dict[str, Path]]:
    data = generate(SynthConfig(), work / "data", progress=False)
    zoo = {}
    for name in MODELS:
        folder = work / "zoo" / name
        if not (folder / "config.json").is_file():
            build_random_folder(load_zoo_config(REPO / "configs" / "zoo" / f"{name}.yaml"), folder)
        zoo[name] = folder
    return data, zoo


@dataclass
class Timing:
    wall: float
    cpu: float
    encode_cpu: float
    margins: np.ndarray

    def cell(self) -> str:
        return f"{self.wall:.1f} / {self.cpu:.1f} ({self.encode_cpu:.1f})"


def timed_eval(model_dir: Path, data: Path, samples: int, pixel_cache) -> Timing:
    with EncodeTimer() as enc:
        wall, cpu = time.perf_counter(), CLOCK()
        ds = evaluate(model_dir, data / "test", data, max_samples_per_size=samples, progress=False,
                      device="cpu", pixel_cache=pixel_cache)  # fmt: skip
        wall, cpu = time.perf_counter() - wall, CLOCK() - cpu
    return Timing(wall, cpu, enc.seconds, ds["margin"].values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "laid_eval_speed"),
                    help="folder for the synthetic data and zoo (reused between runs)")  # fmt: skip
    ap.add_argument("--samples-per-size", type=int, default=20, help="single-needle questions per size (max 100)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "eval_speed.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data, zoo = prepare(Path(args.work))

    rows = []
    for name, model_dir in zoo.items():
        cache = PixelCache()
        before = timed_eval(model_dir, data, args.samples_per_size, False)
        cold = timed_eval(model_dir, data, args.samples_per_size, cache)
        misses = cache.misses
        warm = timed_eval(model_dir, data, args.samples_per_size, cache)
        for setting in (cold, warm):
            if not np.array_equal(setting.margins, before.margins, equal_nan=True):
                raise RuntimeError(f"{name}: margins with the pixel cache differ from those without it")
        lookups = cache.hits + cache.misses
        parts = breakdown(model_dir, data, args.samples_per_size, cache)
        rows.append((name, before, cold, warm, misses, lookups // 2, cache.nbytes, parts))
        print(f"{name} wall / CPU s (encode CPU s): before {before.cell()}, cold {cold.cell()}, warm {warm.cell()}",
              flush=True)  # fmt: skip

    lines = [
        "# Visual Haystacks evaluation speed: pixel cache (CPU)",
        "",
        f"`PYTHONPATH=. .venv/bin/python bench/eval_speed.py --samples-per-size {args.samples_per_size} "
        f"--threads {args.threads}`; {datetime.now():%Y-%m-%d %H:%M}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs visible, torch threads {args.threads}, load average before the run "
        f"{os.getloadavg()[0]:.1f} (shared machine: wall times are noisy upper bounds; CPU seconds of "
        "this process are the steadier measure, and speedups are taken on them).",
        "",
        f"One `evaluate()` (model load included) of a random-init model on the default synthetic test split, "
        f"{args.samples_per_size} single-needle samples per size x 8 sizes (1-150 images). Margins were "
        "checked identical (exactly) in all three settings. Cells: wall s / CPU s (CPU s building "
        "inputs: decode + preprocess + tokenize).",
        "",
        "| model | images / distinct | before | cold cache | warm cache | CPU speedup cold / warm "
        "| input building speedup warm | cache MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, before, cold, warm, misses, images, nbytes, _ in rows:
        lines.append(
            f"| {name} | {images} / {misses} | {before.cell()} | {cold.cell()} | {warm.cell()} "
            f"| {before.cpu / cold.cpu:.2f}x / {before.cpu / warm.cpu:.2f}x "
            f"| {before.encode_cpu / warm.encode_cpu:.1f}x | {nbytes / 2**20:.0f} |"
        )
    before_all = sum(r[1].cpu for r in rows) / len(rows)
    after_all = (sum(r[2].cpu for r in rows) + (N_EVALS - 1) * sum(r[3].cpu for r in rows)) / len(rows) / N_EVALS
    lines += [
        "",
        f"Projected {N_EVALS} evaluations in one process at this sample count (mean of the models, CPU s): "
        f"before {N_EVALS * before_all:.0f} s, after {N_EVALS * after_all:.0f} s "
        f"(1 cold + {N_EVALS - 1} warm; the process-wide cache is filled by the first evaluation).",
        "",
        "Where the CPU time of one more warm-cache evaluation goes (model already loaded; CPU seconds):",
        "",
        "| part | " + " | ".join(r[0] for r in rows) + " |",
        "|---|" + "---|" * len(rows),
    ]
    for part in rows[0][7]:
        lines.append(f"| {part} | " + " | ".join(f"{r[7][part]:.1f}" for r in rows) + " |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
