"""ABLATION: FFT spectra of the distance profiles, the attention-reach classes, and the
low-frequency preservation score of a student against its teacher.

Kept to show what the exact per-pair spectrum (pair_spectrum.py) replaces: the periodogram below
is undetrended, unwindowed and ignores pair counts (the far end of a profile is its noisiest
part), and the preservation score normalises spectra to distributions, so it cannot tell a good
student from a bad one: on planted profiles (tests/test_analysis_scores.py) a noisier exact copy
scores low, while a steeper decay or a sign-flipped profile scores high. Do not read these as
results; the position-head classes live in key_activation.position_head_classes.

Power spectrum. Of each head's mean-logit distance profile logit(d), d = 0..n-1 (distance.py):
    power(f) = |rfft(x - mean(x))|^2 / n,   f = k / n cycles per distance unit (freq_distance)
Why the logit profile: it is linear in q . k, so under RoPE it is a sum over rotary pairs of
cosine-like terms at each pair's frequency: its spectrum shows which rotary frequencies shape the
head's positional response (compare rope_usage). The attention weights are a softmax of it:
compressed and dominated by a few keys. The mean is removed (a constant logit shift is not a
position effect); distances without pairs are linearly interpolated; no window is applied.

Low-frequency fraction. Energy at 0 < f <= cutoff over energy at f > 0, with
    cutoff = low_freq_cycles / n   (default 8 cycles over the analysed distance range)
i.e. components that change slower than 1/8 of the context. Defined in cycles per context
rather than per token, so the same setting means the same span in images for toy models
(~6 tokens per image) and real ones (~360).

Head classes. attention-weighted mean distance over the counted pairs, divided by the same for
a uniform causal head (`uniform` in the profile dataset):
    mean_distance_ratio = sum_d d A(d) n(d) / sum_d A(d) n(d)  /  (same with uniform(d))
A head whose attention reaches at least `global_threshold` (default 0.5) of the distance uniform
attention would reach is "global", else "local". Attention sinks on the first tokens make a head
look global; restrict keys to image tokens (the default of `laid diagnose`) to leave them out.

Preservation score (student vs teacher). Layers are paired by relative depth (last with last),
or explicitly. Each head's power is normalised to a distribution over f > 0; the teacher reference
of student head i is the mean of its teacher layer's heads, or, when LAid head weights hold this
layer pair, the |w_q[i, :]|-weighted mean (coordinate head_matching says which). Then
    preservation[i] = sum_{0<f<=cutoff} min(p_student_i(f), p_teacher_ref(f)) / sum_{0<f<=cutoff} p_teacher_ref(f)
in [0, 1]: the share of the teacher's low-frequency energy (relative to its total) that the student
head reproduces; 1 = at least as much low-frequency share at every low frequency. Both spectra
are taken over the common distance range of the two profiles so their frequency grids match.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
import xarray as xr

DEFAULT_LOW_FREQ_CYCLES = 8.0
DEFAULT_GLOBAL_THRESHOLD = 0.5


def fill_gaps(profile: xr.DataArray, dim: str = "distance") -> xr.DataArray:
    """Linear interpolation over NaN bins (distances without pairs), edges held constant."""
    if not bool(profile.isnull().any()):
        return profile
    x = profile.transpose(..., dim)
    flat = x.values.reshape(-1, x.shape[-1]).copy()
    pos = np.arange(flat.shape[1])
    for row in flat:  # np.interp interpolates linearly inside and holds the edge values outside
        ok = np.isfinite(row)
        row[:] = np.interp(pos, pos[ok], row[ok]) if ok.any() else 0.0
    return x.copy(data=flat.reshape(x.shape)).transpose(*profile.dims)


def power_spectrum(profile: xr.DataArray, dim: str = "distance") -> xr.DataArray:
    """|rfft(x - mean x)|^2 / n along `dim` -> same dims with `dim` replaced by freq_distance."""
    x = fill_gaps(profile, dim).transpose(..., dim)
    values = x.values - x.values.mean(axis=-1, keepdims=True)
    n = values.shape[-1]
    power = np.abs(scipy.fft.rfft(values, axis=-1)) ** 2 / n
    freq = scipy.fft.rfftfreq(n, d=1.0)
    dims = x.dims[:-1] + ("freq_distance",)
    coords = {d: x.coords[d] for d in x.dims[:-1] if d in x.coords}
    unit = {"positions": "cycles/position", "tokens": "cycles/token"}.get(str(x[dim].attrs.get("units", "")), "cycles/token") \
        if dim in x.coords else "cycles/token"
    coords["freq_distance"] = ("freq_distance", freq, {"units": unit, "long_name": "frequency over distance"})
    return xr.DataArray(power, dims=dims, coords=coords, name="power",
                        attrs={"long_name": "power of the mean-logit distance profile", "units": "1",
                               "n_distance": n})


def low_freq_cutoff(n_distance: int, cycles: float = DEFAULT_LOW_FREQ_CYCLES) -> float:
    return float(cycles) / float(n_distance)


def low_freq_fraction(power: xr.DataArray, cutoff: float) -> xr.DataArray:
    """Share of the non-DC power at 0 < f <= cutoff (NaN for a flat profile)."""
    f = power["freq_distance"]
    total = power.where(f > 0).sum("freq_distance")
    low = power.where((f > 0) & (f <= cutoff)).sum("freq_distance")
    out = (low / total.where(total > 0)).rename("low_freq_fraction")
    out.attrs = {"long_name": "low-frequency energy fraction", "units": "1", "cutoff_cycles_per_token": cutoff}
    return out


def classify_heads(profile: xr.Dataset, global_threshold: float = DEFAULT_GLOBAL_THRESHOLD) -> xr.Dataset:
    """mean_distance, mean_distance_ratio and head_class ("local"/"global") per (layer, head)."""
    d = profile["distance"].astype(float)
    n = profile["pair_count"].astype(float)
    attn = profile["attention"].fillna(0.0)
    mean_d = (d * attn * n).sum("distance") / (attn * n).sum("distance")
    uniform = profile["uniform"].fillna(0.0)
    uniform_d = float((d * uniform * n).sum() / (uniform * n).sum())
    ratio = mean_d / uniform_d if uniform_d > 0 else mean_d * np.nan
    labels = xr.where(ratio >= global_threshold, "global", "local").astype(str)
    units = str(profile["distance"].attrs.get("units", "tokens"))
    return xr.Dataset({
        "mean_distance": mean_d.assign_attrs(units=units, long_name="attention-weighted mean distance"),
        "mean_distance_ratio": ratio.assign_attrs(units="1", long_name="mean distance / uniform head's"),
        "reach_class": labels.assign_attrs(
            long_name="ABLATION: reach class over all queries (the old head_class)",
            rule=f"global if mean_distance_ratio >= {global_threshold} else local"),
    })


def spectra_dataset(profile: xr.Dataset, cycles: float = DEFAULT_LOW_FREQ_CYCLES,
                    global_threshold: float = DEFAULT_GLOBAL_THRESHOLD) -> xr.Dataset:
    """ABLATION: power(layer, head, freq_distance), low_freq_fraction(layer, head), reach classes."""
    power = power_spectrum(profile["logit"])
    cutoff = low_freq_cutoff(power.attrs["n_distance"], cycles)
    ds = xr.Dataset({"power": power, "low_freq_fraction": low_freq_fraction(power, cutoff)})
    ds = ds.merge(classify_heads(profile, global_threshold))
    ds.attrs.update(low_freq_cycles=float(cycles), low_freq_cutoff=cutoff, global_threshold=float(global_threshold))
    return ds


def default_layer_map(student_layers, teacher_layers, n_student: int | None = None, n_teacher: int | None = None) -> dict[int, int]:
    """Student layer l -> the analysed teacher layer nearest the same relative depth
    l / (n_student - 1) ~ t / (n_teacher - 1): last with last, as the paper pairs 27 (7B) with 63 (32B).
    n_student / n_teacher are the models' layer counts (default: largest analysed index + 1)."""
    s, t = [int(x) for x in student_layers], sorted(int(x) for x in teacher_layers)
    n_student = n_student or max(s) + 1
    n_teacher = n_teacher or max(t) + 1
    out = {}
    for layer in s:
        depth = layer / (n_student - 1) if n_student > 1 else 1.0
        target = depth * (n_teacher - 1)
        out[layer] = min(t, key=lambda x: (abs(x - target), -x))
    return out


