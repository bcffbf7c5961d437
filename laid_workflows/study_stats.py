"""The learning-curve study as data: accuracy against training budget, paired, with intervals.

Pure functions over evaluation results (laid.eval Datasets), no models. `build_study` gathers
{(student, arm, budget): [eval per training seed]} with the base student's and the teacher's evals
into one Dataset (docs/CONTRACTS.md "Study"):

    accuracy(student, arm, budget, haystack_size)      mean over training seeds
    acc(student, arm, budget, group) [+ _ci_low/_ci_high/_seeds_counted]   mean accuracy over the group's sizes
    diff(student, arm, budget, group, ref) [+ ci]      arm - ref at the same budget (ref: base, kd, sft),
                                                       paired on questions, each side's seeds counted
    label(student, arm) (coordinate)                   what the arm trained (laid.methods.label_for)
    n_seeds(student, arm, budget); haystacks(budget) = budget x global batch (haystacks seen)
    base_accuracy(student, haystack_size), base_acc(student, group) [+ ci]
    teacher_accuracy(haystack_size), teacher_acc(group) [+ ci],
    teacher_lead(student, group) [+ ci]                 teacher - base student, paired
    retrieval_mass(student, arm, budget)                the student's best head's needle mass from the
                                                       question rows at the study's diagnosis sizes (seed 0;
                                                       NaN if not diagnosed), base_retrieval_mass(student),
                                                       teacher_retrieval_mass; retrieval_layer(...) where

Groups (attrs `groups`): sizes inside the distillation data's 2-20 images vs beyond them, the
students' own short window, and the headline's long group. A difference is claimed (bold in the
markdown) only when its 95% interval (laid.eval.paired: questions and seeds counted) excludes 0 and
every trained side had >= 2 seeds; short range is read as non-inferiority at the margin in attrs
`non_inferiority_margin`. The base student and the teacher are deterministic (no seed term).
"""

from __future__ import annotations

import json
import math
from typing import Sequence

import numpy as np
import xarray as xr

from laid.eval.metrics import DEFAULT_THRESHOLD
from laid.eval.paired import (DEFAULT_MARGIN, Interval, interval_description, mean_accuracy, paired_difference, stack_seeds,
                              window_ratio, windows)
from laid_workflows.headline import add_labels, interval_cell, no_harm, row_label

REFERENCES = ("base", "kd", "sft")


def _put(data: dict, name: str, idx: tuple, iv: Interval, shape: tuple) -> None:
    for suffix, value in (("", iv.value), ("_ci_low", iv.ci_low), ("_ci_high", iv.ci_high)):
        data.setdefault(name + suffix, np.full(shape, np.nan))[idx] = value
    data.setdefault(name + "_seeds_counted", np.zeros(shape, dtype=np.int8))[idx] = int(iv.seed_variance_estimable)


