"""Calibration of the paired intervals (laid.eval.paired) on simulated studies with a known truth.

A simulated study looks like the project's: 7 haystack sizes x 100 binary questions, question
difficulty shared by every method (logit spread 2: most questions are right or wrong for every
model), and a per-training-seed effect (a logit shift per seed) at three levels: none, and the
per-seed standard deviation of mean accuracy that the issue measured (3.5 and 5.9 points: KD at
625 steps on tiny-7b-ret moved 8 points between two sets of 3 seeds on the same questions). Under a
null effect a 95% interval may exclude 0 in at most 5% of studies; we require <= 6% for the
default interval, and show the earlier bootstrap (kept as the ablation) exceeding it. Deterministic
RNG; about 20 s on 2 cores.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from laid.eval.paired import paired_difference, window_ratio

SIZES = [1, 2, 5, 10, 20, 50, 100]
N_QUESTIONS = 100
SIZE_LOGIT = np.array([2.3, 1.6, 1.0, 0.5, 0.3, 0.2, 0.05])  # accuracy ~0.85 at 1 image to ~0.5 at 100
QUESTION_SD = 2.0
# logit shift per seed -> per-seed SD of the mean accuracy over sizes (points), measured below;
# with no seed effect the seed x question interaction of binary answers alone gives ~1.4 points
SEED_LEVELS = {"none": 0.0, "3.5 points": 0.24, "5.9 points": 0.405}
N_SIMS = {"none": 200, "3.5 points": 300, "5.9 points": 400}


def _da(x: np.ndarray, deterministic: bool = False) -> xr.DataArray:
    return xr.DataArray(x, dims=("seed", "haystack_size", "sample"),
                        coords={"seed": np.arange(x.shape[0]), "haystack_size": SIZES},
                        attrs={"deterministic": int(deterministic)})


def simulate(level: str, seeds_a: int, seeds_b: int, n: int, effect: float = 0.0):
    """Yield n (A, B) pairs on shared questions. seeds_b = 0: B is a deterministic model (a base
    model: one result, no seed). `effect`: A answers right with p + effect (1 - p) / mean(1 - p),
    which raises its expected mean accuracy by exactly `effect` (a planted gain)."""
    sd = SEED_LEVELS[level]
    rng = np.random.default_rng([2026, int(sd * 1000), seeds_a, seeds_b, int(effect * 100)])
    for _ in range(n):
        logit = SIZE_LOGIT[:, None] + rng.normal(0.0, QUESTION_SD, (len(SIZES), N_QUESTIONS))  # (J, n), shared

        def arm(n_seeds: int, seed_sd: float, gain: float) -> np.ndarray:
            p = 1.0 / (1.0 + np.exp(-(logit[None] + rng.normal(0.0, seed_sd, (n_seeds, 1, 1)))))  # (S, J, n)
            if gain:
                p = p + gain * (1.0 - p) / np.mean(1.0 - p)
            return (rng.random(p.shape) < p).astype(float)

        a = arm(seeds_a, sd, effect)
        b = arm(1, 0.0, 0.0) if seeds_b == 0 else arm(seeds_b, sd, 0.0)
        yield _da(a), _da(b, deterministic=seeds_b == 0)


def false_exclusions(level: str, seeds_a: int, seeds_b: int, n: int, **kw) -> float:
    return float(np.mean([paired_difference(a, b, SIZES, **kw).excludes_zero for a, b in simulate(level, seeds_a, seeds_b, n)]))


def test_the_simulated_seed_spread_is_the_one_named():
    """The premise: per-seed SD of mean accuracy at each level (from many seeds of one study)."""
    for level, want in (("3.5 points", 3.5), ("5.9 points", 5.9)):
        (a, _), = simulate(level, 400, 1, 1)
        per_seed = 100 * a.values.mean(axis=(1, 2))
        assert per_seed.std(ddof=1) == pytest.approx(want, abs=0.6), level


@pytest.mark.parametrize("level", list(SEED_LEVELS))
def test_null_false_exclusions_at_most_6_percent(level):
    """3 seeds per trained arm: two trained arms (LAid - KD) and one against a deterministic base."""
    two_arms = false_exclusions(level, 3, 3, N_SIMS[level])
    vs_base = false_exclusions(level, 3, 0, N_SIMS[level])
    print(f"seed level {level}: false exclusions {two_arms:.3f} (3 vs 3 seeds), {vs_base:.3f} (3 seeds vs base)")
    assert two_arms <= 0.06 and vs_base <= 0.06


def test_the_bootstrap_ablation_under_counts_seeds():
    """The earlier interval (percentile bootstrap, seeds resampled) on the first 200 of the very
    studies the default passes on above (same RNG stream): too many exclusions."""
    rate = false_exclusions("5.9 points", 3, 3, 200, method="bootstrap", n_boot=300)
    print(f"bootstrap ablation at 5.9 points: false exclusions {rate:.3f}")
    assert rate > 0.10  # about 16%: nominal 5%


@pytest.mark.parametrize("level,two_arms,vs_base", [("none", 0.95, 0.95), ("3.5 points", 0.7, 0.7), ("5.9 points", 0.2, 0.5)])
def test_a_planted_8_point_gain_is_found_with_5_seeds(level, two_arms, vs_base):
    """Power: +8 points planted, 5 seeds per trained arm; found = lower bound above 0 (rates printed,
    the asserted bars below them). At 5.9 points per seed the seeds alone put a standard error of 3.7
    points on a difference of two 5-seed arms: 37% of studies find +8 (71% against a
    deterministic base), which more seeds, not a narrower interval, would raise."""
    found = lambda sb: float(np.mean([paired_difference(a, b, SIZES).ci_low > 0  # noqa: E731
                                      for a, b in simulate(level, 5, sb, 150, effect=0.08)]))
    got_two, got_base = found(5), found(0)
    print(f"seed level {level}: +8 found {got_two:.2f} (5 vs 5 seeds), {got_base:.2f} (5 seeds vs base)")
    assert got_two >= two_arms and got_base >= vs_base


def test_window_ratio_null_false_exclusions():
    """The effective-window ratio of two arms with the same curve: its interval excludes 1 rarely."""
    sims = list(simulate("5.9 points", 3, 3, 100)) + list(simulate("5.9 points", 3, 0, 100))
    rate = float(np.mean([window_ratio(a, b, n_boot=1000).excludes(1.0) for a, b in sims]))
    print(f"window ratio at 5.9 points: false exclusions {rate:.3f}")
    assert rate <= 0.06
