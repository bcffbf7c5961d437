"""Torchvision-free processors for every supported family, and the toy Qwen image processor.

`Qwen2_5_VLProcessor` (and Qwen2-VL's, Qwen3-VL's, InternVL's) insists on a video processor, and
the only ones in transformers need torchvision. Each family module defines a subclass that declares
no video processor (its `__init__` has no such argument, which is how `ProcessorMixin` discovers
sub-processors); `laid.model.families.register_processors` registers them with `AutoProcessor`, so
`AutoProcessor.from_pretrained(dir)` returns them for toy and real folders alike, and the code path
is identical on a machine without torchvision. Gemma 3's processor has no video part: it is used as is.
"""

from __future__ import annotations

from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from laid.model.families import register_processors
from laid.model.families.qwen2_5_vl import LaidQwen2_5_VLProcessor  # noqa: F401 (the zoo's processor class)


def register() -> None:
    """Make AutoProcessor return our processors for every family (idempotent)."""
    register_processors()


def build_image_processor(image_size: int = 56, patch_size: int = 14, merge_size: int = 2):
    """A Qwen-VL image processor that keeps `image_size` x `image_size` images at that size.

    With 14 px patches and 2x2 merge a 56 px image becomes a 4x4 patch grid = 4 vision tokens.
    """
    pixels = image_size * image_size
    return Qwen2VLImageProcessorPil(
        min_pixels=pixels, max_pixels=pixels, patch_size=patch_size, merge_size=merge_size, temporal_patch_size=2
    )


register()
