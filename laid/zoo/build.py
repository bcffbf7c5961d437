"""Build a zoo model folder from its YAML config: tokenizer, processor, random-init model.

The folder is an ordinary Hugging Face checkpoint (config.json, model.safetensors, tokenizer and
processor files), loadable with `laid.model.loading.load_model` exactly like a real checkpoint. The
shipped zoo is Qwen2.5-VL; `family` builds the same toy in another supported family
(laid/zoo/toys.py says what each family's toy keeps of the real one).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText

from laid.model.loading import save_folder_atomically
from laid.zoo import toys
from laid.zoo.configs import ZooModelConfig

DEFAULT_FAMILY = "qwen2_5_vl"


def build_processor(image_size: int = 56, family: str = DEFAULT_FAMILY, cfg: ZooModelConfig | None = None):
    """The toy processor of `family` (cfg: the zoo model, for families whose processor needs its vision settings)."""
    if cfg is None:
        cfg = ZooModelConfig(name="toy", role="student", mirrors="", image_size=image_size)
    return toys.build_processor(family, cfg)


def build_model(cfg: ZooModelConfig, seed: int | None = None, family: str = DEFAULT_FAMILY, **text_overrides):
    """A random-init model for `cfg` (seeded by cfg.pretrain.seed unless `seed` is given)."""
    torch.manual_seed(cfg.pretrain.seed if seed is None else seed)
    hf = toys.hf_config(family, cfg, toys.build_tokenizer(family), **text_overrides)
    hf._attn_implementation = "sdpa"
    model = AutoModelForImageTextToText.from_config(hf).float()
    toys.init_toy(model, family, cfg)
    return model


def save_zoo_folder(model, processor, cfg: ZooModelConfig, out_dir: str | Path, log: dict | None = None,
                    parent: ZooModelConfig | None = None) -> Path:
    """`parent`: the config of the model `cfg` continued from (pretrain.init_from), kept so a changed
    parent config marks this folder stale too (laid/zoo/cli.py, _is_complete)."""
    meta = {"zoo_config": cfg.to_dict(), "pretrain_log": log or {}}
    if parent is not None:
        meta["parent_zoo_config"] = parent.to_dict()
    extra = {"laid_zoo.json": json.dumps(meta, indent=1)}
    return save_folder_atomically(model, processor, out_dir, extra_files=extra)


def build_random_folder(cfg: ZooModelConfig, out_dir: str | Path, family: str = DEFAULT_FAMILY, **text_overrides) -> Path:
    """Random-init folder (for tests and shape checks); `laid zoo` pretrains on top of this."""
    model = build_model(cfg, family=family, **text_overrides)
    return save_zoo_folder(model, build_processor(cfg.image_size, family, cfg), cfg, out_dir)
