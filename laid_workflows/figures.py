"""`laid figures`: run the notebooks in notebooks/ through papermill to draw the figures.

Two kinds of input. A run folder (`--run-dir`, docs/CONTRACTS.md): every notebook, with the run's
own teacher and students (its config.yaml, else its headline comparison). Or any `laid diagnose`
outputs (`--analysis LABEL=DIR ...`, the teacher's as `--reference LABEL=DIR`): Figure 4, the
spectra and the head weights of any checkpoint, titled with the labels given. Each notebook writes
its figures to the figures folder (PNG + PDF, plotly HTML, the data behind each figure in
data/): by default inside the run folder (<run>/figures), or beside the analysis folders; never
the repository's figures/ unless named (`laid results --publish` refreshes those). The executed
copies (with outputs) go beside them, never over the sources, which stay committed with outputs
cleared. Python API: `run_figures(...)` (used by the main job) and `run_diagnosis_figures(...)`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from laid.layout import RunLayout, run_label

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
# In the order the paper presents them; each name is notebooks/<name>.ipynb.
NOTEBOOKS = (
    "fig1_effective_window",
    "fig3_distillation_bars",
    "fig4_key_activations",
    "head_weights",
    "spectra",
    "tables",
    "learning_curves",
)
# Notebooks of `laid study` (run by it at its end); `laid figures` includes them when the run has a study.
STUDY_NOTEBOOKS = ("learning_curves",)
# Notebooks drawn from `laid diagnose` folders with labels (figures_diagnosis.py), not from a run folder.
DIAGNOSIS_NOTEBOOKS = ("fig4_key_activations", "head_weights", "spectra")
# Notebooks that need a run's model names (run_parameters): never the notebooks' own toy defaults.
NAMED_NOTEBOOKS = ("fig1_effective_window", "tables", *DIAGNOSIS_NOTEBOOKS)
KERNEL = "laid"  # registered by scripts/setup.sh: python -m ipykernel install --sys-prefix --name laid


@dataclass
class NotebookOutcome:
    """What happened to one notebook: status "ok", "skipped" (missing inputs, --allow-missing) or "failed"."""

    name: str
    status: str
    executed: Path
    seconds: float
    message: str = ""
    figures: Path | None = None  # where its figures went


def check_kernel(kernel: str) -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(kernel)
    except NoSuchKernel:
        raise RuntimeError(
            f"Jupyter kernel {kernel!r} not found; run scripts/setup.sh "
            f"(it runs `python -m ipykernel install --sys-prefix --name {KERNEL}`)"
        ) from None


def describe_error(name: str, error, executed: Path) -> str:
    """One line: which notebook, which cell, which error (the notebook's own message names the parameter)."""
    evalue = " ".join(str(error.evalue).split())  # one line, whatever the message had
    return f"notebook {name}.ipynb stopped at cell In [{error.exec_count}]: {error.ename}: {evalue} (executed copy: {executed})"


# Seconds a cell may run without finishing, and a kernel may take to start (see run_notebook).
CELL_TIMEOUT_S = 600
KERNEL_START_TIMEOUT_S = 120


def run_notebook(
    name: str,
    parameters: Mapping[str, Any],
    executed_dir: Path,
    notebook_dir: Path = NOTEBOOK_DIR,
    kernel: str = KERNEL,
    cell_timeout: float = CELL_TIMEOUT_S,
) -> Path:
    """Execute notebooks/<name>.ipynb with `parameters` into executed_dir/<name>.ipynb.

    Raises papermill's PapermillExecutionError if a cell fails (the executed copy shows where).
    A kernel that hangs (a cell silent for `cell_timeout` seconds) or dies is restarted once: in
    the interactive (ipywidgets) mode run headless, the client sometimes never gets the reply of a
    finished cell while the kernel sits idle (nbclient issue 312; seen twice in our test runs), which
    without a timeout hangs the caller for ever. A second hang raises a RuntimeError naming the
    notebook.
    """
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    source = notebook_dir / f"{name}.ipynb"
    if not source.is_file():
        raise FileNotFoundError(f"notebook {source} not found; known notebooks: {', '.join(NOTEBOOKS)}")
    executed_dir.mkdir(parents=True, exist_ok=True)
    executed = executed_dir / f"{name}.ipynb"
    for attempt in (1, 2):
        try:
            with _repo_on_kernel_path():
                papermill.execute_notebook(
                    str(source),
                    str(executed),
                    parameters=dict(parameters),
                    kernel_name=kernel,
                    cwd=str(notebook_dir),  # so a notebook opened in JupyterLab and one run here resolve paths alike
                    progress_bar=False,
                    execution_timeout=cell_timeout,
                    start_timeout=KERNEL_START_TIMEOUT_S,
                    # The kernel logs ("running over TCP without encryption", interrupt at shutdown) are noise here.
                    extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
                )
            return executed
        except (CellTimeoutError, DeadKernelError) as e:
            if attempt == 2:
                raise RuntimeError(
                    f"notebook {name}.ipynb: the kernel hung or died twice ({type(e).__name__}); "
                    f"run it by hand in JupyterLab to see where (executed copy: {executed})"
                ) from e
    return executed


@contextmanager
def _repo_on_kernel_path():
    """The kernel (a child process, inheriting our environment) imports this checkout's packages
    first, whatever an older install of the project maps: the notebooks belong to this code."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([old] if old else []))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def run_models(run: RunLayout) -> tuple[str, list[str]] | None:
    """(teacher, students) of a run folder: its config.yaml (`laid main`), else its headline
    comparison (`laid compare`'s compare/comparison.nc); None when it names neither."""
    import xarray as xr

    cfg = run.config_dict()
    if cfg.get("teacher") and cfg.get("students"):
        return str(cfg["teacher"]), [str(s) for s in cfg["students"]]
    if run.comparison.is_file():
        with xr.open_dataset(run.comparison) as cmp:
            if cmp.attrs.get("teacher") and "student" in cmp.coords:
                return str(cmp.attrs["teacher"]), [str(s) for s in cmp["student"].values]
    return None


def run_parameters(run_dir: str | Path, notebooks: Sequence[str] = NOTEBOOKS, given: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Per-notebook parameters naming the run's own models (run_models). The first student is the
    one whose diagnosis figures are drawn: every analysis/<student>__<method>/ folder, in the method
    registry's order, against the teacher's analysis/<teacher>__base/ (else the reference.nc beside
    them), and the head weights of its LAid run. A run naming no models is refused, in one line,
    for the notebooks that need names and are not `given` theirs: they are never drawn with the
    notebooks' own toy defaults."""
    from laid.methods import ALL_METHODS

    run = RunLayout(run_dir)
    # The learning curves of the study that ran last (study/<name>.nc); one study at a time: --only
    # learning_curves with the notebook's `study` parameter draws another.
    studies = sorted(run.study.glob("*.nc"), key=lambda p: p.stat().st_mtime) if run.study.is_dir() else []
    curves = {"learning_curves": {"study": studies[-1].stem}} if studies else {}
    models = run_models(run)
    if models is None:
        need = [n for n in notebooks if n in NAMED_NOTEBOOKS and n not in given]
        if need:
            raise ValueError(f"run folder {run.root} names no teacher and students (no config.yaml of `laid main`, no "
                             f"compare/comparison.nc) and {', '.join(need)} need them: draw a checkpoint's figures with "
                             f"`laid figures --analysis LABEL=DIR ...`, or choose other notebooks with --only")
        return curves
    teacher, students = models
    s = students[0]
    analysed = [m for m in ALL_METHODS if run.diagnosis(run_label(s, m)).is_file()] or ["base"]
    analyses = {run_label(s, m): str(run.analysis(run_label(s, m))) for m in analysed}
    t_label = run_label(teacher, "base")
    reference = {t_label: str(run.analysis(t_label))} if run.teacher_diagnosis(teacher).is_file() else None
    return {
        "fig1_effective_window": {"models": [teacher, *students]},
        "fig4_key_activations": {"analyses": analyses, "reference": reference},
        "head_weights": {"head_weights": {run_label(s, "laid"): str(run.distill_run(s, "laid"))}},
        "spectra": {"analyses": analyses, "reference": reference},
        "tables": {"teacher": teacher},
        **curves,
    }


def beside(folders: Sequence[str | Path]) -> Path:
    """The default figures folder of diagnosis figures: figures/ in the folder holding the analysis
    folders, or in the run folder when that is a run's analysis/ (<run>/figures). Never the
    repository's own figures/: that one is refreshed only when asked (`laid results --publish`)."""
    parent = Path(os.path.commonpath([str(Path(f).resolve()) for f in folders]))
    if len(folders) == 1 or parent in {Path(f).resolve() for f in folders}:
        parent = parent.parent
    if parent.name == "analysis":
        parent = parent.parent
    out = parent / "figures"
    if out == (REPO / "figures").resolve():
        raise ValueError(f"the figures would go to the repository's own {out}; name a folder with --out "
                         f"(the repository's figures are refreshed by `laid results --publish`)")
    return out


def run_figures(
    run_dir: str | Path = "runs/default",
    figures_dir: str | Path | None = None,
    quick: bool = False,
    executed_dir: str | Path | None = None,
    notebooks: Sequence[str] | None = None,
    allow_missing: bool = False,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    kernel: str = KERNEL,
    notebook_dir: str | Path = NOTEBOOK_DIR,
    progress: bool = True,
) -> list[NotebookOutcome]:
    """Run the figure notebooks on one run folder; figures land in `figures_dir` (default <run>/figures).

    Executed copies go to `executed_dir` (default: <run>/executed_notebooks). Every notebook gets
    figures_dir, quick and interactive=False, those reading the run its run_dir, and the run's own
    model names (`run_parameters`); `overrides` adds parameters per notebook name (e.g.
    {"fig1_effective_window": {"models": ["tiny-32b"]}}). Failures: see `execute`.
    """
    run = RunLayout(Path(run_dir).resolve())
    has_study = run.study.is_dir()
    names = list(notebooks) if notebooks else [n for n in NOTEBOOKS if has_study or n not in STUDY_NOTEBOOKS]
    _check_names(names)
    if not run.root.is_dir():
        raise FileNotFoundError(f"run folder {run.root} not found; run `laid main` first or pass --run-dir")
    from_run = run_parameters(run.root, names, list(overrides or {}))  # the run's own models, under any explicit overrides
    params = {n: {**({} if n in DIAGNOSIS_NOTEBOOKS else {"run_dir": str(run.root)}), **from_run.get(n, {}),
                  **(overrides or {}).get(n, {})} for n in names}
    return execute(params, figures_dir if figures_dir is not None else run.figures,
                   executed_dir if executed_dir is not None else run.executed_notebooks,
                   quick, allow_missing, kernel, notebook_dir, progress)


def run_diagnosis_figures(
    analyses: Mapping[str, str | Path],
    figures_dir: str | Path | None = None,
    reference: Mapping[str, str | Path] | None = None,
    layers: int | Mapping[str, int] | None = None,
    head_weights: Mapping[str, str | Path] | None = None,
    notebooks: Sequence[str] | None = None,
    quick: bool = False,
    executed_dir: str | Path | None = None,
    allow_missing: bool = False,
    kernel: str = KERNEL,
    notebook_dir: str | Path = NOTEBOOK_DIR,
    progress: bool = True,
) -> list[NotebookOutcome]:
    """Figure 4, the spectra and the head weights of any `laid diagnose` outputs ({label: folder},
    titled with the labels), against the teacher's (`reference`: {label: folder}; default the
    reference.nc beside the first analysis), at each diagnosis' needle-reading layer unless `layers`
    names them (one for all, or {label: layer}). The head weights are those of `head_weights`
    ({label: head_weights.nc or a folder holding it}) or of the first analysis folder holding a
    head_weights.nc (`laid diagnose --head-weights`); without either that figure is skipped, and
    said. Figures go to `figures_dir` (default: `beside` the analyses), the executed copies to
    <figures_dir>/executed_notebooks: nothing is written anywhere else."""
    from laid_workflows.figures_diagnosis import HEAD_WEIGHTS

    if not analyses:
        raise ValueError("no analysis folders given; pass --analysis LABEL=DIR (a folder written by `laid diagnose --out`)")
    folders = {str(k): Path(v).resolve() for k, v in analyses.items()}
    missing = [f"{k}={v}" for k, v in folders.items() if not v.is_dir()]
    if missing:
        raise FileNotFoundError(f"analysis folder {missing[0]} not found; pass folders written by `laid diagnose --out`")
    names = list(notebooks) if notebooks else list(DIAGNOSIS_NOTEBOOKS)
    _check_names(names, DIAGNOSIS_NOTEBOOKS)
    figures_dir = Path(figures_dir).resolve() if figures_dir is not None else beside(list(folders.values()))
    executed_dir = Path(executed_dir) if executed_dir is not None else figures_dir / "executed_notebooks"
    ref = {str(k): str(Path(v).resolve()) for k, v in reference.items()} if reference else None
    common = {"analyses": {k: str(v) for k, v in folders.items()}, "reference": ref, "layers": layers}
    params = {"fig4_key_activations": common, "spectra": common}
    if head_weights:
        params["head_weights"] = {"head_weights": {str(k): str(Path(v).resolve()) for k, v in head_weights.items()}}
    else:
        found = next(((k, v) for k, v in folders.items() if (v / HEAD_WEIGHTS).is_file()), None)
        if found:
            params["head_weights"] = {"head_weights": {found[0]: str(found[1])}}
        elif "head_weights" in names:
            names.remove("head_weights")
            print(f"laid figures: no head weights: no {HEAD_WEIGHTS} in the analysis folders (diagnose a LAid export with "
                  f"--head-weights, or pass --head-weights LABEL=PATH)", file=sys.stderr)
    return execute({n: params[n] for n in names}, figures_dir, executed_dir, quick, allow_missing, kernel, notebook_dir, progress)


def _check_names(names: Sequence[str], known: Sequence[str] = NOTEBOOKS) -> None:
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown notebook(s) {unknown}; choose from {list(known)}")


def execute(
    params: Mapping[str, Mapping[str, Any]],
    figures_dir: str | Path,
    executed_dir: str | Path,
    quick: bool = False,
    allow_missing: bool = False,
    kernel: str = KERNEL,
    notebook_dir: str | Path = NOTEBOOK_DIR,
    progress: bool = True,
) -> list[NotebookOutcome]:
    """Run each notebook of `params` (name -> its own parameters) with figures_dir, quick and
    interactive=False added; executed copies to `executed_dir`.

    A notebook that stops because a results file is missing is skipped with a warning when
    `allow_missing`; any other failure (and a missing file by default) is reported as one line per
    notebook, and after all notebooks ran, a RuntimeError with the first failure is raised.
    """
    from papermill.exceptions import PapermillExecutionError
    from tqdm.auto import tqdm

    notebook_dir = Path(notebook_dir).resolve()
    executed_dir, figures_dir = Path(executed_dir).resolve(), Path(figures_dir).resolve()
    if executed_dir == notebook_dir:
        raise ValueError(f"executed dir {executed_dir} is the notebook source folder; executed copies must go elsewhere")
    check_kernel(kernel)
    executed_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)

    outcomes: list[NotebookOutcome] = []
    bar = tqdm(list(params), desc="figures", unit="notebook", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        full = {**params[name], "figures_dir": str(figures_dir), "quick": bool(quick), "interactive": False}
        start = time.perf_counter()
        try:
            executed = run_notebook(name, full, executed_dir, notebook_dir, kernel)
            outcomes.append(NotebookOutcome(name, "ok", executed, time.perf_counter() - start, figures=figures_dir))
        except PapermillExecutionError as e:
            executed = executed_dir / f"{name}.ipynb"
            line = describe_error(name, e, executed)
            skip = allow_missing and e.ename == "MissingResultsError"
            outcomes.append(NotebookOutcome(name, "skipped" if skip else "failed", executed, time.perf_counter() - start, line,
                                            figures_dir))
            tqdm.write(f"laid figures: {'warning: skipped' if skip else 'error:'} {line}", file=sys.stderr)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        more = f" (and {len(failed) - 1} more notebook(s) failed, see above)" if len(failed) > 1 else ""
        hint = "; pass --allow-missing to skip figures whose results are missing" if "MissingResultsError" in failed[0].message else ""
        raise RuntimeError(failed[0].message + more + hint)
    return outcomes


def register(subparsers) -> None:
    p = subparsers.add_parser("figures", help="draw the figures and tables from a run folder or from any `laid diagnose` outputs (papermill)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", help="run folder written by `laid main` or `laid compare` (default: runs/default, unless --analysis)")
    p.add_argument("--analysis", nargs="+", metavar="LABEL=DIR",
                   help="`laid diagnose` output folders, each titled by its label: draws Figure 4, the spectra and the head weights")
    p.add_argument("--reference", metavar="LABEL=DIR",
                   help="the teacher's own `laid diagnose` folder (default: the reference.nc beside the first --analysis)")
    p.add_argument("--head-weights", metavar="LABEL=PATH",
                   help="a LAid run's head_weights.nc or its folder (default: the first --analysis folder holding one)")
    p.add_argument("--layers", nargs="+", metavar="LAYER",
                   help="layer(s) to draw: one for every checkpoint (negative: from the last) or LABEL=LAYER each "
                        "(default: the layer each diagnosis finds reading the needle)")
    p.add_argument("--out", "--figures-dir", dest="figures_dir", metavar="DIR",
                   help="folder for PNG/PDF/HTML and data/ (default: <run-dir>/figures; with --analysis: figures/ beside the analysis folders)")
    p.add_argument("--executed-dir", metavar="DIR", help="executed notebook copies (default: <run-dir>/executed_notebooks; with --analysis: <out>/executed_notebooks)")
    p.add_argument("--quick", action="store_true", help="smaller, faster images (smoke runs)")
    p.add_argument("--allow-missing", action="store_true", help="skip, with a warning, notebooks whose results files are missing")
    p.add_argument("--only", nargs="+", metavar="NOTEBOOK", choices=NOTEBOOKS, help=f"run only these notebooks ({', '.join(NOTEBOOKS)})")
    p.add_argument("--kernel", default=KERNEL, help=f"Jupyter kernel (default: {KERNEL}, registered by scripts/setup.sh)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from laid_workflows import figures_diagnosis as fd

    common = {"executed_dir": args.executed_dir, "notebooks": args.only, "quick": args.quick, "allow_missing": args.allow_missing,
              "kernel": args.kernel, "progress": not args.no_progress}
    if args.analysis:
        if args.run_dir:
            raise ValueError("give --run-dir (a run folder's figures) or --analysis (any diagnosis folders), not both")
        reference, head_weights = fd.labelled([args.reference] if args.reference else [], "--reference"), \
            fd.labelled([args.head_weights] if args.head_weights else [], "--head-weights")
        outcomes = run_diagnosis_figures(fd.labelled(args.analysis, "--analysis"), args.figures_dir, reference or None,
                                         fd.parse_layers(args.layers), head_weights or None, **common)
    else:
        if args.reference or args.head_weights or args.layers:
            raise ValueError("--reference, --head-weights and --layers go with --analysis LABEL=DIR")
        outcomes = run_figures(args.run_dir or "runs/default", args.figures_dir, **common)
    ok = [o for o in outcomes if o.status == "ok"]
    skipped = [o.name for o in outcomes if o.status == "skipped"]
    if ok:
        print(f"figures: {', '.join(o.name for o in ok)} -> {ok[0].figures}/ (executed copies in {ok[0].executed.parent}/)")
    if skipped:
        print(f"figures: skipped for missing results: {', '.join(skipped)}")
    return 0
