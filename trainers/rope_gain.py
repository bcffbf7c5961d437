"""Learnable RoPE response gain: a per-head, per-frequency scale on the student's queries and keys.

The paper's abstract: "a learnable RoPE response gain modulation that selectively amplifies
position sensitivity where needed". We give every student head h of a chosen layer and every
rotary frequency pair p a gain, initialised to 1 and trained with the mixers (lr 1e-4):

    q[h, p] *= g_q[h, p],  q[h, p + D/2] *= g_q[h, p]        (query heads, shape (H, D/2))
    k[c, p] *= g_k[c, p],  k[c, p + D/2] *= g_k[c, p]        (KV heads, shape (H_kv, D/2))

Which dims form a rotary pair: transformers' `rotate_half` rotates dim p with dim p + D/2 (not
2p with 2p+1), and Qwen2.5-VL's M-RoPE builds cos/sin as cat(freq, freq) with pair p's frequency
and position component (temporal / height / width, per `mrope_section`) shared by p and p + D/2.
Scaling both members of a pair by one number commutes with the 2x2 rotation, so the gain can be
applied before RoPE (on the q_proj / k_proj outputs, through forward hooks) and is exactly the same
as scaling the rotated vectors. The attention logit of query head h and its KV head c = h // G
then weighs frequency p by g_q[h, p] * g_k[c, p]: the model can amplify (or damp) the
frequencies that carry long-range position information, per head. Under GQA a key gain is shared
by the G query heads that read that KV head, exactly as the key itself is.

Because the hooks scale the q_proj / k_proj outputs row by row, the gains fold into those
layers: multiply row (h, d) of the weight AND bias (Qwen2.5 has q/k biases) by g[h, d mod D/2].
`fold_into_projections` does this, so the exported student is a plain Qwen2.5-VL checkpoint with
zero inference overhead. The post-RoPE Q/K that `laid.model.hooks.record_qk` captures include
the gains, so the alignment losses train them directly.

What is identifiable: scaling pair p of q by c and of k by 1/c leaves every attention logit
unchanged, so only the product g_q[h, p] * g_k[h // G, p] (`product()`) acts on attention; the
telemetry and head_weights.nc report it. The split into g_q and g_k is set by the Q/K alignment
(each side's per-frequency profile against the teacher's). With `alignment: cosine` that term is
invariant to a head's overall scale, so it exerts no force on a uniform rescaling of a head's
gains (sum_p g_p dL/dg_p = 0); with the paper's squared error it does, downwards (the collapse
that form allows; see `trainers.losses.qk_alignment`).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import nn

from laid.model.hooks import resolve_layers, text_decoder

_PROJ_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn\.(q|k)_proj\.(weight|bias)$")


def pair_gain_to_dims(gain: torch.Tensor) -> torch.Tensor:
    """(..., D/2) gain per rotary pair -> (..., D) per dim: pair p is dims p and p + D/2."""
    return torch.cat([gain, gain], dim=-1)


class RopeGain(nn.Module):
    """Gains `q` (L, H, D/2) and `k` (L, H_kv, D/2) for student text layers `layers` (sorted).

    attach(model) / remove() register / remove the forward hooks on q_proj / k_proj;
    `with gains.applied(model): ...` does both around a block.
    """

    def __init__(self, n_heads: int, n_kv_heads: int, head_dim: int, layers: Iterable[int]):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
        self.layers = sorted(int(i) for i in layers)
        if not self.layers or min(self.layers) < 0:
            raise ValueError(f"RopeGain needs non-negative layer indices, got {self.layers}")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.q = nn.Parameter(torch.ones(len(self.layers), n_heads, head_dim // 2))
        self.k = nn.Parameter(torch.ones(len(self.layers), n_kv_heads, head_dim // 2))
        self._handles: list = []

    @classmethod
    def for_model(cls, model: nn.Module, layers: int | Iterable[int] | None = None) -> "RopeGain":
        """Gains shaped for `model`'s text decoder; layers None = every layer, negatives from the end."""
        _, decoder_layers = text_decoder(model)
        attn = decoder_layers[0].self_attn
        return cls(attn.config.num_attention_heads, attn.config.num_key_value_heads, attn.head_dim,
                   resolve_layers(layers, len(decoder_layers)))

    def extra_repr(self) -> str:
        return f"layers={self.layers}, q={tuple(self.q.shape)}, k={tuple(self.k.shape)}"

    # ------------------------------------------------------------------ hooks
    def attach(self, model: nn.Module) -> "RopeGain":
        if self._handles:
            raise RuntimeError("RopeGain is already attached to a model; remove() it first")
        _, decoder_layers = text_decoder(model)
        for slot, layer in enumerate(self.layers):
            attn = decoder_layers[layer].self_attn
            if attn.head_dim != self.head_dim or attn.q_proj.out_features != self.n_heads * self.head_dim:
                raise ValueError(f"RopeGain shapes do not match layer {layer} of {type(model).__name__}")
            self._handles.append(attn.q_proj.register_forward_hook(self._hook("q", slot)))
            self._handles.append(attn.k_proj.register_forward_hook(self._hook("k", slot)))
        return self

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator["RopeGain"]:
        self.attach(model)
        try:
            yield self
        finally:
            self.remove()

    def _hook(self, which: str, slot: int):
        def hook(module, inputs, output):
            b, s, _ = output.shape  # (B, S, heads*D): pre-RoPE, heads contiguous as in the model's view()
            gain = pair_gain_to_dims(getattr(self, which)[slot]).to(output.dtype)  # (heads, D)
            return (output.view(b, s, -1, self.head_dim) * gain).view(b, s, -1)

        return hook

    def product(self) -> torch.Tensor:
        """(L, H, D/2) g_q[l, h, p] * g_k[l, h // G, p]: the gain each attention logit sees (detached)."""
        group = self.n_heads // self.n_kv_heads
        return (self.q * self.k.repeat_interleave(group, dim=1)).detach()

    # ------------------------------------------------------------------ folding
    def gain_for(self, layer: int, which: str) -> torch.Tensor | None:
        """(heads, D) per-dim gain of `layer` for 'q' or 'k', None if the layer has no gain."""
        if layer not in self.layers:
            return None
        return pair_gain_to_dims(getattr(self, which)[self.layers.index(layer)].detach())


