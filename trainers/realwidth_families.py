"""Real-width, layer-truncated Gemma 3 and Qwen3-VL models from their published config.json.

The same idea as `trainers.realwidth` (Qwen2.5-VL), for the families whose memory differs in ways a
Qwen2.5-VL model cannot show: Gemma 3's head_dim 256 student against a head_dim 128 teacher, its
SigLIP tower (16 patches per image token) and extra norms; Qwen3-VL's QK-norm and DeepStack. A
published config (e.g. tests/data/family_configs/gemma-3-4b-it) keeps every width of the text
decoder and of one vision block (hidden, heads, KV heads, head_dim, query_pre_attn_scalar, vision
width and MLP) and is cut to `n_layers` full-attention text layers, `vision_depth` vision blocks, a
1,024-token vocabulary (special tokens remapped to ids 3-6) and optionally a narrower text MLP.
Images are smaller than published (Gemma 3: 448 px, 1,024 patches pooled to 64 tokens, the same 16
patches per token; Qwen3-VL: 32 x 32 patches, 256 tokens), which changes counts, not per-token
widths. Weights are random: only shapes, memory and time are measured, never quality.

`vision_peak_bytes` measures what a frozen vision tower costs: the most bytes its forward holds at
once beyond the weights and inputs, tracked tensor by tensor (`PeakBytes`); `laid plan` counts it as
the tower's inference working set (trainers/plan.py), tests/test_plan_realwidth_families.py compares.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import AutoConfig

from laid.model.families import FULL, family_of

SPECIAL = dict(start=3, end=4, image=5, video=6)  # remapped special-token ids (below every text id)
GEMMA_IMAGE_SIZE = 448  # 32 x 32 patches of 14 px, pooled 4 x 4: 64 tokens, 16 patches per token
QWEN_GRID = 32  # patches per side of a Qwen3-VL image: 1,024 patches, 256 tokens after the 2 x 2 merge


def truncated_published(folder: str | Path, n_layers: int = 1, vocab_size: int = 1024, intermediate_size: int | None = None,
                        vision_depth: int = 1):
    """The published config of `folder` (Gemma 3 or Qwen3-VL) cut to `n_layers` full-attention layers
    and `vision_depth` vision blocks, every width kept (module docstring)."""
    family = family_of(folder)
    cfg = AutoConfig.from_pretrained(folder)
    text, vision = family.text_config(cfg), cfg.vision_config
    text.num_hidden_layers, text.vocab_size = n_layers, vocab_size
    text.pad_token_id, text.bos_token_id, text.eos_token_id = 0, 1, 2
    if intermediate_size is not None:
        text.intermediate_size = intermediate_size
    if family.name == "gemma3":
        text.layer_types = [FULL] * n_layers  # the layers LAid pairs: global ones
        vision.num_hidden_layers, vision.image_size = vision_depth, GEMMA_IMAGE_SIZE
        cfg.mm_tokens_per_image = (GEMMA_IMAGE_SIZE // vision.patch_size) ** 2 // family.patches_per_token(AutoConfig.from_pretrained(folder))
        cfg.boi_token_index, cfg.eoi_token_index, cfg.image_token_index = SPECIAL["start"], SPECIAL["end"], SPECIAL["image"]
    elif family.name == "qwen3_vl":
        vision.depth = vision_depth
        vision.deepstack_visual_indexes = list(range(min(vision_depth, len(vision.deepstack_visual_indexes))))
        cfg.vision_start_token_id, cfg.vision_end_token_id = SPECIAL["start"], SPECIAL["end"]
        cfg.image_token_id, cfg.video_token_id = SPECIAL["image"], SPECIAL["video"]
    else:
        raise ValueError(f"{folder}: truncated real-width models are built for Gemma 3 and Qwen3-VL here "
                         f"(Qwen2.5-VL: trainers.realwidth), not {family.label}")
    cfg._attn_implementation = "sdpa"
    return cfg


def family_batch(cfg, n_images: int, text_tokens: int, answer_tokens: int, seed: int = 0) -> dict:
    """One sequence of `n_images` images (the family's markers and image tokens, random pixels) then
    text, the answer at the end: input_ids, attention_mask, the family's image-token marker
    (token_type_ids / mm_token_type_ids), pixel_values (+ image_grid_thw) and labels (B = 1)."""
    family = family_of(cfg)
    g = torch.Generator().manual_seed(seed)
    per = cfg.mm_tokens_per_image if family.name == "gemma3" else QWEN_GRID**2 // cfg.vision_config.spatial_merge_size**2
    ids = [SPECIAL["start"], *[SPECIAL["image"]] * per, SPECIAL["end"]] * n_images
    ids += torch.randint(16, family.text_config(cfg).vocab_size, (text_tokens + answer_tokens,), generator=g).tolist()
    input_ids = torch.tensor([ids])
    labels = torch.full_like(input_ids, -100)
    labels[:, -answer_tokens:] = input_ids[:, -answer_tokens:]
    image = (input_ids == SPECIAL["image"]).long()
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    v = cfg.vision_config
    if family.name == "gemma3":
        batch["token_type_ids"] = image
        batch["pixel_values"] = torch.randn(n_images, 3, v.image_size, v.image_size, generator=g)
    else:
        batch["mm_token_type_ids"] = image
        patch_dim = v.in_channels * v.temporal_patch_size * v.patch_size**2
        batch["pixel_values"] = torch.randn(n_images * QWEN_GRID**2, patch_dim, generator=g)
        batch["image_grid_thw"] = torch.tensor([[1, QWEN_GRID, QWEN_GRID]] * n_images)
    return batch


class PeakBytes(TorchDispatchMode):
    """Most bytes of tensor storage the ops run inside it hold at once (`peak`), counting each storage
    from the op that made it until its last tensor is freed; weights and inputs made before, and views
    of them, are not counted. Buffers a single fused kernel keeps internally are not seen (SDPA's, as
    on a GPU)."""

    def __init__(self):
        super().__init__()
        self.refs: dict[tuple[int, int], int] = {}
        self.current = self.peak = 0

    def _release(self, key) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.current -= key[1]

    @staticmethod
    def _key(t: torch.Tensor) -> tuple[int, int]:
        storage = t.untyped_storage()
        return storage.data_ptr(), storage.nbytes()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {self._key(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                key = self._key(t)
                if key[0] == 0 or (key in inputs and key not in self.refs):  # a view of a weight or an input
                    continue
                if key not in self.refs:
                    self.refs[key] = 0
                    self.current += key[1]
                    self.peak = max(self.peak, self.current)
                self.refs[key] += 1
                weakref.finalize(t, self._release, key)
        return out


def vision_peak_bytes(model, batch: dict) -> int:
    """Peak working set of `model`'s vision tower and projector on `batch`'s images (no grad)."""
    inputs = {k: v for k, v in batch.items() if k in ("pixel_values", "image_grid_thw")}
    tracker = PeakBytes()
    with torch.no_grad(), tracker:
        family_of(model).image_features(model, inputs)
    return tracker.peak
