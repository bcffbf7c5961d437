"""The headline comparison: paired differences with intervals, what the results page (docs/results.md) may claim.

Primary statistic: mean accuracy over the *long* sizes (beyond the students' training length, up to
where the teacher still holds) and over the *short* sizes, per student and method, averaged over
training seeds. Every method is compared with the student's base model and with KD on the same
questions (laid.eval.paired): a difference is bold only when its 95% interval excludes 0. The
effective window is reported beside it with the paired interval of its ratio to base.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import xarray as xr

from laid.eval.metrics import DEFAULT_THRESHOLD
from laid.eval.paired import Interval, mean_accuracy, paired_difference, stack_seeds, window_ratio
from laid.methods import LABELS

# (variable, reference method) of the paired differences in long and short mean accuracy
COMPARISONS = (("vs_base", "base"), ("vs_kd", "kd"))


def _put(data: dict, name: str, i: int, j: int, iv: Interval, shape) -> None:
    for suffix, value in (("", iv.value), ("_ci_low", iv.ci_low), ("_ci_high", iv.ci_high)):
        data.setdefault(name + suffix, np.full(shape, np.nan))[i, j] = value


def add_paired_statistics(ds: xr.Dataset, evals: dict, short_sizes: Sequence[int], long_sizes: Sequence[int],
                          threshold: float = DEFAULT_THRESHOLD, n_boot: int = 2000) -> xr.Dataset:
    """Add mean short/long accuracy, paired differences vs base and KD, and the paired window ratio.

    `evals` is {(student, method): eval Dataset or list of them (one per training seed)}, the
    input of build_comparison. Variables (student, method), each with _ci_low / _ci_high:
    acc_short, acc_long, diff_long_vs_base, diff_short_vs_base, diff_long_vs_kd, diff_short_vs_kd,
    window_ratio_paired; plus n_seeds.
    """
    students, methods = [str(s) for s in ds["student"].values], [str(m) for m in ds["method"].values]
    shape = (len(students), len(methods))
    sizes = [int(s) for s in ds["haystack_size"].values]
    short = [s for s in short_sizes if s in sizes]
    long_ = [s for s in long_sizes if s in sizes]
    correct = {}
    for (student, method), runs in evals.items():
        runs = list(runs) if isinstance(runs, (list, tuple)) else [runs]
        correct[(student, method)] = stack_seeds(runs, sizes)
    data: dict[str, np.ndarray] = {"n_seeds": np.zeros(shape, dtype=np.int64)}
    for i, student in enumerate(students):
        for j, method in enumerate(methods):
            c = correct.get((student, method))
            if c is None:
                continue
            data["n_seeds"][i, j] = c.sizes["seed"]
            for group, group_sizes in (("short", short), ("long", long_)):
                if not group_sizes:  # none of the group's sizes was evaluated: NaN
                    continue
                _put(data, f"acc_{group}", i, j, mean_accuracy(c, group_sizes, n_boot), shape)
                for name, ref in COMPARISONS:
                    r = correct.get((student, ref))
                    if r is not None and ref != method:
                        _put(data, f"diff_{group}_{name}", i, j, paired_difference(c, r, group_sizes, n_boot), shape)
            base = correct.get((student, "base"))
            if base is not None and method != "base":
                _put(data, "window_ratio_paired", i, j, window_ratio(c, base, threshold, n_boot=min(n_boot, 500)), shape)
    dims = ("student", "method")
    units = {"acc": "1", "diff": "1", "window": "1"}
    out = ds.copy()
    for name, values in data.items():
        kind = name.split("_")[0]
        out[name] = (dims, values, {"units": units.get(kind, "1"),
                                    "long_name": _describe(name, short, long_), "interval": "95% paired percentile bootstrap "
                                    "over questions (shared between methods) and training seeds (per method)"})
    out.attrs.update(short_sizes=list(short), long_sizes=list(long_))
    return out


def _describe(name: str, short, long_) -> str:
    if name == "n_seeds":
        return "training seeds behind the row"
    which = "short" if "short" in name else "long"
    sizes = short if which == "short" else long_
    if name.startswith("acc"):
        return f"mean accuracy over sizes {sizes}"
    if name.startswith("diff"):
        ref = name.split("_vs_")[1].split("_ci")[0]
        return f"mean accuracy over sizes {sizes} minus that of {ref}, paired on questions"
    return "effective window / base effective window, paired on questions"


def _fmt(ds: xr.Dataset, name: str, sel: dict, bold_if_excludes_zero: bool = False, pct: bool = True, ratio: bool = False) -> str:
    if name not in ds:
        return "-"
    v, lo, hi = (float(ds[name + s].sel(sel)) for s in ("", "_ci_low", "_ci_high"))
    if math.isnan(v):
        return "-"
    if ratio:
        text = f"{v:.2f}x [{lo:.2f}, {hi:.2f}]"
        return f"**{text}**" if bold_if_excludes_zero and (lo > 1 or hi < 1) else text
    k = 100 if pct else 1
    sign = "+" if bold_if_excludes_zero else ""
    text = f"{k * v:{sign}.1f} [{k * lo:{sign}.1f}, {k * hi:{sign}.1f}]"
    return f"**{text}**" if bold_if_excludes_zero and (lo > 0 or hi < 0) else text


def sizes_attr(ds: xr.Dataset, name: str) -> list[int]:
    """attrs `short_sizes` / `long_sizes` as a list of ints (a netCDF round trip makes them an array)."""
    return [int(s) for s in np.atleast_1d(ds.attrs.get(name, []))]


def headline_markdown(ds: xr.Dataset, methods: Sequence[str] | None = None) -> list[str]:
    """The headline table: one row per student and method, intervals in brackets."""
    if "acc_long" not in ds:
        return []
    short, long_ = sizes_attr(ds, "short_sizes"), sizes_attr(ds, "long_sizes")
    methods = [m for m in (methods or ds["method"].values) if m in ds["method"].values]
    head = ["Student", "Method", "seeds", f"acc short {short}", f"acc long {long_}", "long - base", "long - KD",
            "short - base", "eff. window", "window / base"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for student in ds["student"].values:
        for k, method in enumerate(methods):
            sel = {"student": student, "method": method}
            n = int(ds["n_seeds"].sel(sel))
            if n == 0:
                continue
            w = ds.sel(sel)
            window = "below range" if bool(w["effective_window_below_range"]) else (
                f"{'>= ' if bool(w['effective_window_censored']) else ''}{float(w['effective_window']):.1f}")
            row = [str(student) if k == 0 else "", LABELS.get(str(method), str(method)), str(n),
                   _fmt(ds, "acc_short", sel), _fmt(ds, "acc_long", sel),
                   _fmt(ds, "diff_long_vs_base", sel, True), _fmt(ds, "diff_long_vs_kd", sel, True),
                   _fmt(ds, "diff_short_vs_base", sel, True), window,
                   _fmt(ds, "window_ratio_paired", sel, True, ratio=True)]
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Accuracies and differences in percentage points; [95% paired bootstrap interval over questions "
              "(shared between methods) and training seeds]. **Bold**: the interval excludes 0 (or 1 for the window "
              "ratio), the only differences the table claims."]
    return lines
