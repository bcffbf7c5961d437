"""Qwen2.5-VL: contiguous M-RoPE sections, no QK-norm, q/k biases; the family the workbench began with.

Text layers at `model.language_model.layers`; vision tower `model.visual` (window attention, 14 px
patches, 2x2 merge: one token per 28 x 28 px). Causal attention at head_dim ** -0.5 (the published
configs leave `use_sliding_window` off). A RoPE gain folds into q_proj / k_proj weight and bias.
"""

from __future__ import annotations

from transformers import Qwen2_5_VLConfig, Qwen2_5_VLProcessor

from laid.model.families.mrope import MRopeFamily, without_video

LaidQwen2_5_VLProcessor = without_video(Qwen2_5_VLProcessor, "LaidQwen2_5_VLProcessor")


class Qwen2_5_VL(MRopeFamily):
    name, label = "qwen2_5_vl", "Qwen2.5-VL"
    model_types = ("qwen2_5_vl", "qwen2_5_vl_text")
    processor_class, config_class = LaidQwen2_5_VLProcessor, Qwen2_5_VLConfig
    encoder_cache = True
