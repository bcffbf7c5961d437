"""Where zoo pretraining gets its images: rendered fresh, or drawn from a bank with cached features.

Both sources answer the same request, `draw(rng, must_have, must_not_have) -> (image, categories)`,
with the same distribution as `laid.data.render.sample_image` (the benchmark's own sampler): the
object count is drawn uniformly from N_OBJECTS and raised to len(must_have), the other categories
are uniform among the allowed ones. The bank matches it by first drawing the object count and then
an image with exactly that many categories that meets the constraints; drawing "any image that
holds the anchor and the target" instead would favour 3-object images for yes answers, a cue the
model could learn in place of the task.

Why a bank: once the vision tower is frozen after its alignment stage (laid/zoo/pretrain.py), a
training image's features never change, so rendering it, preprocessing it and running the vision
tower on it at every step is wasted work (a third to a half of a step: 1.5-2.1x faster without it,
bench/results/zoo_pretrain_speed.md). The bank renders
`size` images once, runs the frozen tower over them once, and a batch then carries the cached
features to the model through Qwen2.5-VL's `mm_encoder_outputs` argument. Each bank image is shown
many times, but haystacks and questions are recomposed at every step, so there is nothing to
memorise beyond what an image shows; held-out evaluation uses freshly rendered images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from laid.data.pool import CATEGORY_INDEX
from laid.data.render import CATEGORIES, sample_image
from laid.model.pixel_cache import ImagePixels, preprocess_images

N_OBJECTS = (1, 3)  # objects per image, as sample_image's default


class FreshImages:
    """Renders a new image for every request (PIL images; the processor and vision tower run per step)."""

    def __init__(self, image_size: int = 56):
        self.image_size = image_size

    def draw(self, rng: np.random.Generator, must_have=(), must_not_have=()) -> tuple[Image.Image, list[str]]:
        return sample_image(rng, must_have=tuple(must_have), must_not_have=tuple(must_not_have),
                            n_objects=N_OBJECTS, size=self.image_size)


@dataclass(frozen=True, eq=False)
class BankImage(ImagePixels):
    """An image whose vision-tower output is already known: `features` (T, H), T merged tokens.

    Its pixel_values hold no rows (the tower does not run again); grid_thw still sizes the
    placeholder tokens of the prompt, so prompts are built exactly as for real pixels.
    """

    features: torch.Tensor | None = None


class ImageBank:
    """`size` rendered images with their categories and frozen vision features."""

    def __init__(self, model, processor, size: int, seed: int, image_size: int = 56, progress: bool = True,
                 desc: str = "image bank"):
        self.model, self.processor, self.image_size = model, processor, image_size
        rng = np.random.default_rng(seed)
        images, self.categories = [], []
        for _ in tqdm(range(size), desc=f"{desc}: render", disable=not progress, mininterval=2.0, leave=False):
            image, cats = sample_image(rng, n_objects=N_OBJECTS, size=image_size)
            images.append(image)
            self.categories.append(cats)
        self.table = np.zeros((size, len(CATEGORIES)), dtype=bool)  # (N, C): image i shows category c
        for i, cats in enumerate(self.categories):
            self.table[i, [CATEGORY_INDEX[c] for c in cats]] = True
        self.n_objects = self.table.sum(1)  # (N,) distinct categories = objects per image
        self.images = self._encode(model, processor, images, progress, desc)

    @staticmethod
    @torch.no_grad()
    def _encode(model, processor, images, progress, desc, chunk: int = 256) -> list[BankImage]:
        visual = model.model.visual
        merge = visual.spatial_merge_size**2
        out = []
        for start in tqdm(range(0, len(images), chunk), desc=f"{desc}: features", disable=not progress, leave=False):
            pixels = preprocess_images(processor, images[start:start + chunk])
            grids = torch.stack([p.grid_thw for p in pixels])  # (n, 3)
            feats = visual(torch.cat([p.pixel_values for p in pixels]), grid_thw=grids).pooler_output  # (n * T, H)
            for p, f in zip(pixels, feats.split((grids.prod(-1) // merge).tolist())):
                out.append(BankImage(p.pixel_values[:0].clone(), p.grid_thw, f.clone()))
        return out

    def __len__(self) -> int:
        return len(self.images)

    def draw(self, rng: np.random.Generator, must_have=(), must_not_have=()) -> tuple[BankImage, list[str]]:
        lo, hi = N_OBJECTS
        n = max(int(rng.integers(lo, hi + 1)), len(must_have))
        mask = self.n_objects == n
        for c in must_have:
            mask &= self.table[:, CATEGORY_INDEX[c]]
        for c in must_not_have:
            mask &= ~self.table[:, CATEGORY_INDEX[c]]
        candidates = np.flatnonzero(mask)
        if len(candidates):
            i = int(rng.choice(candidates))
        else:  # a small bank lacks such an image: render one (and keep it), as sample_image would
            if set(must_have) & set(must_not_have):
                raise ValueError(f"no image can show and not show {sorted(set(must_have) & set(must_not_have))}")
            i = self._add(*sample_image(rng, must_have=tuple(must_have), must_not_have=tuple(must_not_have),
                                        n_objects=(n, n), size=self.image_size))
        return self.images[i], self.categories[i]

    def _add(self, image: Image.Image, cats: list[str]) -> int:
        [banked] = self._encode(self.model, self.processor, [image], progress=False, desc="")
        row = np.zeros((1, len(CATEGORIES)), dtype=bool)
        row[0, [CATEGORY_INDEX[c] for c in cats]] = True
        self.images.append(banked)
        self.categories.append(cats)
        self.table = np.concatenate([self.table, row])
        self.n_objects = np.append(self.n_objects, len(cats))
        return len(self.images) - 1


def encoder_outputs(examples) -> dict | None:
    """`mm_encoder_outputs` for a batch whose images all come from a bank, else None."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    images = [im for ex in examples for im in ex.images]
    if not images or not all(isinstance(im, BankImage) for im in images):
        return None
    return {"image": BaseModelOutputWithPooling(pooler_output=[im.features for im in images])}
