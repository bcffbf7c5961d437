"""A Qwen2.5-VL processor that works without torchvision.

`Qwen2_5_VLProcessor` insists on a video processor, and the only one in transformers needs
torchvision. Our subclass declares no video processor (its `__init__` has no such argument, which
is how `ProcessorMixin` discovers sub-processors) and is registered with `AutoProcessor`, so
`AutoProcessor.from_pretrained(dir)` returns it for toy folders. Real Qwen2.5-VL folders load the
same class, which makes the code path identical on a machine without torchvision.
"""

from __future__ import annotations

from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil


class LaidQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor with images and text only (no video processor, no torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


def register() -> None:
    """Make AutoProcessor return our processor for Qwen2.5-VL configs (idempotent)."""
    AutoProcessor.register(Qwen2_5_VLConfig, LaidQwen2_5_VLProcessor, exist_ok=True)


def build_image_processor(image_size: int = 56, patch_size: int = 14, merge_size: int = 2):
    """An image processor that keeps `image_size` x `image_size` images at that size.

    With 14 px patches and 2x2 merge a 56 px image becomes a 4x4 patch grid = 4 vision tokens.
    """
    pixels = image_size * image_size
    return Qwen2VLImageProcessorPil(
        min_pixels=pixels, max_pixels=pixels, patch_size=patch_size, merge_size=merge_size, temporal_patch_size=2
    )


register()
