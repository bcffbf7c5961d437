"""The method comparison of the paper's Tables 1 and 3 (`laid compare`, `run_comparison`).

For each student against the teacher (zoo models or any checkpoint folders, each with a label:
laid_workflows/experiment.py):
- inference-time variants of the untrained student: base, YaRN, SelfExtend (`laid.eval` variants);
- trained methods: SFT-LoRA, KD, LAid and the Table 3 ablations (laid-no-kl, laid-no-laid), each
  distilled on the training split only and its export evaluated;
- the teacher (base) as the upper reference row;
all evaluated on the same questions (the data's `eval_split`, default test). Layout under the run
folder (docs/CONTRACTS.md):

    eval/<label>__<variant>.nc              teacher and students x inference variants (shared with `laid eval`)
    distill/<student>__<method>/            the run: checkpoints, export/, head_weights.nc, eval.nc
    compare/<name>.nc, <name>.md            the tables: `name` of the config; "comparison" (the
                                            headline) for compare.yaml, comparison_full for --full,
                                            layer_pairing for the layer-pairing study

The runs train in worker processes, or each with `accelerate launch` across GPUs
(laid_workflows/launch.py). Resumable: a result is reused when it was made of the same model on the
same questions with the same settings (an eval/ file made otherwise is left alone and the comparison
evaluates into compare/eval/); a distillation with checkpoints but no export resumes, also after the
comparison was killed. `force=True` recomputes everything this comparison owns.
"""

from __future__ import annotations

import copy
import json
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
from laid_workflows.experiment import ExperimentSpec, ModelSpec, Where, reusable_eval
from laid_workflows.headline import add_labels, add_paired_statistics, run_label
from laid_workflows.jobs import Job, log_line, run_jobs
from laid_workflows.launch import Launcher, add_run_arguments, describe_training, dry_run_text, run_options, train
from laid_workflows.tables import build_comparison, comparison_markdown
from trainers.config import trained_differently

REPO = Path(__file__).resolve().parents[1]


@dataclass
class CompareConfig(ExperimentSpec):
    """The experiment (teacher, students, distill configs, seeds, eval, data: ExperimentSpec) and
    what is compared at one budget."""

    # Results go to compare/<name>.nc and .md: "comparison" is the headline the main job, figures and
    # summary read; the full tables and studies name their own file so they never overwrite it.
    name: str = "comparison"
    students: list[ModelSpec | str] = field(default_factory=lambda: ["tiny-7b", "tiny-3b"])
    variants: list[str] = field(default_factory=lambda: list(INFERENCE_VARIANTS))
    variant_options: dict[str, Any] = field(default_factory=dict)  # {variant: {option: value}}
    methods: list[str] = field(default_factory=lambda: list(TRAINED_METHODS))
    method_overrides: dict[str, Any] = field(default_factory=dict)  # {method: {key: value}} on top of the distill configs
    # Sizes of the headline statistic (laid_workflows/headline.py): mean accuracy over each group.
    short_sizes: list[int] = field(default_factory=lambda: [1, 2])
    long_sizes: list[int] = field(default_factory=lambda: [5, 10, 20, 50])
    non_inferiority_margin: float = DEFAULT_MARGIN  # "no harm" at short range: lower bound of short - base > -margin

    def __post_init__(self):
        super().__post_init__()
        known = (*TRAINED_METHODS, *DERIVED_METHODS)
        bad = [v for v in self.variants if v not in INFERENCE_VARIANTS]
        bad += [m for m in self.methods if m not in known]
        if bad:
            raise ValueError(f"unknown comparison entries {bad}; variants: {INFERENCE_VARIANTS}, methods: {known}")
        if self.methods:
            self.check_distill_configs()


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


def shared_eval(where: Where, settings: EvalSettings, label: str, variant: str = "base", variant_options: dict | None = None,
                force: bool = False, progress: bool = True, timings: dict | None = None, placement: dict | None = None,
                plan: list[str] | None = None) -> xr.Dataset | None:
    """The evaluation of the teacher or a student (by label): eval/<label>__<variant>.nc when it was made
    of that model on the experiment's questions with `settings`, else compare/eval/... (made now if
    missing); never overwrites an eval/ result made otherwise. Shared by the comparison and the study.
    An evaluation that runs adds its seconds to `timings`; with `plan` it is only described there."""
    from laid.eval.run import evaluate

    layout, model = where.layout, where.models[label]
    shared, own = layout.eval_result(label, variant), layout.compare_eval(label, variant)
    for path in (shared, own):
        ds = None if force else reusable_eval(path, settings, model, where.eval)
        if ds is not None:
            _note(plan, f"reuse     {path}")
            return ds
    target = shared if not shared.is_file() or force else own
    if plan is not None:
        plan.append(f"evaluate  {label} {variant}: {model} on {where.eval} -> {target}")
        return None
    t = time.time()
    ds = evaluate(model, where.eval, where.root, target, variant=variant, variant_options=variant_options, progress=progress,
                  model_name=label, **settings.evaluate_kwargs(), **(placement or {}))
    if timings is not None:
        timings[f"eval {label} {variant}"] = round(time.time() - t, 2)
    return ds


