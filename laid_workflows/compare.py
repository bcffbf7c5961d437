"""The method comparison of the paper's Tables 1 and 3 (`laid compare`, `run_comparison`).

For each student of the zoo (tiny-7b, tiny-3b) against the teacher (tiny-32b):
- inference-time variants of the untrained student: base, YaRN, SelfExtend (`laid.eval` variants);
- trained methods: SFT-LoRA, KD, LAid and the Table 3 ablations (laid-no-kl, laid-no-laid), each
  distilled on the short train split only (2-20 images) and its export evaluated;
- the teacher (base) as the upper reference row;
all evaluated on every test size. Layout under the run folder (docs/CONTRACTS.md):

    eval/<model>__<variant>.nc              zoo models x inference variants (shared with `laid eval`)
    distill/<student>__<method>/            the run: checkpoints, export/, head_weights.nc, eval.nc
    compare/<name>.nc, <name>.md            the tables: `name` of the config; "comparison" (the
                                            headline) for compare.yaml, comparison_full for --full,
                                            layer_pairing for the layer-pairing study

Resumable: a result that exists is reused (an eval file is reused only if it was made with the
same sizes, samples, setting, seed and threshold; otherwise the comparison evaluates into
compare/eval/ and leaves the other file alone); a distillation with checkpoints but no export
resumes. `force=True` recomputes everything this comparison owns.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import xarray as xr

from laid.config import load_config
from laid.eval.settings import EvalSettings
from laid.io import write_netcdf, write_text
from laid.layout import RunLayout
from laid.methods import ALL_METHODS, DERIVED_METHODS, INFERENCE_VARIANTS, TRAINED_METHODS, trained_method
from laid.eval.paired import DEFAULT_MARGIN
from laid_workflows.headline import add_labels, add_paired_statistics, run_label
from laid_workflows.jobs import DEVICES, Job, run_jobs
from laid_workflows.tables import build_comparison, comparison_markdown
from trainers.config import load_config as load_distill_config
from trainers.config import trained_differently

REPO = Path(__file__).resolve().parents[1]


@dataclass
class CompareConfig:
    # Results go to compare/<name>.nc and .md: "comparison" is the headline the main job, figures and
    # summary read; the full tables and studies name their own file so they never overwrite it.
    name: str = "comparison"
    teacher: str = "tiny-32b"
    students: list[str] = field(default_factory=lambda: ["tiny-7b", "tiny-3b"])
    variants: list[str] = field(default_factory=lambda: list(INFERENCE_VARIANTS))
    variant_options: dict[str, Any] = field(default_factory=dict)  # {variant: {option: value}}
    methods: list[str] = field(default_factory=lambda: list(TRAINED_METHODS))
    distill_configs: dict[str, Any] = field(default_factory=dict)  # {student: path of a configs/distill/*.yaml}
    method_overrides: dict[str, Any] = field(default_factory=dict)  # {method: {key: value}} on top of those
    zoo_dir: str = "zoo"  # relative to the run folder
    data_dir: str = "data"  # relative to the run folder; image root, with train/ and test/ splits
    eval: EvalSettings = field(default_factory=EvalSettings)  # laid.eval.settings; the main job passes its own
    seeds: list[int] = field(default_factory=lambda: [0])  # distillation seeds of every trained entry
    # Sizes of the headline statistic (laid_workflows/headline.py): mean accuracy over each group.
    short_sizes: list[int] = field(default_factory=lambda: [1, 2])
    long_sizes: list[int] = field(default_factory=lambda: [5, 10, 20, 50])
    non_inferiority_margin: float = DEFAULT_MARGIN  # "no harm" at short range: lower bound of short - base > -margin

    def __post_init__(self):
        known = (*TRAINED_METHODS, *DERIVED_METHODS)
        bad = [v for v in self.variants if v not in INFERENCE_VARIANTS]
        bad += [m for m in self.methods if m not in known]
        if bad:
            raise ValueError(f"unknown comparison entries {bad}; variants: {INFERENCE_VARIANTS}, methods: {known}")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.name):
            raise ValueError(f"name {self.name!r} must be a plain file stem (letters, digits, _ or -): compare/<name>.nc")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {self.seeds}")
        missing = [s for s in self.students if self.methods and s not in self.distill_configs]
        if missing:
            raise ValueError(f"distill_configs has no config for student(s) {missing}")


def load_compare_config(path: str | Path | None = None, overrides=()) -> CompareConfig:
    return load_config(CompareConfig, path, overrides, what="comparison config")


def quick_config(cfg: CompareConfig) -> CompareConfig:
    """A seconds-long version of `cfg` for smoke runs on `SynthConfig.quick()` data: every test
    size of the data, 4 samples per size, 2 optimizer steps of batch 2 per trained method."""
    quick = copy.deepcopy(cfg)
    quick.eval.sizes, quick.eval.samples_per_size = None, 4
    quick.seeds = quick.seeds[:2]
    for method in quick.methods:
        quick.method_overrides[method] = {
            **(quick.method_overrides.get(method) or {}), "max_steps": 2, "per_device_batch_size": 1, "grad_accum": 2,
        }
    return quick


def shared_eval(layout: RunLayout, settings: EvalSettings, zoo_dir: str, data_dir: str, model: str, variant: str = "base",
                variant_options: dict | None = None, force: bool = False, progress: bool = True,
                timings: dict | None = None) -> xr.Dataset:
    """The evaluation of a zoo model in a run folder: eval/<model>__<variant>.nc when it was made
    with `settings` (the main job's), else compare/eval/... (made now if missing); never overwrites
    an eval/ result made with other settings. Shared by the comparison and the study. An evaluation
    that runs adds its seconds to `timings`."""
    from laid.eval.run import evaluate

    shared, own = layout.eval_result(model, variant), layout.compare_eval(model, variant)
    for path in (shared, own):
        if path.is_file() and not force:
            ds = xr.load_dataset(path)
            if settings.matches(ds):
                return ds
    target = shared if not shared.is_file() or force else own
    data, t = layout.root / data_dir, time.time()
    ds = evaluate(layout.root / zoo_dir / model, data / "test", data, target, variant=variant,
                  variant_options=variant_options, progress=progress, model_name=model, **settings.evaluate_kwargs())
    if timings is not None:
        timings[f"eval {model} {variant}"] = round(time.time() - t, 2)
    return ds


class Comparison:
    """One comparison run over a run folder (see module doc); `run()` returns the Dataset.

    Trained entries run as independent jobs in `workers` processes (laid_workflows/jobs.py)."""

    def __init__(self, cfg: CompareConfig, run_dir: str | Path, force: bool = False, progress: bool = True,
                 workers: int | None = None, device: str = "cpu"):
        self.cfg, self.run_dir, self.force, self.progress = cfg, Path(run_dir), force, progress
        self.workers, self.device = workers, device
        self.layout = RunLayout(run_dir)
        self.data = self.run_dir / cfg.data_dir
        self.timings: dict[str, float] = {}

    def zoo_eval(self, model: str, variant: str) -> xr.Dataset:
        """eval/<model>__<variant>.nc, reused when compatible (else compare/eval/...)."""
        return shared_eval(self.layout, self.cfg.eval, self.cfg.zoo_dir, self.cfg.data_dir, model, variant,
                           self.cfg.variant_options.get(variant) or None, self.force, self.progress, self.timings)

    def distill_config(self, student: str, method: str, seed: int = 0):
        """The distill config of one comparison entry (a derived entry trains its base method)."""
        c = self.cfg
        overrides = {
            "teacher_dir": str(self.run_dir / c.zoo_dir / c.teacher),
            "student_dir": str(self.run_dir / c.zoo_dir / student),
            "output_dir": str(self.layout.distill_run(student, method, seed)),
            "method": trained_method(method),
            "seed": seed,
            "data.train_dir": str(self.data / "train"),
            "data.image_root": str(self.data),
            "teacher_diagnosis": str(self.layout.teacher_diagnosis(c.teacher)),  # read by layer_map: diagnosed only
        }
        overrides.update({k: v for k, v in (c.method_overrides.get(method) or {}).items()})
        path = Path(c.distill_configs[student])
        if not path.is_absolute() and not path.is_file():
            path = REPO / path  # configs/distill/... relative to the repository, wherever we run from
        return load_distill_config(path, overrides)

    def _entries(self):
        return [(s, m, seed) for s in self.cfg.students for m in self.cfg.methods for seed in self.cfg.seeds]

    def training_jobs(self) -> list[Job]:
        """One job per (student, method, seed) without a current evaluation: train (or resume), export, evaluate."""
        jobs = []
        for student, method, seed in self._entries():
            dcfg = self.distill_config(student, method, seed)
            run = Path(dcfg.output_dir)
            if self.force and run.exists():
                shutil.rmtree(run)  # --force: this comparison recomputes what it owns
            diff = trained_differently(dcfg)
            if diff:  # an edited config must not pass off the old run (or its evaluation) as its own
                raise ValueError(f"{run} was trained with other {diff} than {self.cfg.distill_configs[student]} gives now; "
                                 "move that folder away (its results are kept) or rerun `laid compare` with --force")
            result = run / "eval.nc"
            if result.is_file() and self.cfg.eval.matches(xr.load_dataset(result)):
                continue
            name = f"{student}-{method}" + (f"-seed{seed}" if seed else "")
            jobs.append(Job(f"{student} {method} seed {seed}", train_and_evaluate, dict(
                config=dcfg.to_dict(), result=str(result), eval_settings=asdict(self.cfg.eval), data=str(self.data), name=name)))
        return jobs

    def run(self) -> xr.Dataset:
        c = self.cfg
        if any(self.distill_config(s, m).layer_map == "diagnosed" for s in c.students for m in c.methods):
            from laid_workflows.diagnosis import ensure_teacher_diagnosis

            ensure_teacher_diagnosis(self.layout, c.teacher, c.zoo_dir)
        teacher = self.zoo_eval(c.teacher, "base")
        evals = {}
        for student in c.students:
            for variant in c.variants:
                evals[(student, variant)] = self.zoo_eval(student, variant)
        for key, result in run_jobs(self.training_jobs(), self.workers, self.device).items():
            self.timings[key] = result["seconds"]
        for student, method, seed in self._entries():
            ds = xr.load_dataset(Path(self.distill_config(student, method, seed).output_dir) / "eval.nc")
            evals.setdefault((student, method), []).append(ds)
        order = [m for m in ALL_METHODS if m in c.variants + c.methods]
        attrs = {"teacher": c.teacher, "threshold": c.eval.threshold, "config": json.dumps(asdict(c)),
                 "timings_s": json.dumps(self.timings), "seeds": list(c.seeds)}  # fmt: skip
        ds = build_comparison(evals, teacher, c.students, order, attrs)
        ds = add_paired_statistics(ds, evals, c.short_sizes, c.long_sizes, c.eval.threshold, margin=c.non_inferiority_margin)
        ds = add_labels(ds, {(s, m): run_label(self.distill_config(s, m)) for s in c.students for m in c.methods})
        write_netcdf(ds, self.layout.comparison_result(c.name))
        write_text(comparison_markdown(ds), self.layout.comparison_result(c.name, ".md"))
        return ds


def train_and_evaluate(config: dict, result: str, eval_settings: dict, data: str, name: str) -> dict:
    """Worker job of one trained entry: distil (resuming from a checkpoint if there is one), then
    evaluate the export into `result` (the run's eval.nc)."""
    from laid.eval.run import evaluate
    from trainers.checkpoint import latest_checkpoint
    from trainers.config import DistillConfig, from_dict
    from trainers.recipe import distill

    cfg = from_dict(DistillConfig, config)
    run, t = Path(cfg.output_dir), {}
    export = run / "export"
    if not (export / "config.json").is_file():
        start = time.time()
        distill(cfg, resume=latest_checkpoint(run) is not None, progress=False)
        t["train"] = round(time.time() - start, 1)
    settings = EvalSettings(**eval_settings)
    evaluate(export, Path(data) / "test", data, result, progress=False, model_name=name, **settings.evaluate_kwargs())
    return t


def run_comparison(cfg: CompareConfig, run_dir: str | Path, force: bool = False, progress: bool = True,
                   workers: int | None = None, device: str = "cpu") -> xr.Dataset:
    """Run (or resume) the comparison in `run_dir`; returns the comparison Dataset (also written)."""
    return Comparison(cfg, run_dir, force, progress, workers, device).run()


CONFIGS = {False: REPO / "configs" / "experiments" / "compare.yaml", True: REPO / "configs" / "experiments" / "compare_full.yaml"}


def _compare(args) -> int:
    cfg = load_compare_config(args.config or CONFIGS[args.full], args.override or [])
    if args.quick:
        cfg = quick_config(cfg)
    ds = run_comparison(cfg, args.run_dir, force=args.force, progress=not args.no_progress, workers=args.workers,
                        device=args.device)
    print(f"comparison of {[str(s) for s in ds['student'].values]} x {[str(m) for m in ds['method'].values]}: {RunLayout(args.run_dir).comparison_result(cfg.name, '.md')}")
    return 0


def register(subparsers) -> None:
    c = subparsers.add_parser(
        "compare",
        help="run the method comparison (paper Tables 1 and 3) on a run folder; resumable",
        description="Evaluate base/YaRN/SelfExtend and train+evaluate SFT-LoRA, KD, LAid and its ablations for "
        "each student; write compare/comparison.nc and comparison.md. Existing results are reused.",
    )
    c.add_argument("--config", help="comparison config YAML (default: configs/experiments/compare.yaml, the headline "
                   "rows the main job runs; with --full, compare_full.yaml)")
    c.add_argument("--full", action="store_true", help="the paper's full Tables 1 and 3 and the ablations (configs/experiments/compare_full.yaml)")
    c.add_argument("--run-dir", default="runs/default", help="run folder holding zoo/ and data/ (default runs/default)")
    c.add_argument("--override", action="append", metavar="KEY=VALUE", help="set a comparison config key; repeatable")
    c.add_argument("--force", action="store_true", help="recompute results that already exist")
    c.add_argument("--quick", action="store_true", help="seconds-long smoke run (all test sizes, 4 samples, 2 steps per method)")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    c.add_argument("--workers", type=int, default=None, help="runs trained side by side (default: one per core; 4 on cuda)")
    c.add_argument("--device", choices=DEVICES, default="cpu", help="cpu (default), cuda (a GPU shared by the workers) or auto")
    c.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    c.set_defaults(func=_compare)
