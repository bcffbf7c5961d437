"""What the notebooks in notebooks/ share: checked parameters, run-result loaders, figure writers
(the diagnosis notebooks' inputs, from any `laid diagnose` folders: figures_diagnosis.py).

Every notebook takes its inputs as papermill parameters. A bad parameter must stop it with a
message that names the parameter and says what to do, so the checks here raise
`ValueError("parameter models: unknown model 'x'; ...")` for a wrong value and
`MissingResultsError` (a FileNotFoundError) for a results file that does not exist yet; `laid
figures --allow-missing` skips notebooks that stop with the latter.

Figures are written atomically (temp file, then os.replace): matplotlib PNG + PDF, plotly HTML
(offline: one shared plotly.min.js beside the pages),
and the data behind each figure as netCDF under <figures_dir>/data/ so tests and users can check
the numbers without reading pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import xarray as xr

from laid.io import atomic_write, save_figure as _save_figure_file, write_bytes, write_netcdf, write_text
from laid.layout import RunLayout

RESULT_HINTS = {
    "eval": "run `laid eval` (or `laid main`) first",
    "compare": "run `laid compare` (or `laid main`) first",
}


class MissingResultsError(FileNotFoundError):
    """A results file a notebook needs does not exist: the step that writes it has not run."""


# ---------------------------------------------------------------- parameters


def check_run_dir(run_dir: str | Path) -> Path:
    """The run folder as a Path; it must exist."""
    path = Path(run_dir).expanduser()
    if not path.is_dir():
        raise MissingResultsError(f"parameter run_dir: {path} not found; run `laid main` first or pass an existing run folder")
    return path


def check_choice(param: str, value, choices: Iterable, what: str = "value"):
    """`value` if it is one of `choices`, else a ValueError naming the parameter and the choices."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"parameter {param}: unknown {what} {value!r}; choose from {choices}")
    return value


def check_list(param: str, values) -> list:
    """A non-empty list from a list/tuple parameter (papermill passes lists through JSON)."""
    if isinstance(values, str):
        values = [values]
    values = list(values or [])
    if not values:
        raise ValueError(f"parameter {param}: empty; give at least one name")
    return values


def known_models(run_dir: Path) -> list[str]:
    """Model names this run knows of: zoo folders, evaluations, distillations, analyses."""
    names = {p.name for p in (run_dir / "zoo").glob("*") if p.is_dir()}
    for sub, pattern in (("eval", "*.nc"), ("distill", "*"), ("analysis", "*")):
        names |= {p.name.split("__")[0].removesuffix(".nc") for p in (run_dir / sub).glob(pattern)}
    return sorted(n for n in names if not n.startswith("."))


def _missing_or_unknown(run_dir: Path, param: str, model: str, path: Path, step: str) -> Exception:
    """A missing file is 'not run yet' if the run knows the model, else the model name is wrong."""
    known = known_models(run_dir)
    if model not in known:
        return ValueError(f"parameter {param}: unknown model {model!r}; this run has {known}")
    return MissingResultsError(f"parameter {param}: {path} not found; {RESULT_HINTS[step]}")


# ---------------------------------------------------------------- loading results


def load_eval(run_dir: Path, model: str, variant: str = "base", param: str = "models") -> xr.Dataset:
    """runs/<run>/eval/<model>__<variant>.nc, read and schema-checked by laid.eval.results."""
    from laid.eval.results import load_result

    path = RunLayout(run_dir).eval_result(model, variant)
    if not path.is_file():
        raise _missing_or_unknown(run_dir, param, model, path, "eval")
    return load_result(path)


def load_comparison(run_dir: Path) -> xr.Dataset:
    """runs/<run>/compare/comparison.nc (Figure 3, tables)."""
    path = RunLayout(run_dir).comparison
    if not path.is_file():
        raise MissingResultsError(f"parameter run_dir: {path} not found; {RESULT_HINTS['compare']}")
    ds = xr.load_dataset(path, engine="netcdf4")
    missing = [v for v in ("accuracy", "teacher_accuracy") if v not in ds]
    if missing:
        raise ValueError(f"parameter run_dir: {path} lacks {missing}; is it a `laid compare` result?")
    return ds


def check_methods(param: str, methods, comparison: xr.Dataset) -> tuple[list[str], list[str]]:
    """(methods the comparison holds, methods it lacks); a name that is no method at all is a ValueError."""
    from laid.methods import ALL_METHODS

    methods = check_list(param, methods)
    for m in methods:
        check_choice(param, m, ALL_METHODS, "method")
    present = [m for m in methods if m in comparison.method.values]
    return present, [m for m in methods if m not in present]


