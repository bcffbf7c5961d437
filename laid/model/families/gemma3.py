"""Gemma 3: 1-D RoPE with two bases, sliding-window local layers, bidirectional image blocks, QK-norm.

- Layers: `layer_types` (5 sliding : 1 full in the published configs: full layers 5, 11, 17, ...).
  Sliding layers see keys with i - j < `sliding_window` (1024) and use RoPE base 1e4
  (`rope_local_base_freq`); full layers use base 1e6 with linear scaling x8. The rotary module holds
  one inv_freq per layer type, so the rotary layout is per layer.
- Mask: causal, OR bidirectional inside each image block (a run of image tokens, from the processor's
  `token_type_ids` == 1), then AND the window on sliding layers (transformers'
  `create_masks_for_vision_model`); without token_type_ids the model uses plain causal masks, and so
  does the pattern here. Scale `query_pre_attn_scalar ** -0.5` (168 ** -0.5 for 27B), not head_dim's.
- QK-norm: `Gemma3RMSNorm(head_dim)` multiplies by (1 + w), shared by all heads, between q_proj /
  k_proj and RoPE. A RoPE gain g is applied to the norm output and folds exactly as
  w' = g (1 + w) - 1 when it is the same for every head: one value per (layer, pair) for q and for k.
- Images: `\n\n<start_of_image>` + mm_tokens_per_image x `<image_soft_token>` + `<end_of_image>\n\n`
  (256 per 896 px image; pan-and-scan crops add more); vision tower `model.vision_tower` (SigLIP),
  projector `model.multi_modal_projector`. Text embeddings are scaled by sqrt(hidden); image features
  are not. Turns end with `<end_of_turn>`.
"""

from __future__ import annotations

from torch import nn
from transformers import Gemma3Config, Gemma3Processor

from laid.model.families.base import FULL, AttentionPattern, Family, RotaryLayout, image_blocks, text_decoder


class Gemma3(Family):
    name, label = "gemma3", "Gemma 3"
    model_types = ("gemma3", "gemma3_text")
    qk_norm = True
    norm_offset = 1.0
    norm_heads_first = True
    vision_prefixes = ("model.vision_tower.", "model.multi_modal_projector.")
    token_keys = ("image_token_index", "boi_token_index", "eoi_token_index", "mm_tokens_per_image")
    vision_keys = ("image_size", "patch_size")
    processor_keys = ("do_pan_and_scan", "image_mean", "image_std", "size", "do_normalize", "do_rescale", "rescale_factor")
    end_of_turn = "<end_of_turn>"
    processor_class, config_class = Gemma3Processor, Gemma3Config

    def long_rope_layers(self, config) -> list[int]:
        return [i for i, t in enumerate(self.layer_types(config)) if t == FULL]

    def rotary_layout(self, rotary: nn.Module, layer_type: str = FULL) -> RotaryLayout:
        inv = getattr(rotary, f"{layer_type}_inv_freq").detach().double().cpu()
        scaling = float(getattr(rotary, f"{layer_type}_attention_scaling", 1.0))
        return RotaryLayout(inv, (0,) * len(inv), self.axis_names, scaling)

    def attention_pattern(self, model: nn.Module, layer: int, batch: dict) -> AttentionPattern:
        attn = text_decoder(model)[1][layer].self_attn
        types = batch.get("token_type_ids")
        blocks = None if types is None else image_blocks(types == 1)
        return AttentionPattern(scaling=float(attn.scaling), sliding_window=attn.sliding_window, blocks=blocks)

    def patches_per_token(self, config) -> int:
        v = config.vision_config
        return (v.image_size // v.patch_size) ** 2 // config.mm_tokens_per_image  # average pooling (16 for 896 px)

    def planned_image_tokens(self, vision: dict, token_ids: dict, image_processor: dict | None, width: int,
                             height: int) -> int:
        return int(token_ids["mm_tokens_per_image"])  # every image resized to image_size (no pan-and-scan)

    def image_tokens(self, processor, width: int, height: int) -> int:
        return processor.image_seq_length + 2  # <start_of_image> ... <end_of_image>

    def image_token_id(self, config) -> int:
        return int(config.image_token_index)

    def image_start_token_id(self, config) -> int | None:
        return int(config.boi_token_index)
