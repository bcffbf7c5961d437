"""Haystacks to analyse: Visual Haystacks entries per size, turned into prompts lazily.

The same loader reads the real benchmark and `laid data synth` output (laid.data.vhs); images are
opened only when a haystack is analysed, so 150-image haystacks are never all in memory.
"""

from __future__ import annotations

from laid.data.vhs import VHsEntry, arrange_haystack, load_images
from laid.model.prompting import Example


def to_example(entry: VHsEntry, seed: int = 0) -> Example:
    paths, _ = arrange_haystack(entry, seed)
    return Example(load_images(paths), entry.question, entry.answer)
