"""The results page: Markdown written from a run folder's netCDF files, so its numbers cannot drift.

The main job writes it at its end (after the figures) into its run folder, `<run>/results.md`;
`laid results` rewrites it for any run folder (after `laid compare --full`, say). The repository's
own copy, `docs/results.md` with the figures it shows in `figures/`, changes only when asked:
`laid results --publish` (`publish`). Nobody copies a number by hand: the README and the docs link
to the page instead.

The page is a list of named sections (`SECTIONS`). A section is a function of the page's context
(the run folder's layout, where the page goes, where the figures are) that returns Markdown, or
None when the file it reads is absent from this run; the page then names the missing source in
one closing line instead of printing an empty table. To add a section, write its renderer (like
`learning_curves`, which renders every study/<name>.nc) and put it in the list, or:

    add_section(Section("my-section", "path/in/the/run", my_renderer), after="headline")
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import xarray as xr

from laid.eval.results import git_commit
from laid.io import read_netcdf, write_text
from laid.layout import RunLayout
from laid_workflows.headline import headline_markdown, sizes_attr
from laid_workflows.tables import per_size_markdown


@dataclass(frozen=True)
class PageContext:
    """What a section may read: the run folder, where the page goes (links are relative to it), and
    the folder of the run's figures (None: the run has none)."""

    run: RunLayout
    page: Path
    figures_dir: Path | None = None

    def link(self, target: Path) -> str:
        """A relative link from the page to `target` (forward slashes, as Markdown wants)."""
        return Path(os.path.relpath(Path(target).resolve(), self.page.resolve().parent)).as_posix()


@dataclass(frozen=True)
class Section:
    """One named section: `render(ctx)` -> Markdown, or None when `source` (a run-folder path, named
    on the page when absent) is missing."""

    name: str
    source: str
    render: Callable[[PageContext], str | None]


def _models(run: RunLayout) -> list[str]:
    """Models with a base evaluation in eval/: the config's teacher and students first, in its order."""
    found = sorted(p.name.removesuffix("__base.nc") for p in (run.root / "eval").glob("*__base.nc"))
    cfg = run.config_dict()
    order = [m for m in [cfg.get("teacher"), *(cfg.get("students") or [])] if m in found]
    return order + [m for m in found if m not in order]


def _result_files(run: RunLayout) -> list[Path]:
    """Every evaluation netCDF of the run (base models, distilled students, the comparison's own)."""
    root = run.root
    return sorted([*(root / "eval").glob("*.nc"), *(root / "distill").glob("*/eval.nc"), *(root / "compare" / "eval").glob("*.nc")])


def provenance(ctx: PageContext) -> str | None:
    """The run, the commit(s) whose code wrote its results (from the files' own attributes), when."""
    files = _result_files(ctx.run)
    if not files:
        return None
    commits: Counter[str] = Counter()
    created = []
    for path in files:
        attrs = read_netcdf(path, "evaluation result").attrs
        commits[str(attrs.get("git_commit", "unknown"))] += 1
        created.append(str(attrs.get("created", "")))
    cfg = ctx.run.config_dict()
    logged = f" (its config: `{ctx.run.config.name}` in the run folder)" if cfg else ""
    lines = ["## The run", "", f"- run: `{cfg.get('name', ctx.run.root.name)}`{logged}"]
    made = ", ".join(f"`{c[:10]}` ({n} file{'s' if n > 1 else ''})" for c, n in commits.most_common())
    lines.append(f"- code: the results were written at commit {made}; the page at `{git_commit()[:10]}`")
    dates = sorted(d for d in created if d)
    if dates:
        lines.append(f"- evaluated: {dates[0][:19]} to {dates[-1][:19]} ({len(files)} evaluation files)")
    return "\n".join(lines)


def _window_cell(ds: xr.Dataset) -> str:
    w = ds["effective_window"]
    if int(w.attrs.get("below_range", 0)):
        return "below range"
    text = f"{'>= ' if int(w.attrs.get('censored', 0)) else ''}{float(w):.1f}"
    if "ci_low" in w.attrs:
        text += f" [{float(w.attrs['ci_low']):.1f}, {float(w.attrs['ci_high']):.1f}]"
    return text


