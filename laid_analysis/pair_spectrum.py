"""Each head's exact spectrum in its own RoPE frequencies, a virtual teacher head, and fidelity scores.

Rotary pair p of a head dim D holds dims (p, p + D/2) (rotate_half layout); as a complex number
z_p = x[p] + i x[p + D/2], RoPE multiplies it by e^{i theta_p m} at position m. So the pair's part
of a logit between a query at m and a key at n is Re(q_p conj(k_p) e^{i theta_p (m - n)}), with
q, k pre-RoPE. Averaging over every (query, key) combination of a query population Q and a key
population K (the chosen token selections) gives, for a key placed delta positions before a query
on all three M-RoPE axes (as between text tokens),

    L(delta) = sum_p Re(a_p e^{i theta_p delta}),   a_p = scaling * E_Q[q_p] conj(E_K[k_p])

(the expectation over all combinations factorises). a_p is the head's Fourier series in its own
rotation frequencies: exact, with no FFT leakage, no interpolation, no window. Variables:
pair_coef_re/_im(layer, head, rotary_pair), its sampling variance pair_coef_var (delta method,
tokens treated as independent), and rope_profile(layer, head, distance) = L(delta).

Virtual teacher head (LAid Eq. 3). A student head i is trained toward Q_i ~ sum_j w_q[i, j] Q^t_j
and K_g ~ sum_j w_k[g, j] K^t_j. Means are linear, so its coefficients are
    a^v_{i,p} = scaling * (w_q E[q^t])_{i,p} conj((w_k E[k^t])_{g(i),p})
built from the teacher's stored means and the mixers as saved in head_weights.nc. Signed and
unnormalised: a student with the right shape at half the amplitude, or the opposite sign, differs.

Scores (per student head; 1 = identical, 0 = no better than a flat profile, < 0 worse than flat):
    spectral_fidelity = 1 - (sum_p |a^s_p - a^v_p|^2 - sum_p (var^s_p + var^v_p))
                            / (sum_p |a^v_p|^2 - sum_p var^v_p)
    profile_fidelity  = 1 - (sum_d w_d (x^s_d - x^t_d)^2 - sum_d w_d (se^s_d^2 + se^t_d^2))
                            / (sum_d w_d (x^t_d)^2 - sum_d w_d se^t_d^2)
where x are profiles minus their weighted mean (a constant logit shift changes no attention
weight), w_d the pair counts over the well-sampled distances (count >= min_share * max count), and
se the standard errors. Subtracting the expected noise terms makes an exact copy score ~1 at any
noise level when the two estimates come from independent samples (tests/test_analysis_scores.py
plants copies, steeper, flattened and sign-flipped profiles; the old spectra.low_freq_preservation
fails those checks and is kept as an ablation). `laid diagnose` runs student and teacher on the
same haystacks, so their sampling noise is shared, not independent: an exact copy then scores
exactly 1 without any correction, and compare_spectra applies none (paired estimates).
`spectral_fidelity_scaled` = 1 - min_{c>=0} sum|a^s - c a^v|^2 / sum|a^s|^2, the share of the
student's spectrum that a non-negative multiple of its virtual head explains: under issue 12's
`alignment: cosine` the mixers match directions only, so the virtual head's scale is not a target;
the sign still counts (a flipped head scores 0, a different shape low).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
import xarray as xr

DEFAULT_MIN_SHARE = 0.05


def to_complex(x: torch.Tensor | np.ndarray):
    """(..., D) real -> (..., D/2) complex pairs z_p = x[p] + i x[p + D/2]."""
    half = x.shape[-1] // 2
    return x[..., :half] + 1j * x[..., half:]


class PairMoments:
    """Per-layer sums of pre-RoPE q over selected queries and k over selected keys (and |.|^2 per pair)."""

    def __init__(self):
        self.sums = defaultdict(lambda: [0.0, 0.0, 0, 0.0, 0.0, 0])  # q, |q_p|^2, n_q, k, |k_p|^2, n_k

    def update(self, layer: int, q, k, query_mask, key_mask) -> None:
        """q (B, H, S, D), k (B, H_kv, S, D) pre-RoPE; masks (B, S) bool."""
        qm = query_mask.to(q.device)[:, None, :, None].to(torch.float64)
        km = key_mask.to(k.device)[:, None, :, None].to(torch.float64)
        q, k = q.double(), k.double()
        half = q.shape[-1] // 2
        acc = self.sums[layer]
        acc[0] = acc[0] + (q * qm).sum(dim=(0, 2)).cpu()
        acc[1] = acc[1] + ((q[..., :half] ** 2 + q[..., half:] ** 2) * qm).sum(dim=(0, 2)).cpu()
        acc[2] += int(query_mask.sum())
        acc[3] = acc[3] + (k * km).sum(dim=(0, 2)).cpu()
        acc[4] = acc[4] + ((k[..., :half] ** 2 + k[..., half:] ** 2) * km).sum(dim=(0, 2)).cpu()
        acc[5] += int(key_mask.sum())

    def to_dataset(self, pairs: xr.Dataset, scaling: dict[int, float], distance: np.ndarray) -> xr.Dataset:
        if not self.sums:
            raise ValueError("no Q/K moments accumulated: run the model on at least one haystack first")
        layers = sorted(self.sums)
        stats = [[np.asarray(t) for t in self.sums[i]] for i in layers]
        n_q = max(stats[0][2], 1)
        n_k = max(stats[0][5], 1)
        q_mean = np.stack([s[0] / n_q for s in stats])  # (L, H, D)
        k_mean = np.stack([s[3] / n_k for s in stats])  # (L, H_kv, D)
        q_var = np.stack([s[1] / n_q for s in stats]) - np.abs(to_complex(q_mean)) ** 2  # (L, H, P)
        k_var = np.stack([s[4] / n_k for s in stats]) - np.abs(to_complex(k_mean)) ** 2
        ds = xr.Dataset(
            {
                "q_mean": (("layer", "head", "head_dim"), q_mean, {"long_name": "mean pre-RoPE query", "units": "1"}),
                "k_mean": (("layer", "kv_head", "head_dim"), k_mean, {"long_name": "mean pre-RoPE key", "units": "1"}),
                "q_pair_var": (("layer", "head", "rotary_pair"), np.clip(q_var, 0, None),
                               {"long_name": "variance of the complex query pair over tokens", "units": "1"}),
                "k_pair_var": (("layer", "kv_head", "rotary_pair"), np.clip(k_var, 0, None),
                               {"long_name": "variance of the complex key pair over tokens", "units": "1"}),
                "scaling": (("layer",), np.array([scaling[i] for i in layers]), {"long_name": "logit scaling", "units": "1"}),
            },
            coords={"layer": ("layer", layers, {"long_name": "text decoder layer"}),
                    "head": np.arange(q_mean.shape[1]), "kv_head": np.arange(k_mean.shape[1])},
        ).assign_coords(pairs.coords)
        ds.attrs.update(n_spectrum_queries=int(n_q), n_spectrum_keys=int(n_k))
        return ds.merge(coefficients(ds, distance))


def _group(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """k (..., H_kv, X) repeated to q's heads (..., H, X): head h reads KV head h // (H / H_kv)."""
    return np.repeat(k, q.shape[-2] // k.shape[-2], axis=-2)


def coefficients(moments: xr.Dataset, distance: np.ndarray) -> xr.Dataset:
    """pair_coef_re/_im/_var (layer, head, rotary_pair) and rope_profile (layer, head, distance) from
    q_mean, k_mean, q_pair_var, k_pair_var, scaling (see the module docstring)."""
    mq, mk = to_complex(moments["q_mean"].values), to_complex(moments["k_mean"].values)  # (L, H, P), (L, H_kv, P)
    mk, vk = _group(mq, mk), _group(mq, moments["k_pair_var"].values)
    vq = moments["q_pair_var"].values
    n_q, n_k = moments.attrs.get("n_spectrum_queries", np.inf), moments.attrs.get("n_spectrum_keys", np.inf)
    s = moments["scaling"].values[:, None, None]
    a = s * mq * np.conj(mk)
    var = s**2 * (np.abs(mk) ** 2 * vq / n_q + np.abs(mq) ** 2 * vk / n_k)
    return coefficient_dataset(a, var, moments, distance)


def coefficient_dataset(a: np.ndarray, var: np.ndarray, like: xr.Dataset, distance: np.ndarray) -> xr.Dataset:
    theta = 2 * np.pi * like["rope_freq"].values  # (P,) radians per position
    distance = np.asarray(distance, dtype=float)
    profile = np.real(a[..., None] * np.exp(1j * theta[:, None] * distance[None, :])).sum(-2)  # (L, H, dist)
    dims = ("layer", "head", "rotary_pair")
    coords = {c: like.coords[c] for c in ("layer", "head", "rotary_pair", "rope_freq", "rope_period", "rope_axis")
              if c in like.coords}
    return xr.Dataset(
        {
            "pair_coef_re": (dims, a.real, {"long_name": "Re a_p = Re scaling E[q_p] conj E[k_p]", "units": "1"}),
            "pair_coef_im": (dims, a.imag, {"long_name": "Im a_p", "units": "1"}),
            "pair_coef_abs": (dims, np.abs(a), {"long_name": "|a_p|: logit amplitude of rotary pair p", "units": "1"}),
            "pair_coef_var": (dims, var, {"long_name": "sampling variance of a_p (delta method)", "units": "1"}),
            "rope_profile": (("layer", "head", "distance"), profile, {
                "long_name": "sum_p Re(a_p e^{i theta_p delta}): mean logit with the key delta positions back",
                "units": "1"}),
        },
        coords={**coords, "distance": ("distance", distance.astype(int), {"units": "positions",
                                                                          "long_name": "query - key position"})},
    )


def complex_coef(ds: xr.Dataset, prefix: str = "pair_coef") -> xr.DataArray:
    return ds[f"{prefix}_re"] + 1j * ds[f"{prefix}_im"]


def virtual_teacher(teacher: xr.Dataset, w_q: np.ndarray | None, w_k: np.ndarray | None, t_layer: int,
                    n_student_heads: int, n_student_kv: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(a (H_s, P) complex, var (H_s, P), how) of the virtual teacher heads at one teacher layer.
    w_q (H_s, H_t), w_k (H_s_kv, H_t_kv) as saved; None -> every student head gets the teacher
    mean (how = "teacher_mean", a fallback without mixers)."""
    t = teacher.sel(layer=t_layer)
    mq, mk = to_complex(t["q_mean"].values), to_complex(t["k_mean"].values)  # (H_t, P), (H_t_kv, P)
    how = "head_weights"
    if w_q is None or w_k is None:
        w_q = np.full((n_student_heads, mq.shape[0]), 1.0 / mq.shape[0])
        w_k = np.full((n_student_kv, mk.shape[0]), 1.0 / mk.shape[0])
        how = "teacher_mean"
    vq_m, vk_m = w_q @ mq, w_k @ mk  # (H_s, P), (H_s_kv, P)
    # Cross-head covariances are not stored: variances propagate as if teacher heads were independent.
    vq = (w_q**2) @ t["q_pair_var"].values / teacher.attrs.get("n_spectrum_queries", np.inf)
    vk = (w_k**2) @ t["k_pair_var"].values / teacher.attrs.get("n_spectrum_keys", np.inf)
    vk_m, vk = _group(vq_m, vk_m), _group(vq_m, vk)
    s = float(t["scaling"])
    a = s * vq_m * np.conj(vk_m)
    var = s**2 * (np.abs(vk_m) ** 2 * vq + np.abs(vq_m) ** 2 * vk)
    return a, var, how


def spectral_fidelity(a_s, a_t, var_s=0.0, var_t=0.0, axis: int = -1) -> np.ndarray:
    """Debiased 1 - |a_s - a_t|^2 / |a_t|^2 summed over rotary pairs (module docstring)."""
    a_s, a_t = np.asarray(a_s), np.asarray(a_t)
    var_s, var_t = np.broadcast_to(var_s, a_s.shape), np.broadcast_to(var_t, a_t.shape)
    err = (np.abs(a_s - a_t) ** 2).sum(axis) - (var_s + var_t).sum(axis)
    ref = (np.abs(a_t) ** 2).sum(axis) - var_t.sum(axis)
    return 1.0 - err / np.where(ref > 0, ref, np.nan)


def best_scale(a_s, a_t, axis: int = -1) -> np.ndarray:
    """c >= 0 minimising sum|a_s - c a_t|^2: Re<a_s, a_t> / |a_t|^2 (0 when they point apart)."""
    num = np.real((np.asarray(a_s) * np.conj(a_t)).sum(axis))
    den = (np.abs(a_t) ** 2).sum(axis)
    return np.clip(num / np.where(den > 0, den, np.nan), 0.0, None)


def scaled_fidelity(a_s, a_t, axis: int = -1) -> np.ndarray:
    """1 - min_{c >= 0} sum|a_s - c a_t|^2 / sum|a_s|^2: the share of the student's spectrum that a
    non-negative multiple of the virtual head explains (1 = same shape and sign, 0 = opposite or none)."""
    a_s, a_t = np.asarray(a_s), np.asarray(a_t)
    c = np.expand_dims(best_scale(a_s, a_t, axis), axis)
    ref = (np.abs(a_s) ** 2).sum(axis)
    return 1.0 - (np.abs(a_s - c * a_t) ** 2).sum(axis) / np.where(ref > 0, ref, np.nan)


def profile_fidelity(x_s, x_t, count, se_s=0.0, se_t=0.0, min_share: float = DEFAULT_MIN_SHARE) -> np.ndarray:
    """Debiased, pair-count weighted R^2 of student profile x_s against teacher x_t along the last
    axis (distance), over distances with count >= min_share * max(count) (module docstring)."""
    x_s, x_t = np.asarray(x_s, float), np.asarray(x_t, float)
    count = np.asarray(count, float)
    w = np.where(count >= min_share * count.max(), count, 0.0)
    se_s, se_t = np.broadcast_to(se_s, x_s.shape), np.broadcast_to(se_t, x_t.shape)
    ok = (w > 0) & np.isfinite(x_s) & np.isfinite(x_t)
    w = np.where(ok, w, 0.0)
    x_s, x_t = np.where(ok, x_s, 0.0), np.where(ok, x_t, 0.0)
    se_s, se_t = np.where(ok, np.nan_to_num(se_s), 0.0), np.where(ok, np.nan_to_num(se_t), 0.0)
    wsum = w.sum(-1, keepdims=True)
    c_s = x_s - (w * x_s).sum(-1, keepdims=True) / wsum
    c_t = x_t - (w * x_t).sum(-1, keepdims=True) / wsum
    err = (w * (c_s - c_t) ** 2).sum(-1) - (w * (se_s**2 + se_t**2)).sum(-1)
    ref = (w * c_t**2).sum(-1) - (w * se_t**2).sum(-1)
    return 1.0 - err / np.where(ref > 0, ref, np.nan)


def _mixers(head_weights: xr.Dataset | None, s_layer: int, t_layer: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    if head_weights is None or "student_layer" not in head_weights.coords:
        return None, None
    match = (head_weights["student_layer"] == s_layer) & (head_weights["teacher_layer"] == t_layer)
    if not bool(match.any()):
        return None, None
    lp = int(np.argmax(match.values))
    return head_weights["w_q"].isel(layer_pair=lp).values, head_weights["w_k"].isel(layer_pair=lp).values


def compare_spectra(student: xr.Dataset, teacher: xr.Dataset, layer_map: dict[int, int],
                    head_weights: xr.Dataset | None = None, min_share: float = DEFAULT_MIN_SHARE) -> xr.Dataset:
    """Student heads against their virtual teacher heads, per paired layer: virtual_coef_re/_im/_var
    (layer, head, rotary_pair), virtual_profile (layer, head, distance), spectral_fidelity and
    profile_fidelity (layer, head), their means fidelity_score / profile_score. layer_map: student
    layer -> teacher layer (absolute); head_weights with absolute student_layer/teacher_layer coords."""
    s_layers = [int(x) for x in student["layer"].values if int(x) in layer_map]
    n_h, n_kv = student.sizes["head"], student.sizes["kv_head"]
    if student.sizes["rotary_pair"] != teacher.sizes["rotary_pair"] or \
            not np.allclose(student["rope_freq"].values, teacher["rope_freq"].values, rtol=1e-5):
        raise ValueError(f"student and teacher rotary pairs differ ({student.sizes['rotary_pair']} vs "
                         f"{teacher.sizes['rotary_pair']} pairs, or other frequencies): their spectra are not compared "
                         "pair by pair; diagnose each model on its own")
    a_s_all = complex_coef(student)
    count = student["pair_count"].values
    dist = student["distance"].values
    theta = 2 * np.pi * student["rope_freq"].values
    a_v, var_v, how, spec, prof, scaled = [], [], [], [], [], []
    for layer in s_layers:
        t_layer = layer_map[layer]
        if t_layer not in teacher["layer"].values:
            raise ValueError(f"teacher layer {t_layer} (paired with student layer {layer}) was not analysed; "
                             f"analysed teacher layers: {teacher['layer'].values.tolist()}")
        w_q, w_k = _mixers(head_weights, layer, t_layer)
        if w_q is not None and (w_q.shape[0] != n_h or w_k.shape[0] != n_kv):
            raise ValueError(f"head weights for layers {layer}<-{t_layer} have shape {w_q.shape}/{w_k.shape}; "
                             f"the student has {n_h} heads / {n_kv} KV heads: wrong head_weights.nc for this checkpoint")
        a, var, h = virtual_teacher(teacher, w_q, w_k, t_layer, n_h, n_kv)
        a_s = a_s_all.sel(layer=layer).values
        a_v.append(a), var_v.append(var), how.append(h)
        spec.append(spectral_fidelity(a_s, a))  # paired: same haystacks, shared noise (module docstring)
        scaled.append(scaled_fidelity(a_s, a))
        x_s = student["rope_profile"].sel(layer=layer).values
        x_v = np.real(a[..., None] * np.exp(1j * theta[:, None] * dist[None, :])).sum(-2)
        prof.append(profile_fidelity(x_s, x_v, count, min_share=min_share))
    a_v, var_v = np.array(a_v), np.array(var_v)
    x_v = np.real(a_v[..., None] * np.exp(1j * theta[:, None] * dist[None, :])).sum(-2)
    dims = ("layer", "head", "rotary_pair")
    ds = xr.Dataset(
        {
            "virtual_coef_re": (dims, a_v.real, {"long_name": "Re a_p of the virtual teacher head", "units": "1"}),
            "virtual_coef_im": (dims, a_v.imag, {"long_name": "Im a_p of the virtual teacher head", "units": "1"}),
            "virtual_coef_var": (dims, var_v, {"long_name": "sampling variance of the virtual a_p", "units": "1"}),
            "virtual_profile": (("layer", "head", "distance"), x_v, {
                "long_name": "virtual teacher head's sum_p Re(a_p e^{i theta_p delta})", "units": "1"}),
            "spectral_fidelity": (("layer", "head"), np.array(spec), {
                "long_name": "debiased 1 - sum|a_s - a_v|^2 / sum|a_v|^2", "units": "1"}),
            "spectral_fidelity_scaled": (("layer", "head"), np.array(scaled), {
                "long_name": "1 - min_c>=0 sum|a_s - c a_v|^2 / sum|a_s|^2 (scale-free, signed by c >= 0)", "units": "1",
                "description": "under `alignment: cosine` the mixers match directions, so a virtual head's scale is "
                               "arbitrary; this reads the shape and sign only (a sign flip still scores <= 0)"}),
            "profile_fidelity": (("layer", "head"), np.array(prof), {
                "long_name": "debiased pair-count weighted R^2 of the reconstructed profiles", "units": "1",
                "min_share": min_share}),
        },
        coords={"layer": ("layer", s_layers, {"long_name": "student text decoder layer"}),
                "head": student["head"].values, "rotary_pair": student["rotary_pair"].values,
                "distance": student["distance"], "teacher_layer": ("layer", [layer_map[i] for i in s_layers]),
                "head_matching": ("layer", how)},
    )
    ds["fidelity_score"] = ((), float(np.nanmean(spec)), {"long_name": "mean spectral_fidelity", "units": "1"})
    ds["profile_score"] = ((), float(np.nanmean(prof)), {"long_name": "mean profile_fidelity", "units": "1"})
    return ds
