"""Supervised retrieval attention: an auxiliary pretraining loss for the toy zoo.

Why. A VHs answer is an interaction of question and haystack ("does the image with the anchor also
hold the target?"): with uniform attention at initialisation, neither the question words nor the
images alone say anything about yes/no, so the yes/no loss gives the retrieval circuit no
first-order gradient and tiny LMs sit at chance for thousands of steps. Real
VLMs arrive with retrieval heads from web-scale pretraining; this loss is the toy's stand-in for
it. One head of one layer is told *where* to look: from one query position (the anchor word, or
the position that predicts the answer), its attention mass should fall on the tokens of the needle
images (the images that hold the anchor).
Which answer to give stays the model's job, and how far the head keeps working (the window) still
depends on the haystack lengths the model was trained on.

Where to supervise matters. From the answer position the head can find the needle without the
answer using it: at the last layer nothing is left to compare the target with what was found. From
the anchor's colour word at layer 0 (`retrieval_attention_query: anchor`, what the teacher uses) the
lookup is one content match (image features are aligned to the colour words), the anchor word's
residual stream then carries the needle image's objects, and every later layer is free to check the
target against them (the runs that showed this: docs/HISTORY.md).

Pretraining only: distillation and evaluation never see it.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def needle_token_mask(input_ids: torch.Tensor, image_token_id: int, tokens_per_image: list[int], needles: list[tuple[int, ...]]) -> torch.Tensor:
    """(B, S) bool: True on the vision tokens of each row's needle images.

    input_ids (B, S); tokens_per_image: merged vision tokens of every image of the batch, rows in
    order and each row's images in prompt order (as `image_grid_thw` lists them); needles[b]:
    indices (within row b's images) of its needle images.
    """
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    cursor = 0  # index into tokens_per_image
    for b in range(input_ids.shape[0]):
        positions = (input_ids[b] == image_token_id).nonzero().squeeze(-1)  # (T_b,)
        start = 0
        row_images = []
        while start < len(positions):
            n = tokens_per_image[cursor]
            row_images.append(positions[start : start + n])
            start, cursor = start + n, cursor + 1
        for j in needles[b]:
            if j >= len(row_images):
                raise ValueError(f"row {b}: needle image {j} but the row has {len(row_images)} images")
            mask[b, row_images[j]] = True
    if cursor != len(tokens_per_image):
        raise ValueError(f"batch has {len(tokens_per_image)} images but its rows hold {cursor}")
    return mask


class RetrievalAttentionLoss(nn.Module):
    """-log(attention mass of one head on the needle tokens), from each row's query position.

    Shapes: q (B, H, S, D) post-RoPE queries and k (B, H_kv, S, D) post-RoPE keys of one layer
    (GQA: query head h reads KV head h // (H / H_kv)); query_pos (B,) long; needle_mask (B, S)
    bool; key_mask (B, S) 1 for real tokens, 0 for padding. Rows without needle tokens are
    skipped; returns a scalar (0 when no row has needles). The scores are recomputed exactly as
    the attention kernel does (q.k / sqrt(D), causal, padding masked), so the loss is the real
    head's attention.
    """

    def __init__(self, head: int = 0):
        super().__init__()
        self.head = head

    def forward(self, q, k, query_pos, needle_mask, key_mask):
        B, H, S, D = q.shape
        rows = needle_mask.any(-1)  # (B,)
        if not bool(rows.any()):
            return q.new_zeros(())
        kv_head = self.head // (H // k.shape[1])
        qh = q[torch.arange(B), self.head, query_pos]  # (B, D)
        scores = torch.einsum("bd,bsd->bs", qh, k[:, kv_head]) / math.sqrt(D)  # (B, S)
        visible = key_mask.bool() & (torch.arange(S, device=q.device)[None, :] <= query_pos[:, None])
        logp = torch.log_softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)  # (B, S)
        mass = torch.logsumexp(logp.masked_fill(~(needle_mask & visible), float("-inf")), dim=-1)  # (B,)
        return -mass[rows].mean()
