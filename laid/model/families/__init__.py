"""Model-family adapters: one module per supported VLM family, chosen from config.json's model_type.

    family = family_of("checkpoints/zoo/tiny-7b")   # a folder, a config, a model or a processor
    family.positions(model, batch)                  # (A, B, S) ids RoPE rotates by
    family.layer_rotary_layout(model, layer)        # frequency and position axis per rotary pair
    family.attention_pattern(model, layer, batch)   # the layer's mask rule and logit scale

Supported: Qwen2.5-VL (`qwen2_5_vl`), Qwen2-VL (`qwen2_vl`), Qwen3-VL (`qwen3_vl`), InternVL3
(`internvl`), Gemma 3 (`gemma3`). Any other model type is refused with one line naming it.
docs/families.md has the table of families x features and what each adapter says.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn
from transformers import AutoProcessor

from laid.model.families.base import (  # noqa: F401 (re-exported)
    FULL, SLIDING, AttentionPattern, Family, RotaryLayout, find_owner, pair_dims, pre_rope_module, require_pattern,
    shared_pairs, snap_to_type, text_decoder)
from laid.model.families.gemma3 import Gemma3
from laid.model.families.internvl import InternVL
from laid.model.families.qwen2_5_vl import Qwen2_5_VL
from laid.model.families.qwen2_vl import Qwen2VL
from laid.model.families.qwen3_vl import Qwen3VL

FAMILIES: dict[str, Family] = {f.name: f for f in (Qwen2_5_VL(), Qwen2VL(), Qwen3VL(), InternVL(), Gemma3())}
_BY_TYPE = {t: f for f in FAMILIES.values() for t in f.model_types}


class UnknownFamilyError(ValueError):
    """A model type no adapter covers."""


def supported() -> str:
    return ", ".join(f"{f.name} ({f.label})" for f in FAMILIES.values())


def family_named(name: str) -> Family:
    if name not in FAMILIES:
        raise UnknownFamilyError(f"unknown model family {name!r}; choose one of {supported()}")
    return FAMILIES[name]


def family_for_type(model_type: str | None, where: str = "") -> Family:
    family = _BY_TYPE.get(model_type or "")
    if family is None:
        raise UnknownFamilyError(f"{where + ' holds ' if where else ''}model type {model_type!r}, which LAid does not "
                                 f"support; supported: {supported()}")
    return family


def family_of(obj) -> Family:
    """The family of a model folder (path), a config (object or dict), a model, or a processor."""
    if isinstance(obj, (str, Path)):
        path = Path(obj)
        cfg = path / "config.json" if path.is_dir() else path
        return family_for_type(json.loads(cfg.read_text()).get("model_type"), f"model folder {path}")
    if isinstance(obj, dict):
        return family_for_type(obj.get("model_type"))
    for f in FAMILIES.values():
        if f.processor_class is not None and isinstance(obj, _processor_base(f)):
            return f
    config = obj.config if isinstance(obj, nn.Module) else obj
    return family_for_type(getattr(config, "model_type", None), type(obj).__name__)


def _processor_base(family: Family) -> type:
    """The transformers processor class our torchvision-free one derives from (or is)."""
    cls = family.processor_class
    return cls.__bases__[0] if cls.__name__.startswith("Laid") else cls


def register_processors() -> None:
    """Make AutoProcessor return our torchvision-free processors for every family (idempotent)."""
    for f in FAMILIES.values():
        if f.processor_class is not _processor_base(f):
            AutoProcessor.register(f.config_class, f.processor_class, exist_ok=True)


def rotary_from_config(model: nn.Module) -> nn.Module:
    """A CPU copy of `model`'s text rotary module built from its config: real frequencies also when
    the model itself lives on the meta device (config-only planning)."""
    rotary = family_of(model).rotary_module(model)
    return type(rotary)(rotary.config)


register_processors()
