"""The result of one evaluation as an xarray Dataset / netCDF file (schema: docs/CONTRACTS.md).

Contract variables (dims `haystack_size`, `sample`, `bootstrap`): accuracy, accuracy_std,
accuracy_ci_low, accuracy_ci_high, compliance, n_samples, avg_input_tokens (per size); correct,
margin (per sample); effective_window (scalar, with `censored` / `below_range` attrs and the
bootstrap interval `ci_low` / `ci_high` of effective_window_bootstrap(bootstrap)).
Extra variables, for analysis and figures: accuracy_bootstrap(haystack_size, bootstrap) (the
resampled accuracies), input_tokens, needle_index (position of the first needle in the prompt),
answer_yes (ground truth is yes) per sample, and reply (text) per sample under generation scoring.
"""

from __future__ import annotations

import datetime as _dt
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import xarray as xr

from laid.eval.metrics import N_BOOTSTRAP, bootstrap_accuracy, effective_window
from laid.io import write_netcdf as write_result  # noqa: F401 (the result writer is the one atomic netCDF writer)

REQUIRED_VARIABLES = (
    "accuracy", "accuracy_std", "accuracy_ci_low", "accuracy_ci_high", "compliance",
    "n_samples", "avg_input_tokens", "correct", "margin", "effective_window",
)  # fmt: skip
REQUIRED_ATTRS = (
    "model_name", "model_dir", "variant", "variant_options", "scoring", "threshold",
    "data_path", "needle_setting", "seed", "git_commit", "config", "created",
)  # fmt: skip


@dataclass
class SampleResult:
    """One scored haystack. `reply` is None under logit scoring."""

    correct: bool
    margin: float
    compliant: bool
    input_tokens: int
    needle_index: int
    answer_yes: bool
    reply: str | None = None


def git_commit(path: str | Path | None = None) -> str:
    """HEAD commit of the repository holding this code (or `path`); "unknown" outside a repo."""
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def _netcdf_attr(value):
    """netCDF attributes hold strings and numbers only: bools -> int, None -> "", others -> JSON."""
    if isinstance(value, bool):
        return int(value)
    if value is None:
        return ""
    if isinstance(value, (str, int, float, np.integer, np.floating)):
        return value
    return json.dumps(value, default=str)


