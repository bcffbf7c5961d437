"""Plain causal AttentionPatterns for the loss tests on planted tensors.

The losses take each layer's mask rule and scale explicitly (no default mask); the planted problems
here are Qwen2.5-VL-like layers, whose real attention is causal at head_dim ** -0.5, so they say so.
"""

from __future__ import annotations

from laid.model.families import AttentionPattern


def causal(student_q, target_q=None) -> dict:
    """{student_pattern, target_pattern}: causal at each side's head_dim ** -0.5 (q (..., D))."""
    target_q = student_q if target_q is None else target_q
    return {"student_pattern": AttentionPattern.causal(student_q.shape[-1]),
            "target_pattern": AttentionPattern.causal(target_q.shape[-1])}
