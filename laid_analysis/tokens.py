"""Token selections of the analysis: the masks of `laid.model.token_masks`, the model's own M-RoPE
positions and the image spans of a row."""

from __future__ import annotations

import torch

# The masks are defined once in the core (the trainers use them too).
from laid.model.token_masks import (  # noqa: F401 (re-exported)
    KEY_CHOICES, QUERY_CHOICES, image_token_mask, question_token_mask, real_token_mask, select,
)


def rope_positions(model, batch: dict) -> torch.Tensor:
    """(3, B, S) long: the temporal/height/width M-RoPE position ids the model itself assigns to
    the batch (its `get_rope_index`), so analyses measure distance the way RoPE rotates."""
    inner = getattr(model, "model", model)
    if not hasattr(inner, "get_rope_index"):
        raise ValueError(f"{type(model).__name__} has no get_rope_index: not a Qwen2.5-VL-like model")
    position_ids, _ = inner.get_rope_index(
        batch["input_ids"], batch.get("mm_token_type_ids"), image_grid_thw=batch.get("image_grid_thw"),
        attention_mask=batch.get("attention_mask"),
    )
    return position_ids.long()


def image_spans(input_ids: torch.Tensor, image_token_id: int) -> list[tuple[int, int]]:
    """[(start, end)] of the contiguous image-token runs of one row (S,): run k = image k."""
    img = (input_ids == image_token_id).int()
    edges = torch.diff(torch.nn.functional.pad(img, (1, 1)))
    starts = (edges == 1).nonzero().squeeze(-1).tolist()
    ends = (edges == -1).nonzero().squeeze(-1).tolist()
    return list(zip(starts, ends))
