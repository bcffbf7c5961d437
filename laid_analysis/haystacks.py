"""Haystacks to analyse: Visual Haystacks entries per size, turned into prompts lazily.

The same loader reads the real benchmark and `laid data synth` output (laid.data.vhs); images are
opened only when a haystack is analysed, so 150-image haystacks are never all in memory.
"""

from __future__ import annotations

from pathlib import Path

from laid.data.vhs import VHsEntry, arrange_haystack, load_images
from laid.model.prompting import Example


def to_example(entry: VHsEntry, seed: int = 0, decode: bool = False) -> Example:
    """The prompt of one entry; Example.needles holds the needle images' indices in the haystack.
    Images stay paths (decoded and preprocessed once per process by laid.model.pixel_cache) unless
    decode=True."""
    paths, needles = arrange_haystack(entry, seed)
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"image {path} not found; check --image-root")
    images = load_images(paths) if decode else list(paths)
    return Example(images, entry.question, entry.answer, needles=tuple(needles))
