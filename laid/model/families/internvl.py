"""InternVL3 (transformers' `internvl`, the "-hf" checkpoints): plain 1-D RoPE over all tokens.

- The language model is `AutoModel.from_config(text_config)`: a Qwen2 model for the InternVL3 sizes
  (Qwen2.5 LMs), at `model.language_model.layers`; q/k/v biases, no QK-norm, causal attention at
  head_dim ** -0.5 (sliding window only with `use_sliding_window`, off in the published configs).
- Positions: consecutive token indices, image tokens included (no get_rope_index, no V2PE in the HF
  code), so a haystack's distance is its token count.
- Images: `<img>` + image_seq_length x `<IMG_CONTEXT>` per 448 px tile + `</img>` (crop_to_patches adds
  tiles and a thumbnail); vision tower `model.vision_tower`, projector `model.multi_modal_projector`.
  No injection into intermediate text layers. A RoPE gain folds into q_proj / k_proj weight and bias.
"""

from __future__ import annotations

from transformers import InternVLConfig, InternVLProcessor

from laid.model.families.base import Family


class LaidInternVLProcessor(InternVLProcessor):
    """InternVLProcessor with images and text only (no video processor, so no torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, image_seq_length: int = 256, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, image_seq_length=image_seq_length, chat_template=chat_template, **kwargs)


class InternVL(Family):
    name, label = "internvl", "InternVL3"
    model_types = ("internvl",)
    vision_prefixes = ("model.vision_tower.", "model.multi_modal_projector.")
    token_keys = ("image_token_id", "image_seq_length", "downsample_ratio")
    vision_keys = ("image_size", "patch_size")
    processor_keys = ("crop_to_patches", "min_patches", "max_patches", "image_mean", "image_std", "size",
                      "do_normalize", "do_rescale", "rescale_factor")
    processor_class, config_class = LaidInternVLProcessor, InternVLConfig

    def tie_word_embeddings(self, config) -> bool:
        """The language model's own setting: the -hf checkpoints ship a separate lm_head wherever the text
        config says untied (InternVL3-2B / 8B), while the top-level key, absent from their config.json,
        defaults to tied in transformers 5; loading real weights does not tie two different tensors."""
        return bool(getattr(self.text_config(config), "tie_word_embeddings", False))

    def patches_per_token(self, config) -> int:
        return round(1 / config.downsample_ratio**2)  # pixel shuffle

    def planned_image_tokens(self, vision: dict, token_ids: dict, image_processor: dict | None, width: int,
                             height: int) -> int:
        """image_seq_length per tile, tiles as the processor cuts them: InternVLProcessor calls its image
        processor with crop_to_patches on (whatever preprocessor_config.json says), so an image of
        another aspect than 1:1 becomes a grid of 448 px tiles plus a thumbnail."""
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

        ip = GotOcr2ImageProcessorPil(**{k: v for k, v in (image_processor or {}).items() if k in ("size", "min_patches", "max_patches")})
        tiles = ip.get_number_of_image_patches(height, width, dict(InternVLProcessor.images_kwargs))  # the call's defaults
        return int(token_ids["image_seq_length"]) * tiles

    def image_tokens(self, processor, width: int, height: int) -> int:
        # the tiles the processor's call cuts (crop_to_patches on, as planned_image_tokens), not its image
        # processor's own default (off): else a non-square image counts one tile and batches overflow
        tiles = processor.image_processor.get_number_of_image_patches(height, width, dict(InternVLProcessor.images_kwargs))
        return processor.image_seq_length * tiles + 2  # <img> ... </img>
