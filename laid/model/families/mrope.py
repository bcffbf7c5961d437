"""What the Qwen VLM families share: 3-D M-RoPE positions from `get_rope_index`, grid-based images.

Qwen2-VL, Qwen2.5-VL and Qwen3-VL give every token three position ids (temporal, height, width),
computed by the model's own `get_rope_index` from the processor's `mm_token_type_ids` and
`image_grid_thw`; they differ in which rotary pair reads which id (`mrope_axes`): contiguous
sections (Qwen2-VL, Qwen2.5-VL: pairs [0, s0) temporal, [s0, s0 + s1) height, the rest width) or
interleaved (Qwen3-VL: pair j is height if j % 3 == 1 and j < 3 s1, width if j % 3 == 2 and
j < 3 s2, else temporal). An image of t x h x w patches becomes t h w / merge^2 `<|image_pad|>`
tokens between `<|vision_start|>` and `<|vision_end|>`; the pixel cache (laid.model.pixel_cache)
builds these batches.
"""

from __future__ import annotations

import torch
from torch import nn

from laid.model.families.base import AXES_MROPE, FULL, Family, RotaryLayout, find_owner


def mrope_axes(section: list[int], n_pairs: int, interleaved: bool) -> tuple[int, ...]:
    """(P,) axis index (0 temporal, 1 height, 2 width) of each rotary pair, as the model's
    `recomposition_frequencies` assigns them."""
    if sum(section) != n_pairs:
        raise ValueError(f"mrope_section {list(section)} does not cover the {n_pairs} rotary pairs of this model")
    if not interleaved:
        return tuple(i % 3 for i, n in enumerate(section) for _ in range(n))
    return tuple(1 if j % 3 == 1 and j < 3 * section[1] else 2 if j % 3 == 2 and j < 3 * section[2] else 0
                 for j in range(n_pairs))


def without_video(base: type, name: str) -> type:
    """`base` (a Qwen-VL processor) with images and text only: no video processor, so no torchvision.
    ProcessorMixin finds sub-processors in `__init__`'s signature, which here has none for video."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        base.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    return type(name, (base,), {"__init__": __init__, "__doc__": f"{base.__name__} without a video processor."})


class MRopeFamily(Family):
    axis_names = AXES_MROPE
    interleaved = False
    token_keys = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    vision_keys = ("patch_size", "spatial_merge_size", "temporal_patch_size", "tokens_per_second")
    processor_keys = ("patch_size", "merge_size", "temporal_patch_size", "image_mean", "image_std", "min_pixels",
                      "max_pixels", "size", "do_normalize", "do_rescale", "rescale_factor")
    pixel_cache = True

    @torch.no_grad()
    def positions(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """(3, B, S) from the model's `get_rope_index` (the processor's mm_token_type_ids needed)."""
        owner = find_owner(model, "get_rope_index")
        if owner is None:
            raise ValueError(f"{type(model).__name__} has no get_rope_index: not a {self.label} model")
        pos, _ = owner.get_rope_index(batch["input_ids"], mm_token_type_ids=batch.get("mm_token_type_ids"),
                                      image_grid_thw=batch.get("image_grid_thw"), attention_mask=batch.get("attention_mask"))
        return pos.long()

    def rotary_layout(self, rotary: nn.Module, layer_type: str = FULL) -> RotaryLayout:
        inv = rotary.inv_freq.detach().double().cpu()
        axis = mrope_axes(list(rotary.mrope_section), len(inv), self.interleaved)
        return RotaryLayout(inv, axis, self.axis_names, float(getattr(rotary, "attention_scaling", 1.0)))

    def planned_image_tokens(self, vision: dict, token_ids: dict, image_processor: dict | None, width: int,
                             height: int) -> int:
        """The processor's resize (`smart_resize`: sides rounded to patch x merge, pixel count within the
        preprocessor's bounds, else the image processor's defaults), then one token per merge x merge patches."""
        from transformers import Qwen2VLImageProcessorPil
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        ip, default = image_processor or {}, Qwen2VLImageProcessorPil.size
        size = ip.get("size") or {}
        lo = ip.get("min_pixels") or size.get("shortest_edge") or default["shortest_edge"]
        hi = ip.get("max_pixels") or size.get("longest_edge") or default["longest_edge"]
        factor = int(vision["patch_size"]) * int(vision["spatial_merge_size"])
        h, w = smart_resize(height, width, factor=factor, min_pixels=lo, max_pixels=hi)
        return (h // factor) * (w // factor)

    def image_tokens(self, processor, width: int, height: int) -> int:
        ip = processor.image_processor
        return ip.get_number_of_image_patches(height, width) // ip.merge_size**2