def _note(plan: list[str] | None, line: str) -> None:
    if plan is not None:
        plan.append(line)


class Comparison:
    """One comparison run over a run folder (see module doc); `run()` returns the Dataset.

    Trained entries run as independent jobs: in `workers` processes (laid_workflows/jobs.py), or one
    after another, each launched by `launcher` (laid_workflows/launch.py) and evaluated here on
    `device` / `dtype`. `dry_run`: `run()` fills `plan` with every step and runs nothing."""

    def __init__(self, cfg: CompareConfig, run_dir: str | Path, force: bool = False, progress: bool = True,
                 workers: int | None = None, device: str = "cpu", dtype: str | None = None,
                 launcher: Launcher | None = None, dry_run: bool = False, log=log_line):
        self.cfg, self.force, self.progress, self.log = cfg, force, progress, log
        self.where = cfg.where(run_dir)
        self.run_dir, self.layout = self.where.run, self.where.layout
        self.workers, self.device, self.launcher = (1 if launcher else workers), device, launcher
        self.placement = {"device": device, "dtype": dtype}
        self.plan: list[str] | None = [] if dry_run else None
        self.timings: dict[str, float] = {}

    def zoo_eval(self, label: str, variant: str) -> xr.Dataset | None:
        """eval/<label>__<variant>.nc, reused when made of the same model and questions with the same settings."""
        return shared_eval(self.where, self.cfg.eval, label, variant, self.cfg.variant_options.get(variant) or None,
                           self.force, self.progress, self.timings, self.placement, self.plan)

    def distill_config(self, student: str, method: str, seed: int = 0):
        """The distill config of one comparison entry (a derived entry trains its base method)."""
        return self.cfg.distill_config(self.where, student, self.layout.distill_run(student, method, seed),
                                       trained_method(method), seed, self.cfg.method_overrides.get(method))

    def _entries(self):
        return [(s, m, seed) for s in self.cfg.student_labels for m in self.cfg.methods for seed in self.cfg.seeds]

    def training_jobs(self) -> list[Job]:
        """One job per (student, method, seed) without a current evaluation: train (or resume), export, evaluate."""
        jobs = []
        for student, method, seed in self._entries():
            dcfg = self.distill_config(student, method, seed)
            run = Path(dcfg.output_dir)
            if self.force and run.exists():
                _note(self.plan, f"remove    {run} (--force)")
                if self.plan is None:
                    shutil.rmtree(run)  # --force: this comparison recomputes what it owns
            elif diff := trained_differently(dcfg):  # an edited config must not pass off the old run (or its evaluation)
                raise ValueError(f"{run} was trained with other {diff} than {self.cfg.distill_configs[student]} gives now; "
                                 "move that folder away (its results are kept) or rerun `laid compare` with --force")
            result = run / "eval.nc"
            if not self.force and reusable_eval(result, self.cfg.eval, run / "export", self.where.eval) is not None:
                _note(self.plan, f"reuse     {result}")
                continue
            key = f"{student} {method} seed {seed}"
            trained = (run / "export" / "config.json").is_file() and not self.force
            _note(self.plan, f"train     {key}: {describe_training(dcfg, self.launcher, trained)}")
            _note(self.plan, f"evaluate  {run / 'export'} on {self.where.eval} -> {result}")
            name = f"{student}-{method}" + (f"-seed{seed}" if seed else "")
            jobs.append(Job(key, train_and_evaluate, dict(
                config=dcfg.to_dict(), result=str(result), eval_settings=asdict(self.cfg.eval), data=str(self.where.eval),
                image_root=str(self.where.root), name=name, launcher=self.launcher, placement=self.placement)))
        return jobs

    def run(self) -> xr.Dataset | None:
        c = self.cfg
        configs = [(s, self.distill_config(s, m, seed)) for s, m, seed in self._entries()]
        c.check(self.where, configs)
        for _, dcfg in configs if self.launcher else ():
            self.launcher.check_run(dcfg)
        if any(dcfg.layer_map == "diagnosed" for _, dcfg in configs):
            from laid_workflows.diagnosis import ensure_teacher_diagnosis

            ensure_teacher_diagnosis(self.layout, c.teacher_label, self.where.models[c.teacher_label], self.where.eval,
                                     self.where.root, log=self.log, placement=self.placement, plan=self.plan)
        teacher = self.zoo_eval(c.teacher_label, "base")
        evals = {}
        for student in c.student_labels:
            for variant in c.variants:
                evals[(student, variant)] = self.zoo_eval(student, variant)
        jobs = self.training_jobs()
        if self.plan is not None:
            return None
        for key, result in run_jobs(jobs, self.workers, self.device, self.log).items():
            self.timings[key] = result["seconds"]
        for student, method, seed in self._entries():
            ds = xr.load_dataset(self.layout.trained_eval(student, method, seed))
            evals.setdefault((student, method), []).append(ds)
        order = [m for m in ALL_METHODS if m in c.variants + c.methods]
        attrs = {"teacher": c.teacher_label, "threshold": c.eval.threshold, "config": json.dumps(asdict(c)),
                 "timings_s": json.dumps(self.timings), "seeds": list(c.seeds)}  # fmt: skip
        ds = build_comparison(evals, teacher, c.student_labels, order, attrs)
        ds = add_paired_statistics(ds, evals, c.short_sizes, c.long_sizes, c.eval.threshold, margin=c.non_inferiority_margin)
        ds = add_labels(ds, {(s, m): run_label(self.distill_config(s, m)) for s in c.student_labels for m in c.methods})
        write_netcdf(ds, self.layout.comparison_result(c.name))
        write_text(comparison_markdown(ds), self.layout.comparison_result(c.name, ".md"))
        return ds


