"""Degenerate readings of a family, kept as labelled ablations: the tests show each one failing the
exactness checks the adapters pass (tests/test_families_adapters.py), so those checks can fail.

- `contiguous_layout`: M-RoPE sections read as contiguous blocks (Qwen2/2.5-VL's layout). Right for
  those two, wrong for Qwen3-VL, whose sections are interleaved: most pairs get the wrong axis, so
  image tokens (whose height / width ids differ from the temporal one) rotate differently.
- `causal_pattern`: a layer's attention read as plain causal at head_dim ** -0.5, the Qwen2.5-VL
  assumption. Right for the Qwen-VL families and InternVL3; wrong for Gemma 3 (sliding window on local
  layers, bidirectional image blocks, query_pre_attn_scalar ** -0.5).
"""

from __future__ import annotations

from torch import nn

from laid.model.families.base import AttentionPattern, RotaryLayout, text_decoder
from laid.model.families.mrope import mrope_axes


def contiguous_layout(rotary: nn.Module) -> RotaryLayout:
    """A Qwen-VL rotary module's layout with its mrope_section read contiguously."""
    inv = rotary.inv_freq.detach().double().cpu()
    return RotaryLayout(inv, mrope_axes(list(rotary.mrope_section), len(inv), interleaved=False),
                        ("temporal", "height", "width"), float(getattr(rotary, "attention_scaling", 1.0)))


def causal_pattern(model: nn.Module, layer: int) -> AttentionPattern:
    """Plain causal attention at head_dim ** -0.5 for `layer`, whatever the family says."""
    return AttentionPattern.causal(text_decoder(model)[1][layer].self_attn.head_dim)
