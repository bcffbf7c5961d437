"""Health telemetry of a distillation run: is the objective transferring, or collapsing?

Computed by `DistillModule.forward(..., health=True)` on the main process's last micro-batch of
every logging step, written into that step's record of train_log.jsonl and, at export, into
head_weights.nc. Under ZeRO-3 / FSDP only the activation part is computed (norm ratios, attention
entropies, the norm warning): the gradient norms, mixer rows and gains need sharded parameters.
Names are shared with the analysis (issue 14):

    <term>_loss          value of a loss term (laid, attn, kl, sft, total), averaged over micro-batches
    <term>_grad_norm     L2 norm of d(lambda_term * term) / d(student post-RoPE Q and K at the aligned
                         layers): how hard each weighted term pushes the aligned layers' Q/K (Q/K of
                         all aligned layers together; a shared place where every term acts)
    q_norm_ratio, k_norm_ratio   per aligned student layer: RMS of the student's post-RoPE Q (K)
                         over valid tokens, heads, dims / the same of its paired teacher layer. The
                         teacher is frozen, so a falling ratio is the student's Q/K shrinking
    attn_entropy, teacher_attn_entropy   per aligned layer: mean entropy (nats) of the attention
                         rows of the student (teacher) over valid queries and heads, each under its
                         layer's real mask and scale (laid.model.families.AttentionPattern)
    mixer_row_norm, mixer_entropy        per aligned layer, per student head of W_Q: ||w_h|| (1 by
                         construction with unit rows; the collapse signal with free rows) and the
                         entropy (nats) of w_h^2 / ||w_h||^2 (0 = one teacher head, log H_t = all)
    mixer_row_norm_k, mixer_entropy_k    the same for W_K (student KV heads)
    gain_product         per gained layer: [min, mean, max] of g_q * g_k over (head, rotary pair)

Per-layer values are JSON objects keyed by the student layer ("2": 0.97). Norm warning: when the
mean of a layer's last 3 logged q_norm_ratio (k_norm_ratio) values falls below `norm_warn_fraction`
(config, default 0.9) times the mean of its first 3, `NormMonitor` logs one warning line and the
record carries it under "warning". 0.9 is the acceptance bar of issue 12 (the aligned layer's Q/K
norms stay within 10% of the base student's); means of 3 because the ratio is measured on each
step's batch and moves a few percent between batches (haystack sizes differ).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import xarray as xr

from trainers.head_mixer import attention_mix, row_entropy
from trainers.losses.attention_matching import attention_entropy

log = logging.getLogger(__name__)
LAYER_SERIES = ("q_norm_ratio", "k_norm_ratio", "attn_entropy", "teacher_attn_entropy")
TERMS = ("total", "laid", "attn", "kl", "sft")


def masked_rms(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """RMS of x (B, H, S, D) over valid tokens (mask (B, S) bool), heads and dims; 0-d fp32."""
    sq = x.detach().float().pow(2).mean(dim=(1, 3))  # (B, S)
    if mask is None:
        return sq.mean().sqrt()
    m = mask.to(sq.dtype)
    return ((sq * m).sum() / m.sum().clamp(min=1)).sqrt()


@torch.no_grad()
def layer_health(sq, sk, tq, tk, mask, chunk_size: int, s_pattern, t_pattern) -> dict[str, float]:
    """Norm ratios and attention entropies of one aligned layer pair (student / teacher Q/K); each
    side's entropy under its layer's AttentionPattern (required: no mask is assumed)."""
    return {
        "q_norm_ratio": float(masked_rms(sq, mask) / masked_rms(tq, mask).clamp(min=1e-30)),
        "k_norm_ratio": float(masked_rms(sk, mask) / masked_rms(tk, mask).clamp(min=1e-30)),
        "attn_entropy": float(attention_entropy(sq.detach(), sk.detach(), mask, chunk_size, s_pattern)),
        "teacher_attn_entropy": float(attention_entropy(tq.detach(), tk.detach(), mask, chunk_size, t_pattern)),
    }


@torch.no_grad()
def mixer_health(mixer) -> dict[str, list[float]]:
    """Row norms and entropies of a QKMixer's effective W_Q and W_K (per student head)."""
    out = {}
    for suffix, m in (("", mixer.q), ("_k", mixer.k)):
        w = m.effective().detach().float()
        out[f"mixer_row_norm{suffix}"] = [round(float(v), 6) for v in w.norm(dim=-1)]
        out[f"mixer_entropy{suffix}"] = [round(float(v), 6) for v in row_entropy(attention_mix(w))]
    return out


def grad_norms(terms: dict[str, torch.Tensor], weights: dict[str, float], tensors: list[torch.Tensor]) -> dict[str, float]:
    """<term>_grad_norm of each weighted term w.r.t. `tensors` (keeps the graph for the backward)."""
    inputs = [t for t in tensors if t.requires_grad]
    out = {}
    if not inputs:
        return out
    for name, value in terms.items():
        if name == "total" or not value.requires_grad:
            continue
        grads = torch.autograd.grad(weights[name] * value, inputs, retain_graph=True, allow_unused=True)
        out[f"{name}_grad_norm"] = float(torch.sqrt(sum((g.float().pow(2).sum() for g in grads if g is not None), torch.zeros(()))))
    return out


