"""Paired comparisons of evaluation results: differences whose intervals count questions and seeds.

Two methods evaluated on the *same* questions (same data, evaluation seed and sample count) are
compared question by question, which removes the question-to-question variance that dominates
unpaired intervals at 100 questions per size. Trained methods also vary with their training seed;
`correct` arrays have dims (seed, haystack_size, sample). The statistic is the mean over the chosen
sizes of the accuracy averaged over seeds and questions; a difference is A - B of it.

Default interval ("seed-t"): a t-type interval whose variance has one term per source of noise, each
estimated from the data without resampling (so no Monte-Carlo error):

    var = v_seed(A) + v_seed(B) + v_questions
    v_seed(X)   = [s_g^2 - interaction] / S_X   s_g^2: sample variance over X's S_X seeds of the per-seed
                                                statistic; interaction: the seed x question residual
                                                mean square per size / n_size (weighted like the sizes),
                                                which s_g^2 and v_questions would otherwise both count
    v_questions = sum_j w_j^2 var_i(d_ji) / n_j d_ji: seed-averaged A - B on question i of size j,
                                                stratified by size (w_j = 1 / number of sizes)

This is the unbiased two-way (seed x question, crossed) variance of a grand mean, per side, with
the question term paired. Seeds of A and B are unrelated runs (independent terms). A deterministic
side (the base model, the teacher, an inference-time variant: `stack_seeds(..., deterministic=True)`)
has no seed term. The interval is point +- c with c the quantile of |Z| sqrt(V) where V is the
fiducial (generalized pivotal) distribution of the variance: each seed term as its chi-square with
S - 1 df, the question term as known (hundreds of questions). With one trained side and a small
question term this is the t-interval with S - 1 df (t = 4.3 at 3 seeds, 2.8 at 5); it never plugs
a df estimated from the same small seed variance into the quantile, which is what makes
Welch-Satterthwaite too narrow exactly when 3 seeds happen to agree (7.6% false exclusions in
simulated nulls against a base model, docs/method.md). With two trained sides of equal seed spread
it is conservative (0-2% at 95%, tests/test_eval_paired_calibration.py). A trained side with one seed has no estimable seed variance:
the interval then counts questions only and says so (`seed_variance_estimable=False`); tables
never claim it.

Ablation ("bootstrap", the earlier default): percentile bootstrap over questions (shared) and seeds
drawn with replacement per side. With 3 seeds a resample sees at most 3 distinct values of the seed
effect, and the percentile interval ignores that its spread is estimated from 3 numbers: it covers
about 86% at the project's seed spread (the calibration test shows it failing).

The effective-window ratio is not linear in the accuracies: its interval is the same pivotal
interval on the log ratio, the question term estimated by a paired bootstrap over questions of the
seed-averaged curves (the Monte-Carlo error this leaves on the bounds is reported in `mc_error`),
the seed terms from the spread of the per-seed log windows (which holds the seed x question
interaction once more: conservative).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import xarray as xr
from scipy import optimize, special, stats

from laid.eval.metrics import DEFAULT_THRESHOLD

N_PAIRED_BOOTSTRAP = 2000  # resamples of the bootstrap ablation
N_WINDOW_RESAMPLES = 20000  # question resamples behind a window ratio's question term
METHODS = ("seed-t", "bootstrap")  # interval kinds; the first is the default
DEFAULT_MARGIN = 0.03  # non-inferiority margin (accuracy, 3 points), stated before the data


@dataclass(frozen=True)
class Interval:
    """A point estimate with its interval and what the interval counts."""

    value: float
    ci_low: float
    ci_high: float
    n_seeds: tuple[int, ...] = ()  # seeds behind each side
    n_questions: int = 0  # questions per size that were paired (the smallest size's count)
    method: str = "seed-t"  # METHODS
    confidence: float = 0.95
    se: float = math.nan  # estimated standard error (seed-t; of the log ratio for a window ratio)
    # False when a trained side had one seed: the interval counts questions only and claims nothing
    seed_variance_estimable: bool = True
    mc_error: float = 0.0  # Monte-Carlo standard error of the bounds (0: computed exactly)

    @property
    def excludes_zero(self) -> bool:
        return self.excludes(0.0)

    def excludes(self, x: float) -> bool:
        return bool(self.ci_low > x or self.ci_high < x)

    def claims(self, null: float = 0.0) -> bool:
        """Whether a table may claim a difference from `null`: the interval excludes it and counts seeds."""
        return self.seed_variance_estimable and self.excludes(null)

    def __str__(self) -> str:
        flag = "" if self.seed_variance_estimable else " (seed variance not estimable)"
        return f"{self.value:+.3f} [{self.ci_low:+.3f}, {self.ci_high:+.3f}]{flag}"


def interval_description(method: str = "seed-t", confidence: float = 0.95) -> str:
    """The `interval` attribute of a netCDF variable holding intervals of `method`."""
    pct = f"{100 * confidence:g}%"
    if method == "seed-t":
        return (f"{pct} seed-counting interval (laid.eval.paired, seed-t): seed variance of each trained side / its seeds "
                "(chi-square, seeds - 1 df) + question variance of the paired seed-averaged difference, stratified by size")
    return f"{pct} percentile bootstrap over questions (shared between methods) and training seeds (per method)"


def non_inferior(iv: Interval, margin: float = DEFAULT_MARGIN) -> bool | None:
    """"No harm" for a difference arm - reference: True when the lower bound is above -margin,
    False when it is not, None (no verdict) when the interval does not count seed variance."""
    if not iv.seed_variance_estimable or math.isnan(iv.ci_low):
        return None
    return bool(iv.ci_low > -margin)


def stack_seeds(results: Sequence[xr.Dataset], sizes: Sequence[int] | None = None,
                deterministic: bool = False) -> xr.DataArray:
    """`correct` of one method's evaluations (one per training seed) as (seed, haystack_size, sample).

    Every result must have been made on the same questions: same sizes, sample counts and the same
    per-sample answers and needle positions (checked, so a mismatch is an error, not a silent bias).
    `deterministic`: the model has no training seed (a base model, the teacher, an inference-time
    variant), so one result is all there is and its interval has no seed term (attr `deterministic`).
    """
    if not results:
        raise ValueError("stack_seeds: no evaluation results")
    if deterministic and len(results) > 1:
        raise ValueError(f"stack_seeds: {len(results)} results of a deterministic model; it has one (no training seed)")
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
                        coords={"seed": np.arange(len(arrays)), "haystack_size": sizes},
                        attrs={"deterministic": int(deterministic)})


def _check_same_questions(a: xr.Dataset, b: xr.Dataset, k: int) -> None:
    for var in ("n_samples", "answer_yes", "needle_index"):
        if var in a and var in b and not np.array_equal(a[var].values, b[var].values, equal_nan=True):
            raise ValueError(f"results differ in {var} (result {k}): they were not evaluated on the same questions; "
                             "use the same data, eval seed and samples_per_size")


def _valid_counts(*arrays: np.ndarray) -> list[int]:
    """Samples per size present in every array (NaN-padded at the end of a size's row)."""
    counts = []
    for j in range(arrays[0].shape[1]):
        n = min(int(np.sum(~np.isnan(a[0, j]))) for a in arrays)
        if n < 1:
            raise ValueError(f"paired statistics: haystack size index {j} has no samples")
        counts.append(n)
    return counts


def _sides(*arrays: xr.DataArray, sizes) -> tuple[list[np.ndarray], list[int], list[bool]]:
    """Each side's (seed, size, sample) values on the common questions, the counts, deterministic flags."""
    values = [a.sel(haystack_size=list(sizes)).values.astype(float) for a in arrays]
    counts = _valid_counts(*values)
    return [v[:, :, : max(counts)] for v in values], counts, [bool(a.attrs.get("deterministic", 0)) for a in arrays]


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown interval method {method!r}; choose one of {', '.join(METHODS)}")


# --- seed-t: the variance decomposition and its pivotal quantile --------------------------------


@dataclass(frozen=True)
class _SeedTerm:
    """One trained side's seed variance: m1 = sample variance over its S seeds of the per-seed
    statistic (S - 1 df), m2 = the part of m1 that is seed x question interaction (counted again in
    the question term, so subtracted)."""

    m1: float
    m2: float
    n_seeds: int

    @property
    def estimate(self) -> float:
        return max(self.m1 - self.m2, 0.0) / self.n_seeds

    def fiducial(self, u: np.ndarray) -> np.ndarray:
        """The seed variance at chi-square quantiles u: max(m1 (S-1) / W - m2, 0) / S, W ~ chi2(S-1)."""
        k = self.n_seeds - 1
        w = np.maximum(stats.chi2.ppf(u, k), 1e-300)
        return np.maximum(self.m1 * k / w - self.m2, 0.0) / self.n_seeds


def _seed_term(x: np.ndarray, counts: Sequence[int], deterministic: bool) -> tuple[_SeedTerm | None, bool]:
    """(seed term or None, estimable) of one side for the mean over sizes (module doc)."""
    n_seeds = x.shape[0]
    if deterministic:
        return None, True
    if n_seeds < 2:
        return None, False
    w = 1.0 / len(counts)
    per_seed = np.stack([x[:, j, :n].mean(axis=1) for j, n in enumerate(counts)], axis=1)  # (S, J)
    m1 = float(np.var(per_seed.mean(axis=1), ddof=1))
    m2 = 0.0
    for j, n in enumerate(counts):
        if n < 2:
            continue
        c = x[:, j, :n]  # (S, n): the residual of the two-way table is the seed x question interaction
        resid = c - c.mean(axis=1, keepdims=True) - c.mean(axis=0, keepdims=True) + c.mean()
        m2 += w * w * float(np.sum(resid ** 2)) / ((n_seeds - 1) * (n - 1)) / n
    return _SeedTerm(m1, m2, n_seeds), True


def _question_term(per_question: Sequence[np.ndarray]) -> float:
    """Variance of the mean over sizes of per-size question means, stratified by size.
    per_question[j]: (n_j,) seed-averaged values (a difference when paired)."""
    w = 1.0 / len(per_question)
    return sum(w * w * float(np.var(q, ddof=1)) / len(q) for q in per_question if len(q) > 1)


GRID = {1: 400, 2: 96}  # chi-square quantile points per seed term (one or two trained sides)


def _pivotal_interval(point: float, seeds: Sequence[_SeedTerm], question: float, confidence: float) -> tuple[float, float, float]:
    """(low, high, se): point +- c, c the `confidence` quantile of |Z| sqrt(V), V the fiducial
    distribution of the total variance (each seed term's chi-square, the question term as known:
    it rests on hundreds of questions). With no seed term this is the normal interval; with one
    seed term and a negligible question term, the t-interval with S - 1 df. Computed by midpoint
    quadrature over the chi-square quantiles (deterministic, no Monte-Carlo error)."""
    se = math.sqrt(question + sum(s.estimate for s in seeds))
    if not seeds:
        half = float(stats.norm.ppf(0.5 + confidence / 2)) * math.sqrt(question)
        return point - half, point + half, se
    n = GRID[min(len(seeds), 2)]
    u = (np.arange(n) + 0.5) / n
    total = np.zeros(1) + question
    for term in seeds:  # every combination of the sides' quantiles
        total = (total[:, None] + term.fiducial(u)[None, :]).ravel()
    sd = np.sqrt(total)
    if not np.any(sd > 0):
        return point, point, se
    coverage = lambda c: float(np.mean(2.0 * special.ndtr(c / np.where(sd > 0, sd, 1e-300)) - 1.0)) - confidence  # noqa: E731
    top = 10.0 * float(np.quantile(sd, 1.0 - (1.0 - confidence) / 10)) + 1e-300  # covers more than `confidence`
    half = optimize.brentq(coverage, 0.0, top, xtol=1e-9 * float(np.median(sd)) + 1e-15)
    return point - half, point + half, se


def _seed_mean(x: np.ndarray, counts: Sequence[int]) -> list[np.ndarray]:
    """Per size, the (n_j,) question values averaged over seeds."""
    return [x[:, j, :n].mean(axis=0) for j, n in enumerate(counts)]


def _stat(x: np.ndarray, counts: Sequence[int]) -> float:
    return float(np.mean([x[:, j, :n].mean() for j, n in enumerate(counts)]))


# --- the public statistics ------------------------------------------------------------------------


def mean_accuracy(correct: xr.DataArray, sizes: Sequence[int], n_boot: int = N_PAIRED_BOOTSTRAP, seed: int = 0,
                  confidence: float = 0.95, method: str = "seed-t") -> Interval:
    """Mean accuracy over `sizes` of one method (seed, haystack_size, sample), with its interval."""
    _check_method(method)
    (x,), counts, (det,) = _sides(correct, sizes=sizes)
    point = _stat(x, counts)
    if method == "bootstrap":
        q_idx, (s_idx,) = _draws(counts, [x.shape[0]], n_boot, seed)
        return _percentile(point, _resample(x, q_idx, s_idx).mean(axis=1), confidence, (x.shape[0],), min(counts))
    term, ok = _seed_term(x, counts, det)
    low, high, se = _pivotal_interval(point, [term] if term else [], _question_term(_seed_mean(x, counts)), confidence)
    return Interval(point, low, high, (x.shape[0],), min(counts), method, confidence, se, ok)


def paired_difference(a: xr.DataArray, b: xr.DataArray, sizes: Sequence[int], n_boot: int = N_PAIRED_BOOTSTRAP,
                      seed: int = 0, confidence: float = 0.95, paired: bool = True, method: str = "seed-t") -> Interval:
    """Mean accuracy over `sizes` of A minus that of B, paired on questions (see module doc).

    `paired=False` treats A's and B's questions as independent: the unpaired interval, kept as the
    ablation that shows what pairing buys (tests/test_eval_paired.py). `method="bootstrap"`: the
    earlier percentile bootstrap, kept as the ablation that under-counts seeds.
    """
    _check_method(method)
    (x, y), counts, (det_x, det_y) = _sides(a, b, sizes=sizes)
    point = _stat(x, counts) - _stat(y, counts)
    n_seeds = (x.shape[0], y.shape[0])
    if method == "bootstrap":
        q_idx, (sx, sy) = _draws(counts, list(n_seeds), n_boot, seed)
        q_idy = q_idx if paired else _draws(counts, [1], n_boot, seed + 1)[0]
        diff = _resample(x, q_idx, sx).mean(axis=1) - _resample(y, q_idy, sy).mean(axis=1)
        return _percentile(point, diff, confidence, n_seeds, min(counts))
    (tx, ok_x), (ty, ok_y) = _seed_term(x, counts, det_x), _seed_term(y, counts, det_y)
    mx, my = _seed_mean(x, counts), _seed_mean(y, counts)
    if paired:
        question = _question_term([p - q for p, q in zip(mx, my)])
    else:  # the ablation: each side's question variance on its own, as if the questions were unrelated
        question = _question_term(mx) + _question_term(my)
    low, high, se = _pivotal_interval(point, [t for t in (tx, ty) if t], question, confidence)
    return Interval(point, low, high, n_seeds, min(counts), method, confidence, se, ok_x and ok_y)


def windows(sizes: Sequence[int], acc: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Effective windows of many accuracy curves at once, (..., J) -> (...): laid.eval.metrics.effective_window
    (log-size interpolation at the first size below the threshold) with a window below the smallest
    size counted as half that size (somewhere below it) and a censored one as the largest size."""
    s = np.log(np.asarray(sizes, dtype=float))
    acc = np.asarray(acc, dtype=float)
    below = acc < threshold  # (..., J)
    first = np.argmax(below, axis=-1)
    never = ~below.any(axis=-1)
    i = np.clip(first, 1, len(s) - 1)
    a0 = np.take_along_axis(acc, (i - 1)[..., None], -1)[..., 0]
    a1 = np.take_along_axis(acc, i[..., None], -1)[..., 0]
    t = np.clip(np.where(a0 > a1, (a0 - threshold) / np.where(a0 > a1, a0 - a1, 1.0), 0.0), 0.0, 1.0)  # in [0, 1] at a crossing
    out = np.exp(s[i - 1] + t * (s[i] - s[i - 1]))
    out = np.where(first == 0, math.exp(s[0]) / 2, out)
    return np.where(never, math.exp(s[-1]), out)


def window_ratio(a: xr.DataArray, b: xr.DataArray, threshold: float = DEFAULT_THRESHOLD,
                 n_boot: int = N_WINDOW_RESAMPLES, seed: int = 0, confidence: float = 0.95,
                 method: str = "seed-t") -> Interval:
    """Effective window of A over that of B (all sizes of A), paired on questions.

    A window below the smallest size counts as half that size, so the ratio stays defined; a
    censored window (never below the threshold) counts as the largest size, a lower bound, which the
    interval inherits. seed-t (module doc): the pivotal interval on the log ratio; `mc_error` = the
    Monte-Carlo standard error of the bounds left by the `n_boot` question resamples.
    """
    _check_method(method)
    sizes = [int(s) for s in a["haystack_size"].values]
    (x, y), counts, (det_x, det_y) = _sides(a, b, sizes=sizes)
    curve = lambda v: np.array([v[:, j, :n].mean() for j, n in enumerate(counts)])  # noqa: E731
    point = float(windows(sizes, curve(x), threshold) / windows(sizes, curve(y), threshold))
    n_seeds = (x.shape[0], y.shape[0])
    if method == "bootstrap":
        q_idx, (sx, sy) = _draws(counts, list(n_seeds), n_boot, seed)
        ratios = windows(sizes, _resample(x, q_idx, sx), threshold) / windows(sizes, _resample(y, q_idx, sy), threshold)
        return _percentile(point, ratios, confidence, n_seeds, min(counts))
    seeds, ok = [], True
    for v, det in ((x, det_x), (y, det_y)):
        if det:
            continue
        if v.shape[0] < 2:
            ok = False
            continue
        per_seed = np.log(windows(sizes, np.stack([curve(v[k:k + 1]) for k in range(v.shape[0])]), threshold))
        seeds.append(_SeedTerm(float(np.var(per_seed, ddof=1)), 0.0, v.shape[0]))
    q_idx, _ = _draws(counts, [], n_boot, seed)
    mx, my = _seed_mean(x, counts), _seed_mean(y, counts)
    acc_x = np.stack([m[idx].mean(axis=1) for m, idx in zip(mx, q_idx)], axis=1)  # (R, J), the same questions
    acc_y = np.stack([m[idx].mean(axis=1) for m, idx in zip(my, q_idx)], axis=1)
    log_r = np.log(windows(sizes, acc_x, threshold)) - np.log(windows(sizes, acc_y, threshold))  # (R,)

    def bounds(resamples: np.ndarray) -> tuple[float, float, float]:
        lo, hi, se = _pivotal_interval(math.log(point), seeds, float(np.var(resamples, ddof=1)), confidence)
        return math.exp(lo), math.exp(hi), se

    low, high, se = bounds(log_r)
    # Monte-Carlo error of the bounds: they depend on the resamples only through their variance q;
    # SE(q) from the resamples' fourth moment, d bound / d q by a finite difference.
    q = float(np.var(log_r, ddof=1))
    dev = log_r - log_r.mean()
    se_q = math.sqrt(max(float(np.mean(dev ** 4)) - q * q * (len(log_r) - 3) / (len(log_r) - 1), 0.0) / len(log_r))
    shifted = bounds(log_r.mean() + dev * math.sqrt(1.01)) if q > 0 else (low, high, se)  # q -> 1.01 q
    mc = max(abs(shifted[0] - low), abs(shifted[1] - high)) / (0.01 * q) * se_q if q > 0 else 0.0
    return Interval(point, low, high, n_seeds, min(counts), method, confidence, se, ok, mc)


# --- the bootstrap ablation -------------------------------------------------------------------------


def _resample(correct: np.ndarray, q_idx: list[np.ndarray], s_idx: np.ndarray) -> np.ndarray:
    """Accuracy per (resample, size) of a (seed, size, sample) array, given the drawn indices."""
    out = np.empty((s_idx.shape[0], correct.shape[1]))
    for j, idx in enumerate(q_idx):  # idx: (R, n_j) sample indices of size j
        per_seed = correct[:, j, :][:, idx].mean(axis=2)  # (S, R)
        out[:, j] = np.take_along_axis(per_seed.T, s_idx, axis=1).mean(axis=1)  # seeds drawn per resample
    return out


def _draws(n_per_size: Sequence[int], n_seeds: Sequence[int], n_boot: int, seed: int):
    rng = np.random.default_rng([seed, 1729])
    q_idx = [rng.integers(0, n, size=(n_boot, n)) for n in n_per_size]
    s_idx = [rng.integers(0, s, size=(n_boot, s)) for s in n_seeds]
    return q_idx, s_idx


def _percentile(point: float, resamples: np.ndarray, confidence: float, n_seeds, n_questions) -> Interval:
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.nanpercentile(resamples, [tail, 100 - tail])
    return Interval(point, float(low), float(high), tuple(n_seeds), int(n_questions), "bootstrap", confidence)