def train_and_evaluate(config: dict, result: str, eval_settings: dict, data: str, image_root: str, name: str,
                       launcher: Launcher | None = None, placement: dict | None = None) -> dict:
    """Job of one trained entry: distil (resuming from a checkpoint if there is one; launched when
    `launcher` is given), then evaluate the export on `data` into `result` (the run's eval.nc)."""
    from laid.eval.run import evaluate

    run, t = Path(config["output_dir"]), {}
    export = run / "export"
    if not (export / "config.json").is_file():
        start = time.time()
        train(config, launcher)
        t["train"] = round(time.time() - start, 1)
    settings = EvalSettings(**eval_settings)
    evaluate(export, data, image_root, result, progress=False, model_name=name, **settings.evaluate_kwargs(), **(placement or {}))
    return t


def run_comparison(cfg: CompareConfig, run_dir: str | Path, force: bool = False, progress: bool = True,
                   workers: int | None = None, device: str = "cpu", **options) -> xr.Dataset | None:
    """Run (or resume) the comparison in `run_dir`; returns the comparison Dataset (also written).
    `options`: dtype, launcher, dry_run, log of `Comparison`."""
    return Comparison(cfg, run_dir, force, progress, workers, device, **options).run()


CONFIGS = {False: REPO / "configs" / "experiments" / "compare.yaml", True: REPO / "configs" / "experiments" / "compare_full.yaml"}


def _compare(args) -> int:
    cfg = load_compare_config(args.config or CONFIGS[args.full], args.override or [])
    if args.quick:
        cfg = quick_config(cfg)
    comparison = Comparison(cfg, args.run_dir, force=args.force, progress=not args.no_progress, **run_options(args))
    ds = comparison.run()
    if ds is None:
        print(dry_run_text("compare", cfg.name, comparison.run_dir, comparison.placement, comparison.plan))
        return 0
    print(f"comparison of {[str(s) for s in ds['student'].values]} x {[str(m) for m in ds['method'].values]}: {RunLayout(args.run_dir).comparison_result(cfg.name, '.md')}")
    return 0


def register(subparsers) -> None:
    c = subparsers.add_parser(
        "compare",
        help="run the method comparison (paper Tables 1 and 3) on a run folder; resumable",
        description="Evaluate base/YaRN/SelfExtend and train+evaluate SFT-LoRA, KD, LAid and its ablations for "
        "each student (zoo models or checkpoint folders: the config's teacher / students); write "
        "compare/<name>.nc and .md. Existing results are reused; a killed comparison resumes.",
    )
    c.add_argument("--config", help="comparison config YAML (default: configs/experiments/compare.yaml, the headline "
                   "rows the main job runs; with --full, compare_full.yaml)")
    c.add_argument("--full", action="store_true", help="the paper's full Tables 1 and 3 and the ablations (configs/experiments/compare_full.yaml)")
    c.add_argument("--run-dir", default="runs/default", help="run folder: the results, and where the config's relative "
                   "paths (zoo/, data/) start")
    c.add_argument("--override", action="append", metavar="KEY=VALUE", help="set a comparison config key; repeatable")
    c.add_argument("--force", action="store_true", help="recompute results that already exist")
    c.add_argument("--quick", action="store_true", help="seconds-long smoke run (all test sizes, 4 samples, 2 steps per method)")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_run_arguments(c)
    c.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    c.set_defaults(func=_compare)
