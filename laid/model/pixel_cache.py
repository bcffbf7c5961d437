"""Preprocess each distinct image once, and build Qwen2.5-VL inputs from the cached pixels.

Why: Visual Haystacks shows the same test image in many haystacks and to every model of a run,
and the image processor costs ~1 ms per 56 px image (resize, rescale, normalise, patchify), more
than the toy model's forward pass over it. A `PixelCache` keeps what the processor's image
processor returns for one image (`pixel_values` rows and its `image_grid_thw` row) and
`encode_from_pixels` builds the batch the processor would have built:

    processor(text=texts, images=images, padding=True, return_tensors="pt")
      == encode_from_pixels(processor, texts, cache.get_paths(processor, paths))

key by key, tensor for tensor (tests/test_pixel_cache.py checks torch.equal). It uses only the
processor's own image processor, tokenizer, image token, merge size and mm_token_type_ids rule, so
it serves the toy processor and the real Qwen2.5-VL one alike. The image processor works on each
image independently (its output for a list is the concatenation of its outputs per image), which
is what makes per-image caching exact.

Entries are keyed by (processor fingerprint, key): one cache can serve several processors, and a
process-wide `SHARED` cache lets all the evaluations of a comparison reuse the same pixels. A path
key also holds the file's size and modification time, so a regenerated file is preprocessed anew.
Memory is bounded: least recently used entries are evicted beyond `max_bytes`.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable, Sequence

import torch
from PIL import Image

from laid.data.vhs import VHsImageMissing, load_image

# ~225 MB holds the default synthetic test pool (3000 images of 56 px: 16 patches x 1176 floats
# each); real 448 px images take 4.8 MB each, so about 100 of them fit.
DEFAULT_MAX_BYTES = 512 * 2**20


@dataclass(frozen=True)
class ImagePixels:
    """What the image processor returns for one image."""

    pixel_values: torch.Tensor  # (P, C*T*ph*pw) flattened patches, P = t * h * w
    grid_thw: torch.Tensor  # (3,) int64: patch grid (temporal, height, width)

    @property
    def nbytes(self) -> int:
        return self.pixel_values.nbytes + self.grid_thw.nbytes


def processor_fingerprint(processor) -> str:
    """Hash of the image processor's class and settings: equal fingerprints, equal pixels."""
    ip = processor.image_processor
    text = f"{type(ip).__module__}.{type(ip).__qualname__}\n{ip.to_json_string()}"
    return hashlib.sha1(text.encode()).hexdigest()


def preprocess_images(processor, images: Sequence[Image.Image]) -> list[ImagePixels]:
    """Run the processor's image processor once on a list of images; split its output per image.

    One call for many images: the image processor's fixed cost per call (argument checks, ~1 ms)
    is as large as its work on a 56 px image.
    """
    if not images:
        return []
    out = processor.image_processor(images=list(images), return_tensors="pt")
    grids = out["image_grid_thw"]  # (N, 3)
    if grids.shape[0] != len(images):
        raise ValueError(f"the image processor returned {grids.shape[0]} grids for {len(images)} images")
    rows = out["pixel_values"].split(grids.prod(-1).tolist())  # P_i rows per image
    # clone: a cached entry must not keep the whole batch's tensor alive (and its bytes uncounted).
    return [ImagePixels(v.clone(), g.clone()) for v, g in zip(rows, grids)]


def preprocess_image(processor, image: Image.Image) -> ImagePixels:
    """Run the processor's image processor on one image (no caching)."""
    return preprocess_images(processor, [image])[0]