def load_sample_results(run_dir: Path, student: str, method: str, param: str = "methods") -> list[xr.Dataset]:
    """Per-question results correct(haystack_size, sample) of one (student, method), one per
    training seed: distill/<student>__<method>[__seed<k>]/eval.nc for a trained method (the seeds
    the comparison lists in its `seeds` attr), else the comparison's own
    compare/eval/<student>__<method>.nc or the shared eval/<student>__<method>.nc."""
    from laid.eval.results import load_result
    from laid.methods import TRAINED_METHODS

    layout = RunLayout(run_dir)
    if method in TRAINED_METHODS:
        seeds = [0]
        if layout.comparison.is_file():
            with xr.open_dataset(layout.comparison) as cmp:
                seeds = [int(k) for k in np.atleast_1d(cmp.attrs.get("seeds", [0]))]
        paths = [layout.trained_eval(student, method, k) for k in seeds]
        if all(p.is_file() for p in paths):
            return [load_result(p) for p in paths]
        missing = next(p for p in paths if not p.is_file())
    else:
        for path in (layout.compare_eval(student, method), layout.eval_result(student, method)):
            if path.is_file():
                return [load_result(path)]
        missing = layout.compare_eval(student, method)
    raise MissingResultsError(f"parameter {param}: no per-question results for {student} {method} at {missing}; "
                              f"{RESULT_HINTS['compare']}")


def paired_differences(run_dir: Path, student: str, methods: Sequence[str], sizes: Sequence[int], reference: str = "base",
                       param: str = "methods") -> xr.Dataset:
    """accuracy(method) - accuracy(reference) per (diff_method, haystack_size), paired on the same
    questions (laid.eval.paired.paired_difference at each size: questions paired, each trained side's
    seeds counted): difference, difference_lo/_hi (95%), n_questions, n_seeds. Results on other
    questions are refused (laid.eval.paired.stack_seeds)."""
    from laid.eval.paired import interval_description, paired_difference, stack_seeds
    from laid.methods import INFERENCE_VARIANTS

    ref_runs = load_sample_results(run_dir, student, reference, param)
    out = []
    for m in methods:
        runs = load_sample_results(run_dir, student, m, param)
        common = [int(n) for n in sizes if all(int(n) in r["haystack_size"].values for r in runs + ref_runs)]
        try:
            a = stack_seeds(runs, common, deterministic=m in INFERENCE_VARIANTS and len(runs) == 1)
            b = stack_seeds(ref_runs, common, deterministic=reference in INFERENCE_VARIANTS and len(ref_runs) == 1)
            stack_seeds([runs[0], ref_runs[0]], common)  # the two methods on the same questions
        except ValueError as e:
            raise ValueError(f"parameter {param}: {student} {m} and {reference} were not evaluated on the same questions "
                             f"({e}); re-run `laid compare` so both use the same data and seed") from None
        rows = [paired_difference(a, b, [n]) for n in common]
        coords = {"haystack_size": common}
        out.append(xr.Dataset({
            "difference": ("haystack_size", [r.value for r in rows]),
            "difference_lo": ("haystack_size", [r.ci_low for r in rows]),
            "difference_hi": ("haystack_size", [r.ci_high for r in rows]),
            "n_questions": ("haystack_size", [r.n_questions for r in rows]),
        }, coords=coords).expand_dims(diff_method=[m]).assign_coords(n_seeds=("diff_method", [len(runs)])))
    ds = xr.concat(out, dim="diff_method", join="outer") if out else xr.Dataset()
    for v in ("difference", "difference_lo", "difference_hi"):
        ds[v].attrs.update(units="1", long_name=f"accuracy - {reference} accuracy, same questions",
                           interval=interval_description())
    return ds


# ---------------------------------------------------------------- writing figures