def gain_summary(gain) -> dict[str, dict[str, list[float]]]:
    """gain_product per gained layer: [min, mean, max] of g_q * g_k over (head, rotary pair)."""
    prod = gain.product().float()
    return {"gain_product": {str(layer): [round(float(p.min()), 6), round(float(p.mean()), 6), round(float(p.max()), 6)]
                             for layer, p in zip(gain.layers, prod)}}


class NormMonitor:
    """Warns once per (layer, q/k) when the mean of the last `window` norm ratios falls below
    `fraction` x the mean of the first `window` (see module doc)."""

    def __init__(self, fraction: float = 0.9, window: int = 3):
        self.fraction, self.window = fraction, window
        self.history: dict[tuple[str, str], list[float]] = {}
        self.warned: set[tuple[str, str]] = set()

    def _add(self, name: str, layer: str, value: float) -> list[float]:
        values = self.history.setdefault((name, layer), [])
        values.append(float(value))
        return values

    def check(self, step: int, health: dict) -> str | None:
        lines = []
        for name in ("q_norm_ratio", "k_norm_ratio"):
            for layer, value in (health.get(name) or {}).items():
                key, values = (name, layer), self._add(name, layer, value)
                if len(values) < 2 * self.window or key in self.warned:
                    continue
                start = sum(values[: self.window]) / self.window
                now = sum(values[-self.window :]) / self.window
                if now < self.fraction * start:
                    self.warned.add(key)
                    lines.append(f"step {step}: student layer {layer} {name} {now:.3f} (mean of the last {self.window} logs) "
                                 f"fell below {self.fraction:g} x its start {start:.3f} (the aligned Q/K are shrinking)")
        if not lines:
            return None
        text = "; ".join(lines)
        log.warning(text)
        return text

    @classmethod
    def from_log(cls, records: list[dict], fraction: float, window: int = 3) -> "NormMonitor":
        """A monitor holding the logged history (so a resumed run compares with the same start)."""
        monitor = cls(fraction, window)
        for r in records:
            for name in ("q_norm_ratio", "k_norm_ratio"):
                for layer, value in (r.get(name) or {}).items():
                    monitor._add(name, layer, value)
            if "warning" in r:
                monitor.warned.update(k for k in monitor.history if f"layer {k[1]} {k[0]}" in r["warning"])
        return monitor


def health_series(records: list[dict], pairs: list[tuple[int, int]]) -> xr.Dataset:
    """Time series of the health telemetry from train_log records (dims step, layer_pair)."""
    rows = [r for r in records if "note" not in r and "step" in r]
    steps = np.array([r["step"] for r in rows], dtype=np.int64)
    data = {}
    for name in LAYER_SERIES:
        if any(name in r for r in rows):
            values = np.array([[r.get(name, {}).get(str(s), np.nan) for s, _ in pairs] for r in rows], dtype=np.float64)
            unit = "nats" if "entropy" in name else "1 (student RMS / teacher RMS)"
            data[name] = (("step", "layer_pair"), values, {"units": unit})
    for term in TERMS:
        for suffix, unit in (("_loss", "1"), ("_grad_norm", "1 (L2 norm)")):
            key = f"{term}{suffix}"
            if any(key in r for r in rows):
                data[key] = (("step",), np.array([r.get(key, np.nan) for r in rows], dtype=np.float64), {"units": unit})
    return xr.Dataset(data, coords={"step": steps})


def add_health(ds: xr.Dataset, state: dict, pairs: list[tuple[int, int]], rows: str, gain_layers: list[int] | None,
               records: list[dict]) -> xr.Dataset:
    """head_weights.nc additions: final mixer row norms / entropies, g_q * g_k, and the logged series.

    state: the DistillModule state dict (raw mixer parameters, gains); rows: the mixers' "unit" / "free".
    """
    from trainers.head_mixer import effective_weight

    for suffix, which, head_dim in (("", "q", "student_head"), ("_k", "k", "student_kv_head")):
        w = [effective_weight(state[f"align.{i}.mixer.{which}.weight"].float().cpu(), rows) for i in range(len(pairs))]
        ds[f"mixer_row_norm{suffix}"] = (("layer_pair", head_dim), np.stack([x.norm(dim=-1).numpy() for x in w]),
                                         {"units": "1", "long_name": f"row norm of W_{which.upper()}"})
        ds[f"mixer_entropy{suffix}"] = (("layer_pair", head_dim), np.stack([row_entropy(attention_mix(x)).numpy() for x in w]),
                                        {"units": "nats", "long_name": f"entropy of w^2 / ||w||^2 per row of W_{which.upper()}"})
    if gain_layers and "gain.q" in state:
        # A gain shared by all heads (QK-norm families) acts at every head.
        g_q = state["gain.q"].float().cpu().expand(-1, ds.sizes["student_head"], -1)
        g_k = state["gain.k"].float().cpu().expand(-1, ds.sizes["student_kv_head"], -1)
        prod = g_q * g_k.repeat_interleave(g_q.shape[1] // g_k.shape[1], dim=1)
        ds["gain_product"] = (("gain_layer", "student_head", "rotary_pair"), prod.numpy(),
                              {"units": "1", "long_name": "RoPE gain g_q * g_k seen by each attention logit"})
    series = health_series(records, pairs)
    if series.sizes.get("step", 0):
        ds = ds.merge(series.assign_coords(layer_pair=np.arange(len(pairs))) if "layer_pair" in series.dims else series)
    ds.attrs["mixer_rows"] = rows
    return ds