def build_result(
    samples: Mapping[int, Sequence[SampleResult]],
    *,
    threshold: float,
    seed: int,
    n_bootstrap: int = N_BOOTSTRAP,
    attrs: Mapping | None = None,
) -> xr.Dataset:
    """Dataset of one evaluation from the scored samples of each haystack size.

    `attrs` should carry the contract's attributes (model_name, model_dir, variant, ...); dict or
    list values are stored as JSON. `git_commit` and `created` are filled in when absent. The
    bootstrap of size N uses the generator seeded by (seed, N): reproducible per size.
    """
    sizes = sorted(int(s) for s in samples)
    n_max = max((len(samples[s]) for s in sizes), default=0)
    sample_vars = ("correct", "margin", "input_tokens", "needle_index", "answer_yes")
    size_vars = ("accuracy", "accuracy_std", "accuracy_ci_low", "accuracy_ci_high", "compliance", "avg_input_tokens")
    per_sample = {k: np.full((len(sizes), n_max), np.nan) for k in sample_vars}  # (N_sizes, n_max), NaN = no sample
    has_replies = any(r.reply is not None for s in sizes for r in samples[s])
    replies = np.full((len(sizes), n_max), "", dtype=object)
    per_size = {k: np.full(len(sizes), np.nan) for k in size_vars}  # (N_sizes,)
    boot = np.full((len(sizes), n_bootstrap), np.nan)
    n_samples = np.zeros(len(sizes), dtype=np.int64)
    for i, size in enumerate(sizes):
        rows = samples[size]
        n_samples[i] = len(rows)
        for j, r in enumerate(rows):
            per_sample["correct"][i, j] = float(r.correct)
            per_sample["margin"][i, j] = r.margin
            per_sample["input_tokens"][i, j] = r.input_tokens
            per_sample["needle_index"][i, j] = r.needle_index
            per_sample["answer_yes"][i, j] = float(r.answer_yes)
            replies[i, j] = r.reply or ""
        b = bootstrap_accuracy([r.correct for r in rows], n_resamples=n_bootstrap, seed=[seed, size])
        per_size["accuracy"][i], per_size["accuracy_std"][i] = b.mean, b.std
        per_size["accuracy_ci_low"][i], per_size["accuracy_ci_high"][i] = b.ci_low, b.ci_high
        boot[i] = b.resamples
        if rows:
            per_size["compliance"][i] = np.mean([r.compliant for r in rows])
            per_size["avg_input_tokens"][i] = np.mean([r.input_tokens for r in rows])

    window = effective_window(sizes, per_size["accuracy"], threshold) if sizes else None
    window_boot = bootstrap_windows(sizes, boot, threshold)  # (n_bootstrap,)
    window_ci = np.percentile(window_boot, [2.5, 97.5]) if sizes else (np.nan, np.nan)
    S, SN, SB = ("haystack_size",), ("haystack_size", "sample"), ("haystack_size", "bootstrap")

    def var(dims, data, long_name, units):
        return xr.Variable(dims, data, attrs={"long_name": long_name, "units": units})

    data_vars = {
        "accuracy": var(S, per_size["accuracy"], "fraction of samples answered correctly", "1"),
        "accuracy_std": var(S, per_size["accuracy_std"], f"std of accuracy over {n_bootstrap} bootstrap resamples", "1"),
        "accuracy_ci_low": var(S, per_size["accuracy_ci_low"], "2.5th percentile of bootstrap accuracy", "1"),
        "accuracy_ci_high": var(S, per_size["accuracy_ci_high"], "97.5th percentile of bootstrap accuracy", "1"),
        "accuracy_bootstrap": var(SB, boot, "accuracy of each bootstrap resample", "1"),
        "compliance": var(S, per_size["compliance"], "fraction of replies containing yes or no", "1"),
        "n_samples": var(S, n_samples, "number of evaluated samples", "1"),
        "avg_input_tokens": var(S, per_size["avg_input_tokens"], "mean input tokens per haystack", "tokens"),
        "correct": var(SN, per_sample["correct"], "1 if the sample was answered correctly (NaN: no sample)", "1"),
        "margin": var(SN, per_sample["margin"], "logsumexp logit(yes tokens) - logsumexp logit(no tokens)", "nat"),
        "input_tokens": var(SN, per_sample["input_tokens"], "input tokens of the haystack prompt", "tokens"),
        "needle_index": var(SN, per_sample["needle_index"], "0-based position of the first needle image in the prompt", "images"),
        "answer_yes": var(SN, per_sample["answer_yes"], "1 if the ground truth is yes", "1"),
        "effective_window": xr.Variable(
            (),
            np.nan if window is None else window.value,
            attrs={
                "long_name": "largest haystack size with accuracy >= threshold (log-size interpolation)",
                "units": "images",
                "threshold": float(threshold),
                "censored": int(bool(window and window.censored)),  # 1: lower bound, never below threshold
                "below_range": int(window is None or window.below_range),  # 1: below threshold at the smallest size
                "ci_low": float(window_ci[0]),  # 2.5 / 97.5th percentiles of effective_window_bootstrap
                "ci_high": float(window_ci[1]),
            },
        ),
        "effective_window_bootstrap": var(
            ("bootstrap",), window_boot, "effective window of each bootstrap resample (0: below threshold at the smallest size)", "images"
        ),
    }
    if has_replies:
        data_vars["reply"] = xr.Variable(SN, replies.astype(str), attrs={"long_name": "decoded greedy reply"})
    coords = {
        "haystack_size": ("haystack_size", np.asarray(sizes, dtype=np.int64), {"long_name": "images per haystack", "units": "images"}),
        "sample": ("sample", np.arange(n_max, dtype=np.int64), {"long_name": "sample index within a haystack size"}),
        "bootstrap": ("bootstrap", np.arange(n_bootstrap, dtype=np.int64), {"long_name": "bootstrap resample"}),
    }
    all_attrs = {"threshold": float(threshold), "seed": int(seed), "n_bootstrap": int(n_bootstrap)}
    all_attrs.update(attrs or {})
    all_attrs.setdefault("git_commit", git_commit())
    all_attrs.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    return xr.Dataset(data_vars, coords=coords, attrs={k: _netcdf_attr(v) for k, v in all_attrs.items()})


def bootstrap_windows(sizes, accuracy_bootstrap: np.ndarray, threshold: float) -> np.ndarray:
    """(n_bootstrap,) effective window of each bootstrap resample of the accuracy curve.

    accuracy_bootstrap (N_sizes, n_bootstrap): resample b of every size forms curve b (the sizes
    are resampled independently). How far a window estimate can be trusted is not visible in the
    per-size intervals: one size near the threshold can move the window by a factor of ten, and
    the spread of these windows shows it. A resample below threshold already at the smallest size
    counts as 0 (a window shorter than the grid), one that never drops as the largest size.
    """
    if not len(sizes):
        return np.full(accuracy_bootstrap.shape[1], np.nan)
    out = np.empty(accuracy_bootstrap.shape[1])
    for b in range(out.size):
        w = effective_window(sizes, accuracy_bootstrap[:, b], threshold)
        out[b] = 0.0 if w.below_range else w.value
    return out