def _normalized_power(logit: xr.DataArray, n: int) -> xr.DataArray:
    p = power_spectrum(logit.isel(distance=slice(0, n)))
    p = p.where(p["freq_distance"] > 0, 0.0)
    total = p.sum("freq_distance")
    return p / total.where(total > 0)


def _teacher_mix(head_weights: xr.Dataset | None, s_layer: int, t_layer: int, n_student: int, n_teacher: int) -> np.ndarray | None:
    """(student_head, teacher_head) |w_q| rows summing to 1 for this layer pair, None if the weights lack it."""
    if head_weights is not None and "student_layer" in head_weights.coords:
        match = (head_weights["student_layer"] == s_layer) & (head_weights["teacher_layer"] == t_layer)
        if bool(match.any()):
            w = np.abs(head_weights["w_q"].isel(layer_pair=int(np.argmax(match.values))).values)
            if w.shape == (n_student, n_teacher) and np.all(w.sum(1) > 0):
                return w / w.sum(1, keepdims=True)
    return None


def low_freq_preservation(student: xr.Dataset, teacher: xr.Dataset, layer_map: dict[int, int] | None = None,
                          head_weights: xr.Dataset | None = None,
                          cycles: float = DEFAULT_LOW_FREQ_CYCLES) -> xr.Dataset:
    """Compare two distance-profile datasets (see module docstring). Returns
    preservation(layer, head), layer_preservation(layer), low_freq_ratio(layer), preservation_score."""
    n = min(student.sizes["distance"], teacher.sizes["distance"])
    if n < 4:
        raise ValueError(f"distance profiles too short to compare ({n} distances); use larger haystacks")
    cutoff = low_freq_cutoff(n, cycles)
    layer_map = layer_map or default_layer_map(student["layer"].values, teacher["layer"].values,
                                               student.attrs.get("n_layers_total"), teacher.attrs.get("n_layers_total"))
    ps = _normalized_power(student["logit"], n)
    pt = _normalized_power(teacher["logit"], n)
    low = (ps["freq_distance"] > 0) & (ps["freq_distance"] <= cutoff)
    s_layers = [int(layer) for layer in student["layer"].values if int(layer) in layer_map]
    rows, ratios, matched = [], [], []
    for s_layer in s_layers:
        t_layer = layer_map[s_layer]
        if t_layer not in pt["layer"].values:
            raise ValueError(f"teacher layer {t_layer} (paired with student layer {s_layer}) was not analysed; "
                             f"analysed teacher layers: {pt['layer'].values.tolist()}")
        s = ps.sel(layer=s_layer).values  # (Hs, F)
        t = pt.sel(layer=t_layer).values  # (Ht, F)
        mix = _teacher_mix(head_weights, s_layer, t_layer, s.shape[0], t.shape[0])
        matched.append("head_weights" if mix is not None else "teacher_mean")
        if mix is None:
            mix = np.full((s.shape[0], t.shape[0]), 1.0 / t.shape[0])
        ref = mix @ t  # (Hs, F)
        m = low.values
        rows.append(np.minimum(s[:, m], ref[:, m]).sum(-1) / ref[:, m].sum(-1))
        ratios.append(np.nanmean(s[:, m].sum(-1)) / np.nanmean(t[:, m].sum(-1)))
    pres = np.array(rows)
    coords = {"layer": ("layer", s_layers, {"long_name": "student text decoder layer"}),
              "head": ("head", student["head"].values, {"long_name": "student query head"})}
    ds = xr.Dataset(
        {
            "preservation": (("layer", "head"), pres, {"long_name": "low-frequency preservation", "units": "1"}),
            "layer_preservation": (("layer",), np.nanmean(pres, axis=1), {"units": "1"}),
            "low_freq_ratio": (("layer",), np.array(ratios), {
                "units": "1", "long_name": "student / teacher mean low-frequency fraction"}),
            "preservation_score": ((), float(np.nanmean(pres)), {"units": "1", "long_name": "mean over heads and layers"}),
        },
        coords=coords,
    )
    ds = ds.assign_coords(teacher_layer=("layer", [layer_map[i] for i in s_layers]),
                          head_matching=("layer", matched))
    ds.attrs.update(low_freq_cycles=float(cycles), low_freq_cutoff=cutoff, n_distance=n)
    return ds
