"""Spectra, head classes, preservation score, key-activation normalisation, RoPE pairs, head weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from laid.model.families import AttentionPattern
from laid_analysis.distance import profile_dataset
from laid_analysis.head_weights import head_weight_summary, load_head_weights
from laid_analysis.key_activation import AnswerStats, stack_models
from laid_analysis.rope_usage import rope_usage_dataset, rotary_pair_coords
from laid_analysis.spectra import (classify_heads, default_layer_map, low_freq_fraction, low_freq_preservation,
                                   power_spectrum, spectra_dataset)


def _profile(logit: np.ndarray, attention: np.ndarray | None = None) -> xr.Dataset:
    """A distance-profile dataset from (L, H, n) logits; pairs S - d of a length-n sequence."""
    import torch

    L, H, n = logit.shape
    count = torch.arange(n, 0, -1)
    attention = np.full_like(logit, 1.0 / n) if attention is None else attention
    uniform = torch.full((n,), 1.0 / n, dtype=torch.float64)
    return profile_dataset(torch.tensor(attention) * count, torch.tensor(logit) * count, uniform * count, count, range(L))


def test_spectrum_of_cosine_peaks_at_its_frequency():
    n, period = 240, 16.0
    d = np.arange(n)
    x = xr.DataArray(np.stack([np.cos(2 * np.pi * d / period) + 3.0, np.cos(2 * np.pi * d / 60.0)]),
                     dims=("head", "distance"), coords={"distance": d})
    p = power_spectrum(x)
    assert p.dims == ("head", "freq_distance") and p["freq_distance"].attrs["units"] == "cycles/token"
    peaks = p["freq_distance"].values[p.argmax("freq_distance").values]
    np.testing.assert_allclose(peaks, [1 / period, 1 / 60.0])
    assert float(p.isel(head=0, freq_distance=0)) == pytest.approx(0.0, abs=1e-9)  # the constant is removed
    # NaN gaps (distances without pairs) are interpolated, not propagated.
    gappy = x.copy()
    gappy[0, 50:53] = np.nan
    gp = power_spectrum(gappy)
    assert np.isfinite(gp).all() and float(gp.isel(head=0).idxmax("freq_distance")) == pytest.approx(1 / period)


def test_low_freq_fraction_separates_slow_and_fast_profiles():
    n = 256
    d = np.arange(n)
    slow = np.cos(2 * np.pi * d / 128)  # 2 cycles over the range: below the 8-cycle cutoff
    fast = np.cos(2 * np.pi * d / 4)
    p = power_spectrum(xr.DataArray(np.stack([slow, fast]), dims=("head", "distance")))
    lff = low_freq_fraction(p, cutoff=8 / n).values
    assert lff[0] > 0.99 and lff[1] < 0.01


def test_head_classes_from_attention_reach():
    n = 100
    local = np.zeros(n); local[:3] = 1.0  # only the nearest keys
    spread = np.full(n, 1.0 / n)  # like a uniform head
    prof = _profile(np.zeros((1, 2, n)), np.stack([local, spread])[None])
    cls = classify_heads(prof, global_threshold=0.5)
    assert cls["reach_class"].values.tolist() == [["local", "global"]]
    assert float(cls["mean_distance_ratio"].sel(layer=0, head=1)) == pytest.approx(1.0)
    assert float(cls["mean_distance_ratio"].sel(layer=0, head=0)) < 0.1


def test_preservation_score_properties():
    n = 200
    d = np.arange(n)
    rng = np.random.default_rng(0)
    teacher_logit = np.stack([np.cos(2 * np.pi * d / 100) + 0.1 * rng.normal(size=n) for _ in range(4)])[None]
    teacher = _profile(teacher_logit)
    identity = xr.Dataset({"w_q": (("layer_pair", "student_head", "teacher_head"), np.eye(4)[None])},
                          coords={"student_layer": ("layer_pair", [0]), "teacher_layer": ("layer_pair", [0])})
    same = low_freq_preservation(teacher, teacher, head_weights=identity)
    np.testing.assert_allclose(same["preservation"].values, 1.0)  # each head against itself
    assert float(low_freq_preservation(teacher, teacher)["preservation_score"]) > 0.99  # against the head mean
    # A student that kept only fast components loses the teacher's low-frequency energy.
    fast_student = _profile(np.stack([np.cos(2 * np.pi * d / 3) + 0.1 * rng.normal(size=n) for _ in range(2)])[None])
    lost = low_freq_preservation(fast_student, teacher)
    assert lost.sizes["head"] == 2 and float(lost["preservation_score"]) < 0.1
    assert float(lost["low_freq_ratio"].sel(layer=0)) < 0.1
    # Head weights that point each student head at one teacher head are used when they name the pair.
    hw = xr.Dataset({"w_q": (("layer_pair", "student_head", "teacher_head"), np.eye(2, 4)[None])},
                    coords={"student_layer": ("layer_pair", [0]), "teacher_layer": ("layer_pair", [0])})
    mixed = low_freq_preservation(fast_student, teacher, head_weights=hw)
    assert str(mixed["head_matching"].sel(layer=0).values) == "head_weights"
    assert str(lost["head_matching"].sel(layer=0).values) == "teacher_mean"


def test_default_layer_map_pairs_by_relative_depth():
    assert default_layer_map([0, 1, 2], range(4), 3, 4) == {0: 0, 1: 2, 2: 3}
    assert default_layer_map([27], [62, 63], 28, 64) == {27: 63}  # the paper's pairing
    assert default_layer_map([1], [0, 3], 2, 4) == {1: 3}


def test_spectra_dataset_is_plot_ready():
    n = 64
    prof = _profile(np.cos(2 * np.pi * np.arange(n) / 8)[None, None, :].repeat(3, axis=1))
    ds = spectra_dataset(prof)
    assert set(ds.data_vars) >= {"power", "low_freq_fraction", "reach_class", "mean_distance_ratio"}
    assert ds["power"].sel(head=1).dims == ("layer", "freq_distance")
    assert ds.attrs["low_freq_cutoff"] == pytest.approx(8 / n)


IMG, START = 7, 5  # image-pad and vision-start token ids of the synthetic haystacks


def _haystack(n_images, needle, tokens_per_image=4, prefix=4, suffix=3, local_slope=0.0, needle_logit=5.0):
    """One synthetic haystack for AnswerStats: ids, positions and q/k such that the answer query's
    logit is needle_logit on the needle's tokens, 0 on the others, minus local_slope per position
    of distance (head 1) or not (head 0). Returns (q (1, 2, S, 2), k (1, 1, S, 2), ids, pos)."""
    ids, pos, p = [1] * prefix, list(range(prefix)), prefix
    for _ in range(n_images):
        ids += [START] + [IMG] * tokens_per_image
        pos += [p] + [p + 1] * tokens_per_image  # one temporal id per image, as M-RoPE gives
        p += 3
    ids += [2] * suffix
    pos += list(range(p, p + suffix))
    S = len(ids)
    ids_t, pos_t = torch.tensor(ids)[None], torch.tensor(pos)[None]
    spans = [(prefix + i * (tokens_per_image + 1) + 1, prefix + (i + 1) * (tokens_per_image + 1)) for i in range(n_images)]
    # k dim 0: needle indicator; k dim 1: position. q at the answer row reads them.
    k = torch.zeros(1, 1, S, 2)
    s, e = spans[needle]
    k[0, 0, s:e, 0] = needle_logit
    k[0, 0, :, 1] = pos_t[0].float()
    q = torch.zeros(1, 2, S, 2)
    q[0, :, -1, 0] = 1.0
    q[0, 1, -1, 1] = local_slope  # logit + slope * key position = const - slope * distance
    return q, k, ids_t, pos_t


def test_needle_margin_and_mass_do_not_dilute_but_the_old_statistic_does():
    rng = np.random.default_rng(0)
    sizes = (1, 5, 20, 150)
    stats = AnswerStats(IMG, START)
    for n in sizes:
        for j in range(3):
            needle = int(rng.integers(n))
            q, k, ids, pos = _haystack(n, needle, local_slope=0.05)
            stats.update(0, n, q, k, 1.0, ids, torch.ones_like(ids, dtype=torch.bool), pos, [needle],
                         pattern=AttentionPattern.causal(q.shape[-1]))
    ds = stats.to_dataset(local_threshold=1.0)
    old = ds["key_activation_raw"].sel(layer=0, head=0).mean("sample")
    np.testing.assert_allclose(old.values, [5.0, 1.0, 0.25, 5 / 150], rtol=1e-5)  # 5/N: dilution
    margin = ds["needle_margin_mean"].sel(layer=0, head=0)
    assert np.isnan(margin.sel(haystack_size=1)) and np.allclose(margin.sel(haystack_size=[5, 20, 150]), 5.0)
    mass = ds["needle_mass_mean"].sel(layer=0, head=0).values
    assert mass[0] > mass[-1] > 0.1  # softmax mass: falls only as the distractors' total weight grows
    # Head 1 prefers near keys: positive locality with an interval; head 0 none -> classes.
    assert float(ds["head_locality"].sel(layer=0, head=1)) == pytest.approx(5.0, rel=0.2)
    assert abs(float(ds["head_locality"].sel(layer=0, head=0))) < 0.5
    assert ds["head_class"].sel(layer=0).values.tolist() == ["global", "local"]
    assert ds["head_locality_lo"].sel(layer=0, head=1) <= ds["head_locality"].sel(layer=0, head=1) <= ds["head_locality_hi"].sel(layer=0, head=1)
    # Health: a row's mass sums to <= 1, the sink holds the prefix and <|vision_start|> mass.
    assert (ds["sink_mass"] + ds["image_mass"] <= 1 + 1e-6).all() and (ds["attn_entropy"] > 0).all()
    both = stack_models({"a": ds, "b": ds.isel(head=[0])}, ("needle_mass_mean",))
    assert both["needle_mass_mean"].dims == ("model", "layer", "head", "haystack_size")
    assert np.isnan(both["needle_mass_mean"].sel(model="b", head=1)).all()


def test_rope_pairs_follow_mrope_sections(random_zoo):
    from laid.model.loading import load_model
    from laid_analysis.rope_usage import rotary_pairs

    model = load_model(random_zoo["tiny-3b"], device="cpu")
    pairs = rotary_pairs(model)
    assert pairs.sizes["rotary_pair"] == 16  # head_dim 32
    assert pairs["rope_axis"].values.tolist() == ["temporal"] * 4 + ["height"] * 6 + ["width"] * 6
    np.testing.assert_allclose(pairs["rope_freq"].values[0], 1 / (2 * np.pi))  # inv_freq[0] = 1 rad/position
    assert np.all(np.diff(pairs["rope_freq"].values) < 0)
    q = np.ones((1, 2, 16)); k = np.ones((1, 1, 16)); k[0, 0, 3] = 3.0
    usage = rope_usage_dataset(q, k, [0], rotary_pair_coords(np.geomspace(1, 1e-6, 16), ["temporal"] * 16))
    np.testing.assert_allclose(usage["rope_usage"].sum("rotary_pair"), 1.0)
    assert int(usage["rope_usage"].sel(layer=0, head=1).argmax("rotary_pair")) == 3


def _weights(path, w_q, w_k=None):
    w_k = np.ones((1, 1, 2)) if w_k is None else w_k
    xr.Dataset({"w_q": (("layer_pair", "student_head", "teacher_head"), w_q),
                "w_k": (("layer_pair", "student_kv_head", "teacher_kv_head"), w_k)},
               coords={"student_layer": ("layer_pair", [2]), "teacher_layer": ("layer_pair", [3])}).to_netcdf(path)
    return path


def test_head_weights_load_validate_and_summarise(tmp_path):
    w_q = np.array([[[0.1, -0.6, 0.2, 0.1], [0.4, 0.0, 0.0, 0.4]]])  # 2 student heads x 4 teacher heads
    hw = load_head_weights(_weights(tmp_path / "hw.nc", w_q))
    assert hw["teacher_head"].values.tolist() == [0, 1, 2, 3]
    summary = head_weight_summary(hw)
    assert summary["w_q_top_teacher"].values.tolist() == [[1, 0]]
    assert summary["w_q_top_weight"].values.tolist() == [[-0.6, 0.4]]
    np.testing.assert_allclose(summary["w_q_top_share"].values, [[0.6, 0.5]])
    np.testing.assert_allclose(summary["w_q_teacher_importance"].sum("teacher_head"), 2.0)
    with pytest.raises(FileNotFoundError, match="head_weights.nc"):
        load_head_weights(tmp_path / "missing.nc")
    bad = w_q.copy(); bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        load_head_weights(_weights(tmp_path / "nan.nc", bad))
    xr.Dataset({"w_q": (("a", "b"), np.ones((2, 2)))}).to_netcdf(tmp_path / "wrong.nc")
    with pytest.raises(ValueError, match="w_q has dims"):
        load_head_weights(tmp_path / "wrong.nc")
