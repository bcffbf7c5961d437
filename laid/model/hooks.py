"""Record per-head queries and keys of a VLM's text decoder (any supported family), before and after RoPE.

    with record_qk(model, layers=[-1], sites=("q_rot", "k_rot")) as rec:
        model(**batch)
    rec.tensors["layers.3.attn.k_rot"]   # (B, H_kv, S, D)

Site names follow TransformerLens: `layers.{i}.attn.{site}`, with i the text decoder layer index
(0-based, as in `model.model.language_model.layers[i]`) and site one of

    q_rot  (B, H, S, D)     post-RoPE queries, exactly what the attention kernel (SDPA) receives
    k_rot  (B, H_kv, S, D)  post-RoPE keys, before repeat_kv (one per KV head, GQA not expanded)
    q      (B, H, S, D)     pre-RoPE queries: what RoPE rotates (q_proj output split into heads, or
                            the q_norm output in the QK-norm families Qwen3-VL and Gemma 3)
    k      (B, H_kv, S, D)  pre-RoPE keys: k_proj (k_norm) output split into heads
    v      (B, H_kv, S, D)  values: v_proj output split into heads

How. Post-RoPE tensors only exist inside the attention module's forward, so we route the text
layers through a registered `transformers.AttentionInterface` function named `laid_qk:<inner>`
that records query/key and then calls the implementation that was active before (`<inner>`, sdpa
by default), so the compute path and the logits do not change. The same name is registered in
`AttentionMaskInterface` with the inner implementation's mask function (without it transformers
builds no causal mask for unknown names; for Gemma 3 that would silently drop the sliding-window
and image-block masks). Only the text config's `_attn_implementation` is switched: the vision tower
keeps its own. Pre-RoPE tensors come from plain forward hooks on the module RoPE's input comes
from (`laid.model.families.pre_rope_module`: `q_norm`/`k_norm` where the family has a QK-norm,
else `q_proj`/`k_proj`) and on `v_proj`. Everything is undone on exit, also after an exception.

Each forward inside the context overwrites `rec.tensors` (the last forward wins); for many
batches pass `callback(name, tensor)` to stream tensors instead of storing them. With a KV cache
(generation) the recorded k_rot is the full cached key sequence.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from laid.model.families import family_of
from laid.model.families.base import pre_rope_module, text_decoder  # noqa: F401 (text_decoder re-exported)

ROTARY_SITES = ("q_rot", "k_rot")
PROJECTION_SITES = {"q": "q_proj", "k": "k_proj", "v": "v_proj"}
SITES = ROTARY_SITES + tuple(PROJECTION_SITES)
_PREFIX = "laid_qk:"
_RECORDERS_ATTR = "_laid_qk_recorders"  # list of active QKRecorder on a self_attn module


def site_name(layer: int, site: str) -> str:
    return f"layers.{layer}.attn.{site}"


def resolve_layers(layers: int | Iterable[int] | None, n_layers: int) -> list[int]:
    """Normalise a layer selection (None = all, negative = from the end) to sorted indices."""
    if layers is None:
        return list(range(n_layers))
    if isinstance(layers, int):
        layers = [layers]
    out = set()
    for i in layers:
        j = int(i) + n_layers if int(i) < 0 else int(i)
        if not 0 <= j < n_layers:
            raise ValueError(f"layer {i} out of range for a text decoder with {n_layers} layers")
        out.add(j)
    return sorted(out)


def _inner_function(module: nn.Module, inner: str) -> Callable:
    if inner == "eager":  # not in the registry: each modeling file defines its own
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS.get_interface(inner, None)


def _recording_attention(inner: str) -> Callable:
    def attention(module, query, key, value, attention_mask, **kwargs):
        # query (B, H, S, D), key (B, H_kv, S_k, D): post-RoPE, as the kernel will see them.
        for rec in getattr(module, _RECORDERS_ATTR, ()):
            rec._emit(module.layer_idx, "q_rot", query)
            rec._emit(module.layer_idx, "k_rot", key)
        return _inner_function(module, inner)(module, query, key, value, attention_mask, **kwargs)

    return attention


def _register(inner: str) -> str:
    name = _PREFIX + inner
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _recording_attention(inner))
        mask_key = inner if inner in ALL_MASK_ATTENTION_FUNCTIONS else "sdpa"
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[mask_key])
    return name


class QKRecorder:
    """Holds what `record_qk` captured: `tensors[name]` (or streams them to `callback`)."""

    def __init__(self, layers: list[int], sites: tuple[str, ...], token_mask=None, detach: bool = True, callback=None):
        self.layers, self.sites, self.detach, self.callback = layers, sites, detach, callback
        self.token_mask = token_mask
        self.tensors: dict[str, torch.Tensor] = {}

    def names(self) -> list[str]:
        return [site_name(i, s) for i in self.layers for s in self.sites]

    def _emit(self, layer: int, site: str, x: torch.Tensor) -> None:
        # x (B, heads, S, D)
        if layer not in self.layers or site not in self.sites:
            return
        if self.detach:
            x = x.detach()
        if self.token_mask is not None:
            x = select_tokens(x, self.token_mask)
        name = site_name(layer, site)
        if self.callback is not None:
            self.callback(name, x)
        else:
            self.tensors[name] = x


def select_tokens(x: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Keep the sequence positions of x (B, heads, S, D) selected by token_mask.

    token_mask: (S,) bool or int indices (same tokens for every row), or (B, S) bool with the same
    count in every row (e.g. image tokens of a batch of equal-size haystacks). Returns (B, heads, N, D).
    """
    token_mask = token_mask.to(x.device)
    if token_mask.dtype != torch.bool or token_mask.ndim == 1:
        idx = token_mask.nonzero().squeeze(-1) if token_mask.dtype == torch.bool else token_mask
        return x.index_select(2, idx)
    counts = token_mask.sum(-1)
    if token_mask.shape != (x.shape[0], x.shape[2]) or not bool((counts == counts[0]).all()):
        raise ValueError(
            f"token_mask of shape {tuple(token_mask.shape)} must be (B, S) = ({x.shape[0]}, {x.shape[2]}) with the "
            "same number of selected tokens per row; record one example at a time otherwise"
        )
    idx = token_mask.nonzero()[:, 1].view(x.shape[0], -1)  # (B, N), row-major order
    return x.gather(2, idx[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[3]))


