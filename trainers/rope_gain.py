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
`fold_into_projections` does this, so the exported student is a plain checkpoint of its family with
zero inference overhead. The post-RoPE Q/K that `laid.model.hooks.record_qk` captures include
the gains, so the alignment losses train them directly.

QK-norm families (Qwen3-VL, Gemma 3; `laid.model.families`): an RMSNorm over each head's D dims
sits between q_proj / k_proj and RoPE, so scaling q_proj's rows changes nothing the norm lets
through (it divides by the row's RMS). There the gain scales the norm's output instead (still
pre-RoPE, the same commuting argument), and it folds exactly into the norm's weight, which is
shared by all heads: w' = g (offset + w) - offset (offset 0 for Qwen3-VL's w x-hat, 1 for Gemma 3's
(1 + w) x-hat). So in these families the gain is one value per (layer, rotary pair) for queries and
one for keys, shared by every head (`shared=True`, made by `for_model`); a per-head gain could not
be exported and `fold_into_state_dict` refuses one whose heads differ.

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

from laid.model.families import family_of, pre_rope_module
from laid.model.hooks import resolve_layers, text_decoder

# Text layers only (`language_model.layers`): vision towers have self_attn.q_proj layers too.
_QK_KEY = re.compile(r"(?:^|\.)language_model\.layers\.(\d+)\.self_attn\.(q|k)_(proj|norm)\.(weight|bias)$")


def pair_gain_to_dims(gain: torch.Tensor) -> torch.Tensor:
    """(..., D/2) gain per rotary pair -> (..., D) per dim: pair p is dims p and p + D/2."""
    return torch.cat([gain, gain], dim=-1)


