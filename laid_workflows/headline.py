"""The headline comparison: paired differences with intervals, what the results page (docs/results.md) may claim.

Primary statistic: mean accuracy over the *long* sizes (beyond the students' training length, up to
where the teacher still holds) and over the *short* sizes, per student and method, averaged over
training seeds. Every method is compared with the student's base model and with KD on the same
questions (laid.eval.paired, intervals that count questions and training seeds): a difference is
bold only when its 95% interval excludes 0 and counts the seed variance of every trained side (a
trained row with one seed claims nothing). Short range is read as "no harm": non-inferior to base
at a margin stated before the run (`non_inferiority_margin`, default 3 points). The effective
window is reported beside it with the paired interval of its ratio to base. Rows are labelled by
what trained (`run_label`, laid.methods.label_for), not by the entry's name.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import xarray as xr

from laid.eval.metrics import DEFAULT_THRESHOLD
from laid.eval.paired import (DEFAULT_MARGIN, Interval, interval_description, mean_accuracy, non_inferior,
                              paired_difference, stack_seeds, window_ratio)
from laid.methods import INFERENCE_VARIANTS, LABELS, label_for

# (variable, reference method) of the paired differences in long and short mean accuracy
COMPARISONS = (("vs_base", "base"), ("vs_kd", "kd"))


def _put(data: dict, name: str, i: int, j: int, iv: Interval, shape) -> None:
    for suffix, value in (("", iv.value), ("_ci_low", iv.ci_low), ("_ci_high", iv.ci_high)):
        data.setdefault(name + suffix, np.full(shape, np.nan))[i, j] = value
    data.setdefault(name + "_seeds_counted", np.zeros(shape, dtype=np.int8))[i, j] = int(iv.seed_variance_estimable)
    if iv.mc_error:
        data.setdefault(name + "_mc_error", np.full(shape, np.nan))[i, j] = iv.mc_error


def run_label(dcfg) -> str:
    """The row label of a trained comparison entry or study arm from its distill config (trainers.config):
    what trained (its loss weights as the method uses them, the RoPE gain), and the alignment form and
    an all-layer pairing where they apply."""
    from dataclasses import asdict

    from trainers.config import Lambdas

    w = dcfg.weights()
    qualifiers = []
    if w["laid"] > 0 and dcfg.alignment == "paper":
        qualifiers.append("literal Eq. 7 alignment")
    if dcfg.uses_mixers and dcfg.layer_map == "proportional" and not dcfg.layer_pairs:
        qualifiers.append("all layers")
    return label_for(dcfg.method, w, dcfg.uses_gain, asdict(Lambdas()), qualifiers)


def add_labels(ds: xr.Dataset, labels: dict[tuple[str, str], str], dim: str = "method") -> xr.Dataset:
    """Give `ds` the coordinate label(student, dim): `labels[(student, entry)]`, else the registry's label."""
    values = [[labels.get((str(s), str(m)), LABELS.get(str(m), str(m))) for m in ds[dim].values] for s in ds["student"].values]
    return ds.assign_coords(label=(("student", dim), np.array(values, dtype=object)))


def row_label(ds: xr.Dataset, student, entry, dim: str = "method") -> str:
    """A row's label: the `label` coordinate when the Dataset has one, else the registry's."""
    if "label" in ds.coords:
        return str(ds["label"].sel({"student": student, dim: entry}).values)
    return LABELS.get(str(entry), str(entry))


def claimed(ds: xr.Dataset, name: str, sel: dict, null: float = 0.0) -> bool:
    """Whether a stored interval may be claimed: it excludes `null` and counted every side's seeds."""
    lo, hi = float(ds[name + "_ci_low"].sel(sel)), float(ds[name + "_ci_high"].sel(sel))
    counted = name + "_seeds_counted" not in ds or bool(int(ds[name + "_seeds_counted"].sel(sel)))
    return counted and (lo > null or hi < null)


def no_harm(ds: xr.Dataset, name: str, sel: dict) -> str:
    """'yes' / 'harm' / 'unclear' / '-': the stored difference non-inferior at the Dataset's margin
    (laid.eval.paired.non_inferior: lower bound above -margin), harmful (upper bound below -margin), or
    neither (the interval straddles -margin); '-' when it does not count seeds. A verdict in three
    states, as a preregistered non-inferiority hypothesis is read (laid_workflows/prereg.py)."""
    if name not in ds or np.isnan(float(ds[name].sel(sel))):
        return "-"
    counted = name + "_seeds_counted" not in ds or bool(int(ds[name + "_seeds_counted"].sel(sel)))
    iv = Interval(float(ds[name].sel(sel)), float(ds[name + "_ci_low"].sel(sel)), float(ds[name + "_ci_high"].sel(sel)),
                  seed_variance_estimable=counted)
    margin = float(ds.attrs.get("non_inferiority_margin", DEFAULT_MARGIN))
    verdict = non_inferior(iv, margin)
    return "-" if verdict is None else "yes" if verdict else "harm" if iv.ci_high < -margin else "unclear"