def build_study(evals: dict[tuple[str, str, int], list[xr.Dataset]], base: dict[str, xr.Dataset], teacher: xr.Dataset,
                students: Sequence[str], arms: Sequence[str], budgets: Sequence[int], groups: dict[str, list[int]],
                global_batch: int, retrieval: dict | None = None, attrs: dict | None = None,
                n_boot: int = 2000, labels: dict | None = None, margin: float = DEFAULT_MARGIN) -> xr.Dataset:
    """The study Dataset (module doc). `retrieval`: {(student, arm, budget) | (student, "base") |
    "teacher": (mass, layer)} from the diagnoses; missing cells are NaN. `labels`: {(student, arm):
    label} (headline.run_label of the arm's distill config; default the registry's). `n_boot`: the
    bootstrap ablation's resamples only. `margin`: the non-inferiority margin (attrs)."""
    students, arms, budgets = list(students), list(arms), [int(b) for b in budgets]
    sizes = sorted({int(s) for s in teacher["haystack_size"].values})
    threshold = float(teacher.attrs.get("threshold", DEFAULT_THRESHOLD))
    gnames = list(groups)
    for g, gs in groups.items():
        missing = sorted(set(gs) - set(sizes))
        if missing:
            raise ValueError(f"study group {g!r} names sizes {missing} that were not evaluated (sizes {sizes})")
    s3 = (len(students), len(arms), len(budgets))
    acc_curve = np.full(s3 + (len(sizes),), np.nan)
    n_seeds = np.zeros(s3, dtype=np.int64)
    data: dict[str, np.ndarray] = {}
    correct = {k: stack_seeds(v, sizes) for k, v in evals.items() if v}
    base_c = {s: stack_seeds([base[s]], sizes, deterministic=True) for s in students}
    teacher_c = stack_seeds([teacher], sizes, deterministic=True)
    for i, student in enumerate(students):
        for j, arm in enumerate(arms):
            for k, budget in enumerate(budgets):
                c = correct.get((student, arm, budget))
                if c is None:
                    continue
                n_seeds[i, j, k] = c.sizes["seed"]
                acc_curve[i, j, k] = c.mean(("seed", "sample")).values
                for g, group in enumerate(gnames):
                    _put(data, "acc", (i, j, k, g), mean_accuracy(c, groups[group], n_boot), s3 + (len(gnames),))
                    for r, ref in enumerate(REFERENCES):
                        other = base_c[student] if ref == "base" else correct.get((student, ref, budget))
                        if other is None or ref == arm:
                            continue
                        _put(data, "diff", (i, j, k, g, r), paired_difference(c, other, groups[group], n_boot),
                             s3 + (len(gnames), len(REFERENCES)))
                iv = window_ratio(c, base_c[student], threshold)  # the paper's "window extended N x": over base
                _put(data, "window_ratio", (i, j, k), iv, s3)
                data.setdefault("window_ratio_mc_error", np.full(s3, np.nan))[i, j, k] = iv.mc_error
    shape_sg = (len(students), len(gnames))
    for i, student in enumerate(students):
        for g, group in enumerate(gnames):
            _put(data, "base_acc", (i, g), mean_accuracy(base_c[student], groups[group], n_boot), shape_sg)
            _put(data, "teacher_lead", (i, g), paired_difference(teacher_c, base_c[student], groups[group], n_boot), shape_sg)
    for g, group in enumerate(gnames):
        _put(data, "teacher_acc", (g,), mean_accuracy(teacher_c, groups[group], n_boot), (len(gnames),))
    dims = {"acc": ("student", "arm", "budget", "group"), "diff": ("student", "arm", "budget", "group", "ref"),
            "base_acc": ("student", "group"), "teacher_lead": ("student", "group"), "teacher_acc": ("group",),
            "window_ratio": ("student", "arm", "budget"), "window_ratio_mc_error": ("student", "arm", "budget")}
    interval = interval_description()
    out = xr.Dataset(coords={"student": students, "arm": arms, "budget": budgets, "group": gnames,
                             "ref": list(REFERENCES), "haystack_size": sizes})
    out["accuracy"] = (("student", "arm", "budget", "haystack_size"), acc_curve, {"long_name": "accuracy, mean over seeds", "units": "1"})
    out["n_seeds"] = (("student", "arm", "budget"), n_seeds, {"long_name": "training seeds behind the cell"})
    for name, values in data.items():
        stem = name.replace("_ci_low", "").replace("_ci_high", "").replace("_seeds_counted", "")
        stem = stem if stem in dims else name
        out[name] = (dims[stem], values, {"units": "1", "interval": interval} if not name.endswith("_seeds_counted") else
                     {"long_name": "1: the interval counts the seed variance of every trained side (>= 2 seeds each)"})
    out["haystacks"] = (("budget",), np.asarray(budgets) * global_batch, {"long_name": "training haystacks seen", "units": "haystacks"})
    out["base_accuracy"] = (("student", "haystack_size"), np.stack([base[s]["accuracy"].sel(haystack_size=sizes).values
                                                                     for s in students]), {"units": "1"})
    out["teacher_accuracy"] = (("haystack_size",), teacher["accuracy"].sel(haystack_size=sizes).values, {"units": "1"})
    _add_windows(out, sizes, threshold)
    _add_retrieval(out, retrieval or {}, students, arms, budgets)
    out = add_labels(out, labels or {}, dim="arm")
    out.attrs.update({"groups": json.dumps(groups), "global_batch": global_batch, "non_inferiority_margin": float(margin),
                      **(attrs or {})})
    return out


def _add_windows(out: xr.Dataset, sizes: list[int], threshold: float) -> None:
    """Effective windows (images) of the seed-mean curves, as laid.eval.paired.windows counts them for
    the ratios: below the smallest size = half of it, never below the threshold = the largest size."""
    attrs = {"units": "images", "threshold": threshold, "long_name": "effective window of the seed-mean accuracy curve "
             "(below the smallest size: half of it; censored at the largest size)"}
    for name, curve in (("effective_window", "accuracy"), ("base_effective_window", "base_accuracy"),
                        ("teacher_effective_window", "teacher_accuracy")):
        acc = out[curve]
        out[name] = (acc.dims[:-1], np.where(np.isnan(acc.values).all(-1), np.nan, windows(sizes, np.nan_to_num(acc.values, nan=0.0),
                                                                                               threshold)), attrs)
    if "window_ratio_mc_error" in out:
        out["window_ratio_mc_error"].attrs.update(long_name="Monte-Carlo standard error of the window ratio's bounds")


