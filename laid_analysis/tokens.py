"""Token selections of the analysis: the masks of `laid.model.token_masks` (image tokens are the
family's image placeholders, `<|image_pad|>`, `<IMG_CONTEXT>`, `<image_soft_token>`:
`Family.image_token_id`), the model's own rotary positions and the image spans of a row."""

from __future__ import annotations

import torch

# The masks are defined once in the core (the trainers use them too).
from laid.model.token_masks import (  # noqa: F401 (re-exported)
    KEY_CHOICES, QUERY_CHOICES, image_token_mask, question_token_mask, real_token_mask, select,
)


def rope_positions(model, batch: dict) -> torch.Tensor:
    """(A, B, S) long: the position ids the model itself rotates the batch by (its family adapter:
    the temporal/height/width M-RoPE ids of `get_rope_index` for the Qwen-VL families, the token
    index for InternVL3 / Gemma 3), so analyses measure distance the way RoPE rotates."""
    from laid.model.families import family_of

    return family_of(model).positions(model, batch).long()


def image_spans(input_ids: torch.Tensor, image_token_id: int) -> list[tuple[int, int]]:
    """[(start, end)] of the contiguous image-token runs of one row (S,): run k = image k."""
    img = (input_ids == image_token_id).int()
    edges = torch.diff(torch.nn.functional.pad(img, (1, 1)))
    starts = (edges == 1).nonzero().squeeze(-1).tolist()
    ends = (edges == -1).nonzero().squeeze(-1).tolist()
    return list(zip(starts, ends))
