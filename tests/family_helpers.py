"""Tiny random models of each added family (Qwen2-VL, Qwen3-VL, InternVL3, Gemma 3) for the tests.

Teacher: hidden 64, 2 layers, 4 heads / 2 KV heads; student: hidden 32, 2 layers, 2 heads / 1 KV head,
a smaller (padded) vocabulary; both head_dim 16 and a 2-block vision tower of width 32. Gemma 3's
sliding window is WINDOW tokens (about one toy image and its markers), so that on the short test
haystacks its local layer really hides keys; its layer types are [sliding, full]. The brute-force
references (attention matching and the distance profile from full (S, S) attention maps) are
written here once, independently of the chunked code they check.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from laid.data.questions import single_needle_question
from laid.data.render import sample_image
from laid.model.prompting import Example, encode_batch
from laid.zoo.build import build_random_folder
from laid.zoo.configs import TextArch, VisionArch, ZooModelConfig

FAMILIES = ("qwen2_vl", "qwen3_vl", "internvl", "gemma3")
WINDOW = 8
_VISION = VisionArch(depth=2, hidden_size=32, intermediate_size=64, num_heads=2)
TEACHER = ZooModelConfig("family-teacher", "teacher", "a larger model of the family", vision=_VISION, text=TextArch(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    vocab_size=128, mrope_section=[2, 3, 3], initializer_range=0.1))
STUDENT = ZooModelConfig("family-student", "student", "a smaller model of the family", vision=_VISION, text=TextArch(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
    vocab_size=112, mrope_section=[2, 3, 3], initializer_range=0.1))


def build_pair(family: str, root: Path) -> dict[str, Path]:
    """{"teacher": dir, "student": dir}: random-init folders of `family` under root/family."""
    extra = {"sliding_window": WINDOW} if family == "gemma3" else {}
    return {role: build_random_folder(cfg, root / family / role, family=family, **extra)
            for role, cfg in (("teacher", TEACHER), ("student", STUDENT))}


def haystack_batch(processor, sizes=(3, 5), seed=0, with_answers=False) -> dict:
    """Two left-padded haystacks of different sizes (padding, several images, a question)."""
    rng = np.random.default_rng(seed)
    examples = [Example([sample_image(rng)[0] for _ in range(n)], single_needle_question("red circle", "blue square"), "yes")
                for n in sizes]
    return encode_batch(processor, examples, with_answers=with_answers)


def brute_force_attention_matching(a_s, a_t, mix, pos, valid, alpha: float):
    """Sum over valid rows (b, h, i) and keys j of w_ij [p log(p/q) - p + q], from full (S, S) attention
    maps the models computed themselves (eager, output_attentions), divided by (valid rows x student
    heads); w_ij = 1 + alpha |pos| distance / the sequence's largest one. a_s (B, H_s, S, S), a_t
    (B, H_t, S, S), mix (H_s, H_t), pos (A, B, S), valid (B, S). Keys the student's map gives no weight
    are the ones its layer hides (its real mask); both maps must hide the same keys (same layer type)."""
    p = torch.einsum("ht,btij->bhij", mix.double(), a_t.double())  # convex mix of the teacher's own maps
    q = a_s.double()
    d = (pos[:, :, :, None] - pos[:, :, None, :]).abs().amax(0).double()  # (B, S, S) max-axis distance
    big = 1 << 40
    span = (pos.masked_fill(~valid[None], -big).amax(-1) - pos.masked_fill(~valid[None], big).amin(-1)).amax(0)  # (B,)
    w = 1 + alpha * d / span.double().clamp(min=1)[:, None, None]
    seen = q > 0
    zero = torch.zeros((), dtype=torch.float64)
    term = torch.where(p > 0, p * (p.clamp(min=1e-300).log() - q.clamp(min=1e-300).log()), zero) - p + q
    term = torch.where(seen & valid[:, None, :, None], w[:, None] * term, zero)
    return term.sum() / (valid.sum() * a_s.shape[1])


def brute_force_profile(attn, pos, keys, n: int):
    """(attention sum (H, n), pair count (n,)) of one sequence from the model's own map attn (H, S, S):
    every query row, keys where `keys` (S,) and the map gives weight, at distance pos[i] - pos[j] >= 0."""
    sums, count = torch.zeros(attn.shape[0], n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    for i in range(attn.shape[1]):
        for j in range(attn.shape[2]):
            d = int(pos[i] - pos[j])
            if keys[j] and d >= 0 and bool((attn[:, i, j] > 0).any()):
                sums[:, d] += attn[:, i, j].double()
                count[d] += 1
    return sums, count
