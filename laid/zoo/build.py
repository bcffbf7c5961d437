"""Build a zoo model folder from its YAML config: tokenizer, processor, random-init model.

The folder is an ordinary Hugging Face checkpoint (config.json, model.safetensors, tokenizer and
processor files), loadable with `laid.model.loading.load_model` exactly like a real Qwen2.5-VL folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from laid.model.loading import save_folder_atomically
from laid.config import to_dict
from laid.zoo.configs import ZooModelConfig
from laid.model.processor import LaidQwen2_5_VLProcessor, build_image_processor
from laid.zoo.tokenizer import build_tokenizer


def build_processor(image_size: int = 56) -> LaidQwen2_5_VLProcessor:
    tok = build_tokenizer()
    return LaidQwen2_5_VLProcessor(build_image_processor(image_size), tok, chat_template=tok.chat_template)


def build_model(cfg: ZooModelConfig, seed: int | None = None) -> Qwen2_5_VLForConditionalGeneration:
    """A random-init model for `cfg` (seeded by cfg.pretrain.seed unless `seed` is given)."""
    torch.manual_seed(cfg.pretrain.seed if seed is None else seed)
    hf = cfg.to_hf(build_tokenizer())
    hf._attn_implementation = "sdpa"
    return Qwen2_5_VLForConditionalGeneration(hf).float()


def save_zoo_folder(model, processor, cfg: ZooModelConfig, out_dir: str | Path, log: dict | None = None) -> Path:
    extra = {"laid_zoo.json": json.dumps({"zoo_config": to_dict(cfg), "pretrain_log": log or {}}, indent=1)}
    return save_folder_atomically(model, processor, out_dir, extra_files=extra)


def build_random_folder(cfg: ZooModelConfig, out_dir: str | Path) -> Path:
    """Random-init folder (for tests and shape checks); `laid zoo` pretrains on top of this."""
    return save_zoo_folder(build_model(cfg), build_processor(cfg.image_size), cfg, out_dir)