def base_models(ctx: PageContext) -> str | None:
    """Accuracy per haystack size and effective window of every base model (eval/<model>__base.nc)."""
    models = _models(ctx.run)
    if not models:
        return None
    results = {m: read_netcdf(ctx.run.eval_result(m), "evaluation result") for m in models}
    sizes = sorted({int(s) for ds in results.values() for s in ds["haystack_size"].values})
    n = sorted({int(v) for ds in results.values() for v in ds["n_samples"].values})
    thr = next(iter(results.values())).attrs.get("threshold", "")
    head = ["model", *map(str, sizes), "effective window [95% CI]"]
    count = f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}"
    lines = ["## Base models", "",
             f"Accuracy per haystack size (images), {count} questions per size; effective window: the largest size with accuracy >= {thr}, in images, with its "
             "95% bootstrap interval over questions.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, ds in results.items():
        acc = {int(s): float(a) for s, a in zip(ds["haystack_size"].values, ds["accuracy"].values)}
        cells = [f"{acc[s]:.2f}" if s in acc else "-" for s in sizes]
        lines.append("| " + " | ".join([model, *cells, _window_cell(ds)]) + " |")
    return "\n".join(lines)


def _comparison(ctx: PageContext, name: str = "comparison") -> xr.Dataset | None:
    path = ctx.run.comparison_result(name)
    return read_netcdf(path, "comparison") if path.is_file() else None


def _seeds_sentence(ds: xr.Dataset) -> str:
    seeds = ds.attrs.get("seeds")
    seeds = json.loads(seeds) if isinstance(seeds, str) else list(seeds) if seeds is not None else []
    return f"training seeds {', '.join(map(str, seeds))}; " if seeds else ""


def preregistered(ctx: PageContext) -> str | None:
    """Every preregistration whose study is in this run folder (laid_workflows.prereg.page_section)."""
    from laid_workflows.prereg import page_section

    return page_section(ctx.run)


def _exploratory(study: str | None = None) -> str:
    from laid_workflows.prereg import study_status

    return study_status(study)


def headline(ctx: PageContext) -> str | None:
    """The headline comparison (compare/comparison.nc): paired differences with 95% intervals."""
    ds = _comparison(ctx)
    lines = headline_markdown(ds) if ds is not None else []
    if not lines:
        return None
    intro = (f"`compare/comparison.nc` ({_seeds_sentence(ds)}every row evaluated on the same questions; short = sizes "
             f"{sizes_attr(ds, 'short_sizes')}, long = {sizes_attr(ds, 'long_sizes')} images). {_exploratory()}")
    return "\n".join(["## Headline comparison", "", intro, "", *lines])


def per_size(ctx: PageContext) -> str | None:
    """The paper-style per-size tables of the headline comparison (point estimates)."""
    ds = _comparison(ctx)
    if ds is None:
        return None
    return "\n".join(["## Per-size tables of the headline comparison", "", *[
        "#" + line if line.startswith("### ") else line for line in per_size_markdown(ds)]])


def other_comparisons(ctx: PageContext) -> str | None:
    """Every other comparison in the run folder (compare/<name>.nc: `laid compare --full`, layer pairing)."""
    paths = sorted(p for p in ctx.run.compare.glob("*.nc") if p.stem != "comparison") if ctx.run.compare.is_dir() else []
    parts = []
    for path in paths:
        ds = read_netcdf(path, "comparison")
        lines = headline_markdown(ds)
        if lines:
            parts += [f"### `{path.name}`", "", f"{_seeds_sentence(ds).capitalize()}its own file, beside the headline.", "", *lines, ""]
    return "\n".join(["## Other comparisons in this run", "", *parts]).rstrip() if parts else None


def diagnosed_pairing(ctx: PageContext) -> str | None:
    """Where the teacher's diagnosis (analysis/<teacher>__base) puts the layer pairing of
    `layer_map: diagnosed`, with the evidence per layer, by the question rows and by the answer row."""
    from trainers.layer_choice import choose_layers

    teacher = ctx.run.config_dict().get("teacher")
    path = ctx.run.teacher_diagnosis(teacher) if teacher else None
    if path is None or not path.is_file():
        return None
    lines = ["## The teacher's diagnosis: which layer reads the needle", "",
             f"The run's `analysis/{teacher}__base/diagnostics.nc` read by `layer_map: diagnosed` (trainers/layer_choice.py), "
             "as `laid plan --layer-map diagnosed` prints it; the answer-row reading is the ablation:", "", "```"]
    for rows in ("question", "answer"):
        lines += [line.replace(str(path), "diagnostics.nc") for line in choose_layers(path, rows=rows).describe()]
    return "\n".join([*lines, "```"])


def learning_curves(ctx: PageContext) -> str | None:
    """Every study of the run (study/<name>.nc, `laid study`): paired differences per budget, the
    learning-curve figure and the study's measured time."""
    from laid_workflows.study_stats import study_markdown

    paths = sorted(ctx.run.study.glob("*.nc")) if ctx.run.study.is_dir() else []
    if not paths:
        return None
    parts = ["## Learning curves (`laid study`)", ""]
    for path in paths:
        ds = read_netcdf(path, "study")
        times = json.loads(ds.attrs.get("timings_s", "{}"))
        grid = "the whole grid" if int(ds.attrs.get("full_grid", 0)) else "the config's CPU grid"
        parts += [f"### `study/{path.name}`", "",
                  f"{grid[0].upper() + grid[1:]} on {ds.attrs.get('device', '?')}: {_study_time(ds, times)} {_exploratory(path.stem)}", ""]
        parts += ["#" + line if line.startswith("### ") else line for line in study_markdown(ds).splitlines()]
        png = ctx.figures_dir / f"learning_curves_{path.stem}.png" if ctx.figures_dir is not None else None
        if png is not None and png.is_file():
            parts += ["", f"![learning curves]({ctx.link(png)})"]
        parts.append("")
    return "\n".join(parts).rstrip()


# Figure PNGs the notebooks write (laid_workflows.figures.NOTEBOOKS), with what each shows.
FIGURES = {
    "fig1_effective_window": "Figure 1: accuracy per haystack size and effective window of the teacher and the students",
    "fig3_distillation_bars": "Figure 3: accuracy per method; lower row, each method minus base on the same questions "
                              "with 95% paired intervals counting questions and seeds",
    "fig4_key_activations": "Figure 4: attention on the needle image per head at the aligned layer, before and after "
                            "distillation, with 95% bootstrap intervals over haystacks",
    "head_weights": "Head weights: the LAid head mixers (student heads x teacher heads); the title says whether a term trained them",
    "spectra": "Spectra: per-rotary-pair spectrum and distance profile of a student head against its virtual teacher head",
}


def figures(ctx: PageContext) -> str | None:
    """Links to the run's figures (PNG, with the interactive HTML beside each) and tables.md."""
    if ctx.figures_dir is None or not ctx.figures_dir.is_dir():
        return None
    lines = []
    for name, caption in FIGURES.items():
        png = ctx.figures_dir / f"{name}.png"
        if png.is_file():
            html = png.with_suffix(".html")
            extra = f" ([interactive]({ctx.link(html)}))" if html.is_file() else ""
            lines += [f"**{caption}**{extra}", "", f"![{caption.split(':')[0]}]({ctx.link(png)})", ""]
    if (ctx.figures_dir / "tables.md").is_file():
        lines.append(f"The paper's Tables 1-3 side by side with the run's: [tables.md]({ctx.link(ctx.figures_dir / 'tables.md')}).")
    return "\n".join(["## Figures", "", *lines]).rstrip() if lines else None


def _seconds_range(values: list[float]) -> str:
    return f"{min(values):.0f} s" if len(values) == 1 else f"{min(values):.0f}-{max(values):.0f} s"


def _study_time(ds, times: dict) -> str:
    """The study's measured time: this invocation's wall clock and the grid's job seconds over all invocations."""
    line = f"this invocation took {times.get('total', float('nan')):.0f} s"
    n, timed = int(ds.attrs.get("jobs", 0)), int(ds.attrs.get("jobs_timed", 0))
    if n:
        line += (f"; the grid's {n} training runs (train, export, evaluate, diagnose) took {float(ds.attrs['job_seconds']) / 60:.0f} "
                 f"worker-minutes over all invocations ({timed} of {n} runs timed; {int(ds.attrs['workers'])} workers side by side)")
    return line + "."


def stage_times(ctx: PageContext) -> str | None:
    """Measured seconds per stage (timings.json) and the spread of the comparison's runs (timings_s)."""
    if not ctx.run.timings.is_file():
        return None
    timings = json.loads(ctx.run.timings.read_text())
    lines = ["## Measured times", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {seconds:.0f} |" for stage, seconds in timings.items()]
    lines.append(f"| total | {sum(timings.values()):.0f} |")
    ds = _comparison(ctx)
    runs = json.loads(ds.attrs.get("timings_s", "{}")) if ds is not None else {}
    kinds = {kind: [v for k, v in runs.items() if k.startswith(kind + " ")] for kind in ("distill", "eval")}
    if any(kinds.values()):
        said = [f"{len(v)} {k} runs took {_seconds_range(v)} each" if len(v) > 1 else f"1 {k} run took {_seconds_range(v)}"
                for k, v in kinds.items() if v]
        lines += ["", "Inside the comparison stage (`timings_s` of comparison.nc; runs reused from an earlier stage or "
                  "run are not timed): " + "; ".join(said) + "."]
    return "\n".join(lines)


SECTIONS: list[Section] = [
    Section("provenance", "eval/*.nc", provenance),
    Section("base-models", "eval/<model>__base.nc", base_models),
    Section("preregistered", "configs/preregistration/*.yaml + study/<name>.nc", preregistered),
    Section("headline", "compare/comparison.nc", headline),
    Section("learning-curves", "study/<name>.nc", learning_curves),
    Section("diagnosed-pairing", "analysis/<teacher>__base/diagnostics.nc", diagnosed_pairing),
    Section("per-size", "compare/comparison.nc", per_size),
    Section("other-comparisons", "compare/<name>.nc", other_comparisons),
    Section("figures", "<figures_dir>/*.png", figures),
    Section("stage-times", "timings.json", stage_times),
]


def add_section(section: Section, after: str | None = None) -> None:
    """Register a section, after the one named `after` (default: at the end); a name is used once."""
    names = [s.name for s in SECTIONS]
    if section.name in names:
        raise ValueError(f"results-page section {section.name!r} exists already")
    if after is not None and after not in names:
        raise ValueError(f"results-page section {after!r} not found; sections: {names}")
    SECTIONS.insert(names.index(after) + 1 if after else len(SECTIONS), section)


REPO = Path(__file__).resolve().parents[1]
TITLE = "# Results"


def preamble(ctx: PageContext) -> str:
    docs = REPO / "docs"
    return ("Written from the run folder's netCDF files by `laid main` at the end of the run, or by `laid results` "
            "(laid_workflows/results_page.py): every number below is the run's. Do not edit it by hand; `laid results` "
            "rewrites it (`--publish`: the repository's copy and its figures). What each quantity means and how it is measured: "
            f"[the method's choices]({ctx.link(docs / 'method.md')}), "
            f"[reading the figures]({ctx.link(docs / 'diagnose.md')}#reading-the-figures).")


def results_markdown(ctx: PageContext, sections: list[Section] | None = None) -> str:
    """The page: title, preamble, each section that has data, and one line naming the sources absent."""
    parts, absent = [TITLE, "", preamble(ctx)], []
    for section in SECTIONS if sections is None else sections:
        text = section.render(ctx)
        if text is None:
            absent.append(f"{section.name} (`{section.source}`)")
        else:
            parts += ["", text]
    if absent:
        parts += ["", f"Not in this run folder, so not shown: {', '.join(absent)}."]
    return "\n".join(parts) + "\n"


def write_results_page(run_dir: str | Path, page: str | Path | None = None, figures_dir: str | Path | None = None) -> Path:
    """Write the results page of `run_dir` to `page` (default `<run>/results.md`), atomically."""
    run = RunLayout(run_dir)
    if not run.root.is_dir():
        raise FileNotFoundError(f"run folder {run.root} not found; run `laid main` first or pass --run-dir")
    page = Path(page) if page is not None else run.results_page
    ctx = PageContext(run, page, Path(figures_dir) if figures_dir is not None else None)
    return write_text(results_markdown(ctx), page)


# The repository's own copies, which the README and docs link: refreshed only by `publish`.
PUBLISHED_PAGE = REPO / "docs" / "results.md"
PUBLISHED_FIGURES = REPO / "figures"
# What a figures folder holds for readers (`laid figures`): images, pages, plotly.js, tables, data/*.nc.
FIGURE_FILES = (".png", ".pdf", ".html", ".js", ".md", ".nc")


def publish(run_dir: str | Path, figures_dir: str | Path | None = None, page: str | Path = PUBLISHED_PAGE,
            to_figures: str | Path = PUBLISHED_FIGURES) -> tuple[Path, list[Path]]:
    """Refresh the repository's copies from a run folder: the run's figures (`figures_dir`, default
    <run>/figures; the executed notebooks are left behind) copied into `to_figures`, over files of
    the same name (others stay), then the results page written to `page` from the run's netCDF
    files, linking the copies. Returns (page, files copied). The one step that writes into the
    checkout: the main job, `laid study` and `laid figures` write into their run folders only."""
    from laid.io import write_bytes

    run = RunLayout(run_dir)
    source = Path(figures_dir) if figures_dir is not None else run.figures
    if not source.is_dir():
        raise FileNotFoundError(f"figures folder {source} not found; run `laid main` or `laid figures --run-dir {run.root}` first")
    files = [p for p in sorted(source.rglob("*")) if p.is_file() and p.suffix in FIGURE_FILES
             and "executed_notebooks" not in p.relative_to(source).parts]
    if not any(p.suffix == ".png" for p in files):
        raise FileNotFoundError(f"figures folder {source} holds no figure (.png); run `laid figures --run-dir {run.root}` first")
    copied = [write_bytes(p.read_bytes(), Path(to_figures) / p.relative_to(source)) for p in files]
    return write_results_page(run.root, page, to_figures), copied


def _results(args: argparse.Namespace) -> int:
    run = RunLayout(args.run_dir)
    if args.publish:
        if args.out:
            raise ValueError(f"--publish writes {PUBLISHED_PAGE}; leave out --out")
        page, copied = publish(run.root, args.figures_dir)
        print(f"published: {len(copied)} figure files -> {PUBLISHED_FIGURES}/, results page: {page}")
        return 0
    page = write_results_page(run.root, args.out, args.figures_dir if args.figures_dir is not None else run.figures)
    print(f"results page: {page}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("results", help="write the results page of a run folder from its netCDF files",
                              description="Write the run's results page (Markdown) from its netCDF files: base models, "
                              "the headline comparison with intervals, other comparisons, figure links, commit and "
                              "measured times. `laid main` does this at its end, into its run folder. --publish "
                              "refreshes the repository's copies (docs/results.md and figures/, which the README shows).")
    p.add_argument("--run-dir", default="runs/default", help="run folder written by `laid main` (default: runs/default)")
    p.add_argument("--out", help="the page (default: <run-dir>/results.md)")
    p.add_argument("--figures-dir", help="the run's figures, linked from the page (default: <run-dir>/figures)")
    p.add_argument("--publish", action="store_true",
                   help="copy the run's figures into the repository's figures/ and write docs/results.md linking them")
    p.set_defaults(func=_results)