@torch.no_grad()
def fold_into_state_dict(state_dict: dict[str, torch.Tensor], gains: RopeGain) -> list[str]:
    """Multiply the q_proj / k_proj rows (weight and bias) of the gained layers in place.

    Works on a model's state_dict() (its tensors share storage with the parameters) or on a full
    state dict gathered from a sharded (ZeRO-3 / FSDP) run. Returns the keys it changed; raises if
    a gained layer's projection is missing.
    """
    changed = []
    for key, tensor in state_dict.items():
        m = _PROJ_KEY.search(key)
        if not m or "visual" in key:
            continue
        gain = gains.gain_for(int(m.group(1)), m.group(2))
        if gain is None:
            continue
        rows = tensor.view(gain.shape[0], gains.head_dim, -1) if m.group(3) == "weight" else tensor.view(gain.shape[0], gains.head_dim, 1)
        rows.copy_((rows.float() * gain.float()[:, :, None]).to(tensor.dtype))
        changed.append(key)
    expected = 4 * len(gains.layers)
    if len(changed) != expected:
        raise ValueError(f"folding RoPE gains changed {len(changed)} tensors, expected {expected} (q/k weight+bias of layers {gains.layers})")
    return changed


@torch.no_grad()
def fold_into_projections(model: nn.Module, gains: RopeGain) -> nn.Module:
    """Fold `gains` into `model`'s q_proj / k_proj so the model runs without hooks; returns model.

    Call it on the final (unwrapped) student right before export, with the gains no longer
    attached to it (folding while the hooks still run would apply the gains twice).
    """
    if gains._handles:
        raise RuntimeError("remove() the RoPE gain hooks before folding them into the model")
    fold_into_state_dict(model.state_dict(keep_vars=True), gains)
    return model
