"""`laid main`: the main job, end to end on the embedded default (or on your own config).

Stages, each skipped when its outputs are already complete (so an interrupted run resumes):
  1. data      synthetic Visual Haystacks (laid.data.synth)        -> <run>/data/
  2. zoo       tiny teacher + students pretrained on the CPU        -> <run>/zoo/
  3. eval      base accuracy per haystack size, effective windows   -> <run>/eval/
  4. compare   distillation + baselines for both students           -> <run>/distill/, <run>/compare/
  5. analysis  laid diagnose on teacher, students, distilled        -> <run>/analysis/
  6. figures   the paper's figures from the data above              -> <run>/figures/
then a short text summary in <run>/summary.md and the results page <run>/results.md, written from
the run's netCDF files (laid_workflows.results_page). The run's config is written to
<run>/config.yaml. Everything goes into the run folder: the repository's own copies (figures/,
docs/results.md) change only when asked, by `laid results --publish`.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from laid.config import load_config, to_yaml
from laid.eval.settings import EvalSettings
from laid.io import write_json, write_text
from laid.layout import RunLayout, run_label
from laid_workflows.diagnosis import ANALYSIS_BATCH_SIZE, ANALYSIS_MAX_SAMPLES, ANALYSIS_PROFILE_SAMPLES, ANALYSIS_SIZES
from laid_workflows.results_page import write_results_page

REPO = Path(__file__).resolve().parents[1]
STAGES = ("data", "zoo", "eval", "compare", "analysis", "figures")


@dataclass
class MainConfig:
    """One experiment of the main job (configs/experiments/*.yaml)."""

    name: str = "default"
    run_dir: str = "runs/default"  # relative to the repository unless absolute
    seed: int = 0  # data generation and zoo pretraining
    quick: bool = False  # smaller data, untrained zoo, 2-step distillation (tests, smoke runs)
    data: dict = field(default_factory=dict)  # SynthConfig overrides (laid/data/synth.py); {} = the paper's sizes
    zoo_config_dir: str = "configs/zoo"
    # Shipped pretrained zoo (like weights a user downloads): copied when trained from the same
    # config, otherwise the zoo is trained; null = always train (`laid zoo` rebuilds them).
    zoo_checkpoints: str | None = "checkpoints/zoo"
    teacher: str = "tiny-32b"
    students: list[str] = field(default_factory=lambda: ["tiny-32b-short"])
    # Every evaluation of the run (base models and the comparison) uses these settings.
    eval: EvalSettings = field(default_factory=lambda: EvalSettings(sizes=None))
    compare_config: str = "configs/experiments/compare.yaml"  # methods, distill configs; its eval: is replaced by ours
    # Quick mode exercises every variant and method (2 optimizer steps each, 2 seeds): a smoke test
    # of the whole comparison, not a measurement.
    quick_compare_config: str = "configs/experiments/compare_full.yaml"
    analysis_sizes: list[int] = field(default_factory=lambda: list(ANALYSIS_SIZES))
    analysis_max_samples: int = ANALYSIS_MAX_SAMPLES  # haystacks per size for the answer statistics (Figure 4 intervals)
    analysis_profile_samples: int = ANALYSIS_PROFILE_SAMPLES  # of those, how many feed the O(S^2) profile and spectrum
    analysis_batch_size: int = ANALYSIS_BATCH_SIZE  # haystacks per forward (batching halves its CPU cost per haystack)
    figures_dir: str | None = None  # null: <run>/figures (relative paths: to the repository)
    workers: int | None = None  # comparison runs trained side by side (None: one per core; laid_workflows/jobs.py)
    # The results page (laid_workflows.results_page); null = <run>/results.md. The repository's
    # docs/results.md, which the README links, is written by `laid results --publish`, never here.
    results_page: str | None = None

    def __post_init__(self):
        for name in ("analysis_max_samples", "analysis_profile_samples", "analysis_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.analysis_profile_samples > self.analysis_max_samples:
            raise ValueError(f"analysis_profile_samples ({self.analysis_profile_samples}) must not exceed "
                             f"analysis_max_samples ({self.analysis_max_samples}): the profile uses a subset of those haystacks")

    @classmethod
    def load(cls, path: str | Path) -> "MainConfig":
        return load_config(cls, path, what="experiment config")

    def path(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else REPO / p

    @property
    def run(self) -> Path:
        return self.path(self.run_dir)

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run)

    @property
    def figures(self) -> Path:
        return self.path(self.figures_dir) if self.figures_dir else self.layout.figures


def _stage_data(cfg: MainConfig, log) -> None:
    from laid.data.synth import SynthConfig, generate

    base = SynthConfig.quick(cfg.seed) if cfg.quick else SynthConfig(seed=cfg.seed)
    # Quick mode keeps the quick benchmark's small sizes: the run's data overrides size a real run.
    synth = SynthConfig.from_dict({**base.to_dict(), **({} if cfg.quick else cfg.data)})
    generate(synth, cfg.run / "data")


def _stage_zoo(cfg: MainConfig, log) -> None:
    from laid.zoo.cli import build_zoo, zoo_configs

    shipped = cfg.path(cfg.zoo_checkpoints) if cfg.zoo_checkpoints else None
    build_zoo(cfg.layout.zoo, zoo_configs(cfg.path(cfg.zoo_config_dir), [cfg.teacher, *cfg.students]), quick=cfg.quick,
              checkpoints=shipped)


# Quick mode evaluates this many samples per size, on every size of the quick data.
QUICK_EVAL_SAMPLES = 4


def eval_settings(cfg: MainConfig) -> EvalSettings:
    """The evaluation settings of every evaluation in the run (base models and the comparison)."""
    if cfg.quick:
        return replace(cfg.eval, sizes=None, samples_per_size=QUICK_EVAL_SAMPLES)
    return cfg.eval


def _stage_eval(cfg: MainConfig, log) -> None:
    from laid.eval.results import summary_text
    from laid.eval.run import evaluate

    run, ev = cfg.layout, eval_settings(cfg)
    for model in [cfg.teacher, *cfg.students]:
        out = run.eval_result(model)
        if out.is_file():
            continue
        ds = evaluate(run.zoo_model(model), run.test_data, run.data, out, model_name=model, **ev.evaluate_kwargs())
        log(summary_text(ds))


def _stage_compare(cfg: MainConfig, log) -> None:
    from laid_workflows.compare import load_compare_config, quick_config, run_comparison

    ccfg = load_compare_config(cfg.path(cfg.quick_compare_config if cfg.quick else cfg.compare_config))
    ccfg.teacher, ccfg.students = cfg.teacher, list(cfg.students)
    ccfg.name = "comparison"  # the run's headline, read by the figures and summary (also in --quick)
    ccfg.distill_configs = {k: str(cfg.path(v)) for k, v in ccfg.distill_configs.items()}
    if cfg.quick:
        ccfg.seeds = [0, 1]
        ccfg = quick_config(ccfg)
    ccfg.eval = eval_settings(cfg)  # one set of evaluation settings for the whole run
    _teacher_diagnosis(cfg)  # before training: layer_map: diagnosed reads it (the analysis stage reuses it)
    run_comparison(ccfg, cfg.run, workers=cfg.workers)


def _teacher_diagnosis(cfg: MainConfig):
    """analysis/<teacher>__base, with this run's analysis settings (made once, laid_workflows/diagnosis.py)."""
    from laid_workflows.diagnosis import ensure_teacher_diagnosis

    return ensure_teacher_diagnosis(cfg.layout, cfg.teacher, sizes=None if cfg.quick else cfg.analysis_sizes,
                                    max_samples=cfg.analysis_max_samples, profile_samples=cfg.analysis_profile_samples,
                                    batch_size=cfg.analysis_batch_size)


# Checkpoints analysed: the teacher once in its own folder (analysis/<teacher>__base, all layers),
# reused as the reference of every student folder (written there as reference.nc at the paired
# layers); each student before (base) and after KD and LAid; then one side-by-side report in
# analysis/checkpoints/.
ANALYSED_METHODS = ("base", "kd", "laid")


def _stage_analysis(cfg: MainConfig, log) -> None:
    from laid_analysis.analyse import AnalysisSettings
    from laid_analysis.checkpoints import compare_checkpoints
    from laid_analysis.diagnose import diagnose

    run = cfg.layout
    teacher = run.zoo_model(cfg.teacher)
    sizes = None if cfg.quick else cfg.analysis_sizes
    settings = lambda: AnalysisSettings(profile_max_samples=cfg.analysis_profile_samples,  # noqa: E731
                                        batch_size=cfg.analysis_batch_size)
    # The teacher once, all layers: every student's comparison reuses it (same haystacks, same settings).
    t_label = run_label(cfg.teacher, "base")
    t_out = _teacher_diagnosis(cfg).parent
    folders = {t_label: t_out}
    for student in cfg.students:
        for method in ANALYSED_METHODS:
            label = run_label(student, method)
            out = run.analysis(label)
            model_dir = run.zoo_model(student) if method == "base" else run.export(student, method)
            if not (model_dir / "config.json").is_file():
                log(f"analysis: skipping {label}: no model at {model_dir}")
                continue
            report = out / "report.html"  # reused unless the model was written after it (a retrained run)
            if report.is_file() and report.stat().st_mtime >= (model_dir / "config.json").stat().st_mtime:
                folders[label] = out
                continue
            hw = run.head_weights(student, method)
            diagnose(
                model_dir, run.test_data, run.data, sizes, out,
                reference=teacher, head_weights=hw if hw.is_file() else None, settings=settings(),
                max_samples=cfg.analysis_max_samples, label=label, reference_label=t_label,
                reference_analysis=t_out / "diagnostics.nc",
            )
            folders[label] = out
    compare_checkpoints(folders, run.analysis("checkpoints"), teacher=t_label)


def _stage_figures(cfg: MainConfig, log) -> None:
    from laid_workflows.figures import run_figures

    from laid_workflows.figures import NOTEBOOKS, STUDY_NOTEBOOKS

    run_figures(cfg.run, cfg.figures, quick=cfg.quick, executed_dir=cfg.layout.executed_notebooks,
                notebooks=[n for n in NOTEBOOKS if n not in STUDY_NOTEBOOKS])  # the study draws its own


STAGE_FUNCS = {
    "data": _stage_data, "zoo": _stage_zoo, "eval": _stage_eval, "compare": _stage_compare,
    "analysis": _stage_analysis, "figures": _stage_figures,
}


def write_summary(cfg: MainConfig, timings: dict[str, float]) -> Path:
    from laid.eval.results import describe_window, load_result

    run = cfg.layout
    lines = [f"# LAid main job: {cfg.name}", "", f"run folder: `{cfg.run}`", ""]
    lines += ["## Base models (single needle, logit scoring)", ""]
    for model in [cfg.teacher, *cfg.students]:
        p = run.eval_result(model)
        if p.is_file():
            ds = load_result(p)
            accs = ", ".join(f"{int(n)}: {float(a):.2f}" for n, a in zip(ds.haystack_size.values, ds.accuracy.values))
            lines.append(f"- **{model}**: accuracy by haystack size {{{accs}}}; {describe_window(ds)}")
    if run.comparison_md.is_file():
        lines += ["", "## Method comparison", "", run.comparison_md.read_text()]
    lines += ["", "## Stage times (s)", ""] + [f"- {k}: {v:.0f}" for k, v in timings.items()]
    return write_text("\n".join(lines) + "\n", run.summary)


def run_main(cfg: MainConfig, stages: tuple[str, ...] = STAGES, progress_log=print) -> Path:
    write_text(to_yaml(cfg), cfg.layout.config)
    timings: dict[str, float] = {}
    for stage in stages:
        if stage not in STAGE_FUNCS:
            raise ValueError(f"unknown stage {stage!r}; known: {list(STAGE_FUNCS)}")
        progress_log(f"== laid main: {stage}")
        t0 = time.time()
        STAGE_FUNCS[stage](cfg, progress_log)
        timings[stage] = time.time() - t0
    timing_file = cfg.layout.timings
    old = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    write_json({**old, **timings}, timing_file, indent=1)
    summary = write_summary(cfg, timings)
    progress_log(summary.read_text())
    page = write_results_page(cfg.run, cfg.path(cfg.results_page) if cfg.results_page else None, cfg.figures)
    progress_log(f"results page: {page}")
    return summary


def _run(args: argparse.Namespace) -> int:
    cfg = MainConfig.load(args.config or REPO / "configs" / "experiments" / "main.yaml")
    if args.quick:
        cfg.quick = True
        if not args.config:  # a smoke run keeps out of the full run's folder
            cfg.name, cfg.run_dir = "quick", "runs/quick"
    if args.run_dir:
        cfg.run_dir = args.run_dir
    stages = tuple(args.stages) if args.stages else tuple(s for s in STAGES if s in STAGE_FUNCS)
    run_main(cfg, stages)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("main", help="run the main job end to end (data, zoo, eval, distillation, analysis, figures)")
    p.add_argument("--config", help="experiment YAML (default: the embedded default, configs/experiments/main.yaml)")
    p.add_argument("--quick", action="store_true", help="small data and short training (a few minutes)")
    p.add_argument("--run-dir", help="override the run folder")
    p.add_argument("--stages", nargs="+", choices=STAGES, help="run only these stages (default: all)")
    p.set_defaults(func=_run)
