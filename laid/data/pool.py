"""A pool of rendered images for one split of the synthetic benchmark (the analogue of COCO).

The real Visual Haystacks samples its needles and distractors from COCO; the synthetic writer
samples from a pool of procedurally rendered images instead. Every image of a pool is saved as a
PNG under `<root>/images/<split>/<i:06d>.png` and its ground-truth categories are kept in a
boolean table, so a haystack can ask "images with the anchor but without the target" in one
vectorised query. When a query has too few candidates the pool renders constrained images on
demand (and keeps them), so small pools still yield valid haystacks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from laid.io import write_json

from .render import CATEGORIES, sample_image

CATEGORY_INDEX = {c: i for i, c in enumerate(CATEGORIES)}


def image_rel_path(split: str, i: int) -> str:
    """Path of pool image i relative to the image root (the dataset folder), '/'-separated."""
    return f"images/{split}/{i:06d}.png"


class ImagePool:
    """Rendered images of one split, with a (n_images, n_categories) presence table.

    Image i is rendered from its own generator seeded by (seed, split_id, i), so the first images
    of a pool do not depend on the pool size.
    """

    def __init__(self, root: Path, split: str, split_id: int, seed: int, image_size: int = 56,
                 n_objects: tuple[int, int] = (1, 3)):
        self.root = Path(root)
        self.split = split
        self.split_id = split_id
        self.seed = seed
        self.image_size = image_size
        self.n_objects = tuple(n_objects)
        self.categories: list[list[str]] = []  # sorted categories of image i
        self._rows: list[np.ndarray] = []  # (n_categories,) bool per image
        self._table: np.ndarray | None = None  # cached (n_images, n_categories) stack of _rows
        (self.root / "images" / split).mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self.categories)

    def rel_path(self, i: int) -> str:
        return image_rel_path(self.split, i)

    def _render(self, rng: np.random.Generator, must_have=(), must_not_have=()) -> int:
        """Render one image, save it as the next PNG of the pool and return its index."""
        image, cats = sample_image(rng, must_have=tuple(must_have), must_not_have=tuple(must_not_have),
                                   n_objects=self.n_objects, size=self.image_size)
        i = len(self.categories)
        image.save(self.root / self.rel_path(i), format="PNG")
        self.categories.append(cats)
        row = np.zeros(len(CATEGORIES), dtype=bool)
        row[[CATEGORY_INDEX[c] for c in cats]] = True
        self._rows.append(row)
        self._table = None
        return i

    def fill(self, n: int, progress: bool = True) -> None:
        """Render unconstrained images until the pool holds n of them."""
        for i in tqdm(range(len(self), n), desc=f"render {self.split} images", disable=not progress,
                      unit="img", leave=False):
            self._render(np.random.default_rng([self.seed, self.split_id, 0, i]))

    @property
    def table(self) -> np.ndarray:
        """(n_images, n_categories) bool: table[i, c] is True iff image i holds category c."""
        if self._table is None:
            self._table = np.stack(self._rows) if self._rows else np.zeros((0, len(CATEGORIES)), dtype=bool)
        return self._table

    def mask(self, has: tuple[str, ...] = (), has_not: tuple[str, ...] = ()) -> np.ndarray:
        """(n_images,) bool: images holding every category of `has` and none of `has_not`."""
        m = np.ones(len(self), dtype=bool)
        for c in has:
            m &= self.table[:, CATEGORY_INDEX[c]]
        for c in has_not:
            m &= ~self.table[:, CATEGORY_INDEX[c]]
        return m

    def prevalence(self, category: str, among_without: str) -> float:
        """Fraction of images holding `category` among those without `among_without`."""
        base = self.mask(has_not=(among_without,))
        return float(self.table[base, CATEGORY_INDEX[category]].mean()) if base.any() else 0.0

    def sample(self, rng: np.random.Generator, k: int, has: tuple[str, ...] = (),
               has_not: tuple[str, ...] = ()) -> list[int]:
        """k distinct images with the constraints; renders the missing ones on demand."""
        if k <= 0:
            return []
        cands = np.flatnonzero(self.mask(has, has_not))
        while len(cands) < k:  # the pool is short of such images: make them (kept for later use)
            cands = np.append(cands, self._render(rng, must_have=has, must_not_have=has_not))
        return [int(i) for i in rng.choice(cands, size=k, replace=False)]

    def write_objects(self) -> Path:
        """Write `images/<split>/objects.json`: {image path relative to the root: [categories]}."""
        path = self.root / "images" / self.split / "objects.json"
        write_json({self.rel_path(i): cats for i, cats in enumerate(self.categories)}, path, indent=0)
        return path
