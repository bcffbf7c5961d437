"""The comparison as data and as the paper's tables: pure functions, no models.

`build_comparison` gathers evaluation results (laid.eval Datasets) into one Dataset with the
schema of docs/CONTRACTS.md "Comparison"; `comparison_markdown` renders it like the paper's
Table 1 (methods per student: accuracy per haystack size, average short/long gain over base,
effective window) and Table 3 (loss ablations), plus the effective-window ratio LAid / base.
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from laid.eval.metrics import DEFAULT_THRESHOLD, LONG_WINDOW, SHORT_WINDOW, average_gains, effective_window
from laid.methods import TABLE1_METHODS, TABLE3_METHODS
from laid_workflows.headline import headline_markdown, row_label



def _window(ds: xr.Dataset) -> tuple[float, bool, bool]:
    ew = ds["effective_window"]
    return float(ew), bool(int(ew.attrs.get("censored", 0))), bool(int(ew.attrs.get("below_range", 0)))


def _seeds(v) -> list[xr.Dataset]:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def build_comparison(
    evals: dict[tuple[str, str], xr.Dataset | list[xr.Dataset]], teacher: xr.Dataset | None, students, methods,
    attrs: dict | None = None,
) -> xr.Dataset:
    """One Dataset from {(student, method): eval Dataset, or one per training seed} and the teacher's eval.

    Missing (student, method) cells are NaN. With several seeds, accuracy is their mean and the
    effective window is that of the mean curve. Gains are relative to the student's "base" row (%,
    the paper's Table 1 average over sizes 1-20 and 50-150); window_ratio = effective window / base.
    Paired statistics with intervals are added by laid_workflows.headline.add_paired_statistics.
    """
    students, methods = list(students), list(methods)
    sizes = sorted({int(s) for v in evals.values() for ds in _seeds(v) for s in ds["haystack_size"].values}
                   | (set(int(s) for s in teacher["haystack_size"].values) if teacher is not None else set()))
    shape = (len(students), len(methods))
    acc = np.full(shape + (len(sizes),), np.nan)
    std = np.full_like(acc, np.nan)
    ew, censored, below = np.full(shape, np.nan), np.zeros(shape, dtype=np.int8), np.zeros(shape, dtype=np.int8)
    threshold = float((attrs or {}).get("threshold", DEFAULT_THRESHOLD))
    for (student, method), runs in evals.items():
        if student not in students or method not in methods:
            continue
        i, j = students.index(student), methods.index(method)
        runs = _seeds(runs)
        acc[i, j] = np.mean([ds["accuracy"].reindex(haystack_size=sizes).values for ds in runs], axis=0)
        std[i, j] = np.mean([ds["accuracy_std"].reindex(haystack_size=sizes).values for ds in runs], axis=0)
        if len(runs) == 1:
            ew[i, j], c, b = _window(runs[0])
        else:
            w = effective_window(sizes, acc[i, j], threshold)
            ew[i, j], c, b = w.value, w.censored, w.below_range
        censored[i, j], below[i, j] = int(c), int(b)
    gain_short, gain_long, ratio = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    if "base" in methods:
        jb = methods.index("base")
        for i in range(len(students)):
            for j in range(len(methods)):
                gain_short[i, j], gain_long[i, j] = average_gains(sizes, acc[i, j], sizes, acc[i, jb])
                if ew[i, jb] > 0 and not math.isnan(ew[i, j]):
                    ratio[i, j] = ew[i, j] / ew[i, jb]
    dims, dims3 = ("student", "method"), ("student", "method", "haystack_size")
    data = {
        "accuracy": (dims3, acc, {"long_name": "fraction answered correctly", "units": "1"}),
        "accuracy_std": (dims3, std, {"long_name": "bootstrap std of accuracy", "units": "1"}),
        "effective_window": (dims, ew, {"long_name": "largest haystack size with accuracy >= threshold", "units": "images"}),
        "effective_window_censored": (dims, censored, {"long_name": "1: accuracy never fell below the threshold (lower bound)"}),
        "effective_window_below_range": (dims, below, {"long_name": "1: below the threshold at the smallest size"}),
        "gain_short": (dims, gain_short, {"long_name": f"mean relative gain over base, sizes {SHORT_WINDOW}", "units": "%"}),
        "gain_long": (dims, gain_long, {"long_name": f"mean relative gain over base, sizes {LONG_WINDOW}", "units": "%"}),
        "window_ratio": (dims, ratio, {"long_name": "effective window / base effective window", "units": "1"}),
    }
    t_acc = np.full(len(sizes), np.nan)
    t_ew, t_c = np.nan, 0
    if teacher is not None:
        t_acc = teacher["accuracy"].reindex(haystack_size=sizes).values
        t_ew, t_c, _ = _window(teacher)
    data["teacher_accuracy"] = (("haystack_size",), t_acc, {"long_name": "teacher accuracy", "units": "1"})
    data["teacher_effective_window"] = ((), t_ew, {"units": "images", "censored": int(t_c)})
    coords = {"student": students, "method": methods, "haystack_size": np.asarray(sizes, dtype=np.int64)}
    return xr.Dataset(data, coords=coords, attrs=dict(attrs or {}))


# --- Markdown ----------------------------------------------------------------------------------


def _fmt_window(value: float, censored: bool, below: bool) -> str:
    if below or math.isnan(value):
        return "below range"
    return f">= {value:.0f}" if censored else f"{value:.1f}"


def _fmt_gain(g: float) -> str:
    return "-" if math.isnan(g) else f"{g:+.1f}%"


def _cell(text: str) -> str:
    """Per-size tables mark nothing: a best-of-column marker on unpaired point estimates would claim
    differences no interval supports (the headline table bolds what its paired intervals do)."""
    return text


def _table(ds: xr.Dataset, methods: tuple[str, ...], teacher_row: bool) -> list[str]:
    sizes = [int(s) for s in ds["haystack_size"].values]
    methods = [m for m in methods if m in ds["method"].values]
    head = ["Model", "Method"] + [f"{s}" for s in sizes] + ["Gain short", "Gain long", "Eff. window", "Window / base"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if teacher_row and "teacher_accuracy" in ds and not np.all(np.isnan(ds["teacher_accuracy"].values)):
        t = ds["teacher_accuracy"].values
        tw = ds["teacher_effective_window"]
        row = [ds.attrs.get("teacher", "teacher"), "/"] + ["-" if math.isnan(v) else f"{100 * v:.2f}" for v in t]
        row += ["-", "-", _fmt_window(float(tw), bool(tw.attrs.get("censored", 0)), False), "-"]
        lines.append("| " + " | ".join(row) + " |")
    for student in ds["student"].values:
        sub = ds.sel({"student": student, "method": methods})
        acc = sub["accuracy"].values  # (M, N)
        g_s, g_l = sub["gain_short"].values, sub["gain_long"].values
        for k, method in enumerate(methods):
            cells = [_cell("-" if math.isnan(acc[k, n]) else f"{100 * acc[k, n]:.2f}") for n in range(len(sizes))]
            base = method == "base"
            w = sub.sel({"method": method})
            window = _fmt_window(float(w["effective_window"]), bool(w["effective_window_censored"]), bool(w["effective_window_below_range"]))
            ratio = float(w["window_ratio"])
            row = [str(student) if k == 0 else "", row_label(ds, student, method)] + cells + [
                "-" if base else _cell(_fmt_gain(g_s[k])),
                "-" if base else _cell(_fmt_gain(g_l[k])),
                window,
                "-" if base or math.isnan(ratio) else f"{ratio:.2f}x",
            ]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def window_ratio_lines(ds: xr.Dataset) -> list[str]:
    """One line per student: effective window of the `laid` entry (by its label) and of base, and their ratio."""
    out = []
    if "laid" not in ds["method"].values or "base" not in ds["method"].values:
        return out
    for student in ds["student"].values:
        w = ds.sel(student=student)
        lw, bw = w.sel({"method": "laid"}), w.sel({"method": "base"})
        fl = _fmt_window(float(lw["effective_window"]), bool(lw["effective_window_censored"]), bool(lw["effective_window_below_range"]))
        fb = _fmt_window(float(bw["effective_window"]), bool(bw["effective_window_censored"]), bool(bw["effective_window_below_range"]))
        r = float(lw["window_ratio"])
        note = ""
        if bool(lw["effective_window_censored"]) or bool(bw["effective_window_censored"]):
            note = " (a window that never fell below the threshold is a lower bound, so the ratio is not exact)"
        ratio = "undefined" if math.isnan(r) else f"{r:.2f}x"
        out.append(f"- {student}: effective window {row_label(ds, student, 'laid')} {fl} vs base {fb} images -> ratio {ratio}{note}")
    return out


def per_size_markdown(ds: xr.Dataset) -> list[str]:
    """Table 1 (methods), Table 3 (ablations), the effective-window ratios and their legend, as lines
    (point estimates per size; used by comparison.md and the results page)."""
    thr = ds.attrs.get("threshold", "")
    return [
        "### Table 1: context-window extension methods (accuracy %, per haystack size in images)",
        "",
        *_table(ds, TABLE1_METHODS, teacher_row=True),
        "",
        "### Table 3: loss ablations",
        "",
        *_table(ds, TABLE3_METHODS, teacher_row=False),
        "",
        "### Effective-window ratio of the `laid` entry / base (the paper reports up to 3.2x on real Qwen2.5-VL)",
        "",
        *window_ratio_lines(ds),
        "",
        f"Sizes {SHORT_WINDOW[0]}-{SHORT_WINDOW[1]} are the short window and {LONG_WINDOW[0]}-{LONG_WINDOW[1]} the long "
        f"window of the gains (mean relative change over base, %). Effective window: largest size with accuracy >= "
        f"{thr} (log-size interpolation). Point estimates without intervals: no cell is marked better than another; "
        f"which differences hold is in the headline table's paired intervals.",
    ]


def comparison_markdown(ds: xr.Dataset) -> str:
    """Markdown: the headline (paired intervals), Table 1 (methods), Table 3 (ablations), window ratios, legend."""
    headline = headline_markdown(ds)
    parts = [
        *(["### Headline: paired differences (what the intervals support)", "", *headline, ""] if headline else []),
        *per_size_markdown(ds),
    ]
    return "\n".join(parts) + "\n"