class RopeGain(nn.Module):
    """Gains `q` (L, H, D/2) and `k` (L, H_kv, D/2) for student text layers `layers` (sorted);
    with `shared` (QK-norm families) `q` (L, 1, D/2) and `k` (L, 1, D/2), one gain for all heads.

    attach(model) / remove() register / remove the forward hooks on q_proj / k_proj;
    `with gains.applied(model): ...` does both around a block.

    Sharded training: `gains.use(gains())` once per model forward. Under ZeRO-3 / FSDP a module's
    parameters are gathered only while its own forward runs, and ZeRO-3 re-gathers them for the
    backward through hooks on the tensors that forward *returns*; so the q_proj / k_proj hooks
    must use those returned tensors, not read `self.q` / `self.k`. Without use() (tests,
    unsharded use) the hooks read the parameters.
    """

    def __init__(self, n_heads: int, n_kv_heads: int, head_dim: int, layers: Iterable[int], shared: bool = False):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
        self.layers = sorted(int(i) for i in layers)
        if not self.layers or min(self.layers) < 0:
            raise ValueError(f"RopeGain needs non-negative layer indices, got {self.layers}")
        self.n_heads, self.n_kv_heads, self.head_dim, self.shared = n_heads, n_kv_heads, head_dim, shared
        self.q = nn.Parameter(torch.ones(len(self.layers), 1 if shared else n_heads, head_dim // 2))
        self.k = nn.Parameter(torch.ones(len(self.layers), 1 if shared else n_kv_heads, head_dim // 2))
        self._heads_first = False  # the hooked modules output (B, heads, S, D) (Gemma 3's QK-norm)
        self._handles: list = []
        self._current: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dim gains (L, H, D), (L, H_kv, D)."""
        return pair_gain_to_dims(self.q), pair_gain_to_dims(self.k)

    def use(self, gains: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """The hooks apply `gains` (this module's forward output) until the next use() / remove()."""
        self._current = gains

    @classmethod
    def for_model(cls, model: nn.Module, layers: int | Iterable[int] | None = None) -> "RopeGain":
        """Gains shaped for `model`'s text decoder; layers None = every layer, negatives from the end.
        Shared by all heads where the family has a QK-norm (module docstring)."""
        _, decoder_layers = text_decoder(model)
        attn = decoder_layers[0].self_attn
        return cls(attn.config.num_attention_heads, attn.config.num_key_value_heads, attn.head_dim,
                   resolve_layers(layers, len(decoder_layers)), shared=_has_qk_norm(attn))

    def extra_repr(self) -> str:
        return f"layers={self.layers}, q={tuple(self.q.shape)}, k={tuple(self.k.shape)}"

    # ------------------------------------------------------------------ hooks
    def attach(self, model: nn.Module) -> "RopeGain":
        if self._handles:
            raise RuntimeError("RopeGain is already attached to a model; remove() it first")
        _, decoder_layers = text_decoder(model)
        self._heads_first = family_of(model).norm_heads_first
        for slot, layer in enumerate(self.layers):
            attn = decoder_layers[layer].self_attn
            if attn.head_dim != self.head_dim or attn.q_proj.out_features != self.n_heads * self.head_dim:
                raise ValueError(f"RopeGain shapes do not match layer {layer} of {type(model).__name__}")
            # The gain must act on what RoPE rotates: a QK-norm's output where there is one.
            self._handles.append(pre_rope_module(attn, "q").register_forward_hook(self._hook("q", slot)))
            self._handles.append(pre_rope_module(attn, "k").register_forward_hook(self._hook("k", slot)))
        return self

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._current = None

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator["RopeGain"]:
        self.attach(model)
        try:
            yield self
        finally:
            self.remove()

    def _hook(self, which: str, slot: int):
        def hook(module, inputs, output):
            if self._current is not None:  # from use(): gathered under ZeRO-3 / FSDP
                gain = self._current[0 if which == "q" else 1][slot].to(output.dtype)  # (heads or 1, D)
            else:
                gain = pair_gain_to_dims(getattr(self, which)[slot]).to(output.dtype)
            if output.ndim == 4:  # a QK-norm's output: (B, S, heads, D), or (B, heads, S, D) with heads_first
                return output * (gain[:, None, :] if self._heads_first else gain)
            b, s, _ = output.shape  # (B, S, heads*D): pre-RoPE, heads contiguous as in the model's view()
            return (output.view(b, s, -1, self.head_dim) * gain).view(b, s, -1)

        return hook

    def per_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, H, D/2), (L, H_kv, D/2) detached: the gain of every head (a shared one repeated)."""
        return (self.q.detach().expand(-1, self.n_heads, -1), self.k.detach().expand(-1, self.n_kv_heads, -1))

    def product(self) -> torch.Tensor:
        """(L, H, D/2) g_q[l, h, p] * g_k[l, h // G, p]: the gain each attention logit sees (detached)."""
        q, k = self.per_head()
        return q * k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)

    # ------------------------------------------------------------------ folding
    def gain_for(self, layer: int, which: str) -> torch.Tensor | None:
        """(heads, D) per-dim gain of `layer` for 'q' or 'k' (a shared gain repeated), None if the layer has none."""
        if layer not in self.layers:
            return None
        return pair_gain_to_dims(self.per_head()[0 if which == "q" else 1][self.layers.index(layer)])


def _has_qk_norm(attn: nn.Module) -> bool:
    return pre_rope_module(attn, "q") is not attn.q_proj


@torch.no_grad()
def fold_into_state_dict(state_dict: dict[str, torch.Tensor], gains: RopeGain, norm_offset: float = 0.0) -> list[str]:
    """Fold the gains into the gained layers' weights in place; returns the keys it changed.

    Without a QK-norm: multiply the q_proj / k_proj rows (weight and bias) by g[h, d mod D/2]. With one
    (the state holds self_attn.q_norm / k_norm weights): w' = g (norm_offset + w) - norm_offset on the
    norm weight (D,), which needs the same gain for every head (else ValueError, one line). Works on a
    model's state_dict() (its tensors share storage with the parameters) or on a full state dict
    gathered from a sharded (ZeRO-3 / FSDP) run; raises if a gained layer's q or k weight is missing.
    """
    norm_site = any(".self_attn.q_norm." in k for k in state_dict)
    changed = []
    for key, tensor in state_dict.items():
        m = _QK_KEY.search(key)
        if not m or (m.group(3) == "norm") != norm_site:
            continue
        layer, which = int(m.group(1)), m.group(2)
        gain = gains.gain_for(layer, which)  # (heads, D)
        if gain is None:
            continue
        if norm_site:
            if not torch.equal(gain, gain[:1].expand_as(gain)):
                raise ValueError(f"RoPE gain of layer {layer} ({which}) differs between heads: it cannot fold into the "
                                 f"{which}_norm weight that all heads share; train it with RopeGain(shared=True)")
            tensor.copy_((gain[0].float() * (norm_offset + tensor.float()) - norm_offset).to(tensor.dtype))
        else:
            rows = tensor.view(gain.shape[0], gains.head_dim, -1) if m.group(4) == "weight" else tensor.view(gain.shape[0], gains.head_dim, 1)
            rows.copy_((rows.float() * gain.float()[:, :, None]).to(tensor.dtype))
        changed.append(key)
    weights = {(int(m.group(1)), m.group(2)) for k in changed if (m := _QK_KEY.search(k)) and m.group(4) == "weight"}
    missing = sorted({(i, w) for i in gains.layers for w in "qk"} - weights)
    if missing:
        site = "q_norm / k_norm" if norm_site else "q_proj / k_proj"
        raise ValueError(f"folding RoPE gains found no {site} weight for (layer, q|k) {missing}: not this model's state dict")
    return changed


@torch.no_grad()
def fold_into_projections(model: nn.Module, gains: RopeGain) -> nn.Module:
    """Fold `gains` into `model`'s q_proj / k_proj so the model runs without hooks; returns model.

    Call it on the final (unwrapped) student right before export, with the gains no longer
    attached to it (folding while the hooks still run would apply the gains twice).
    """
    if gains._handles:
        raise RuntimeError("remove() the RoPE gain hooks before folding them into the model")
    fold_into_state_dict(model.state_dict(keep_vars=True), gains, family_of(model).norm_offset)
    return model
