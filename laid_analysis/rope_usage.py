"""Which RoPE frequencies each head uses: energy of q and k in each 2-D rotary pair.

Every supported family rotates dims (p, p + D/2) together (the rotate_half layout) at angle
position * inv_freq[p], so pair p is a 2-D subspace turning at inv_freq[p] / 2pi cycles per position
(a position id, not a token index: in the Qwen-VL families an image's tokens share one temporal id).
Which position axis rotates pair p is the family's rotary layout (`laid.model.families`): M-RoPE
sections read contiguously (Qwen2-VL, Qwen2.5-VL: [16, 24, 24] -> temporal, height, width blocks;
[4, 6, 6] in the toy) or interleaved (Qwen3-VL: t h w t h w ...), or one axis (InternVL3, Gemma 3).
For text tokens the three M-RoPE ids are equal; inside an image, height/width pairs follow the patch
grid. Gemma 3's sliding and full layers have different frequencies: one analysis covers layers of
one layout (`rotary_pairs` refuses a mix).

Usage. The contribution of pair p to a logit is q_p . k_p <= |q_p| |k_p| (a rotation does not
change either norm, so pre- and post-RoPE give the same numbers), hence
    rope_usage[h, p] = mean|q_p| * mean|k_p| / sum over pairs
(means over the selected query / key tokens; k from the KV head that query head h reads). A head
whose usage sits in fast pairs (short periods) can only form position-sharp, local patterns; one
that uses slow pairs can respond coherently across long distances.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch
import xarray as xr


def rotary_pairs(model, layers=None) -> xr.Dataset:
    """Coordinates of the rotary pairs of a model's text RoPE at `layers` (None = all): frequency,
    period and position axis, from the family's rotary layout (the model's own rotary module, so
    YaRN-scaled frequencies and Qwen3-VL's interleaving are what the model uses)."""
    from laid.model.families import family_of, text_decoder

    family = family_of(model)
    layers = range(len(text_decoder(model)[1])) if layers is None else layers
    layouts = {i: family.layer_rotary_layout(model, i) for i in layers}
    kinds = {lay.signature(): i for i, lay in layouts.items()}
    if len(kinds) > 1:
        types = family.layer_types(model.config)
        groups = {t: [i for i in layouts if types[i] == t] for t in sorted({types[i] for i in layouts})}
        raise ValueError(f"{family.label} layers {sorted(layouts)} have {len(kinds)} RoPE layouts ("
                         + "; ".join(f"{t}: {v}" for t, v in groups.items()) + "): analyse one layout per run (--layers)")
    lay = next(iter(layouts.values()))
    return rotary_pair_coords(lay.inv_freq.numpy(), lay.axis_labels())


def rotary_pair_coords(inv_freq: np.ndarray, axis) -> xr.Dataset:
    freq = inv_freq / (2 * math.pi)
    return xr.Dataset(coords={
        "rotary_pair": ("rotary_pair", np.arange(len(inv_freq)), {"long_name": "rotary pair (dims p, p + D/2)"}),
        "rope_freq": ("rotary_pair", freq, {"units": "cycles/position", "long_name": "pair rotation frequency"}),
        "rope_period": ("rotary_pair", 1.0 / freq, {"units": "positions", "long_name": "pair rotation period"}),
        "rope_axis": ("rotary_pair", np.asarray(axis, dtype=str), {"long_name": "position axis (M-RoPE: temporal / height / width)"}),
    })


def pair_norms(x: torch.Tensor) -> torch.Tensor:
    """x (..., D) -> (..., D/2): norm of each rotary pair (x[p], x[p + D/2])."""
    half = x.shape[-1] // 2
    return torch.sqrt(x[..., :half].float() ** 2 + x[..., half:].float() ** 2)


class RopeUsage:
    """Accumulates per-layer mean pair norms of q (query heads) and k (KV heads)."""

    def __init__(self):
        self.sums = defaultdict(lambda: [0.0, 0, 0.0, 0])  # layer -> [q sum (H, P), n_q, k sum (H_kv, P), n_k]

    def update(self, layer: int, q_rot, k_rot, query_mask, key_mask) -> None:
        """q_rot (B, H, S, D), k_rot (B, H_kv, S, D); masks (B, S) bool."""
        qm, km = query_mask.to(q_rot.device), key_mask.to(k_rot.device)
        acc = self.sums[layer]
        acc[0] = acc[0] + (pair_norms(q_rot) * qm[:, None, :, None]).sum(dim=(0, 2)).double().cpu()
        acc[1] += int(qm.sum())
        acc[2] = acc[2] + (pair_norms(k_rot) * km[:, None, :, None]).sum(dim=(0, 2)).double().cpu()
        acc[3] += int(km.sum())

    def to_dataset(self, pairs: xr.Dataset) -> xr.Dataset:
        if not self.sums:
            raise ValueError("no rotary pair norms accumulated: run the model on at least one haystack first")
        layers = sorted(self.sums)
        q = torch.stack([self.sums[i][0] / max(self.sums[i][1], 1) for i in layers]).numpy()  # (L, H, P)
        k = torch.stack([self.sums[i][2] / max(self.sums[i][3], 1) for i in layers]).numpy()  # (L, H_kv, P)
        return rope_usage_dataset(q, k, layers, pairs)


def rope_usage_dataset(q_norm: np.ndarray, k_norm: np.ndarray, layers, pairs: xr.Dataset) -> xr.Dataset:
    group = q_norm.shape[1] // k_norm.shape[1]
    energy = q_norm * np.repeat(k_norm, group, axis=1)  # (L, H, P)
    total = energy.sum(-1, keepdims=True)
    usage = np.divide(energy, total, out=np.zeros_like(energy), where=total > 0)
    ds = xr.Dataset(
        {
            "rope_usage": (("layer", "head", "rotary_pair"), usage, {
                "long_name": "share of |q_p||k_p| per rotary pair", "units": "1",
                "description": "mean|q_p| * mean|k_p| normalised to sum 1 over pairs, per head"}),
            "q_pair_norm": (("layer", "head", "rotary_pair"), q_norm, {"long_name": "mean |q_p|", "units": "1"}),
            "k_pair_norm": (("layer", "kv_head", "rotary_pair"), k_norm, {"long_name": "mean |k_p|", "units": "1"}),
        },
        coords={
            "layer": ("layer", list(layers), {"long_name": "text decoder layer"}),
            "head": ("head", np.arange(q_norm.shape[1]), {"long_name": "query head"}),
            "kv_head": ("kv_head", np.arange(k_norm.shape[1]), {"long_name": "key/value head"}),
        },
    )
    ds = ds.assign_coords(pairs.coords)
    # Usage-weighted mean period in log space: one number per head for "how slow are its pairs".
    log_period = np.log(pairs["rope_period"].values)
    ds["rope_mean_period"] = (("layer", "head"), np.exp((usage * log_period).sum(-1)), {
        "units": "positions", "long_name": "usage-weighted geometric mean rotary period"})
    return ds
