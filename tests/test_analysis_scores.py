"""Every student-vs-teacher score on planted problems with known answers.

A good score puts an exact copy near its maximum whatever the noise level, and a steeper decay, a
flattened or a sign-flipped profile clearly lower. The new scores (pair_spectrum.profile_fidelity,
spectral_fidelity) must pass; the old spectra.low_freq_preservation is kept as an ablation and
must be shown to FAIL (a test that would pass for it would not be testing the method).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from laid_analysis.distance import profile_dataset
from laid_analysis.pair_spectrum import PairMoments, complex_coef, profile_fidelity, scaled_fidelity, spectral_fidelity
from laid_analysis.rope_usage import rotary_pair_coords
from laid_analysis.spectra import low_freq_preservation

N = 600  # positions of a haystack
COUNT = (N - np.arange(N)) * 20.0  # pair counts fall with distance: the far end is the noisiest
SIGMA = 4.0  # logit spread of one pair; the estimate at d has sd SIGMA / sqrt(COUNT[d])
D = np.arange(N)
TEACHER = 2.0 * np.exp(-D / 300)  # slow decay: reaches far
PLANTED = {
    "steeper": 2.0 * np.exp(-D / 40),
    "flattened": np.full(N, float(TEACHER.mean())),
    "sign_flipped": -TEACHER,
}


def _noisy(x, scale, rng):
    se = scale * SIGMA / np.sqrt(COUNT)
    return x + rng.normal(size=N) * se, se


def _new(student, s_scale, rng, t_scale=1.0):
    t, se_t = _noisy(TEACHER, t_scale, rng)
    s, se_s = _noisy(student, s_scale, rng)
    return float(profile_fidelity(s, t, COUNT, se_s, se_t))


def _profile_ds(logit):
    count = torch.tensor(COUNT).long()
    return profile_dataset(torch.zeros(1, 1, N), torch.tensor(logit)[None, None] * count, torch.zeros(N), count, [0])


def _old(student, s_scale, rng):
    t, _ = _noisy(TEACHER, 1.0, rng)
    s, _ = _noisy(student, s_scale, rng)
    return float(low_freq_preservation(_profile_ds(s), _profile_ds(t))["preservation_score"])


@pytest.mark.parametrize("noise", [0.0, 1.0, 4.0])
def test_profile_fidelity_exact_copy_is_near_one_at_any_noise(noise):
    rng = np.random.default_rng(0)
    scores = [_new(TEACHER, noise, rng, t_scale=max(noise, 1.0)) for _ in range(20)]
    assert np.mean(scores) == pytest.approx(1.0, abs=0.05) and min(scores) > 0.85


def test_profile_fidelity_ranks_planted_failures_below_a_noisy_copy():
    rng = np.random.default_rng(1)
    copy4 = np.mean([_new(TEACHER, 4.0, rng) for _ in range(20)])
    got = {k: np.mean([_new(v, 1.0, rng) for _ in range(20)]) for k, v in PLANTED.items()}
    assert got["steeper"] < 0.7 < copy4
    assert abs(got["flattened"]) < 0.2  # no better than a flat line, by construction
    assert got["sign_flipped"] < -2.0
    # Unnormalised: the right shape at half the amplitude is not a copy either.
    assert _new(0.5 * TEACHER, 1.0, rng) == pytest.approx(0.75, abs=0.08)


def test_old_preservation_score_fails_the_planted_checks():
    rng = np.random.default_rng(2)
    copy1 = np.mean([_old(TEACHER, 1.0, rng) for _ in range(10)])
    copy4 = np.mean([_old(TEACHER, 4.0, rng) for _ in range(10)])
    steeper = np.mean([_old(PLANTED["steeper"], 1.0, rng) for _ in range(10)])
    flipped = np.mean([_old(PLANTED["sign_flipped"], 1.0, rng) for _ in range(10)])
    # A sign-flipped profile has the teacher's power spectrum: the old score calls it a copy.
    assert flipped > 0.9 and flipped >= copy1 - 0.05
    # The noise level of the estimate moves an exact copy's score by more than 0.2 ...
    assert copy4 < copy1 - 0.2
    # ... so a noisier exact copy and a 7x steeper decay are not separated.
    assert copy4 - steeper < 0.15


# ------------------------------------------------------------ the exact pair spectrum a_p

P, HD = 8, 16  # rotary pairs, head dim
INV_FREQ = 1.0 / 100 ** (np.arange(P) / P)  # radians per position


def _pairs():
    return rotary_pair_coords(INV_FREQ, ["temporal"] * P)


def _coef(mu_q, mu_k, noise, n, seed):
    """a_p estimated from n sampled query and key tokens around the planted means (pre-RoPE)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.tensor(mu_q)[None, None, None] + noise * torch.randn(1, 1, n, HD, generator=g, dtype=torch.float64)
    k = torch.tensor(mu_k)[None, None, None] + noise * torch.randn(1, 1, n, HD, generator=g, dtype=torch.float64)
    m = PairMoments()
    mask = torch.ones(1, n, dtype=torch.bool)
    m.update(0, q, k, mask, mask)
    ds = m.to_dataset(_pairs(), {0: 1.0}, np.arange(64))
    return complex_coef(ds).sel(layer=0, head=0).values, ds["pair_coef_var"].sel(layer=0, head=0).values, ds


