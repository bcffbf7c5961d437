"""Typed configuration of a tiny zoo model (architecture + pretraining), one YAML file per model.

The tiny models mirror the real Qwen2.5-VL family where it matters for LAid: every model shares
head_dim, rope_theta and the M-RoPE section split (scaled from 128 / [16, 24, 24] to 32 / [4, 6, 6]),
students have fewer layers, query heads and KV heads than the teacher, and one student has a
different (padded) vocabulary size, as Qwen2.5-VL-3B (151936) differs from 32B (152064).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import Qwen2_5_VLConfig

from laid.config import load_config, to_dict, to_yaml
from laid.data.render import CATEGORIES
from laid.io import write_text
from laid.zoo import tokenizer as tk

# Where the supervised retrieval head queries from (laid/zoo/pretrain.py, _RetrievalSupervision).
RETRIEVAL_QUERIES = ("answer", "anchor")


@dataclass
class TextArch:
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    # Padded vocabulary size (>= the tokenizer's); differing paddings mimic 3B vs 32B.
    vocab_size: int = 128
    rope_theta: float = 1_000_000.0
    mrope_section: list[int] = field(default_factory=lambda: [4, 6, 6])
    max_position_embeddings: int = 4096
    # Tied input/output embeddings (as Qwen2.5-VL-3B). Tying lets captioning align the category
    # words' input embeddings with the visual features, which question answering then reuses.
    tie_word_embeddings: bool = True
    # Weight init std (default: Qwen's 0.02). 0.02 is tuned for widths in the thousands; at width
    # 64-256 it makes attention logits ~0.05 (uniform attention, a long plateau before any
    # retrieval is learned). The zoo YAMLs use ~0.9 / sqrt(hidden_size), which keeps the logits
    # O(1) at init (docs/HISTORY.md has the A/B).
    initializer_range: float = 0.02


@dataclass
class VisionArch:
    depth: int = 2
    hidden_size: int = 64
    intermediate_size: int = 128
    num_heads: int = 2
    patch_size: int = 14
    spatial_merge_size: int = 2


@dataclass
class PretrainConfig:
    """CPU pretraining on synthetic haystacks (see laid/zoo/pretrain.py for the curriculum)."""

    steps: int = 1500
    batch_size: int = 8
    # Stage 1 (vision tower as an object classifier) steps and images per step.
    vision_steps: int = 300
    vision_batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    # Haystack sizes are drawn log-uniformly from [min_haystack, max_haystack]: this range is
    # the model's "training length", the main knob behind its effective window (docs/zoo-and-testbeds.md).
    min_haystack: int = 1
    max_haystack: int = 20
    # For the first short_haystack_steps steps haystacks are at most short_max_haystack images.
    short_haystack_steps: int = 0
    short_max_haystack: int = 3
    # Fraction of steps that are single-image captioning ("what objects are in the image?").
    caption_fraction: float = 0.2
    # Of the haystack steps: fraction that are retrieval captions (dense retrieval supervision).
    retrieval_caption_fraction: float = 0.3
    # Of the remaining haystack steps: fraction that are naming (copy) tasks, see pretrain.py.
    naming_fraction: float = 0.25
    multi_needle_fraction: float = 0.2
    # Auxiliary loss: head 0 of text layer `retrieval_attention_layer` is told to attend to the
    # needle images, from the anchor's colour word ("anchor") or from the position that predicts
    # the answer ("answer") (laid/zoo/retrieval_attention.py). Off by default (the students);
    # the teacher uses weight 0.3 from the anchor at layer 0, the first recipe under which a toy
    # learned binding (docs/HISTORY.md).
    retrieval_attention_weight: float = 0.0
    retrieval_attention_layer: int = 0
    retrieval_attention_query: str = "anchor"
    # Category curriculum: [[from_step, k], ...] lets questions name only the first k categories
    # from that step on (images always show all 12); [] = all from the start (laid/zoo/pretrain.py).
    category_schedule: list[list[int]] = field(default_factory=lambda: [[0, 4], [600, 8], [1200, 12]])
    # Pair every single-needle question with its twin over the same haystack and the opposite
    # answer (laid/zoo/pretrain.py, sample_needle_pair).
    minimal_pairs: bool = True
    # Keep the vision tower as stage 1 left it and draw training images from a bank of this many
    # pre-rendered images with cached features (laid/zoo/image_bank.py).
    freeze_vision: bool = True
    image_bank_size: int = 6000
    # Token budget per batch: long haystacks get smaller batches so a step costs about the same.
    max_tokens_per_batch: int = 4096
    seed: int = 0
    # Continue from another zoo model (the name of a config in the same folder, built first and
    # with the same architecture) instead of a random init: a long-context stage, as real VLMs
    # extend their window last. "" = random init. Set vision_steps 0 (the parent's tower is aligned).
    init_from: str = ""


@dataclass
class ZooModelConfig:
    name: str
    role: str  # "teacher" or "student"
    mirrors: str  # the real model this toy stands for, e.g. "Qwen2.5-VL-32B"
    text: TextArch = field(default_factory=TextArch)
    vision: VisionArch = field(default_factory=VisionArch)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    image_size: int = 56

    @property
    def head_dim(self) -> int:
        return self.text.hidden_size // self.text.num_attention_heads

    def to_dict(self) -> dict[str, Any]:
        d = to_dict(self)
        if not self.pretrain.init_from:
            # Omitted when unset: a folder is matched to its config by this dict (laid/zoo/cli.py,
            # _is_complete), and the folders trained from a random init were saved without the field.
            del d["pretrain"]["init_from"]
        return d

    def validate(self) -> None:
        t = self.text
        if t.hidden_size % t.num_attention_heads:
            raise ValueError(f"{self.name}: hidden_size {t.hidden_size} not divisible by heads {t.num_attention_heads}")
        if t.num_attention_heads % t.num_key_value_heads:
            raise ValueError(f"{self.name}: query heads must be a multiple of KV heads")
        if 2 * sum(t.mrope_section) != self.head_dim:
            raise ValueError(
                f"{self.name}: sum(mrope_section)={sum(t.mrope_section)} must equal head_dim/2={self.head_dim // 2}"
            )
        if t.vocab_size < len(tk.vocabulary()):
            raise ValueError(f"{self.name}: vocab_size {t.vocab_size} < tokenizer size {len(tk.vocabulary())}")
        p, n_cat = self.pretrain, len(CATEGORIES)
        starts = []
        for entry in p.category_schedule:
            if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and 2 <= entry[1] <= n_cat):
                raise ValueError(f"{self.name}: pretrain.category_schedule entry {entry} must be [from_step, k] "
                                 f"with 2 <= k <= {n_cat} (a question names two categories)")
            starts.append(entry[0])
        if starts != sorted(starts):
            raise ValueError(f"{self.name}: pretrain.category_schedule steps {starts} must increase")
        if not 1 <= p.min_haystack <= min(p.max_haystack, p.short_max_haystack):
            raise ValueError(f"{self.name}: pretrain haystack sizes need 1 <= min_haystack <= max_haystack and "
                             f"short_max_haystack (got {p.min_haystack}, {p.max_haystack}, {p.short_max_haystack})")
        if p.retrieval_attention_query not in RETRIEVAL_QUERIES:
            raise ValueError(f"{self.name}: pretrain.retrieval_attention_query is {p.retrieval_attention_query!r}; "
                             f"use one of {list(RETRIEVAL_QUERIES)}")
        if p.init_from == self.name:
            raise ValueError(f"{self.name}: pretrain.init_from names the model itself; name another zoo config")
        if p.image_bank_size < 0:
            raise ValueError(f"{self.name}: pretrain.image_bank_size must be >= 0 (0 renders every image on demand)")

    def to_hf(self, tokenizer) -> Qwen2_5_VLConfig:
        """The Hugging Face config; the token ids come from the tokenizer the model ships with."""
        self.validate()
        t, v = self.text, self.vision
        ids = {name: tokenizer.convert_tokens_to_ids(name) for name in tk.SPECIAL_TOKENS}
        return Qwen2_5_VLConfig(
            text_config=dict(
                vocab_size=t.vocab_size,
                hidden_size=t.hidden_size,
                intermediate_size=t.intermediate_size,
                num_hidden_layers=t.num_hidden_layers,
                num_attention_heads=t.num_attention_heads,
                num_key_value_heads=t.num_key_value_heads,
                max_position_embeddings=t.max_position_embeddings,
                initializer_range=t.initializer_range,
                rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta, "mrope_section": list(t.mrope_section)},
                bos_token_id=None,
                eos_token_id=ids[tk.IM_END],
                pad_token_id=ids[tk.PAD],
            ),
            vision_config=dict(
                depth=v.depth,
                hidden_size=v.hidden_size,
                intermediate_size=v.intermediate_size,
                num_heads=v.num_heads,
                out_hidden_size=t.hidden_size,
                patch_size=v.patch_size,
                spatial_merge_size=v.spatial_merge_size,
                temporal_patch_size=2,
                window_size=v.patch_size * v.spatial_merge_size * 4,
                fullatt_block_indexes=[v.depth - 1],
            ),
            image_token_id=ids[tk.IMAGE_PAD],
            video_token_id=ids[tk.VIDEO_PAD],
            vision_start_token_id=ids[tk.VISION_START],
            vision_end_token_id=ids[tk.VISION_END],
            tie_word_embeddings=self.text.tie_word_embeddings,
        )


def load_zoo_config(path: str | Path) -> ZooModelConfig:
    cfg = load_config(ZooModelConfig, path, what="zoo config")
    try:
        cfg.validate()
    except ValueError as e:
        raise ValueError(f"zoo config {path}: {e}") from None
    return cfg


def save_zoo_config(cfg: ZooModelConfig, path: str | Path) -> None:
    write_text(to_yaml(cfg), path)