def _add_retrieval(out: xr.Dataset, retrieval: dict, students, arms, budgets) -> None:
    mass, layer = np.full((len(students), len(arms), len(budgets)), np.nan), np.full((len(students), len(arms), len(budgets)), np.nan)
    base_mass, base_layer = np.full(len(students), np.nan), np.full(len(students), np.nan)
    for i, s in enumerate(students):
        base_mass[i], base_layer[i] = retrieval.get((s, "base"), (np.nan, np.nan))
        for j, a in enumerate(arms):
            for k, b in enumerate(budgets):
                mass[i, j, k], layer[i, j, k] = retrieval.get((s, a, b), (np.nan, np.nan))
    t_mass, t_layer = retrieval.get("teacher", (np.nan, np.nan))
    long_name = "best head's attention mass on the needle from the question rows, mean over the diagnosis sizes (seed 0)"
    out["retrieval_mass"] = (("student", "arm", "budget"), mass, {"long_name": long_name, "units": "1"})
    out["retrieval_layer"] = (("student", "arm", "budget"), layer, {"long_name": "layer of that head"})
    out["base_retrieval_mass"] = (("student",), base_mass, {"long_name": long_name, "units": "1"})
    out["base_retrieval_layer"] = (("student",), base_layer)
    out["teacher_retrieval_mass"] = ((), t_mass, {"long_name": long_name, "units": "1"})
    out["teacher_retrieval_layer"] = ((), t_layer)


def best_retrieval(diagnostics: xr.Dataset, sizes: Sequence[int]) -> tuple[float, int]:
    """(mass, layer) of the head with the largest mean needle_mass_question over `sizes` (those of
    them the diagnosis has: every model of a study is read at the same sizes)."""
    sizes = [int(s) for s in diagnostics["haystack_size"].values if int(s) in set(sizes)]
    if not sizes:
        raise ValueError(f"diagnosis of {diagnostics.attrs.get('model_name', '?')} has none of the sizes {list(sizes)}")
    m = diagnostics["needle_mass_question_mean"].sel(haystack_size=sizes).mean("haystack_size")  # (layer, head)
    flat = m.stack(lh=("layer", "head"))
    best = int(np.argmax(flat.fillna(-1).values))
    return float(flat[best]), int(flat["layer"].values[best])


# --- Markdown ---------------------------------------------------------------------------------


def _cell(ds: xr.Dataset, name: str, sel: dict, signed: bool = True) -> str:
    """Points [interval] of a study variable; '-' for a cell the study has no coordinate for."""
    if any(k in ds.coords and v not in ds[k].values for k, v in sel.items()):
        return "-"
    return interval_cell(ds, name, sel, bold_if_excludes_zero=signed)


def _no_harm(ds: xr.Dataset, sel: dict) -> str:
    """Short range non-inferior to base / to KD: 'yes / no', '-' where there is no verdict."""
    cells = []
    for ref in ("base", "kd"):
        s = {**sel, "group": "short", "ref": ref}
        cells.append("-" if "short" not in ds["group"].values else no_harm(ds, "diff", s))
    return " / ".join(cells)


def _mass(mass: xr.DataArray, layer: xr.DataArray) -> str:
    """'0.74 (layer 0)', or '-' where that model was not diagnosed (NaN)."""
    m = float(mass)
    return "-" if math.isnan(m) else f"{m:.2f} (layer {int(layer)})"


def _window(w: xr.DataArray, sizes) -> str:
    """An effective window as read: below the smallest size, censored at the largest, or its value."""
    v, lo, hi = float(w), min(int(s) for s in sizes), max(int(s) for s in sizes)
    if math.isnan(v):
        return "-"
    return f"below {lo}" if v < lo else f">= {hi}" if v >= hi else f"{v:.1f}"


def _ratio(ds: xr.Dataset, sel: dict) -> str:
    """'2.10x [1.40, 3.20]', bold when the interval excludes 1 and counts every trained side's seeds."""
    return interval_cell(ds, "window_ratio", sel, bold_if_excludes_zero=True, ratio=True)


