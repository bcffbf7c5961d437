"""Reading a results page back (laid_workflows.results_page): its tables as cells, and the check that
every number in them is the run's netCDF number at the page's precision."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import xarray as xr

from laid.layout import RunLayout
from laid.methods import LABELS

METHOD_OF_LABEL = {label: method for method, label in LABELS.items()}
# headline column -> (variable, percent?)
HEADLINE_CELLS = {3: ("acc_short", True), 4: ("acc_long", True), 5: ("diff_long_vs_base", True),
                  6: ("diff_long_vs_kd", True), 7: ("diff_short_vs_base", True), 10: ("window_ratio_paired", False)}


def parse_table(text: str, heading: str) -> list[list[str]]:
    """The body rows of the first Markdown table after `heading`, as lists of cell strings."""
    out: list[list[str]] = []
    for line in text.split(heading, 1)[1].splitlines():
        if not line.startswith("|"):
            if out:
                break
            continue
        if not set(line) <= set("|-"):
            out.append([c.strip() for c in line.strip("|").split("|")])
    return out[1:]  # without the header


def numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"[-+]?\d+\.\d+", cell)]


def check_page_numbers(text: str, run: RunLayout) -> int:
    """Every base-model and headline cell equals the netCDF's value, rounded as shown; returns the
    number of cells checked."""
    checked = 0
    for row in parse_table(text, "## Base models"):
        ds = xr.load_dataset(run.eval_result(row[0]))
        assert [float(c) for c in row[1:-1]] == pytest.approx(ds.accuracy.values.round(2).tolist()), row[0]
        w = ds.effective_window
        if not int(w.attrs.get("below_range", 0)):
            assert numbers(row[-1]) == pytest.approx([round(float(w), 1), round(w.attrs["ci_low"], 1), round(w.attrs["ci_high"], 1)])
        checked += len(row) - 1
    comp = xr.load_dataset(run.comparison)
    student = None
    for row in parse_table(text, "## Headline comparison"):
        student = row[0] or student
        labels = ({str(lab): str(m) for m, lab in zip(comp.method.values, comp["label"].sel(student=student).values)}
                  if "label" in comp.coords else METHOD_OF_LABEL)  # a row's label says what trained
        sel = {"student": student, "method": labels.get(row[1], row[1])}
        assert int(row[2]) == int(comp.n_seeds.sel(sel))
        for col, (var, pct) in HEADLINE_CELLS.items():
            want = [float(comp[var + s].sel(sel)) for s in ("", "_ci_low", "_ci_high")] if var in comp else [math.nan]
            if math.isnan(want[0]):
                assert row[col] == "-", (sel, var)
                continue
            k, digits = (100, 1) if pct else (1, 2)
            assert numbers(row[col]) == pytest.approx([round(k * v, digits) for v in want], abs=1e-9), (sel, var)
            checked += 1
    return checked


def check_links_resolve(text: str, page: Path) -> None:
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        assert (page.parent / target).exists(), target
