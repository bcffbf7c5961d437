"""Paired comparisons of evaluation results: differences that carry their own uncertainty.

Two methods evaluated on the *same* questions (same data, evaluation seed and sample count) can be
compared question by question, which removes the question-to-question variance that dominates
unpaired intervals at 100 questions per size. Trained methods also vary with their training seed;
`correct` arrays therefore have dims (seed, haystack_size, sample) and the bootstrap resamples both:

- questions: within each haystack size, sample indices are drawn with replacement, and the *same*
  indices are used for both methods (the pairing);
- seeds: each method's training seeds are drawn with replacement, independently (seed 1 of KD and
  seed 1 of LAid are unrelated runs).

The statistic of a resample is the mean over the chosen sizes of the accuracy averaged over seeds
and questions; a difference is A - B of that statistic. Percentile intervals (95% by default).
With one seed per method the interval covers question sampling only, and says so (`n_seeds`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import xarray as xr

from laid.eval.metrics import DEFAULT_THRESHOLD, effective_window

N_PAIRED_BOOTSTRAP = 2000


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap interval."""

    value: float
    ci_low: float
    ci_high: float
    n_seeds: tuple[int, ...] = ()  # seeds behind each side
    n_questions: int = 0  # questions per size that were paired

    @property
    def excludes_zero(self) -> bool:
        return bool(self.ci_low > 0 or self.ci_high < 0)

    def __str__(self) -> str:
        return f"{self.value:+.3f} [{self.ci_low:+.3f}, {self.ci_high:+.3f}]"


def stack_seeds(results: Sequence[xr.Dataset], sizes: Sequence[int] | None = None) -> xr.DataArray:
    """`correct` of one method's evaluations (one per training seed) as (seed, haystack_size, sample).

    Every result must have been made on the same questions: same sizes, sample counts and the same
    per-sample answers and needle positions (checked, so a mismatch is an error, not a silent bias).
    """
    if not results:
        raise ValueError("stack_seeds: no evaluation results")
    ref = results[0]
    sizes = [int(s) for s in (sizes if sizes is not None else ref["haystack_size"].values)]
    arrays = []
    for k, ds in enumerate(results):
        missing = sorted(set(sizes) - {int(s) for s in ds["haystack_size"].values})
        if missing:
            raise ValueError(f"stack_seeds: result {k} ({ds.attrs.get('model_name', '?')}) lacks sizes {missing}")
        _check_same_questions(ref.sel(haystack_size=sizes), ds.sel(haystack_size=sizes), k)
        arrays.append(ds["correct"].sel(haystack_size=sizes).values)
    return xr.DataArray(np.stack(arrays), dims=("seed", "haystack_size", "sample"),
                        coords={"seed": np.arange(len(arrays)), "haystack_size": sizes})


def _check_same_questions(a: xr.Dataset, b: xr.Dataset, k: int) -> None:
    for var in ("n_samples", "answer_yes", "needle_index"):
        if var in a and var in b and not np.array_equal(a[var].values, b[var].values, equal_nan=True):
            raise ValueError(f"results differ in {var} (result {k}): they were not evaluated on the same questions; "
                             "use the same data, eval seed and samples_per_size")


def _resample(correct: np.ndarray, q_idx: list[np.ndarray], s_idx: np.ndarray) -> np.ndarray:
    """Accuracy per (resample, size) of a (seed, size, sample) array, given the drawn indices."""
    out = np.empty((s_idx.shape[0], correct.shape[1]))
    for j, idx in enumerate(q_idx):  # idx: (R, n_j) sample indices of size j
        c = correct[:, j, :][:, idx]  # (S, R, n_j)
        per_seed = np.nanmean(c, axis=2)  # (S, R)
        out[:, j] = np.take_along_axis(per_seed.T, s_idx, axis=1).mean(axis=1)  # seeds drawn per resample
    return out


def _draws(n_per_size: Sequence[int], n_seeds: Sequence[int], n_boot: int, seed: int):
    rng = np.random.default_rng([seed, 1729])
    q_idx = [rng.integers(0, n, size=(n_boot, n)) for n in n_per_size]
    s_idx = [rng.integers(0, s, size=(n_boot, s)) for s in n_seeds]
    return q_idx, s_idx


