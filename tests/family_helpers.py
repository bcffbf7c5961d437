"""Tiny random models of each added family (Qwen2-VL, Qwen3-VL, InternVL3, Gemma 3) for the tests.

Teacher: hidden 64, 2 layers, 4 heads / 2 KV heads; student: hidden 32, 2 layers, 2 heads / 1 KV head,
a smaller (padded) vocabulary; both head_dim 16 and a 2-block vision tower of width 32. Gemma 3's
sliding window is WINDOW tokens (about one toy image and its markers), so that on the short test
haystacks its local layer really hides keys; its layer types are [sliding, full].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

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