def add_paired_statistics(ds: xr.Dataset, evals: dict, short_sizes: Sequence[int], long_sizes: Sequence[int],
                          threshold: float = DEFAULT_THRESHOLD, n_boot: int = 2000,
                          margin: float = DEFAULT_MARGIN) -> xr.Dataset:
    """Add mean short/long accuracy, paired differences vs base and KD, and the paired window ratio.

    `evals` is {(student, method): eval Dataset or list of them (one per training seed)}, the
    input of build_comparison; inference-time variants (base, YaRN, SelfExtend) are deterministic.
    Variables (student, method), each with _ci_low / _ci_high / _seeds_counted: acc_short,
    acc_long, diff_long_vs_base, diff_short_vs_base, diff_long_vs_kd, diff_short_vs_kd,
    window_ratio_paired (+ _mc_error); plus n_seeds. `n_boot`: resamples of the bootstrap ablation
    only (the default interval needs none). `margin`: the non-inferiority margin (attrs).
    """
    students, methods = [str(s) for s in ds["student"].values], [str(m) for m in ds["method"].values]
    shape = (len(students), len(methods))
    sizes = [int(s) for s in ds["haystack_size"].values]
    short = [s for s in short_sizes if s in sizes]
    long_ = [s for s in long_sizes if s in sizes]
    correct = {}
    for (student, method), runs in evals.items():
        runs = list(runs) if isinstance(runs, (list, tuple)) else [runs]
        correct[(student, method)] = stack_seeds(runs, sizes, deterministic=method in INFERENCE_VARIANTS)
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
                _put(data, "window_ratio_paired", i, j, window_ratio(c, base, threshold), shape)
    dims = ("student", "method")
    out = ds.copy()
    for name, values in data.items():
        out[name] = (dims, values, {"units": "1", "long_name": _describe(name, short, long_),
                                    "interval": interval_description()})
    out.attrs.update(short_sizes=list(short), long_sizes=list(long_), non_inferiority_margin=float(margin))
    return out


def _describe(name: str, short, long_) -> str:
    if name == "n_seeds":
        return "training seeds behind the row"
    if name.endswith("_seeds_counted"):
        return "1: the interval counts the seed variance of every trained side (>= 2 seeds each); 0: questions only, never claimed"
    if name.endswith("_mc_error"):
        return "Monte-Carlo standard error of the interval's bounds (question resamples)"
    which = "short" if "short" in name else "long"
    sizes = short if which == "short" else long_
    if name.startswith("acc"):
        return f"mean accuracy over sizes {sizes}"
    if name.startswith("diff"):
        ref = name.split("_vs_")[1].split("_ci")[0]
        return f"mean accuracy over sizes {sizes} minus that of {ref}, paired on questions"
    return "effective window / base effective window, paired on questions"


def interval_cell(ds: xr.Dataset, name: str, sel: dict, bold_if_excludes_zero: bool = False, pct: bool = True, ratio: bool = False) -> str:
    """A table cell '+1.2 [-0.5, +2.9]' (points) or '2.10x [1.40, 3.20]' (ratio) from `name` and its _ci_low /
    _ci_high; bold when asked and the interval is claimed (excludes 0, or 1 for a ratio, counting seeds)."""
    if name not in ds:
        return "-"
    v, lo, hi = (float(ds[name + s].sel(sel)) for s in ("", "_ci_low", "_ci_high"))
    if math.isnan(v):
        return "-"
    if ratio:
        text = f"{v:.2f}x [{lo:.2f}, {hi:.2f}]"
        return f"**{text}**" if bold_if_excludes_zero and claimed(ds, name, sel, 1.0) else text
    k = 100 if pct else 1
    sign = "+" if bold_if_excludes_zero else ""
    text = f"{k * v:{sign}.1f} [{k * lo:{sign}.1f}, {k * hi:{sign}.1f}]"
    return f"**{text}**" if bold_if_excludes_zero and claimed(ds, name, sel) else text


def sizes_attr(ds: xr.Dataset, name: str) -> list[int]:
    """attrs `short_sizes` / `long_sizes` as a list of ints (a netCDF round trip makes them an array)."""
    return [int(s) for s in np.atleast_1d(ds.attrs.get(name, []))]


def headline_markdown(ds: xr.Dataset, methods: Sequence[str] | None = None) -> list[str]:
    """The headline table: one row per student and method, intervals in brackets."""
    if "acc_long" not in ds:
        return []
    short, long_ = sizes_attr(ds, "short_sizes"), sizes_attr(ds, "long_sizes")
    methods = [m for m in (methods or ds["method"].values) if m in ds["method"].values]
    margin = 100 * float(ds.attrs.get("non_inferiority_margin", DEFAULT_MARGIN))
    head = ["Student", "Method", "seeds", f"acc short {short}", f"acc long {long_}", "long - base", "long - KD",
            "short - base", f"short no harm (margin {margin:g})", "eff. window", "window / base"]
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
            row = [str(student) if k == 0 else "", row_label(ds, student, method), str(n),
                   interval_cell(ds, "acc_short", sel), interval_cell(ds, "acc_long", sel),
                   interval_cell(ds, "diff_long_vs_base", sel, True), interval_cell(ds, "diff_long_vs_kd", sel, True),
                   interval_cell(ds, "diff_short_vs_base", sel, True), no_harm(ds, "diff_short_vs_base", sel), window,
                   interval_cell(ds, "window_ratio_paired", sel, True, ratio=True)]
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Accuracies and differences in percentage points; [95% interval counting questions (paired between "
              "methods) and training seeds (laid.eval.paired)]. **Bold**: the interval excludes 0 (or 1 for the window "
              "ratio) and counts the seed variance of every trained row (>= 2 seeds), the only differences the table "
              f"claims. Short no harm: yes when the lower bound of short - base is above -{margin:g} points (the margin "
              "set before the run), harm when the upper bound is below it, unclear when the interval straddles it; - : no "
              "verdict (one training seed). Labels say which terms trained (laid.methods.label_for)."]
    return lines