def _valid_counts(*arrays: np.ndarray) -> list[int]:
    """Samples per size present in every array (NaN-padded at the end of a size's row)."""
    counts = []
    for j in range(arrays[0].shape[1]):
        n = min(int(np.sum(~np.isnan(a[0, j]))) for a in arrays)
        if n < 1:
            raise ValueError(f"paired statistics: haystack size index {j} has no samples")
        counts.append(n)
    return counts


def _trim(a: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    out = np.full((a.shape[0], a.shape[1], max(counts)), np.nan)
    for j, n in enumerate(counts):
        out[:, j, :n] = a[:, j, :n]
    return out


def mean_accuracy(correct: xr.DataArray, sizes: Sequence[int], n_boot: int = N_PAIRED_BOOTSTRAP, seed: int = 0,
                  confidence: float = 0.95) -> Interval:
    """Mean accuracy over `sizes` of one method (seed, haystack_size, sample), with its interval."""
    a = correct.sel(haystack_size=list(sizes)).values
    counts = _valid_counts(a)
    a = _trim(a, counts)
    q_idx, (s_idx,) = _draws(counts, [a.shape[0]], n_boot, seed)
    stat = _resample(a, q_idx, s_idx).mean(axis=1)
    return _interval(float(np.nanmean(np.nanmean(a, axis=2), axis=0).mean()), stat, confidence,
                     (a.shape[0],), min(counts))


def paired_difference(a: xr.DataArray, b: xr.DataArray, sizes: Sequence[int], n_boot: int = N_PAIRED_BOOTSTRAP,
                      seed: int = 0, confidence: float = 0.95, paired: bool = True) -> Interval:
    """Mean accuracy over `sizes` of A minus that of B, paired on questions (see module doc).

    `paired=False` draws A's and B's questions independently: the unpaired interval, kept as the
    ablation that shows what pairing buys (tests/test_eval_paired.py).
    """
    sizes = list(sizes)
    x, y = a.sel(haystack_size=sizes).values, b.sel(haystack_size=sizes).values
    counts = _valid_counts(x, y)
    x, y = _trim(x, counts), _trim(y, counts)
    q_idx, (sx, sy) = _draws(counts, [x.shape[0], y.shape[0]], n_boot, seed)
    q_idy = q_idx if paired else _draws(counts, [1], n_boot, seed + 1)[0]
    diff = _resample(x, q_idx, sx).mean(axis=1) - _resample(y, q_idy, sy).mean(axis=1)
    point = np.nanmean(np.nanmean(x, axis=2), axis=0).mean() - np.nanmean(np.nanmean(y, axis=2), axis=0).mean()
    return _interval(float(point), diff, confidence, (x.shape[0], y.shape[0]), min(counts))


def window_ratio(a: xr.DataArray, b: xr.DataArray, threshold: float = DEFAULT_THRESHOLD, n_boot: int = 500,
                 seed: int = 0, confidence: float = 0.95) -> Interval:
    """Effective window of A over that of B (all sizes of the arrays), paired on questions.

    A window below the smallest size counts as half that size (it is somewhere below it), so the
    ratio stays defined; a censored window (never below the threshold) counts as the largest size,
    a lower bound, which the interval inherits.
    """
    sizes = [int(s) for s in a["haystack_size"].values]
    x, y = a.values, b.sel(haystack_size=sizes).values
    counts = _valid_counts(x, y)
    x, y = _trim(x, counts), _trim(y, counts)
    q_idx, (sx, sy) = _draws(counts, [x.shape[0], y.shape[0]], n_boot, seed)
    acc_x, acc_y = _resample(x, q_idx, sx), _resample(y, q_idx, sy)

    def window(acc) -> float:
        w = effective_window(sizes, acc, threshold)
        return min(sizes) / 2 if w.below_range else w.value

    ratios = np.array([window(ax) / window(ay) for ax, ay in zip(acc_x, acc_y)])
    point = window(np.nanmean(np.nanmean(x, axis=2), axis=0)) / window(np.nanmean(np.nanmean(y, axis=2), axis=0))
    return _interval(float(point), ratios, confidence, (x.shape[0], y.shape[0]), min(counts))


def _interval(point: float, resamples: np.ndarray, confidence: float, n_seeds, n_questions) -> Interval:
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.nanpercentile(resamples, [tail, 100 - tail])
    return Interval(point, float(low), float(high), tuple(n_seeds), int(n_questions))
