"""`laid figures`: run every notebook in notebooks/ through papermill to regenerate the figures.

Each notebook reads a run folder's results (docs/CONTRACTS.md) and writes its figures to
`figures_dir` (PNG + PDF, plotly HTML, the data behind each figure in figures_dir/data/). The
executed copies (with outputs) go to a separate folder, never over the sources, which stay
committed with outputs cleared. Python API: `run_figures(...)`, used by the main job.
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
KERNEL = "laid"  # registered by scripts/setup.sh: python -m ipykernel install --sys-prefix --name laid


@dataclass
class NotebookOutcome:
    """What happened to one notebook: status "ok", "skipped" (missing inputs, --allow-missing) or "failed"."""

    name: str
    status: str
    executed: Path
    seconds: float
    message: str = ""


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


def run_parameters(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Per-notebook parameters naming the run's own models, from its config.yaml (teacher and
    students of `laid main`); {} when the run has none (the notebooks' defaults name the toy zoo's
    tiny-32b / tiny-7b). The first student is the one whose per-student figures are drawn."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    cfg = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    teacher, students = cfg.get("teacher"), list(cfg.get("students") or [])
    if not teacher or not students:
        return {}
    s = students[0]
    return {
        "fig1_effective_window": {"models": [teacher, *students]},
        "fig4_key_activations": {"student_before": f"{s}__base", "student_after": f"{s}__laid", "teacher": f"{teacher}__base"},
        "head_weights": {"student": s},
        "spectra": {"checkpoints": {"teacher": f"{teacher}__base", "base": f"{s}__base", "kd": f"{s}__kd", "laid": f"{s}__laid"}},
        "tables": {"teacher": teacher},
    }


def run_figures(
    run_dir: str | Path = "runs/default",
    figures_dir: str | Path = "figures",
    quick: bool = False,
    executed_dir: str | Path | None = None,
    notebooks: Sequence[str] | None = None,
    allow_missing: bool = False,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    kernel: str = KERNEL,
    notebook_dir: str | Path = NOTEBOOK_DIR,
    progress: bool = True,
) -> list[NotebookOutcome]:
    """Run the figure notebooks on one run folder; figures land in `figures_dir`.

    Executed copies go to `executed_dir` (default: notebooks/executed/ beside the sources, git-ignored).
    Every notebook gets run_dir, figures_dir, quick and interactive=False, and the run's own model
    names (`run_parameters`, from its config.yaml); `overrides` adds parameters per notebook name (e.g. {"fig1_effective_window": {"models": ["tiny-32b"]}}).
    A notebook that stops because a results file is missing is skipped with a warning when
    `allow_missing`; any other failure (and a missing file by default) is reported as one line per
    notebook, and after all notebooks ran, a RuntimeError with the first failure is raised.
    """
    from papermill.exceptions import PapermillExecutionError
    from tqdm.auto import tqdm

    has_study = (Path(run_dir) / "study").is_dir()
    names = list(notebooks) if notebooks else [n for n in NOTEBOOKS if has_study or n not in STUDY_NOTEBOOKS]
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown:
        raise ValueError(f"unknown notebook(s) {unknown}; choose from {list(NOTEBOOKS)}")
    notebook_dir = Path(notebook_dir).resolve()
    executed_dir = Path(executed_dir).resolve() if executed_dir is not None else notebook_dir / "executed"
    if executed_dir == notebook_dir:
        raise ValueError(f"executed dir {executed_dir} is the notebook source folder; executed copies must go elsewhere")
    run_dir, figures_dir = Path(run_dir).resolve(), Path(figures_dir).resolve()
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} not found; run `laid main` first or pass --run-dir")
    check_kernel(kernel)
    from_run = run_parameters(run_dir)  # the run's own teacher and students, under any explicit overrides
    executed_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)

    outcomes: list[NotebookOutcome] = []
    bar = tqdm(names, desc="figures", unit="notebook", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        params = {"run_dir": str(run_dir), "figures_dir": str(figures_dir), "quick": bool(quick), "interactive": False}
        params.update(from_run.get(name, {}))
        params.update((overrides or {}).get(name, {}))
        start = time.perf_counter()
        try:
            executed = run_notebook(name, params, executed_dir, notebook_dir, kernel)
            outcomes.append(NotebookOutcome(name, "ok", executed, time.perf_counter() - start))
        except PapermillExecutionError as e:
            executed = executed_dir / f"{name}.ipynb"
            line = describe_error(name, e, executed)
            skip = allow_missing and e.ename == "MissingResultsError"
            outcomes.append(NotebookOutcome(name, "skipped" if skip else "failed", executed, time.perf_counter() - start, line))
            tqdm.write(f"laid figures: {'warning: skipped' if skip else 'error:'} {line}", file=sys.stderr)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        more = f" (and {len(failed) - 1} more notebook(s) failed, see above)" if len(failed) > 1 else ""
        hint = "; pass --allow-missing to skip figures whose results are missing" if "MissingResultsError" in failed[0].message else ""
        raise RuntimeError(failed[0].message + more + hint)
    return outcomes


def register(subparsers) -> None:
    p = subparsers.add_parser("figures", help="regenerate the figures and tables from a run's results (papermill)", description=__doc__)
    p.add_argument("--run-dir", default="runs/default", help="run folder written by `laid main` (default: runs/default)")
    p.add_argument("--figures-dir", default="figures", help="where PNG/PDF/HTML and data/ go (default: figures)")
    p.add_argument("--executed-dir", help="executed notebook copies (default: notebooks/executed of this checkout)")
    p.add_argument("--quick", action="store_true", help="smaller, faster images (smoke runs)")
    p.add_argument("--allow-missing", action="store_true", help="skip, with a warning, notebooks whose results files are missing")
    p.add_argument("--only", nargs="+", metavar="NOTEBOOK", choices=NOTEBOOKS, help=f"run only these notebooks ({', '.join(NOTEBOOKS)})")
    p.add_argument("--kernel", default=KERNEL, help=f"Jupyter kernel (default: {KERNEL}, registered by scripts/setup.sh)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    outcomes = run_figures(
        run_dir=args.run_dir,
        figures_dir=args.figures_dir,
        quick=args.quick,
        executed_dir=args.executed_dir,
        notebooks=args.only,
        allow_missing=args.allow_missing,
        kernel=args.kernel,
        progress=not args.no_progress,
    )
    ok = [o.name for o in outcomes if o.status == "ok"]
    skipped = [o.name for o in outcomes if o.status == "skipped"]
    executed = outcomes[0].executed.parent if outcomes else args.executed_dir
    print(f"figures: {len(ok)} notebook(s) ran -> {Path(args.figures_dir)}/ (executed copies in {executed}/)")
    if skipped:
        print(f"figures: skipped for missing results: {', '.join(skipped)}")
    return 0
