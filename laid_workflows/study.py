"""`laid study`: accuracy against training budget for each method, seed and testbed student.

One training run per (student, arm, seed) under a constant learning rate after a short warmup,
exported at every budget (`export_steps`): the export after 625 steps of a 2,500-step run is the
model a 625-step run at that rate would give (tests/test_recipe_budgets.py), except that LAid's
distance-weight ramp and any decay are set by the longest budget. Every export is evaluated on
the same questions as the base student and the teacher, so every budget gets paired differences
against base, KD and SFT at that budget (laid_workflows/study_stats.py). With `diagnose_seeds`
the exports of those seeds are diagnosed too: the student's best head's needle mass from the
question rows shows where the mechanism the teacher uses does (not) move.

    laid study [--config configs/experiments/window.yaml] [--run-dir runs/default]
               [--workers N] [--device cpu|cuda] [--gpus N | --accelerate-config FILE] [--full] [--quick] [--force]

Teacher, students (zoo models or checkpoint folders with labels), seeds, evaluation and data are the
experiment spec it shares with `laid compare` (laid_workflows/experiment.py). Runs go to
<run>/study/runs/<student label>__<arm>__seed<k>/ (resumable: checkpoints every `save_every` steps,
finished exports and evaluations are kept); the tables to study/<name>.nc and .md. The runs train
in worker processes, or each with `accelerate launch` across GPUs (laid_workflows/launch.py).
`--full` gives every arm the study's seeds and budgets (the whole grid: a lent GPU with `--device
cuda`); the CPU default runs the arms' own smaller grids.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import xarray as xr

from laid.config import load_config
from laid.eval.paired import DEFAULT_MARGIN
from laid.eval.settings import EvalSettings
from laid.io import write_json, write_netcdf, write_text
from laid.layout import RunLayout
from laid.methods import TRAINED_METHODS, check_method
from laid_workflows.experiment import ExperimentSpec, ModelSpec, reusable_eval
from laid_workflows.jobs import Job, cores, log_line, run_jobs
from laid_workflows.launch import Launcher, add_run_arguments, describe_training, dry_run_text, run_options, train

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Arm:
    """One line of the curves: a registered trained method with config overrides."""

    method: str  # laid.methods.TRAINED_METHODS
    overrides: dict[str, Any] = field(default_factory=dict)  # distill config keys (layer_map, attn_rows, ...)
    seeds: list[int] | None = None  # None = the study's seeds
    budgets: list[int] | None = None  # None = the study's budgets
    students: list[str] | None = None  # None = every student of the study


@dataclass
class DiagnoseSpec:
    """Which exports are diagnosed (needle mass from the question rows) and on what haystacks."""

    seeds: list[int] = field(default_factory=lambda: [0])  # [] = none
    sizes: list[int] = field(default_factory=lambda: [5, 10, 20, 50])
    samples: int = 16


@dataclass
class StudyConfig(ExperimentSpec):
    """The experiment (teacher, students, distill configs, seeds, eval, data: ExperimentSpec) and
    its arms over training budgets."""

    name: str = "testbed"  # -> study/<name>.nc, .md
    students: list[ModelSpec | str] = field(default_factory=lambda: ["tiny-32b-short"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    eval: EvalSettings = field(default_factory=lambda: EvalSettings(sizes=[1, 2, 5, 10, 20, 50, 100]))
    arms: dict[str, Arm] = field(default_factory=dict)  # {arm name: Arm}; "kd" and "sft" are the references
    budgets: list[int] = field(default_factory=lambda: [150, 625, 1250, 2500])  # optimizer steps
    # Caps a student's budgets by label (e.g. a second student's curves stop at one epoch on the CPU); --full ignores it.
    student_budgets: dict[str, list[int]] = field(default_factory=dict)
    # Distill config keys every arm shares: the schedule that makes budget exports meaningful.
    training: dict[str, Any] = field(default_factory=lambda: {"lr_schedule": "constant", "warmup_steps": 30})
    save_every: int = 250  # checkpoint interval (resume)
    groups: dict[str, list[int]] = field(default_factory=lambda: {
        "short": [1, 2], "inside": [5, 10, 20], "beyond": [50, 100], "long": [5, 10, 20, 50]})
    non_inferiority_margin: float = DEFAULT_MARGIN  # "no harm": lower bound of short - reference > -margin
    diagnose: DiagnoseSpec = field(default_factory=DiagnoseSpec)

    def __post_init__(self):
        super().__post_init__()
        for name, arm in self.arms.items():
            check_method(arm.method, TRAINED_METHODS, f"method of arm {name!r}")
            if arm.budgets is not None and not set(arm.budgets) <= set(self.budgets):
                raise ValueError(f"arm {name!r}: budgets {arm.budgets} must be among the study's {self.budgets}")
            if arm.students is not None and not set(arm.students) <= set(self.student_labels):
                raise ValueError(f"arm {name!r}: students {arm.students} must be among the study's {self.student_labels}")
        if not self.budgets or sorted(set(self.budgets)) != list(self.budgets) or self.budgets[0] < 1:
            raise ValueError(f"budgets must be increasing optimizer steps >= 1, got {self.budgets}")
        for student, budgets in self.student_budgets.items():
            if student not in self.student_labels or not set(budgets) <= set(self.budgets):
                raise ValueError(f"student_budgets {student}: {budgets} must name a student of the study and some of its budgets {self.budgets}")
        self.check_distill_configs()
        if "long" not in self.groups or "short" not in self.groups:
            raise ValueError(f"groups must define 'short' and 'long' (the headline groups), got {list(self.groups)}")

    def grid(self, full: bool = False) -> list[tuple[str, str, int, list[int]]]:
        """(student, arm, seed, budgets) of every run; `full`: every arm at all seeds, budgets and students."""
        out = []
        for student in self.student_labels:
            for name, arm in self.arms.items():
                if not full and arm.students is not None and student not in arm.students:
                    continue
                seeds = self.seeds if full or arm.seeds is None else arm.seeds
                budgets = self.budgets if full or arm.budgets is None else arm.budgets
                if not full and student in self.student_budgets:
                    budgets = [b for b in budgets if b in self.student_budgets[student]]
                out += [(student, name, seed, list(budgets)) for seed in seeds if budgets]
        return out


def load_study_config(path: str | Path, overrides=()) -> StudyConfig:
    return load_config(StudyConfig, path, overrides, what="study config")


def quick_config(cfg: StudyConfig) -> StudyConfig:
    """Seconds-long smoke version on quick data: 2 seeds, budgets 1 and 2 steps of batch 2, 4 questions."""
    q = copy.deepcopy(cfg)
    q.seeds, q.budgets, q.save_every, q.student_budgets = q.seeds[:2], [1, 2], 1, {}
    for arm in q.arms.values():
        arm.seeds = None if arm.seeds is None else arm.seeds[:1]
        arm.budgets = None
    q.training = {**q.training, "warmup_steps": 0, "per_device_batch_size": 1, "grad_accum": 2}
    q.eval.sizes, q.eval.samples_per_size = None, 4
    q.groups = {"short": [1, 2], "long": [5, 10]}
    q.diagnose = DiagnoseSpec(seeds=[0], sizes=[5, 10], samples=2)
    return q


class Study:
    """One study over a run folder (see module doc); `run()` returns the Dataset (also written)."""

    def __init__(self, cfg: StudyConfig, run_dir: str | Path, force: bool = False, full: bool = False,
                 workers: int | None = None, device: str = "cpu", log=log_line, figures_dir: str | Path | None = None,
                 quick_figures: bool = False, results_page: str | Path | None = None, dtype: str | None = None,
                 launcher: Launcher | None = None, dry_run: bool = False, config_path: str | Path | None = None,
                 modified: bool = False, exploratory: bool = False):
        self.cfg, self.force, self.full = cfg, force, full
        # Test-split numbers are claims: only a config frozen in a preregistration may report them
        # (laid_workflows/prereg.py); `exploratory` reports them labelled so, `modified` = not the file.
        self.config_path, self.modified, self.exploratory = config_path, modified, exploratory
        self.where = cfg.where(run_dir)
        self.run_dir, self.layout = self.where.run, self.where.layout
        self.figures_dir, self.quick_figures = figures_dir, quick_figures  # the learning-curve figure (None: none)
        self.results_page = results_page  # rewritten with the study's section at the end (None: not)
        self.workers, self.device, self.launcher, self.log = (1 if launcher else workers), device, launcher, log
        self.placement = {"device": device, "dtype": dtype}  # of every evaluation and diagnosis
        self.plan: list[str] | None = [] if dry_run else None  # dry run: the steps, none run

    def ensure_inputs(self) -> list[str]:
        """Zoo models (plain-string entries) missing from the run are copied from the shipped
        checkpoints/zoo when trained from today's config, else trained (`laid main` puts only its own
        students in the run); returns the labels a dry run would add."""
        from laid.zoo.cli import build_zoo, zoo_configs

        c = self.cfg
        zoo = self.run_dir / c.zoo_dir
        missing = [m.label for m in (c.teacher_model, *c.student_models)
                   if m.path is None and not (zoo / m.label / "config.json").is_file()]
        if missing and self.plan is not None:
            self.plan.append(f"zoo       add {missing} to {zoo} (shipped checkpoints when trained from today's configs)")
        elif missing:  # models already in the run (its own, or a user's) are never replaced
            self.log(f"zoo: adding {missing} to {zoo} (shipped checkpoints when trained from today's configs)")
            build_zoo(zoo, zoo_configs(models=missing), checkpoints=REPO / "checkpoints" / "zoo")
            return []
        return missing

    def distill_config(self, student: str, arm_name: str, seed: int, budgets: list[int]):
        c, arm = self.cfg, self.cfg.arms[arm_name]
        return c.distill_config(self.where, student, self.layout.study_run(student, arm_name, seed), arm.method, seed, {
            **c.training, "max_steps": max(budgets), "export_steps": list(budgets), "save_every": c.save_every,
            "keep_last": 1, **arm.overrides})

    def _check_existing(self, dcfg) -> None:
        from trainers.config import trained_differently

        diff = trained_differently(dcfg)
        if diff:
            raise ValueError(f"{dcfg.output_dir} was trained with other {diff}; give the arm another name or rerun with --force")

    def _record_job_seconds(self, key: str, result: dict) -> None:
        """Add a finished job's seconds to its run's job_seconds.json (as it finishes: a killed
        invocation keeps the times of the runs it finished)."""
        for student, arm, seed, _ in self.cfg.grid(self.full):
            if _job_key(student, arm, seed) == key:
                path = self.layout.study_job_seconds(student, arm, seed)
                old = json.loads(path.read_text())["seconds"] if path.is_file() else 0.0
                write_json({"seconds": round(old + result["seconds"], 1), "workers": self.workers or cores(),
                            "device": self.device}, path)

    def _grid_seconds(self) -> dict:
        """Worker seconds of the grid's jobs summed over every invocation, and how many jobs were timed
        (runs trained before job timing existed have no record)."""
        grid = self.cfg.grid(self.full)
        paths = [self.layout.study_job_seconds(s, a, k) for s, a, k, _ in grid]
        timed = [json.loads(p.read_text())["seconds"] for p in paths if p.is_file()]
        return {"job_seconds": round(sum(timed), 1), "jobs_timed": len(timed), "jobs": len(grid), "workers": self.workers or cores()}

    def jobs(self) -> list[Job]:
        from trainers.export import budget_export_dir

        ev, data = self.cfg.eval, self.where.eval
        out = []
        for student, arm, seed, budgets in self.cfg.grid(self.full):
            dcfg = self.distill_config(student, arm, seed, budgets)
            run = Path(dcfg.output_dir)
            if self.force and run.exists():
                self._note(f"remove    {run} (--force)")
                if self.plan is None:
                    shutil.rmtree(run)
            else:
                self._check_existing(dcfg)
            evals = {b: self.layout.study_eval(student, arm, seed, b) for b in budgets}
            diag = {b: self.layout.study_diagnosis(student, arm, seed, b) for b in budgets} if seed in self.cfg.diagnose.seeds else {}
            done = not self.force and all(p.is_file() for p in diag.values())
            if done and all(_eval_done(p, ev, budget_export_dir(run, b), data) for b, p in evals.items()):
                self._note(f"reuse     {run}: evaluations" + (" and diagnoses" if diag else "") + f" of budgets {budgets}")
                continue
            key = _job_key(student, arm, seed)
            trained = not self.force and all((budget_export_dir(run, b) / "config.json").is_file() for b in budgets)
            self._note(f"train     {key}: {describe_training(dcfg, self.launcher, trained)}")
            self._note(f"evaluate  {run}/budgets/* on {data} -> evals/" + (f"; diagnose budgets {budgets}" if diag else ""))
            out.append(Job(key, run_arm, dict(
                config=dcfg.to_dict(), evals={b: str(p) for b, p in evals.items()}, diagnoses={b: str(p) for b, p in diag.items()},
                data=str(data), image_root=str(self.where.root), eval_settings=asdict(ev), diagnose=asdict(self.cfg.diagnose),
                name=f"{student}-{arm}-seed{seed}", launcher=self.launcher, placement=self.placement)))
        return out

    def claim(self):
        """The preregistration this study's test numbers are confirmatory under; refuses (one line) a
        study that reads the test split without one, unless it is run as exploratory."""
        from laid_workflows.prereg import Claim, claim_for

        c = self.cfg
        if c.data.eval_split != "test":
            return Claim()
        claim = claim_for(self.config_path, self.modified or self.full)
        if not claim.confirmatory and not self.exploratory:
            raise ValueError(f"study {c.name} reads the test split, and no frozen preregistration (configs/preregistration/) "
                             f"registers {self.config_path or 'this config'} as it is: choose on val (data.eval_split: val), "
                             "register and commit the config before claiming, or pass --exploratory to label every number "
                             "exploratory")
        return claim

    def _note(self, line: str) -> None:
        if self.plan is not None:
            self.plan.append(line)

    def run(self) -> xr.Dataset | None:
        from laid_workflows.compare import shared_eval
        from laid_workflows.study_stats import best_retrieval, build_study, study_markdown

        c, t0, where = self.cfg, time.time(), self.where
        claim = self.claim()  # before anything trains: a refused claim costs nothing
        pending = self.ensure_inputs()
        grid = self.cfg.grid(self.full)
        if not pending:  # (a dry run checks the models it would add once they are there)
            configs = [(s, self.distill_config(s, a, k, b)) for s, a, k, b in grid]
            c.check(where, configs)
            for _, dcfg in configs if self.launcher else ():
                self.launcher.check_run(dcfg)
        # The teacher's diagnosis picks the layers of `layer_map: diagnosed` arms and is the reference of the
        # retrieval-mass column (where the teacher's mechanism sits against the students').
        if c.diagnose.seeds or any(a.overrides.get("layer_map") == "diagnosed" for a in c.arms.values()):
            from laid_workflows.diagnosis import ensure_teacher_diagnosis

            ensure_teacher_diagnosis(self.layout, c.teacher_label, where.models[c.teacher_label], where.eval, where.root,
                                     log=self.log, placement=self.placement, plan=self.plan)
        teacher = shared_eval(where, c.eval, c.teacher_label, placement=self.placement, plan=self.plan)
        base = {s: shared_eval(where, c.eval, s, placement=self.placement, plan=self.plan) for s in c.student_labels}
        base_jobs = [Job(f"{s} base diagnosis", diagnose_export, dict(
            model_dir=str(where.models[s]), out=str(self.layout.study_diagnosis(s, "base", 0, 0)), data=str(where.eval),
            image_root=str(where.root), diagnose=asdict(c.diagnose), label=f"{s}-base", placement=self.placement))
            for s in c.student_labels if c.diagnose.seeds and not self.layout.study_diagnosis(s, "base", 0, 0).is_file()]
        for job in base_jobs:
            self._note(f"diagnose  {job.kwargs['model_dir']} on {where.eval} -> {job.kwargs['out']}")
        jobs = base_jobs + self.jobs()
        if self.plan is not None:
            return None
        timings = run_jobs(jobs, self.workers, self.device, self.log, on_done=self._record_job_seconds)
        evals: dict[tuple[str, str, int], list[xr.Dataset]] = {}
        retrieval: dict = {}
        for student, arm, seed, budgets in grid:
            for b in budgets:
                evals.setdefault((student, arm, b), []).append(xr.load_dataset(self.layout.study_eval(student, arm, seed, b)))
                d = self.layout.study_diagnosis(student, arm, seed, b)
                if seed == min(c.diagnose.seeds, default=-1) and d.is_file():
                    retrieval[(student, arm, b)] = best_retrieval(xr.load_dataset(d), c.diagnose.sizes)
        for s in c.student_labels:
            d = self.layout.study_diagnosis(s, "base", 0, 0)
            if d.is_file():
                retrieval[(s, "base")] = best_retrieval(xr.load_dataset(d), c.diagnose.sizes)
        if self.layout.teacher_diagnosis(c.teacher_label).is_file():
            retrieval["teacher"] = best_retrieval(xr.load_dataset(self.layout.teacher_diagnosis(c.teacher_label)), c.diagnose.sizes)
        dcfg = self.distill_config(c.student_labels[0], next(iter(c.arms)), 0, c.budgets)
        from laid_workflows.headline import run_label  # the arms' labels: what each trained

        labels = {(s, a): run_label(self.distill_config(s, a, 0, c.budgets)) for s in c.student_labels for a in c.arms}
        ds = build_study(evals, base, teacher, c.student_labels, list(c.arms), c.budgets, c.groups,
                         dcfg.per_device_batch_size * dcfg.grad_accum, retrieval, labels=labels, margin=c.non_inferiority_margin,
                         attrs={"config": json.dumps(asdict(c)), "full_grid": int(self.full), "device": self.device,
                                "eval_split": c.data.eval_split, **claim.attrs(),
                                "diagnose_sizes": json.dumps(c.diagnose.sizes),
                                "timings_s": json.dumps({"total": round(time.time() - t0, 1),
                                                         **{k: v["seconds"] for k, v in timings.items()}}),
                                **self._grid_seconds()})
        write_netcdf(ds, self.layout.study_result(c.name))
        write_text(f"## Study {c.name}\n\n" + study_markdown(ds), self.layout.study_result(c.name, ".md"))
        if self.figures_dir is not None:
            from laid_workflows.figures import STUDY_NOTEBOOKS, run_figures

            run_figures(self.run_dir, self.figures_dir, quick=self.quick_figures, executed_dir=self.layout.executed_notebooks,
                        notebooks=list(STUDY_NOTEBOOKS), overrides={n: {"study": c.name} for n in STUDY_NOTEBOOKS},
                        progress=False)
        if self.results_page is not None:
            from laid_workflows.results_page import write_results_page

            write_results_page(self.run_dir, self.results_page, self.figures_dir)
        return ds


def _job_key(student: str, arm: str, seed: int) -> str:
    """The name of a run's job: its progress line and its key in run_jobs' timings."""
    return f"{student} {arm} seed {seed}"


def _eval_done(path: Path, settings: EvalSettings, model_dir: Path, data: str | Path) -> bool:
    return reusable_eval(Path(path), settings, model_dir, Path(data)) is not None


def run_arm(config: dict, evals: dict, diagnoses: dict, data: str, image_root: str, eval_settings: dict, diagnose: dict,
            name: str, launcher: Launcher | None = None, placement: dict | None = None) -> dict:
    """Job: train one (student, arm, seed) run with its budget exports (resuming; launched when
    `launcher` is given), then evaluate on `data` and diagnose every budget export without a result."""
    from laid.eval.run import evaluate
    from trainers.export import budget_export_dir

    out, t = Path(config["output_dir"]), {}
    if not all((budget_export_dir(out, int(b)) / "config.json").is_file() for b in evals):
        start = time.time()
        train(config, launcher)
        t["train"] = round(time.time() - start, 1)
    settings = EvalSettings(**eval_settings)
    for b, path in evals.items():
        export = budget_export_dir(out, int(b))
        if not _eval_done(Path(path), settings, export, data):
            evaluate(export, data, image_root, path, progress=False, model_name=f"{name}-step{b}",
                     **settings.evaluate_kwargs(), **(placement or {}))
    for b, path in diagnoses.items():
        if not Path(path).is_file():
            diagnose_export(str(budget_export_dir(out, int(b))), path, data, image_root, diagnose, f"{name}-step{b}", placement)
    return t


def diagnose_export(model_dir: str, out: str, data: str, image_root: str, diagnose: dict, label: str,
                    placement: dict | None = None) -> dict:
    """Job: the answer and question-row statistics of one checkpoint at the long sizes."""
    from laid_analysis.analyse import AnalysisSettings
    from laid_analysis.diagnose import analyse_checkpoint

    spec = DiagnoseSpec(**diagnose)
    settings = AnalysisSettings(profile_sizes=[min(spec.sizes)], profile_max_samples=1, batch_size=4)
    ds = analyse_checkpoint(model_dir, data, image_root, spec.sizes, spec.samples, settings, label, progress=False,
                            **(placement or {}))
    write_netcdf(ds, out)
    return {}


CONFIG = REPO / "configs" / "experiments" / "window.yaml"  # the main job's testbed; preregistered


def _study(args: argparse.Namespace) -> int:
    config = Path(args.config or CONFIG)
    cfg = load_study_config(config, args.override or [])
    if args.quick:
        cfg = quick_config(cfg)
    # Into the run folder, as the main job: `laid results --publish` refreshes the repository's copies.
    figures_dir = args.figures_dir or RunLayout(args.run_dir).figures
    page = RunLayout(args.run_dir).results_page
    study = Study(cfg, args.run_dir, force=args.force, full=args.full, figures_dir=None if args.no_figures else figures_dir,
                  quick_figures=args.quick, results_page=page, config_path=config,
                  modified=bool(args.override) or args.quick, exploratory=args.exploratory or args.quick, **run_options(args))
    ds = study.run()
    if ds is None:
        print(dry_run_text("study", cfg.name, study.run_dir, study.placement, study.plan))
        return 0
    print(f"study {cfg.name}: {[str(s) for s in ds['student'].values]} x {[str(a) for a in ds['arm'].values]} x budgets "
          f"{[int(b) for b in ds['budget'].values]}: {RunLayout(args.run_dir).study_result(cfg.name, '.md')}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "study", help="learning curves: accuracy vs training budget per method, seed and student (resumable)",
        description="Train each arm of the study config once per seed under a constant learning rate, export it at every "
        "budget, evaluate every export on the same questions as base and teacher, and write paired differences against "
        "base, KD and SFT per budget to study/<name>.nc and .md in the run folder.")
    p.add_argument("--config", help="study config YAML (default: configs/experiments/window.yaml, the preregistered study of the main job's testbed)")
    p.add_argument("--run-dir", default="runs/default", help="run folder: the results, and where the config's relative "
                   "paths (zoo/, data/) start")
    p.add_argument("--override", action="append", metavar="KEY=VALUE", help="set a study config key; repeatable")
    add_run_arguments(p)
    p.add_argument("--full", action="store_true", help="every arm at all seeds and budgets (the whole grid, for a GPU)")
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run on quick data (2 steps, 4 questions per size)")
    p.add_argument("--force", action="store_true", help="retrain and re-evaluate the runs this study owns")
    p.add_argument("--exploratory", action="store_true", help="report test-split numbers of a config no frozen "
                   "preregistration registers, labelled exploratory (without it such a study is refused; --quick implies it)")
    p.add_argument("--figures-dir", help="where the learning-curve figure goes (default: <run-dir>/figures)")
    p.add_argument("--no-figures", action="store_true", help="write the tables only, no figure")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    p.set_defaults(func=_study)
