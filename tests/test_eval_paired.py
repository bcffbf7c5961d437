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
    assert not u.excludes_zero and (u.ci_high - u.ci_low) > 3 * (d.ci_high - d.ci_low)


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