def _means(weights):
    """Query/key means whose a_p are real and equal to `weights` (per pair)."""
    mu_q = np.concatenate([np.sqrt(np.abs(weights)), np.zeros(P)])
    mu_k = np.concatenate([np.sign(weights) * np.sqrt(np.abs(weights)), np.zeros(P)])
    return mu_q, mu_k


SLOW = np.linspace(0.1, 1.0, P)  # weight on slow pairs: a far-reaching profile
FAST = SLOW[::-1].copy()  # the same energy on fast pairs: a steeper, local profile


def test_pair_spectrum_reconstructs_the_rotated_logits_exactly():
    rng = np.random.default_rng(3)
    q, k = rng.normal(size=(5, HD)), rng.normal(size=(7, HD))
    m = PairMoments()
    m.update(0, torch.tensor(q)[None, None], torch.tensor(k)[None, None], torch.ones(1, 5, dtype=bool), torch.ones(1, 7, dtype=bool))
    ds = m.to_dataset(_pairs(), {0: 0.25}, np.arange(40))

    def rotate(x, pos):  # rotate_half RoPE
        c, s = np.cos(INV_FREQ * pos), np.sin(INV_FREQ * pos)
        a, b = x[..., :P], x[..., P:]
        return np.concatenate([a * c - b * s, b * c + a * s], -1)

    for delta in (0, 3, 17, 39):
        logits = [0.25 * rotate(qi, 100 + delta) @ rotate(kj, 100) for qi in q for kj in k]
        assert ds["rope_profile"].sel(layer=0, head=0, distance=delta) == pytest.approx(np.mean(logits), abs=1e-10)


@pytest.mark.parametrize("noise", [0.5, 2.0])
def test_spectral_fidelity_copy_near_one_failures_lower(noise):
    mu_q, mu_k = _means(SLOW)
    a_t, v_t, _ = _coef(mu_q, mu_k, 0.5, 4000, seed=0)
    copy = [spectral_fidelity(*_coef(mu_q, mu_k, noise, 4000, seed=s)[:1], a_t, _coef(mu_q, mu_k, noise, 4000, seed=s)[1], v_t)
            for s in range(1, 6)]
    assert np.mean(copy) == pytest.approx(1.0, abs=0.05)
    a_fast, v_fast, _ = _coef(*_means(FAST), noise, 4000, seed=7)
    a_flip, v_flip, _ = _coef(*_means(-SLOW), noise, 4000, seed=8)
    a_flat, v_flat, _ = _coef(*_means(0.1 * SLOW), noise, 4000, seed=9)
    assert spectral_fidelity(a_fast, a_t, v_fast, v_t) < 0.5
    assert spectral_fidelity(a_flip, a_t, v_flip, v_t) < -2.0
    assert spectral_fidelity(a_flat, a_t, v_flat, v_t) < 0.3


def test_fidelity_scores_are_labelled_and_plot_ready():
    _, _, ds = _coef(*_means(SLOW), 0.5, 100, seed=0)
    assert ds["pair_coef_abs"].dims == ("layer", "head", "rotary_pair")
    assert ds["rope_freq"].attrs["units"] == "cycles/token" or ds["rope_freq"].attrs["units"]
    assert ds["rope_profile"].sel(head=0).plot is not None
    assert isinstance(ds, xr.Dataset)


def test_scaled_fidelity_reads_shape_and_sign_not_scale():
    a_t = np.array(SLOW, dtype=complex)
    assert scaled_fidelity(0.3 * a_t, a_t) == pytest.approx(1.0) and scaled_fidelity(3.0 * a_t, a_t) == pytest.approx(1.0)
    assert spectral_fidelity(0.3 * a_t, a_t) < 0.6 and spectral_fidelity(3.0 * a_t, a_t) < 0  # the unnormalised score sees scale
    assert scaled_fidelity(-a_t, a_t) == pytest.approx(0.0)  # sign flipped: nothing explained
    assert scaled_fidelity(np.array(FAST, dtype=complex), a_t) < 0.5  # another shape stays clearly below 1 (0.31)