def setup_matplotlib(interactive: bool):
    """pyplot, on the Agg backend when headless (papermill) so nothing needs a display."""
    import matplotlib

    if not interactive:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "figure.constrained_layout.use": True, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def log_size_axis(ax, sizes) -> None:
    """Log x axis labelled with the haystack sizes themselves (1, 2, 5, 10 ... not 10^0, 10^1)."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    ax.set_xticks([int(s) for s in sizes])
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("images in the haystack")


def save_figure(fig, figures_dir: str | Path, name: str, dpi: int = 150, show: bool = True) -> list[Path]:
    """<figures_dir>/<name>.png and .pdf; shows the PNG in the notebook and closes the figure."""
    import matplotlib.pyplot as plt

    figures_dir = Path(figures_dir)
    paths = [_save_figure_file(fig, figures_dir / f"{name}.{fmt}", dpi=dpi, close=False) for fmt in ("png", "pdf")]
    plt.close(fig)
    if show:
        from IPython.display import Image, display

        display(Image(filename=str(paths[0])))
    return paths


PLOTLY_JS = "plotly.min.js"


def ensure_plotly_js(figures_dir: str | Path) -> Path:
    """<figures_dir>/plotly.min.js, the plotly.js of the installed plotly package (written when missing or other).

    Every page of the folder loads this one copy (~4.6 MB), so the pages draw offline (a cluster
    node, a laptop on a train) and each stays a few tens of kB; pages loading plotly.js from the CDN
    are blank without internet.
    """
    from plotly.offline import get_plotlyjs

    path = Path(figures_dir) / PLOTLY_JS
    js = get_plotlyjs().encode("utf-8")
    if not path.is_file() or path.stat().st_size != len(js) or path.read_bytes() != js:
        write_bytes(js, path)
    return path


def save_plotly(fig, figures_dir: str | Path, name: str) -> Path:
    """<figures_dir>/<name>.html, loading plotly.js from plotly.min.js beside it (works offline)."""
    ensure_plotly_js(figures_dir)
    return atomic_write(Path(figures_dir) / f"{name}.html",
                        lambda tmp: fig.write_html(tmp, include_plotlyjs=PLOTLY_JS, full_html=True))


def needle_position_data(result: str | Path) -> xr.Dataset:
    """Accuracy and sample counts by (haystack_size, needle_index) of a `laid eval` result with needle positions.

    A result without them (the shuffled protocol) is refused with a line saying how to make one.
    """
    from laid.eval.results import accuracy_by_needle_position, load_result

    path = Path(result)
    if not path.is_file():
        raise MissingResultsError(f"parameter result: {path} not found; run `laid eval ... --protocol official "
                                  f"--out {path}` (or --protocol ours --needle-positions) first")
    ds = load_result(path)
    if not int(ds.attrs.get("needle_position_mode", 0)):
        raise ValueError(f"parameter result: {path} was evaluated with shuffled haystacks; re-run `laid eval` with "
                         f"--protocol official (single needle) or --needle-positions")
    acc = accuracy_by_needle_position(ds)
    idx = ds["needle_index"]
    counts = [[int((idx.sel(haystack_size=n) == p).sum()) for p in acc["needle_index"].values] for n in acc["haystack_size"].values]
    out = xr.Dataset({"accuracy": acc, "n_samples": (("haystack_size", "needle_index"), np.array(counts),
                                                   {"long_name": "samples with the needle at this index", "units": "1"})})
    out["needle_index"].attrs.update(long_name="0-based position of the needle image in the prompt", units="images")
    out.attrs.update({k: ds.attrs.get(k, "") for k in ("model_name", "variant", "protocol", "needle_setting", "scoring")})
    out.attrs["result"] = str(path)
    return out


def save_data(ds: xr.Dataset, figures_dir: str | Path, name: str) -> Path:
    """<figures_dir>/data/<name>.nc: the numbers a figure shows."""
    return write_netcdf(ds, Path(figures_dir) / "data" / f"{name}.nc")


def add_dropdown(fig, groups: Sequence[str], label: str) -> None:
    """A plotly dropdown that shows only the traces of one group (trace i belongs to groups[i]).

    Lets a standalone HTML file switch layer/model without a kernel; the first group is shown.
    """
    names = list(dict.fromkeys(groups))
    for trace, g in zip(fig.data, groups):
        trace.visible = g == names[0]
    buttons = [
        {"label": f"{label} {n}".strip(), "method": "update", "args": [{"visible": [g == n for g in groups]}]} for n in names
    ]
    fig.update_layout(updatemenus=[{"buttons": buttons, "x": 1.0, "xanchor": "right", "y": 1.15, "yanchor": "top"}])


def explore(render: Callable, **controls) -> None:
    """JupyterLab only: ipywidgets controls (lists become dropdowns) that re-run `render(**values)`.

    `render` returns a plotly figure; it is shown below the controls.
    """
    import ipywidgets as widgets
    from IPython.display import display

    def show(**values):
        # display(), not fig.show(): show() uses plotly's default renderer, which outside a
        # detected notebook frontend is "browser" (a local server that waits for a browser to
        # fetch the page: a headless kernel hangs there). display() only emits mime bundles.
        display(render(**values))

    wid = {k: widgets.Dropdown(options=v, description=k) if isinstance(v, (list, tuple)) else v for k, v in controls.items()}
    display(widgets.interactive(show, **wid))


def markdown_table(df, float_format: str = "{:.2f}") -> str:
    """A pandas DataFrame as a GitHub markdown table (index included, NaN as an empty cell)."""
    index_names = [n or "" for n in (df.index.names if df.index.nlevels > 1 else [df.index.name])]
    header = index_names + [str(c) for c in df.columns]

    def cell(v):
        if isinstance(v, float):
            return "" if v != v else float_format.format(v)
        return str(v)

    rows = [[cell(i) for i in (idx if isinstance(idx, tuple) else (idx,))] + [cell(v) for v in row] for idx, row in zip(df.index, df.itertuples(index=False))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def save_text(text: str, figures_dir: str | Path, filename: str) -> Path:
    """<figures_dir>/<filename> (markdown, HTML ...), atomically."""
    return write_text(text, Path(figures_dir) / filename)