@contextmanager
def record_qk(
    model: nn.Module,
    layers: int | Iterable[int] | None = None,
    sites: Iterable[str] = ROTARY_SITES,
    token_mask: torch.Tensor | None = None,
    detach: bool = True,
    callback: Callable[[str, torch.Tensor], None] | None = None,
) -> Iterator[QKRecorder]:
    """Record per-head Q/K of the text decoder while the block runs (see the module docstring).

    layers: text decoder layer indices (None = all, negative from the end). sites: subset of
    q_rot, k_rot, q, k, v. token_mask: keep only these positions (see `select_tokens`).
    detach=False keeps the autograd graph (for losses on Q/K); callback(name, tensor) streams each
    tensor instead of storing it in `rec.tensors`.
    """
    sites = tuple(sites)
    unknown = [s for s in sites if s not in SITES]
    if unknown:
        raise ValueError(f"unknown site(s) {unknown}; choose from {list(SITES)}")
    text_model, decoder_layers = text_decoder(model)
    rec = QKRecorder(resolve_layers(layers, len(decoder_layers)), sites, token_mask, detach, callback)

    attns = [decoder_layers[i].self_attn for i in rec.layers]
    heads_first = family_of(model).norm_heads_first if any(s in ("q", "k") for s in sites) else False
    # Every config object the text path reads its implementation from (normally one, shared).
    configs = {id(c): c for c in [text_model.config] + [layer.self_attn.config for layer in decoder_layers]}
    previous = {key: cfg._attn_implementation for key, cfg in configs.items()}
    handles = []
    try:
        if any(s in ROTARY_SITES for s in sites):
            for key, cfg in configs.items():
                impl = previous[key] or "eager"
                if not impl.startswith(_PREFIX):  # already routed by an enclosing record_qk
                    cfg._attn_implementation = _register(impl)
            for attn in attns:
                setattr(attn, _RECORDERS_ATTR, getattr(attn, _RECORDERS_ATTR, []) + [rec])
        for i, attn in zip(rec.layers, attns):
            for site, proj in PROJECTION_SITES.items():
                if site in sites:
                    module = getattr(attn, proj) if site == "v" else pre_rope_module(attn, site)
                    first = heads_first and module is not getattr(attn, proj)
                    handles.append(module.register_forward_hook(_projection_hook(rec, i, site, attn.head_dim, first)))
        yield rec
    finally:
        for h in handles:
            h.remove()
        for attn in attns:
            active = [r for r in getattr(attn, _RECORDERS_ATTR, []) if r is not rec]
            if active:
                setattr(attn, _RECORDERS_ATTR, active)
            elif hasattr(attn, _RECORDERS_ATTR):
                delattr(attn, _RECORDERS_ATTR)
        for key, cfg in configs.items():
            cfg._attn_implementation = previous[key]


def _projection_hook(rec: QKRecorder, layer: int, site: str, head_dim: int, heads_first: bool = False):
    def hook(module, inputs, output):
        if heads_first:  # a QK-norm on (B, heads, S, D) (Gemma 3)
            rec._emit(layer, site, output)
            return
        b, s = output.shape[:2]  # (B, S, heads*D) or, after a QK-norm, (B, S, heads, D) -> (B, heads, S, D)
        rec._emit(layer, site, output.view(b, s, -1, head_dim).transpose(1, 2))

    return hook