def study_markdown(ds: xr.Dataset) -> str:
    """Per student: the teacher's lead, then per arm and budget the paired differences."""
    groups = json.loads(ds.attrs["groups"])
    lines = []
    for student in ds["student"].values:
        st = {"student": student}
        lines += [f"### {student}", "",
                  "Base student and teacher, mean accuracy % per group [95% interval]; teacher - base paired:", "",
                  "| group | sizes | base | teacher | teacher - base |", "|---|---|---|---|---|"]
        for g, sizes in groups.items():
            lines.append(f"| {g} | {sizes} | {_cell(ds, 'base_acc', {**st, 'group': g}, False)} | "
                         f"{_cell(ds, 'teacher_acc', {'group': g}, False)} | {_cell(ds, 'teacher_lead', {**st, 'group': g})} |")
        if "base_effective_window" in ds:
            lines += ["", f"Effective window (images): base {_window(ds['base_effective_window'].sel(st), ds['haystack_size'].values)}, teacher "
                      f"{_window(ds['teacher_effective_window'], ds['haystack_size'].values)}."]
        margin = 100 * float(ds.attrs.get("non_inferiority_margin", DEFAULT_MARGIN))
        others = [g for g in groups if g not in ("long", "short")]
        head = ["arm", "budget (steps)", "haystacks", "seeds"] + [f"{g} - {r}" for g in ("long", "short") for r in ("base", "KD", "SFT")] + \
               [f"short no harm vs base / KD (margin {margin:g})"] + [f"{g} - base" for g in others] + \
               ["eff. window", "window / base", "retrieval mass"]
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        labels = {str(arm): row_label(ds, student, arm, dim="arm") for arm in ds["arm"].values}
        shared = {lab for lab in labels.values() if list(labels.values()).count(lab) > 1}
        for arm in ds["arm"].values:
            # arms that trained the same terms (other layers, rows, rates) are told apart by their name
            name = labels[str(arm)] + (f" (`{arm}`)" if labels[str(arm)] in shared else "")
            for budget in ds["budget"].values:
                sel = {**st, "arm": arm, "budget": budget}
                n = int(ds["n_seeds"].sel(sel))
                if n == 0:
                    continue
                cells = [name, str(int(budget)), str(int(ds["haystacks"].sel(budget=budget))), str(n)]
                cells += [_cell(ds, "diff", {**sel, "group": g, "ref": r}) for g in ("long", "short") for r in ("base", "kd", "sft")]
                cells.append(_no_harm(ds, sel))
                cells += [_cell(ds, "diff", {**sel, "group": g, "ref": "base"}) for g in others]
                cells += [_window(ds["effective_window"].sel(sel), ds["haystack_size"].values) if "effective_window" in ds else "-",
                          _ratio(ds, sel)]
                cells.append(_mass(ds["retrieval_mass"].sel(sel), ds["retrieval_layer"].sel(sel)))
                lines.append("| " + " | ".join(cells) + " |")
        base = _mass(ds["base_retrieval_mass"].sel(st), ds["base_retrieval_layer"].sel(st))
        teacher = _mass(ds["teacher_retrieval_mass"], ds["teacher_retrieval_layer"])
        if (base, teacher) != ("-", "-"):
            lines += ["", f"Retrieval mass (best head, needle mass from the question rows at {ds.attrs.get('diagnose_sizes', '?')} images): "
                      f"base {base}, teacher {teacher}."]
        lines.append("")
    lines += [f"Groups: {groups}. Differences in percentage points, arm - reference at the same budget, paired on the same "
              "questions; [95% interval counting questions and each side's training seeds (laid.eval.paired)]. **Bold**: "
              "the interval excludes 0 and every trained side had >= 2 seeds, the only differences claimed. Short no harm: "
              "yes when the lower bound of short - reference is above minus the margin (set before the run), harm when the "
              "upper bound is below it, unclear when it straddles it; - : no verdict. Arms are "
              "labelled by the terms that trained (laid.methods.label_for). Budgets of one run per seed are exports of "
              "that run along a constant learning-rate schedule (docs: zoo-and-testbeds). Window / base: effective window "
              "of the arm over the base student's, paired on questions, the same seed-counting interval on the log ratio; "
              "bold when it excludes 1."]
    return "\n".join(lines) + "\n"


def learning_curve(ds: xr.Dataset, student: str, group: str = "long") -> dict:
    """What the learning-curve figure draws for one student: per arm x = haystacks seen, y = mean
    accuracy over the group's sizes with its interval; base and teacher as bands (value, lo, hi)."""
    st = {"student": student, "group": group}
    arms = {}
    for arm in ds["arm"].values:
        a = ds.sel({**st, "arm": arm})
        keep = a["n_seeds"].values > 0
        if keep.any():
            arms[str(arm)] = {"x": ds["haystacks"].values[keep], "y": a["acc"].values[keep],
                              "lo": a["acc_ci_low"].values[keep], "hi": a["acc_ci_high"].values[keep]}
    band = lambda name, sel: tuple(float(ds[name + s].sel(sel)) for s in ("", "_ci_low", "_ci_high"))  # noqa: E731
    return {"arms": arms, "base": band("base_acc", st), "teacher": band("teacher_acc", {"group": group})}
