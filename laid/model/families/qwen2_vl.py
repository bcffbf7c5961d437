"""Qwen2-VL: as Qwen2.5-VL for the workbench (contiguous M-RoPE sections [16, 24, 24], q/k biases,
no QK-norm, causal attention at head_dim ** -0.5); its vision tower has no window attention, which
the workbench never looks into. One token per 28 x 28 px between <|vision_start|> / <|vision_end|>.
"""

from __future__ import annotations

from transformers import Qwen2VLConfig, Qwen2VLProcessor

from laid.model.families.mrope import MRopeFamily, without_video

LaidQwen2VLProcessor = without_video(Qwen2VLProcessor, "LaidQwen2VLProcessor")


class Qwen2VL(MRopeFamily):
    name, label = "qwen2_vl", "Qwen2-VL"
    model_types = ("qwen2_vl", "qwen2_vl_text")
    processor_class, config_class = LaidQwen2VLProcessor, Qwen2VLConfig

    def vision_dims(self, config) -> tuple[int, int, int]:
        v = config.vision_config  # its hidden_size is the merger's output (the LM width)
        return v.embed_dim, v.embed_dim * v.mlp_ratio, v.depth
