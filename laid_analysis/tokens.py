"""Which token positions an analysis looks at: image tokens, text tokens, the question.

All masks are (B, S) bool over the model inputs of `laid.model.prompting.encode_batch` (left-padded).
Image tokens are the family's image placeholders (`<|image_pad|>`, `<IMG_CONTEXT>`,
`<image_soft_token>`: `Family.image_token_id`) that the vision tower's embeddings replace; padding
is never selected.
"""

from __future__ import annotations

import torch

QUERY_CHOICES = ("all", "text", "question")
KEY_CHOICES = ("all", "image", "text")


def image_token_mask(batch: dict, image_token_id: int) -> torch.Tensor:
    return (batch["input_ids"] == image_token_id) & real_token_mask(batch)


def real_token_mask(batch: dict) -> torch.Tensor:
    mask = batch.get("attention_mask")
    return torch.ones_like(batch["input_ids"], dtype=torch.bool) if mask is None else mask.bool()


def question_token_mask(batch: dict, image_token_id: int) -> torch.Tensor:
    """Real tokens after the last image token of each row: the instruction, question and the
    assistant-turn header, i.e. the tokens that read the haystack to answer."""
    image = image_token_mask(batch, image_token_id)
    pos = torch.arange(image.shape[1], device=image.device).expand_as(image)
    last_image = torch.where(image, pos, -1).max(dim=1, keepdim=True).values  # (B, 1); -1 without images
    return real_token_mask(batch) & (pos > last_image)


def select(batch: dict, which: str, image_token_id: int) -> torch.Tensor:
    """(B, S) bool: 'all' real tokens, 'image' tokens, 'text' (real, non-image) or 'question'."""
    if which == "all":
        return real_token_mask(batch)
    if which == "image":
        return image_token_mask(batch, image_token_id)
    if which == "text":
        return real_token_mask(batch) & ~image_token_mask(batch, image_token_id)
    if which == "question":
        return question_token_mask(batch, image_token_id)
    raise ValueError(f"unknown token selection {which!r}; choose from all, image, text, question")


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
