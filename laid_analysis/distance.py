"""Attention weight and attention logit as a function of query-key distance, per head, exactly.

distance = query position - key position, where a token's position is by default its M-RoPE
temporal position id as the model itself computes it (`tokens.rope_positions`, i.e. the model's
`get_rope_index`): RoPE rotates a pair by the position-id difference, not by the token-index
difference. Qwen2.5-VL gives all tokens of one image the same temporal id and 2-D height/width
ids, and text after an image continues from the image's largest id, so a 150-image haystack of
~54k tokens spans only ~3.5k positions. Text tokens have equal t/h/w ids, so for a text query
and a text key the distance is the exact rotation offset of every rotary pair; for an image key
the height/width pairs are further offset by the patch's row/column (at most the image's grid).
Temporal ids never decrease along the sequence, so causal pairs have distance >= 0.
The token-index difference (`positions=None`) is kept as a labelled ablation ("tokens" units).
Padding is dropped first, so left padding does not shift distances.

For each head h and distance d (means over all selected (query, key) pairs at that distance):
    attention[h, d] = mean softmax weight   (the model's causal softmax over all real keys)
    logit[h, d]     = mean q_rot . k_rot * scaling   (pre-softmax score)
    logit_var[h, d] = variance of those logits over the pairs (its square root over
                      sqrt(pair_count) is the standard error used by spectra.profile_fidelity;
                      pairs of one query are correlated, so it is a lower bound on the noise)
    uniform[d]      = mean weight a uniform causal head would give (1 / number of keys of the
                      query), the baseline for "how far does this head look" (spectra.classify_heads)

How it stays exact and bounded: queries are processed in chunks; a chunk of C queries is scored
against all keys up to its last query, (H, C, S) at most, so each row's softmax sees its full
row of keys and is exact, while nothing of size (H, S, S) is ever held. Sums and pair counts
per distance are accumulated with index_add_/bincount. The chunk size is picked from a memory
budget unless given; results do not depend on it (tested).

Masks: the softmax of each row runs over the keys the layer really shows it (`pattern`, the family
adapter's AttentionPattern: Gemma 3's sliding window on local layers, its bidirectional image blocks;
causal otherwise), so `attention` is the model's own weight; `uniform` is 1 / (keys the row sees).
"""

from __future__ import annotations

import torch
import xarray as xr

from laid.model.families import AttentionPattern, require_pattern

DEFAULT_BUDGET_BYTES = 256 * 2**20


