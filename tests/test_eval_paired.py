"""Paired bootstrap statistics on planted problems with known answers (laid.eval.paired)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from laid.eval.paired import mean_accuracy, paired_difference, stack_seeds, window_ratio
from laid.eval.results import SampleResult, build_result

SIZES = [1, 2, 5, 10, 20, 50]


def _correct(rows: np.ndarray) -> xr.DataArray:
    """(seed, size, sample) 0/1 array as the DataArray `stack_seeds` returns."""
    rows = np.asarray(rows, dtype=float)
    return xr.DataArray(rows, dims=("seed", "haystack_size", "sample"),
                        coords={"seed": np.arange(rows.shape[0]), "haystack_size": SIZES[: rows.shape[1]]})


def _planted_pair(n=100, effect=0.08, easy=0.5, seed=0):
    """B answers `easy` of the questions right; A answers the same plus `effect` of the rest.

    Question difficulty dominates (most questions are right or wrong for both), which is what makes
    unpaired intervals wide and paired ones narrow. True difference: +effect exactly.
    """
    rng = np.random.default_rng(seed)
    b = (rng.random((1, 4, n)) < easy).astype(float)
    a = b.copy()
    for j in range(4):
        wrong = np.flatnonzero(b[0, j] == 0)
        a[0, j, rng.choice(wrong, size=int(round(effect * n)), replace=False)] = 1.0
    return _correct(a), _correct(b)


def test_paired_interval_finds_a_planted_gain_the_unpaired_one_misses():
    a, b = _planted_pair(effect=0.06)
    sizes = SIZES[:4]
    d = paired_difference(a, b, sizes)
    assert d.value == pytest.approx(0.06)
    assert d.ci_low > 0.03 and d.excludes_zero  # the pairing sees the effect
    u = paired_difference(a, b, sizes, paired=False)  # the ablation: same data, questions unpaired
    assert u.value == pytest.approx(0.06)
    assert not u.excludes_zero and (u.ci_high - u.ci_low) > 2.5 * (d.ci_high - d.ci_low)


def test_identical_methods_and_a_null_effect_include_zero():
    a, b = _planted_pair(effect=0.0)
    d = paired_difference(a, b, SIZES[:4])
    assert d.value == 0 and d.ci_low == 0 and d.ci_high == 0
    rng = np.random.default_rng(3)  # two independent coin-flippers on the same questions
    x, y = _correct(rng.random((1, 4, 100)) < 0.5), _correct(rng.random((1, 4, 100)) < 0.5)
    covered = sum(not paired_difference(x, y, SIZES[:4], n_boot=400, seed=k).excludes_zero for k in range(5))
    assert covered >= 4


def test_seed_variation_widens_the_interval():
    a, b = _planted_pair(effect=0.06)
    # three training seeds of A: one of them lost its gain (a seed-sensitive method)
    a3 = np.concatenate([a.values, a.values, b.values])
    noisy = paired_difference(_correct(a3), b, SIZES[:4])
    one = paired_difference(a, b, SIZES[:4])
    assert noisy.n_seeds == (3, 1) and one.n_seeds == (1, 1)
    assert noisy.value == pytest.approx(0.04)
    assert noisy.ci_high - noisy.ci_low > one.ci_high - one.ci_low


def test_mean_accuracy_interval_covers_its_value():
    a, _ = _planted_pair()
    m = mean_accuracy(a, SIZES[:4])
    assert m.ci_low <= m.value <= m.ci_high and 0.5 < m.value < 0.65


def test_window_ratio_of_a_planted_longer_window():
    n = 100
    rng = np.random.default_rng(0)
    short = np.array([0.9, 0.62, 0.5, 0.5, 0.5, 0.5])  # window ~2 images
    long_ = np.array([0.9, 0.85, 0.8, 0.75, 0.52, 0.5])  # window ~10-20 images
    draw = lambda p: (rng.random((1, len(SIZES), n)) < p[None, :, None]).astype(float)
    r = window_ratio(_correct(draw(long_)), _correct(draw(short)), n_boot=300)
    assert r.value > 3 and r.ci_low > 1.5
    same = window_ratio(_correct(draw(short)), _correct(draw(short)), n_boot=300)
    assert same.ci_low < 1 < same.ci_high


def _result(correct, answers, needles):
    samples = {s: [SampleResult(bool(c), 0.0, True, 10, int(nd), bool(y)) for c, y, nd in zip(correct[i], answers[i], needles[i])]
               for i, s in enumerate([1, 5])}
    return build_result(samples, threshold=0.6, seed=0, n_bootstrap=10)


def test_stack_seeds_refuses_results_on_other_questions():
    c = np.ones((2, 4), dtype=int)
    ans = np.array([[1, 0, 1, 0], [0, 1, 0, 1]])
    nd = np.zeros((2, 4), dtype=int)
    da = stack_seeds([_result(c, ans, nd), _result(1 - c, ans, nd)])
    assert da.dims == ("seed", "haystack_size", "sample") and da.shape == (2, 2, 4)
    with pytest.raises(ValueError, match="not evaluated on the same questions"):
        stack_seeds([_result(c, ans, nd), _result(c, 1 - ans, nd)])


def test_seed_counting_interval_knows_what_it_counts():
    a, b = _planted_pair(effect=0.06)
    base = b.assign_attrs(deterministic=1)
    one = paired_difference(a, base, SIZES[:4])  # one trained seed: questions only, and it says so
    assert not one.seed_variance_estimable and not one.claims() and one.excludes_zero
    three = paired_difference(_correct(np.concatenate([a.values] * 3)), base, SIZES[:4])
    assert three.seed_variance_estimable and three.claims()  # three identical seeds: no seed variance
    assert three.ci_low == pytest.approx(one.ci_low) and three.method == "seed-t" and three.mc_error == 0
    boot = paired_difference(a, b, SIZES[:4], method="bootstrap")
    assert boot.method == "bootstrap" and boot.value == pytest.approx(0.06)
    with pytest.raises(ValueError, match="unknown interval method"):
        paired_difference(a, b, SIZES[:4], method="wald")


def test_seed_spread_counts_with_its_few_degrees_of_freedom():
    """Three seeds of A that disagree (gains of 12, 8 and 4 points over a deterministic B on the same
    questions): the interval is about the t-interval with 2 df on the three per-seed gains, which
    includes 0; the bootstrap ablation, resampling the three seeds, claims the gain."""
    rng = np.random.default_rng(5)
    b = (rng.random((1, 4, 100)) < 0.5).astype(float)
    seeds = []
    for gain in (12, 8, 4):
        a = b.copy()
        for j in range(4):
            wrong = np.flatnonzero(b[0, j] == 0)
            a[0, j, rng.choice(wrong, size=gain, replace=False)] = 1.0
        seeds.append(a[0])
    d = paired_difference(_correct(np.stack(seeds)), _correct(b).assign_attrs(deterministic=1), SIZES[:4])
    assert d.value == pytest.approx(0.08)
    t_half = 4.302652729911275 * np.std([0.12, 0.08, 0.04], ddof=1) / np.sqrt(3)  # t(0.975, 2 df) x SE
    assert 0.8 * t_half < d.ci_high - d.value < 1.3 * t_half
    assert not d.claims()
    boot = paired_difference(_correct(np.stack(seeds)), _correct(b), SIZES[:4], method="bootstrap")
    assert boot.ci_low > 0.02  # the ablation claims it
    wide = paired_difference(_correct(np.stack(seeds)), _correct(b).assign_attrs(deterministic=1), SIZES[:4], confidence=0.99)
    t99 = 9.924843200918276 * np.std([0.12, 0.08, 0.04], ddof=1) / np.sqrt(3)  # t(0.995, 2 df) x SE
    assert 0.8 * t99 < wide.ci_high - wide.value < 1.3 * t99


def test_non_inferiority_reads_the_lower_bound_against_the_margin():
    from laid.eval.paired import Interval, non_inferior

    assert non_inferior(Interval(-0.01, -0.025, 0.005)) is True  # margin 3 points
    assert non_inferior(Interval(-0.01, -0.035, 0.015)) is False
    assert non_inferior(Interval(-0.01, -0.035, 0.015), margin=0.05) is True
    assert non_inferior(Interval(0.0, -0.01, 0.01, seed_variance_estimable=False)) is None


def test_vectorised_windows_equal_the_metric():
    from laid.eval.metrics import effective_window
    from laid.eval.paired import windows

    rng = np.random.default_rng(1)
    curves = rng.uniform(0.4, 1.0, (500, len(SIZES)))
    got = windows(SIZES, curves, 0.6)
    for c, w in zip(curves, got):
        e = effective_window(SIZES, c, 0.6)
        assert w == pytest.approx(SIZES[0] / 2 if e.below_range else e.value)


def test_window_ratio_reports_its_monte_carlo_error():
    """`mc_error` is what the bounds move by when only the resampling seed changes (checked by
    rerunning), and at the default 20,000 resamples it is a fraction of a percent of the bound."""
    rng = np.random.default_rng(2)
    short = np.array([0.9, 0.7, 0.55, 0.5, 0.5, 0.5])
    long_ = np.array([0.95, 0.9, 0.85, 0.7, 0.55, 0.5])
    draw = lambda p, s: (rng.random((s, len(SIZES), 100)) < p[None, :, None]).astype(float)  # noqa: E731
    a, b = _correct(draw(long_, 3)), _correct(draw(short, 1)).assign_attrs(deterministic=1)
    r = window_ratio(a, b)
    assert r.seed_variance_estimable and r.ci_low < r.value < r.ci_high
    assert 0 < r.mc_error < 0.005 * r.ci_high
    reruns = [window_ratio(a, b, n_boot=1000, seed=k) for k in range(12)]
    spread = max(np.std([x.ci_low for x in reruns], ddof=1), np.std([x.ci_high for x in reruns], ddof=1))
    reported = np.mean([x.mc_error for x in reruns])
    assert 0.5 < reported / spread < 2.0
    assert reported > 2 * r.mc_error  # 20x fewer resamples: about sqrt(20) = 4.5x the error
