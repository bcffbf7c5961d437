"""SelfExtend (Jin et al. 2024) for every supported family's RoPE, as a transformers attention function.

SelfExtend keeps every relative position the model sees inside the range it was trained on:
- neighbour attention: keys within the window W of the query use their normal positions;
- grouped attention: farther keys use floor(pos / G), and the query floor(pos / G) + W - floor(W / G),
  so the relative position is continuous at the window edge (about W on both sides of it);
- merge: per query-key pair, the neighbour logit where the distance is < W, the grouped one otherwise,
  then one softmax over the row.

Positions per family (`laid.model.families`): M-RoPE positions are 3-D (temporal, height, width) and
rotary pair p takes the component its family's rotary layout gives it (Qwen2/2.5-VL: contiguous
mrope_section blocks; Qwen3-VL: interleaved); InternVL3 and Gemma 3 have one component, the token
index. Grouping is applied to each component, and the distance of a pair is max_c |pos_i[c] - pos_j[c]|
(the largest relative position any rotary pair sees; text-only input: i - j, the original
SelfExtend). Within one Qwen-VL image the temporal component is constant and height/width differ by
the grid, so an image attends to itself with normal positions unless it is wider than W.

Layers: SelfExtend acts on the layers whose RoPE spans the context (`Family.long_rope_layers`):
every layer, except in Gemma 3, where the sliding-window layers (1024 tokens, inside their trained
range) keep plain attention and only the full-attention layers are extended. The layer's own mask
(sliding window, Gemma's image blocks) is the one the model passes in and is applied as is.

How (clean with post-RoPE inputs): the attention function receives q/k already rotated at their
normal positions. RoPE is a rotation by angle pos * inv_freq, so rotating the post-RoPE vector by
(new_pos - pos) * inv_freq gives exactly the vector rotated at new_pos: no un-rotation and no second
projection. The normal positions come from a forward pre-hook on the text rotary embedding (which
receives the (3, B, S) position ids the model uses), stored on a shared state object that every text
attention module points to. Rotations use the rotary module's inv_freq (so YaRN + SelfExtend
composes) but no attention scaling, which the normal RoPE already applied once.

Memory: rows are processed in query chunks (chunk x S logits per head for each of the two logit
sets), so memory is linear in S. The vision tower keeps plain SDPA (its 2-D RoPE is within one
image, far inside its trained range). With a KV cache (generation), each layer keeps the positions
of its cached keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from laid.model.families import RotaryLayout, family_of
from laid.model.loading import load_model as load_plain
from laid.model.hooks import text_decoder
from laid.eval.variants.yarn import training_length

ATTN_NAME = "laid_selfextend"
_STATE = "_laid_selfextend"  # attribute on each text self_attn module -> SelfExtendState
_KEY_POS = "_laid_selfextend_key_positions"  # per-layer positions of cached keys (3, B, S_k)


@dataclass
class SelfExtendConfig:
    group_size: int = 4  # G: positions of far tokens are floor(pos / G)
    window: int = 512  # W: keys closer than W (in positions) use normal attention
    chunk_size: int = 1024  # query rows per chunk

    def __post_init__(self):
        if self.group_size < 1 or self.window < 1 or self.chunk_size < 1:
            raise ValueError(f"SelfExtend needs group_size, window, chunk_size >= 1, got {self}")


class SelfExtendState:
    """Shared by the extended text attention modules of one model: config, each layer's rotary
    layout (frequency and position component per pair, as the model's rotary module holds them, so
    YaRN + SelfExtend composes), and the positions of the current forward."""

    def __init__(self, config: SelfExtendConfig, layouts: dict[int, RotaryLayout], family_label: str = ""):
        self.config = config
        self.layouts = layouts  # text layer -> RotaryLayout
        self.family_label = family_label  # named in errors
        self.positions: torch.Tensor | None = None  # (A, B, S) of the current forward


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _shift(x: torch.Tensor, delta: torch.Tensor, layout: RotaryLayout) -> torch.Tensor:
    """Rotate post-RoPE x (B, H, S, D) by delta positions (A, B, S), each pair by its own component."""
    comp = torch.tensor(layout.axis, device=x.device)  # (D/2,)
    d = delta.float().permute(1, 2, 0)[..., comp]  # (B, S, D/2): delta of the component of each pair
    angle = d * layout.inv_freq.to(x.device, torch.float)  # (B, S, D/2)
    angle = torch.cat([angle, angle], dim=-1)[:, None]  # (B, 1, S, D): pairs are (p, p + D/2)
    xf = x.float()
    return (xf * angle.cos() + _rotate_half(xf) * angle.sin()).to(x.dtype)


def selfextend_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention function: query (B, H, Sq, D), key/value (B, H_kv, Sk, D) post-RoPE -> (B, Sq, H, D)."""
    state: SelfExtendState | None = getattr(module, _STATE, None)
    if state is None:  # vision tower, or a module SelfExtend was not enabled on
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    cfg = state.config
    b, h, s_q, d = query.shape
    h_kv, s_k = key.shape[1], key.shape[2]
    g = h // h_kv
    if scaling is None or attention_mask is None:  # never guessed: Gemma 3's scale and masks are not the defaults
        what = "logit scale" if scaling is None else "attention mask"
        raise ValueError(f"SelfExtend on text layer {module.layer_idx} ({state.family_label}) received no {what}; "
                         "it applies the layer's own and assumes none (load the model with laid.eval.variants.selfextend)")

    layout = state.layouts[module.layer_idx]
    q_pos = state.positions.to(query.device)  # (A, B, Sq)
    if s_k == s_q:
        k_pos = q_pos
    else:  # cached decoding: this layer's earlier key positions + the new ones
        k_pos = torch.cat([getattr(module, _KEY_POS), q_pos], dim=-1)
        if k_pos.shape[-1] != s_k:
            raise RuntimeError(f"SelfExtend lost track of cached key positions ({k_pos.shape[-1]} vs {s_k} keys)")
    setattr(module, _KEY_POS, k_pos)

    G, W = cfg.group_size, cfg.window
    q_grouped = torch.div(q_pos, G, rounding_mode="floor") + (W - W // G)
    k_grouped = torch.div(k_pos, G, rounding_mode="floor")
    q_g = _shift(query, q_grouped - q_pos, layout)  # query rotated at its grouped position
    k_g = _shift(key, k_grouped - k_pos, layout)

    out = torch.empty(b, h, s_q, d, dtype=query.dtype, device=query.device)
    v = value.float()

    def logits(q, k):  # (B, H, c, Sk) without repeat_kv
        c = q.shape[2]
        return torch.einsum("bkgcd,bksd->bkgcs", q.float().view(b, h_kv, g, c, d), k.float()).reshape(b, h, c, s_k) * scaling

    for start in range(0, s_q, cfg.chunk_size):
        stop = min(start + cfg.chunk_size, s_q)
        dist = (q_pos[:, :, start:stop, None] - k_pos[:, :, None, :]).abs().amax(0)  # (B, c, Sk)
        scores = torch.where((dist < W)[:, None], logits(query[:, :, start:stop], key), logits(q_g[:, :, start:stop], k_g))
        m = attention_mask[..., start:stop, :]
        scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m.float()
        probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # fully masked (padding) rows -> 0
        c = stop - start
        out[:, :, start:stop] = torch.einsum("bkgcs,bksd->bkgcd", probs.view(b, h_kv, g, c, s_k), v).reshape(b, h, c, d).to(query.dtype)
    return out.transpose(1, 2).contiguous(), None


def _boolean_causal_mask(*args, **kwargs):
    # SelfExtend needs the explicit mask (SDPA's is_causal shortcut would return None, and a missing mask is refused).
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


AttentionInterface.register(ATTN_NAME, selfextend_attention)
AttentionMaskInterface.register(ATTN_NAME, _boolean_causal_mask)


def enable_selfextend(model: nn.Module, config: SelfExtendConfig) -> SelfExtendState:
    """Route `model`'s text decoder attention through SelfExtend (in place) on the family's
    long-RoPE layers (module docstring); returns the shared state."""
    text_model, layers = text_decoder(model)
    if any(hasattr(layer.self_attn, _STATE) for layer in layers):
        raise RuntimeError("SelfExtend is already enabled on this model; load a fresh model to change its settings")
    family = family_of(model)
    extended = family.long_rope_layers(model.config)
    state = SelfExtendState(config, {i: family.layer_rotary_layout(model, i) for i in extended}, family.label)

    def remember_positions(module, args):
        position_ids = args[1]  # forward(x, position_ids[, layer_type]): (3, B, S) M-RoPE or (B, S)
        state.positions = position_ids if position_ids.ndim == 3 else position_ids[None]

    state.handle = text_model.rotary_emb.register_forward_pre_hook(remember_positions)
    for cfg in {id(c): c for c in [text_model.config] + [layer.self_attn.config for layer in layers]}.values():
        cfg._attn_implementation = ATTN_NAME  # layers without a state fall back to plain SDPA
    for i in extended:
        setattr(layers[i].self_attn, _STATE, state)
    return state


def load_model(model_dir: str | Path, device=None, dtype=None, group_size: int = 4, window: int | None = None,
               chunk_size: int = 1024, **kw):
    """laid.model.loading.load_model + SelfExtend. window None = half the model's training length
    (`yarn.training_length`), so that with group size G the positions stay in range up to
    (L - W) * G + W = (G + 1) L / 2 tokens."""
    if window is None:
        window = max(1, training_length(model_dir) // 2)
    model = load_plain(model_dir, device=device, dtype=dtype, **kw)
    enable_selfextend(model, SelfExtendConfig(group_size=group_size, window=window, chunk_size=chunk_size))
    return model
