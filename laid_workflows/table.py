"""`laid table`: the paired comparison table, its netCDF and Figure 3 from evaluation files.

Give it the evaluations of one or more students (one file per method, and per training seed for a
trained method), from anywhere: `laid eval` netCDF files, or the official protocol's per-question
folders (`X_official/` of `laid eval`, or the official solvers' `{N}_images/{idx:03d}.json`
output, scored here by laid/eval/official.py). Each is tagged with its student, method and seed:

    laid table --eval 7b:base=results/7b_base.nc --eval 7b:laid:0=results/7b_laid_s0.nc \\
               --eval 7b:laid:1=results/7b_laid_s1_official --teacher 32b=results/32b.nc --out tables/7b

or the same in a YAML file (`--spec`, keys of `TableSpec`; paths relative to it). Every file must
have been evaluated on the same questions (same sizes, samples, answers and needle positions):
otherwise one line names the two files. The output folder is laid out as a run folder
(laid/layout.py), so Figure 3's notebook and the tables read it unchanged:

    OUT/table.yaml                      what was tabled (the resolved spec)
    OUT/compare/comparison.nc, .md      the comparison (docs/CONTRACTS.md "Comparison") and its tables
    OUT/compare/eval/<student>__<m>.nc  per-question results of untrained rows (base, yarn, selfextend)
    OUT/distill/<student>__<m>[__seed<k>]/eval.nc   per-question results of trained rows
    OUT/figures/fig3_distillation_bars.*            Figure 3 (and data/ behind it)

The statistics are the comparison's own (laid_workflows/headline.py on laid.eval.paired).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from laid.config import load_config, to_yaml
from laid.eval.metrics import LONG_WINDOW, SHORT_WINDOW
from laid.eval.official import read_official
from laid.eval.results import load_result
from laid.io import atomic_dir, write_netcdf, write_text
from laid.layout import RunLayout
from laid.methods import ALL_METHODS, DERIVED_METHODS, LABELS, TRAINED_METHODS, check_method
from laid_workflows.headline import add_labels, add_paired_statistics, run_label
from laid_workflows.tables import build_comparison, comparison_markdown

SPEC = "table.yaml"
FIGURE = "fig3_distillation_bars"
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class EvalFile:
    """One evaluation: a `laid eval` .nc file or an official per-question folder."""

    student: str  # the row label, e.g. Qwen2.5-VL-7B (letters, digits, . _ -)
    method: str  # a registered method (laid.methods): base, yarn, selfextend, sft-lora, sft, kd, laid, ...
    file: str
    seed: int = 0  # training seed (trained methods; one file per seed)


@dataclass
class TeacherFile:
    label: str
    file: str


@dataclass
class TableSpec:
    evals: list[EvalFile] = field(default_factory=list)
    teacher: TeacherFile | None = None  # the upper reference row (not paired)
    short_sizes: list[int] | None = None  # None: the evaluated sizes in the paper's short window (1-20)
    long_sizes: list[int] | None = None  # None: those in its long window (50-150)
    threshold: float | None = None  # effective window; None: the files' own (they must agree)


def trained(method: str) -> bool:
    """A trained row (one evaluation per training seed, under distill/) rather than an inference variant."""
    return method in TRAINED_METHODS or method in DERIVED_METHODS


def parse_tag(item: str) -> EvalFile:
    """'STUDENT:METHOD[:SEED]=PATH' -> EvalFile."""
    tag, sep, path = item.partition("=")
    parts = tag.split(":")
    if not sep or not path or len(parts) not in (2, 3):
        raise ValueError(f"--eval {item!r}: write STUDENT:METHOD=PATH or STUDENT:METHOD:SEED=PATH, "
                         f"e.g. 7b:laid:0=results/7b_laid.nc")
    try:
        seed = int(parts[2]) if len(parts) == 3 else 0
    except ValueError:
        raise ValueError(f"--eval {item!r}: the seed {parts[2]!r} is not an integer") from None
    return EvalFile(parts[0], parts[1], path, seed)


def load_eval(path: str | Path, threshold: float | None = None) -> xr.Dataset:
    """A `laid eval` result (.nc) or an official per-question folder, as an evaluation Dataset."""
    path = Path(path)
    if path.is_dir():
        return read_official(path, **({} if threshold is None else {"threshold": threshold}))
    return load_result(path)


def _check_labels(spec: TableSpec) -> None:
    for label in [e.student for e in spec.evals] + ([spec.teacher.label] if spec.teacher else []):
        if not _LABEL.fullmatch(label) or "__" in label:
            raise ValueError(f"model label {label!r}: use letters, digits, '.', '_' or '-' (no '__'), "
                             f"e.g. Qwen2.5-VL-7B; it names files in the output folder")
    for e in spec.evals:
        check_method(e.method)
    files = [e.file for e in spec.evals] + ([spec.teacher.file] if spec.teacher else [])
    twice = sorted({f for f in files if files.count(f) > 1})
    if twice:
        raise ValueError(f"{twice[0]} is given for two rows; each evaluation file is one method and seed of one model")
    seen: dict[tuple, str] = {}
    for e in spec.evals:
        key = (e.student, e.method, e.seed)
        if key in seen:
            raise ValueError(f"{e.student} {e.method} seed {e.seed} is given twice ({seen[key]} and {e.file})")
        seen[key] = e.file
        if not trained(e.method) and any(k[:2] == key[:2] and k != key for k in seen):
            raise ValueError(f"{e.student} {e.method} is not trained: give one evaluation, not one per seed ({e.file})")


def same_questions(files: dict[str, xr.Dataset]) -> None:
    """Refuse, in one line naming both files, evaluations that were not made on the same questions
    (sizes, samples per size, ground truth and needle position of every sample)."""
    (ref_path, ref), *rest = files.items()
    for path, ds in rest:
        sizes_a, sizes_b = ref["haystack_size"].values.tolist(), ds["haystack_size"].values.tolist()
        why = None if sizes_a == sizes_b else f"haystack sizes {sizes_a} vs {sizes_b}"
        for var in ("n_samples", "answer_yes", "needle_index"):
            if why is None and not np.array_equal(ref[var].values, ds[var].values, equal_nan=True):
                where = [int(s) for s, a, b in zip(sizes_a, ref[var].values, ds[var].values)
                         if not np.array_equal(a, b, equal_nan=True)]
                why = f"{var} differs at {where[0]} image(s)"
        if why:
            raise ValueError(f"{ref_path} and {path} were not evaluated on the same questions ({why}); evaluate every "
                             f"model on the same data with the same eval seed and --max-samples")


def build_table(spec: TableSpec) -> tuple[xr.Dataset, dict[tuple[str, str], list[xr.Dataset]], xr.Dataset | None]:
    """(comparison Dataset with paired statistics, {(student, method): evals by seed}, teacher eval)."""
    if not spec.evals:
        raise ValueError("no evaluation files: pass --eval STUDENT:METHOD[:SEED]=PATH (or a --spec file)")
    _check_labels(spec)
    loaded = {e.file: load_eval(e.file, spec.threshold) for e in spec.evals}
    teacher = load_eval(spec.teacher.file, spec.threshold) if spec.teacher else None
    same_questions({**loaded, **({spec.teacher.file: teacher} if teacher is not None else {})})
    thresholds = {float(ds.attrs["threshold"]) for ds in loaded.values()}
    threshold = spec.threshold if spec.threshold is not None else thresholds.pop()
    if spec.threshold is None and thresholds:
        raise ValueError("the files were made with different effective-window thresholds; pass --threshold")
    evals: dict[tuple[str, str], list[xr.Dataset]] = {}
    for e in sorted(spec.evals, key=lambda e: e.seed):
        evals.setdefault((e.student, e.method), []).append(loaded[e.file])
    students = list(dict.fromkeys(e.student for e in spec.evals))
    methods = [m for m in ALL_METHODS if any(m == e.method for e in spec.evals)]
    sizes = [int(s) for s in next(iter(loaded.values()))["haystack_size"].values]
    short = spec.short_sizes if spec.short_sizes is not None else [s for s in sizes if SHORT_WINDOW[0] <= s <= SHORT_WINDOW[1]]
    long_ = spec.long_sizes if spec.long_sizes is not None else [s for s in sizes if LONG_WINDOW[0] <= s <= LONG_WINDOW[1]]
    for name, group, window in (("short", short, SHORT_WINDOW), ("long", long_, LONG_WINDOW)):
        if not group or not set(group) <= set(sizes):
            raise ValueError(f"the {name} sizes {group or f'(the evaluated sizes in the paper window {window[0]}-{window[1]})'} "
                             f"must be evaluated sizes ({sizes}), at least one; name them with --{name}-sizes")
    seeds = sorted({e.seed for e in spec.evals if trained(e.method)}) or [0]
    attrs = {"teacher": spec.teacher.label if spec.teacher else "", "threshold": threshold, "seeds": seeds,
             "config": json.dumps(asdict(spec)), "timings_s": "{}"}
    ds = build_comparison(evals, teacher, students, methods, attrs)
    ds = add_paired_statistics(ds, evals, short, long_, threshold)
    ds = add_labels(ds, {(e.student, e.method): trained_label(e) for e in spec.evals if trained(e.method)})
    return ds, evals, teacher


def trained_label(e: EvalFile) -> str:
    """A trained row's label from what trained: the distill_config.yaml of the run the file lies in
    (distill/<run>/eval.nc, a study's <run>/evals/step-N.nc, or an official folder inside a run);
    without one the tag alone cannot say which terms trained, and the label says so."""
    from trainers.config import load_config as load_distill_config

    for folder in list(Path(e.file).resolve().parents)[:2]:
        if (folder / "distill_config.yaml").is_file():
            return run_label(load_distill_config(folder / "distill_config.yaml"))
    return f"{LABELS.get(e.method, e.method)} (as tagged; no distill_config.yaml beside the file)"


def _figure_blocker(spec: TableSpec, ds: xr.Dataset) -> str | None:
    """Why Figure 3 cannot be drawn from this table (None: it can)."""
    if "base" not in ds["method"].values:
        return "Figure 3 draws differences against base: add each student's base evaluation"
    seeds: dict[tuple[str, str], set[int]] = {}
    for e in spec.evals:
        if trained(e.method):
            seeds.setdefault((e.student, e.method), set()).add(e.seed)
    if len({frozenset(s) for s in seeds.values()}) > 1:
        return "Figure 3 reads one list of training seeds: give every trained method the same seeds"
    return None


def write_table(spec: TableSpec, out: str | Path, figure: bool = True, kernel: str | None = None,
                progress: bool = True) -> dict[str, Path]:
    """Build the table and write the output folder (atomically, then Figure 3 into it); returns what was written."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / SPEC).is_file())):
        raise ValueError(f"--out {out} exists and was not written by `laid table` (no {SPEC}); choose a new folder "
                         f"(a run folder's own comparison is never replaced)")
    ds, evals, teacher = build_table(spec)
    with atomic_dir(out) as tmp:
        layout = RunLayout(tmp)
        write_text(to_yaml(spec), tmp / SPEC)
        for (student, method), runs in evals.items():
            seeds = sorted(e.seed for e in spec.evals if (e.student, e.method) == (student, method))
            for seed, run in zip(seeds, runs):
                where = layout.trained_eval(student, method, seed) if trained(method) else layout.compare_eval(student, method)
                write_netcdf(run, where)
        if teacher is not None:
            write_netcdf(teacher, layout.eval_result(spec.teacher.label, "base"))
        write_netcdf(ds, layout.comparison)
        write_text(comparison_markdown(ds), layout.comparison_md)
    layout = RunLayout(out)
    written = {"table": layout.comparison_md, "netcdf": layout.comparison}
    blocker = _figure_blocker(spec, ds) if figure else "not asked for (--no-figure)"
    if blocker is None:
        from laid_workflows.figures import KERNEL, run_figures

        methods = [m for m in ("base", "kd", "laid") if m in ds["method"].values] or ["base"]
        run_figures(out, out / "figures", notebooks=[FIGURE], executed_dir=layout.executed_notebooks,
                    overrides={FIGURE: {"methods": methods}}, kernel=kernel or KERNEL, progress=progress)
        written["figure"] = out / "figures" / f"{FIGURE}.png"
    else:
        written["figure skipped"] = Path(blocker)
    return written


def _spec_from_args(args) -> TableSpec:
    base = TableSpec()
    if args.spec:
        base = load_config(TableSpec, args.spec, what="table spec")
        here = Path(args.spec).parent
        for e in base.evals + ([base.teacher] if base.teacher else []):
            e.file = str(here / e.file) if not Path(e.file).is_absolute() else e.file
    base.evals += [parse_tag(item) for group in (args.eval or []) for item in group]
    if args.teacher:
        label, sep, path = args.teacher.partition("=")
        if not sep or not label or not path:
            raise ValueError(f"--teacher {args.teacher!r}: write LABEL=PATH, e.g. Qwen2.5-VL-32B=results/32b.nc")
        base.teacher = TeacherFile(label, path)
    for name in ("short_sizes", "long_sizes", "threshold"):
        if getattr(args, name) is not None:
            setattr(base, name, getattr(args, name))
    return base


def main(args) -> int:
    written = write_table(_spec_from_args(args), args.out, figure=not args.no_figure, kernel=args.kernel,
                          progress=not args.no_progress)
    print((Path(written["table"])).read_text().split("\n### Table 1")[0].rstrip())
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "table", help="the paired comparison table, its netCDF and Figure 3 from evaluation files (yours or the official harness's)",
        description="Tabulate evaluations of one or more students (one per method, and per training seed for trained "
                    "methods): `laid eval` .nc files or official per-question folders ({N}_images/{idx:03d}.json). "
                    "Every method is paired with base and KD on the same questions (95% intervals counting questions and "
                    "training seeds); files evaluated on different questions are refused. Writes OUT/compare/comparison.md and "
                    ".nc (the comparison schema), the per-question files in a run folder's layout, and Figure 3.")
    p.add_argument("--eval", nargs="+", action="append", metavar="STUDENT:METHOD[:SEED]=PATH",
                   help="an evaluation file or official folder and its tags, e.g. 7b:laid:1=results/7b_laid_s1.nc "
                        "(seed: the training seed, 0 if left out; methods as in laid/methods.py); repeatable")
    p.add_argument("--teacher", metavar="LABEL=PATH", help="the teacher's evaluation: the upper reference row (not paired)")
    p.add_argument("--spec", help="YAML with evals: [{student, method, seed, file}], teacher: {label, file} and the "
                   "options below (paths relative to the YAML); --eval adds to it")
    p.add_argument("--out", required=True, help="output folder (new, or one an earlier `laid table` wrote)")
    p.add_argument("--short-sizes", type=int, nargs="+", help="sizes of the short mean (default: the evaluated sizes 1-20, the paper's)")
    p.add_argument("--long-sizes", type=int, nargs="+", help="sizes of the long mean (default: the evaluated sizes 50-150, the paper's)")
    p.add_argument("--threshold", type=float, help="accuracy threshold of the effective window (default: the files' own)")
    p.add_argument("--no-figure", action="store_true", help="skip Figure 3 (it runs a notebook, ~20 s)")
    p.add_argument("--kernel", help="Jupyter kernel of the figure notebook (default: laid, registered by scripts/setup.sh)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=main)
