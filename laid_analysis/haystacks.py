"""Haystacks to analyse: Visual Haystacks entries per size, turned into prompts lazily.

The same loader reads the real benchmark and `laid data synth` output (laid.data.vhs); images are
opened only when a haystack is analysed, so 150-image haystacks are never all in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from laid.data.vhs import VHsEntry, arrange_haystack, find_vhs_files, load_images, load_vhs_file
from laid.model.prompting import Example


def load_entries(data_root: str | Path, image_root: str | Path, sizes: Iterable[int], max_samples: int | None = None,
                 setting: str = "single_needle") -> dict[int, list[VHsEntry]]:
    """{size: first max_samples entries} of one setting, for each requested haystack size."""
    files = find_vhs_files(data_root)
    available = sorted(n for (s, n) in files if s == setting)
    out = {}
    for size in sorted({int(n) for n in sizes}):
        if (setting, size) not in files:
            raise ValueError(f"no {setting} haystacks of size {size} under {data_root}; available sizes: {available}")
        entries = load_vhs_file(files[(setting, size)], image_root)
        if not entries:
            raise ValueError(f"{files[(setting, size)]} holds no entries")
        out[size] = entries[:max_samples] if max_samples else entries
    return out


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