class PixelCache:
    """ImagePixels by (processor fingerprint, key), least recently used evicted beyond max_bytes.

    `hits` / `misses` count lookups (for benchmarks and tests): a key seen earlier in the same
    call counts as a hit. max_bytes=0 caches nothing.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple, ImagePixels] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def get_many(
        self,
        processor,
        keys: Sequence[Hashable],
        loads: Sequence[Callable[[], Image.Image]],
        fingerprint: str | None = None,
    ) -> list[ImagePixels]:
        """Pixels of the images `loads[i]()` returns; those whose key is not cached are loaded and
        preprocessed, all in one image-processor call.

        The caller promises that equal keys mean equal images. Pass `fingerprint` (from
        processor_fingerprint) to hash the processor's settings once for many calls.
        """
        fingerprint = fingerprint or processor_fingerprint(processor)
        found: dict[tuple, ImagePixels] = {}
        missing: dict[tuple, Callable[[], Image.Image]] = {}
        for key, load in zip(keys, loads, strict=True):
            full_key = (fingerprint, key)
            if full_key in found or full_key in missing:
                self.hits += 1
            elif (pixels := self._entries.get(full_key)) is not None:
                self._entries.move_to_end(full_key)
                found[full_key] = pixels
                self.hits += 1
            else:
                missing[full_key] = load
                self.misses += 1
        fresh = preprocess_images(processor, [load() for load in missing.values()])
        for full_key, pixels in zip(missing, fresh):
            found[full_key] = pixels
            self._store(full_key, pixels)
        return [found[(fingerprint, key)] for key in keys]

    def get(self, processor, key: Hashable, load: Callable[[], Image.Image], fingerprint: str | None = None) -> ImagePixels:
        """Pixels of the image `load()` returns, preprocessed only if `key` is not cached yet."""
        return self.get_many(processor, [key], [load], fingerprint)[0]

    def get_paths(self, processor, paths: Sequence[str | Path], fingerprint: str | None = None) -> list[ImagePixels]:
        """Pixels of image files, keyed by absolute path, size and modification time."""
        keys, loads = [], []
        for path in paths:
            path = os.path.abspath(path)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                raise VHsImageMissing(f"image {path} not found; check --image-root", path) from None
            keys.append(("path", path, st.st_size, st.st_mtime_ns))
            loads.append(lambda path=path: load_image(path))
        return self.get_many(processor, keys, loads, fingerprint)

    def get_path(self, processor, path: str | Path, fingerprint: str | None = None) -> ImagePixels:
        return self.get_paths(processor, [path], fingerprint)[0]

    def _store(self, key: tuple, pixels: ImagePixels) -> None:
        if pixels.nbytes > self.max_bytes:
            return  # would evict everything and still not fit
        self._entries[key] = pixels
        self.nbytes += pixels.nbytes
        while self.nbytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.nbytes -= old.nbytes


# One cache for the whole process (evaluations of many models reuse the test images' pixels).
SHARED = PixelCache()


ImageLike = Image.Image | str | Path | ImagePixels


def to_pixels(processor, images: Sequence[ImageLike], cache: PixelCache | None = None) -> list[ImagePixels]:
    """ImagePixels for each image, in order: paths through `cache` (decoded and preprocessed without
    one), PIL images preprocessed as they are (there is no key to cache them by: use cache.get
    with your own key for that), ImagePixels kept. One image-processor call for all that need it."""
    out: list[ImagePixels | None] = [None] * len(images)
    paths, decoded = {}, {}  # index -> path / PIL image
    for i, image in enumerate(images):
        if isinstance(image, ImagePixels):
            out[i] = image
        elif isinstance(image, (str, Path)):
            paths[i] = image
        elif isinstance(image, Image.Image):
            decoded[i] = image
        else:
            raise TypeError(f"expected a PIL image, an image path or ImagePixels, got {type(image).__name__}")
    if cache is not None:
        for i, pixels in zip(paths, cache.get_paths(processor, list(paths.values()))):
            out[i] = pixels
    else:
        decoded.update({i: load_image(p) for i, p in paths.items()})
    for i, pixels in zip(decoded, preprocess_images(processor, list(decoded.values()))):
        out[i] = pixels
    return out


def expand_image_tokens(processor, texts: Sequence[str], pixels: Sequence[ImagePixels]) -> list[str]:
    """Replace the i-th image token of the batch by grid_t*grid_h*grid_w / merge^2 image tokens.

    The same expansion the processor does (one placeholder per image, in order across the batch).
    Text marked by the chat template's sanitize_control_tokens option is not special-cased: the
    prompts here are rendered by our own template call and hold no such marks.
    """
    token = processor.image_token
    merge_length = processor.image_processor.merge_size**2
    n_tokens = sum(t.count(token) for t in texts)
    if n_tokens != len(pixels):
        raise ValueError(f"the prompts hold {n_tokens} {token} tokens but {len(pixels)} images were given")
    counts = iter(int(p.grid_thw.prod()) // merge_length for p in pixels)
    expanded = []
    for text in texts:
        parts = text.split(token)
        pieces = [parts[0]]
        for part in parts[1:]:
            pieces.append(token * next(counts))
            pieces.append(part)
        expanded.append("".join(pieces))
    return expanded


def encode_from_pixels(processor, texts: Sequence[str], pixels: Sequence[ImagePixels]) -> dict[str, torch.Tensor]:
    """The processor's padded batch for `texts` (one image token per image) and these images.

    Returns input_ids / attention_mask / mm_token_type_ids (B, S) int64 padded on the tokenizer's
    padding side, and, when there are images, pixel_values (sum of P, D) and image_grid_thw (N, 3).
    """
    tok = processor.tokenizer
    text_inputs = tok(expand_image_tokens(processor, texts, pixels), padding=True, return_tensors="pt")
    batch = dict(text_inputs)
    # The processor's own rule (image / video / audio ids -> 1 / 2 / 3), as an int64 tensor.
    batch["mm_token_type_ids"] = torch.tensor(processor.create_mm_token_type_ids(batch["input_ids"]), dtype=torch.long)
    if pixels:
        batch["pixel_values"] = torch.cat([p.pixel_values for p in pixels])  # (sum P, D)
        batch["image_grid_thw"] = torch.stack([p.grid_thw for p in pixels])  # (N, 3)
    return batch