def auto_chunk_size(n_heads: int, seq_len: int, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> int:
    # ~5 live fp32 (H, C, S) temporaries: logits, masked logits, weights, two gathered value sets.
    return max(1, int(budget_bytes // (5 * 4 * n_heads * max(seq_len, 1))))


def distance_sums(
    q: torch.Tensor,
    k: torch.Tensor,
    scaling: float,
    query_mask: torch.Tensor | None = None,
    key_mask: torch.Tensor | None = None,
    chunk_size: int | None = None,
    positions: torch.Tensor | None = None,
    *,
    pattern: AttentionPattern,
) -> tuple[torch.Tensor, ...]:
    """Per-distance sums for one sequence of real tokens (no padding).

    q (H, S, D), k (H_kv, S, D): post-RoPE. query_mask / key_mask (S,) bool pick the pairs that are
    counted (the softmax always runs over every key the layer shows the query). positions (S,) int:
    each token's position (None = token index); it must not decrease along the sequence. pattern:
    the layer's mask rule for this sequence (AttentionPattern with one row, padding removed; required,
    no mask is assumed): a sliding window hides far keys, an image block shows later keys of the same image to its
    tokens; those later keys (negative distance) are in the softmax but not binned. Returns
    attention_sum (H, N), logit_sum (H, N), logit_sq_sum (H, N), uniform_sum (N,) in float64 and
    pair_count (N,) int64, indexed by distance 0..N-1 (N = last position - first + 1).
    """
    require_pattern(pattern, "the distance profile")
    n_heads, seq, _ = q.shape
    group = n_heads // k.shape[0]
    k = k.float().repeat_interleave(group, dim=0) if group > 1 else k.float()  # (H, S, D), head h uses kv h // group
    q = q.float()
    device = q.device
    query_mask = torch.ones(seq, dtype=torch.bool, device=device) if query_mask is None else query_mask.to(device)
    key_mask = torch.ones(seq, dtype=torch.bool, device=device) if key_mask is None else key_mask.to(device)
    pos = torch.arange(seq, device=device) if positions is None else positions.to(device).long()
    if seq > 1 and bool((pos[1:] < pos[:-1]).any()):
        raise ValueError("positions decrease along the sequence; pass the temporal M-RoPE ids (tokens.rope_positions)")
    n = int(pos[-1] - pos[0]) + 1 if seq else 0
    attn_sum = torch.zeros(n_heads, n, dtype=torch.float64, device=device)
    logit_sum = torch.zeros(n_heads, n, dtype=torch.float64, device=device)
    sq_sum = torch.zeros(n_heads, n, dtype=torch.float64, device=device)
    uniform_sum = torch.zeros(n, dtype=torch.float64, device=device)
    count = torch.zeros(n, dtype=torch.int64, device=device)
    queries = query_mask.nonzero().squeeze(-1)  # only selected query rows are scored
    chunk = chunk_size or auto_chunk_size(n_heads, seq)
    for start in range(0, len(queries), chunk):
        qi = queries[start:start + chunk]  # (C,)
        n_keys = pattern.rows_key_stop(qi)  # later keys are masked anyway (image blocks: up to the block's end)
        logits = (q[:, qi] @ k[:, :n_keys].transpose(1, 2)) * scaling  # (H, C, n_keys)
        seen = pattern.visible(qi, n_keys)[0]  # (C, n_keys) the layer's own mask
        dist = pos[qi][:, None] - pos[:n_keys][None, :]  # (C, n_keys) position difference
        weights = torch.softmax(logits.masked_fill(~seen, float("-inf")), dim=-1)  # exact: full row
        counted = seen & key_mask[None, :n_keys] & (dist >= 0)  # (C, n_keys)
        idx = dist[counted]  # (n_pairs,)
        # Sum the chunk in fp32 (at most C values per distance), accumulate across chunks in fp64:
        # no fp64 copy of the (H, pairs) values is ever made.
        attn_sum += torch.zeros(n_heads, n, device=device).index_add_(1, idx, weights[:, counted]).double()
        picked = logits[:, counted]
        logit_sum += torch.zeros(n_heads, n, device=device).index_add_(1, idx, picked).double()
        sq_sum += torch.zeros(n_heads, n, device=device).index_add_(1, idx, picked.square()).double()
        uniform = (1.0 / seen.sum(-1).double())[:, None].expand(-1, n_keys)  # padding is gone: keys the row sees
        uniform_sum.index_add_(0, idx, uniform[counted])
        count += torch.bincount(idx, minlength=n)
    return attn_sum, logit_sum, sq_sum, uniform_sum, count


def _grow(t: torch.Tensor, n: int) -> torch.Tensor:
    if t.shape[-1] >= n:
        return t
    return torch.nn.functional.pad(t, (0, n - t.shape[-1]))


class DistanceProfile:
    """Accumulates per-layer distance sums over sequences of any length; `to_dataset()` at the end."""

    def __init__(self, chunk_size: int | None = None, units: str = "positions"):
        self.chunk_size, self.units = chunk_size, units
        # layer -> [attention_sum, logit_sum, logit_sq_sum, uniform_sum, pair_count]
        self.sums: dict[int, list[torch.Tensor]] = {}

    def update(self, layer: int, q_rot, k_rot, scaling: float, real_mask, query_mask=None, key_mask=None,
               positions=None, *, pattern: AttentionPattern) -> None:
        """q_rot (B, H, S, D), k_rot (B, H_kv, S, D); masks (B, S) bool (real = not padding);
        positions (B, S) int (the temporal M-RoPE ids) or None for token-index distance; pattern: the
        layer's AttentionPattern for the batch (required)."""
        require_pattern(pattern, "the distance profile")
        for b in range(q_rot.shape[0]):
            pos = real_mask[b].nonzero().squeeze(-1).to(q_rot.device)  # drop padding (left or anywhere)
            sums = distance_sums(
                q_rot[b].index_select(1, pos), k_rot[b].index_select(1, pos), scaling,
                None if query_mask is None else query_mask[b].to(pos.device)[pos],
                None if key_mask is None else key_mask[b].to(pos.device)[pos],
                self.chunk_size,
                None if positions is None else positions[b].to(pos.device)[pos],
                pattern=pattern.select(pos, b),
            )
            old = self.sums.get(layer)
            if old is None:
                self.sums[layer] = [s.cpu() for s in sums]
            else:
                n = max(old[-1].shape[-1], sums[-1].shape[-1])
                self.sums[layer] = [_grow(o, n) + _grow(s.cpu(), n) for o, s in zip(old, sums)]

    def to_dataset(self) -> xr.Dataset:
        if not self.sums:
            raise ValueError("no distance sums accumulated: run the model on at least one haystack first")
        layers = sorted(self.sums)
        n = max(self.sums[i][-1].shape[-1] for i in layers)
        attn = torch.stack([_grow(self.sums[i][0], n) for i in layers])  # (L, H, dist)
        logit = torch.stack([_grow(self.sums[i][1], n) for i in layers])
        sq = torch.stack([_grow(self.sums[i][2], n) for i in layers])
        uniform, count = (_grow(t, n) for t in self.sums[layers[0]][3:])  # same pairs in every layer
        return profile_dataset(attn, logit, uniform, count, layers, logit_sq_sum=sq, units=self.units)


DISTANCE_UNITS = {"positions": "query - key temporal M-RoPE position id",
                  "tokens": "query token index - key token index (ablation: not what RoPE rotates by)"}


def profile_dataset(attention_sum, logit_sum, uniform_sum, pair_count, layers, logit_sq_sum=None,
                    units: str = "positions") -> xr.Dataset:
    """Means from sums: attention_sum/logit_sum/logit_sq_sum (L, H, dist), uniform_sum and
    pair_count (dist,). NaN where a distance has no pair."""
    if units not in DISTANCE_UNITS:
        raise ValueError(f"distance units {units!r} not in {list(DISTANCE_UNITS)}")
    denom = pair_count.double().clamp(min=1)
    empty = pair_count == 0
    attention = (attention_sum / denom).masked_fill(empty, float("nan"))
    logit = (logit_sum / denom).masked_fill(empty, float("nan"))
    uniform = (uniform_sum / denom).masked_fill(empty, float("nan"))
    if logit_sq_sum is None:
        var = torch.full_like(logit, float("nan"))
    else:
        var = (logit_sq_sum / denom - logit.square()).clamp(min=0).masked_fill(empty, float("nan"))
    coords = {
        "layer": ("layer", list(layers), {"long_name": "text decoder layer"}),
        "head": ("head", list(range(attention.shape[1])), {"long_name": "query head"}),
        "distance": ("distance", list(range(attention.shape[2])),
                     {"units": units, "long_name": DISTANCE_UNITS[units]}),
    }
    return xr.Dataset(
        {
            "attention": (("layer", "head", "distance"), attention.numpy(),
                          {"long_name": "mean attention weight", "units": "1"}),
            "logit": (("layer", "head", "distance"), logit.numpy(),
                      {"long_name": "mean attention logit (q.k * scaling)", "units": "1"}),
            "logit_var": (("layer", "head", "distance"), var.numpy(),
                          {"long_name": "variance of the logit over the pairs at this distance", "units": "1"}),
            "uniform": (("distance",), uniform.numpy(),
                        {"long_name": "mean weight of a uniform causal head", "units": "1"}),
            "pair_count": (("distance",), pair_count.numpy(),
                           {"long_name": "query-key pairs averaged", "units": "pairs"}),
        },
        coords=coords,
    )
