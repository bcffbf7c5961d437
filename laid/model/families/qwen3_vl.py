"""Qwen3-VL: interleaved M-RoPE, per-head QK-norm, DeepStack vision injection.

- RoPE: sections [24, 20, 20] read *interleaved* (pair j is height if j % 3 == 1 and j < 60, width if
  j % 3 == 2 and j < 60, else temporal; `mrope.mrope_axes`); the config's `mrope_interleaved` key is
  ignored by transformers (always interleaved). Positions from `get_rope_index` as in Qwen2.5-VL.
- QK-norm: `q_norm` / `k_norm` (RMSNorm over head_dim, weight (D,) shared by all heads) sit between
  q_proj / k_proj and RoPE, so a gain on q_proj's rows is normalised away. A RoPE gain is applied to
  the norm's output and folds exactly into the norm weight (w' = g w) when it is the same for every
  head: in this family the gain is one value per (layer, rotary pair) for queries and one for keys.
- DeepStack: features of vision blocks `deepstack_visual_indexes` are added to the image tokens'
  hidden states after text layers 0 .. n-1 (n = number of those blocks), so the image-token Q/K of
  layers 1 .. n read vision features that came in beside the residual stream, not through it.
- No q/k/v biases; causal attention at head_dim ** -0.5; patch 16, 2x2 merge: one token per 32 x 32 px.
"""

from __future__ import annotations

from transformers import Qwen3VLConfig, Qwen3VLProcessor

from laid.model.families.mrope import MRopeFamily, without_video

LaidQwen3VLProcessor = without_video(Qwen3VLProcessor, "LaidQwen3VLProcessor")


class Qwen3VL(MRopeFamily):
    name, label = "qwen3_vl", "Qwen3-VL"
    model_types = ("qwen3_vl", "qwen3_vl_text")
    interleaved = True
    qk_norm = True
    vision_keys = ("patch_size", "spatial_merge_size", "temporal_patch_size")
    processor_class, config_class = LaidQwen3VLProcessor, Qwen3VLConfig

    def deepstack_layers(self, config) -> list[int]:
        return list(range(len(getattr(config.vision_config, "deepstack_visual_indexes", None) or [])))
