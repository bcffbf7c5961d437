"""Which RoPE frequencies each head uses: energy of q and k in each 2-D rotary pair.

Qwen2.5-VL rotates dims (p, p + D/2) together (the rotate_half layout) at angle position * inv_freq[p],
so pair p is a 2-D subspace turning at inv_freq[p] / 2pi cycles per position (M-RoPE position id,
not token index: an image's tokens share one temporal id). M-RoPE splits the
D/2 pairs into sections (mrope_section, e.g. [16, 24, 24] for the real models, [4, 6, 6] for the
toy ones): section i rotates with the temporal, height or width position id (axis i % 3). For
text tokens the three ids are equal; inside an image, height/width pairs follow the patch grid.

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

AXES = ("temporal", "height", "width")


def rotary_pairs(model) -> xr.Dataset:
    """Coordinates of the rotary pairs of a model's text RoPE: frequency, period and M-RoPE axis."""
    from laid.model.hooks import text_decoder

    text_model, _ = text_decoder(model)
    inv_freq = text_model.rotary_emb.inv_freq.detach().double().cpu().numpy()  # (D/2,), YaRN-scaled if so
    rope = getattr(text_model.config, "rope_parameters", None) or {}
    section = list(rope.get("mrope_section") or [len(inv_freq)])
    if sum(section) != len(inv_freq):
        raise ValueError(f"mrope_section {section} does not cover the {len(inv_freq)} rotary pairs of this model")
    axis = np.concatenate([[AXES[i % 3]] * n for i, n in enumerate(section)])
    return rotary_pair_coords(inv_freq, axis)


def rotary_pair_coords(inv_freq: np.ndarray, axis) -> xr.Dataset:
    freq = inv_freq / (2 * math.pi)
    return xr.Dataset(coords={
        "rotary_pair": ("rotary_pair", np.arange(len(inv_freq)), {"long_name": "rotary pair (dims p, p + D/2)"}),
        "rope_freq": ("rotary_pair", freq, {"units": "cycles/position", "long_name": "pair rotation frequency"}),
        "rope_period": ("rotary_pair", 1.0 / freq, {"units": "positions", "long_name": "pair rotation period"}),
        "rope_axis": ("rotary_pair", np.asarray(axis, dtype=str), {"long_name": "M-RoPE position axis"}),
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