def load_result(path: str | Path) -> xr.Dataset:
    """Read an evaluation result into memory (the file is closed on return) and check its schema."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"evaluation result {path} not found; run `laid eval ... --out {path}` first")
    try:
        ds = xr.load_dataset(path, engine="netcdf4")
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable netCDF evaluation result ({e})") from None
    missing = [v for v in REQUIRED_VARIABLES if v not in ds.variables]
    if missing:
        raise ValueError(f"{path} lacks evaluation variables {missing}; is it a `laid eval` result?")
    return ds


def accuracy_by_needle_position(ds: xr.Dataset) -> xr.DataArray:
    """Accuracy per (haystack_size, needle_index): the "detailed" protocol's view (NaN: no sample)."""
    positions = np.unique(ds["needle_index"].values[~np.isnan(ds["needle_index"].values)]).astype(np.int64)
    acc = np.full((ds.sizes["haystack_size"], positions.size), np.nan)
    for i in range(ds.sizes["haystack_size"]):
        idx, correct = ds["needle_index"].values[i], ds["correct"].values[i]
        for j, pos in enumerate(positions):
            hit = idx == pos
            if hit.any():
                acc[i, j] = correct[hit].mean()
    return xr.DataArray(
        acc,
        dims=("haystack_size", "needle_index"),
        coords={"haystack_size": ds["haystack_size"].values, "needle_index": positions},
        name="accuracy_by_needle_position",
        attrs={"long_name": "accuracy by position of the first needle", "units": "1"},
    )


def with_position_table(ds: xr.Dataset) -> xr.Dataset:
    """`ds` plus the needle-position table of the detailed protocol, stored in the result itself:
    accuracy_by_position(haystack_size, needle_position) and n_by_position(...) (NaN / 0: no sample)."""
    acc = accuracy_by_needle_position(ds).rename(needle_index="needle_position")
    idx = ds["needle_index"].values
    counts = np.array([[int(np.sum(idx[i] == p)) for p in acc["needle_position"].values] for i in range(idx.shape[0])])
    acc["needle_position"].attrs.update(long_name="0-based position of the needle image in the prompt", units="images")
    return ds.assign(
        accuracy_by_position=acc.assign_attrs(long_name="accuracy with the needle at this position", units="1"),
        n_by_position=(("haystack_size", "needle_position"), counts,
                       {"long_name": "samples with the needle at this position", "units": "1"}),
    )


def describe_window(ds: xr.Dataset) -> str:
    w = ds["effective_window"]
    thr = w.attrs.get("threshold", ds.attrs.get("threshold"))
    if int(w.attrs.get("below_range", 0)):
        return f"effective window (accuracy >= {thr}): none, below threshold already at the smallest size"
    if int(w.attrs.get("censored", 0)):
        return f"effective window (accuracy >= {thr}): >= {float(w):g} images (never below threshold)"
    text = f"effective window (accuracy >= {thr}): {float(w):.2f} images"
    if "ci_low" in w.attrs:  # results written before the window's bootstrap interval existed lack it
        text += f" (95% bootstrap interval {float(w.attrs['ci_low']):.2f}-{float(w.attrs['ci_high']):.2f})"
    return text


def summary_text(ds: xr.Dataset) -> str:
    """A few lines: header, one line per haystack size, effective window."""
    a = ds.attrs
    lines = [
        f"{a.get('model_name', '?')} [{a.get('variant', '?')}] {a.get('needle_setting', '?')}, "
        f"{a.get('scoring', '?')} scoring" + (f", {a['protocol']} protocol" if a.get("protocol") else ""),
        f"{'size':>5} {'n':>4} {'accuracy':>8} {'std':>6} {'95% CI':>15} {'compl':>6} {'tokens':>8}",
    ]
    for size in ds["haystack_size"].values:
        r = ds.sel(haystack_size=size)
        lines.append(
            f"{int(size):>5} {int(r['n_samples']):>4} {float(r['accuracy']):>8.3f} {float(r['accuracy_std']):>6.3f} "
            f"[{float(r['accuracy_ci_low']):.3f}, {float(r['accuracy_ci_high']):.3f}] "
            f"{float(r['compliance']):>6.2f} {float(r['avg_input_tokens']):>8.1f}"
        )
    if int(a.get("needle_position_mode", 0)):
        by_pos = accuracy_by_needle_position(ds)
        lines.append("accuracy by needle position: (0-based image index of the needle: accuracy)")
        for size in by_pos["haystack_size"].values:
            row = by_pos.sel(haystack_size=size)
            cells = [f"{int(p)}:{float(v):.2f}" for p, v in zip(row["needle_index"].values, row.values) if not np.isnan(v)]
            lines.append(f"{int(size):>5} " + " ".join(cells))
    lines.append(describe_window(ds))
    return "\n".join(lines)
