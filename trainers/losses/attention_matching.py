"""Progressive distance-weighted attention matching at a mapped layer pair.

The student's attention rows P^s_hi = softmax(q^s_hi K^s_{g(h)}^T / sqrt(D)) (causal, padding
masked) are matched to a target row P^*_hi with a weight per query-key pair that grows with the
distance d_ij:

    L = mean over valid query rows (b, h, i) of
        sum_{j <= i, j valid} w(d_ij, t) * [ p^*_ij log(p^*_ij / p^s_ij) - p^*_ij + p^s_ij ]

Target (`target="teacher_heads"`, the default; `mix` given): the teacher's *real* attention, a
convex mix of its own per-head maps,  P^*_h = sum_j a_hj softmax(q^t_j K^t_{g(j)}^T / sqrt(D)),
with a_hj >= 0, sum_j a_hj = 1 (`trainers.head_mixer.attention_mix`). Every map in the mix is one
the teacher computes (query head j with its own KV group), so no cross-group term enters; a is
taken detached, so this term never moves the mixers towards the student (its target does not
depend on anything being trained). The older target (`mix=None`: softmax of the mixed Q/K
W_Q Q^t (W_K K^t)^T, gradients into the mixers) is kept as the ablation `attention_target:
mixed_qk`; it mixes query and key heads of different KV groups, which the teacher never does, and
lets the mixers chase the student.

A convex mix of maps that attend to different keys is flatter than each of them, and the forward
KL asks the student to cover every mode, which it can also do by lowering its attention logits
(its Q/K norms): a property of the target, not a scale artefact (`attn_mix_power` sharpens the
mix). More generally, while the student attends elsewhere than the target, the forward KL falls
fastest by flattening the student (mode covering), whatever the target's sharpness. With plain
gradients this term therefore lowers the aligned layer's Q/K norms and RoPE gains; the
direction-only gradient below removes that route (it does not make a student that cannot match
the target attend sharply: it can still turn its queries away from every key, and the health
telemetry's attention entropies show whether it does).

Direction-only gradients (`direction_only=True`, the recipe's default `attn_grad: direction`): the
student's q and k enter as  x / |x| * stopgrad(|x|)  per (b, h, token) vector. The value is x, the
loss is unchanged, but its gradient is projected orthogonal to every vector: this term can turn
where a query or key points (which key it attends to), with no component that lengthens or
shortens it. Without it
the forward KL's cheapest move while the student attends elsewhere is to shrink its logits, i.e.
its Q/K norms, and the aligned layer's attention goes flat (measured: docs/method.md). To first order a
radial-free gradient g (g . x = 0 for every token) leaves |[W_q | b_q]|_F unchanged (its update
is sum_t g_t [x_t; 1]^T and <W, g x^T> = g . (W x)), and the RoPE gains' g-weighted total too, so
the Q/K scale is left to KL / SFT as in KD. This holds for small steps of plain gradient descent;
it is not a constraint: finite orthogonal steps lengthen vectors (|x + d|^2 = |x|^2 + |d|^2), and
Adam's per-coordinate scaling is not orthogonal, so norms can still drift either way with large
steps (measured on the shipped tiny-7b, attention matching alone, Adam at lr 1e-3: Q 0.97x after
40 steps, 0.87x after 100). The recipe's end-of-run norms are reported by the health telemetry.
`direction_only=False` is the plain gradient (ablation `attn_grad: full`).

Divergence: the bracket is the generalised (unnormalised) KL, term by term >= 0 and zero iff
p^s_ij = p^*_ij. With w = 1 it sums to exactly KL(P^* || P^s) (rows sum to 1), the forward
direction of Eq. 8's KL. We do not weight the plain KL terms p log(p/q): a weighted sum of those is
minimised at p^s proportional to w * p^*, i.e. it would teach a distorted target, while the
generalised form keeps the minimum at p^s = p^* and only changes how much each pair counts.

Distance: what RoPE rotates by. Qwen2.5-VL's M-RoPE gives every token three position ids
(temporal, height, width); frequency band a of a query-key pair rotates by pos_a(i) - pos_a(j).
We take d_ij = max_a |pos_a(i) - pos_a(j)| from the model's own position ids (`positions`,
(3, B, S), from `get_rope_index`): for text-text pairs the three ids are equal and d is their
difference; for a text query and an image key it is the temporal difference (the image's start
versus the text position, the largest of the three); inside an image it is the Chebyshev distance
of the patches. A 20-image haystack spans ~8k tokens but only ~600 positions, so token distances
would overstate how far RoPE has rotated. `positions=None` falls back to the token index. The
positions come from the student's family (`laid.model.families`): (3, B, S) M-RoPE ids for the
Qwen-VL families, (1, B, S) token indices for InternVL3 and Gemma 3, whose RoPE is 1-D.

Distance weights (`DistanceWeighting`): w(d, t) = 1 + alpha(t) * f(d / d_max) with d_max the
largest distance between two valid tokens of the row's sequence (so the farthest pair of every
sequence gets 1 + alpha, whatever its length), f(x) = x^p ("power") or log(1 + d) / log(1 + d_max)
("log"). alpha(t) ramps from alpha_start to alpha_end over training progress t in [0, 1] (linear,
cosine, or constant): early training matches attention uniformly, later it emphasises long
distances, the paper's "progressive ... dynamically emphasizes longer position differences".

Masks and scales (`student_pattern`, `target_pattern`: `laid.model.families.AttentionPattern`, from
each model's family adapter for the paired layer): every attention map here is the layer's real
one, with its own mask (causal; Gemma 3 adds the sliding window on local layers and bidirectional
attention inside each image block) and its own logit scale (Gemma 3: query_pre_attn_scalar ** -0.5).
Both patterns are required: there is no default mask (a missing one is an error, never a causal
fallback; `AttentionPattern.causal(D)` states plain causal attention where that is the layer's real
one, as in Qwen2.5-VL). The target is restricted to the keys the student's layer can see and renormalised there
(identical to the teacher's map when both masks agree, as for same-type layers of one family): a key
the student cannot attend to would make the divergence infinite and carries nothing it can learn.

Memory: queries are processed in chunks of `chunk_size`, so a chunk's logits are (B, H, chunk, S)
(the teacher's (B, H_t, chunk, S)) and never (S, S); each chunk is wrapped in activation
checkpointing when gradients are needed, so the backward pass also keeps only O(chunk x S) live,
i.e. memory grows linearly with S (a chunk's keys end at its last row, or at the end of an image
block one of its rows lies in). GQA: query head h uses KV head h // (H / H_kv), as in the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from laid.model.families import AttentionPattern, require_pattern

_MASKED = -1e9  # finite fill for masked logits: exp -> 0 and no NaN in gradients (fp32)


@dataclass
class DistanceWeighting:
    """w(d, t) = 1 + alpha(t) * f(d / d_max); alpha ramps alpha_start -> alpha_end over t in [0, 1]."""

    alpha_start: float = 0.0
    alpha_end: float = 3.0
    schedule: str = "linear"  # "linear" | "cosine" | "constant" (alpha_end throughout)
    form: str = "power"  # "power": (d/d_max)^power; "log": log(1+d)/log(1+d_max)
    power: float = 1.0

    def __post_init__(self):
        if self.schedule not in ("linear", "cosine", "constant"):
            raise ValueError(f"DistanceWeighting.schedule must be linear, cosine or constant, got {self.schedule!r}")
        if self.form not in ("power", "log"):
            raise ValueError(f"DistanceWeighting.form must be power or log, got {self.form!r}")
        if min(self.alpha_start, self.alpha_end) < 0 or self.power <= 0:
            raise ValueError("DistanceWeighting needs alpha_start, alpha_end >= 0 and power > 0 (weights must stay positive)")

    def alpha(self, progress: float) -> float:
        t = min(max(float(progress), 0.0), 1.0)
        if self.schedule == "constant":
            return self.alpha_end
        ramp = t if self.schedule == "linear" else 0.5 * (1.0 - math.cos(math.pi * t))
        return self.alpha_start + (self.alpha_end - self.alpha_start) * ramp

    def weights(self, distance: torch.Tensor, max_distance: torch.Tensor, progress: float) -> torch.Tensor:
        """distance (..., c, S) >= 0, max_distance broadcastable (B, 1, 1, 1) -> weights."""
        d = distance.clamp(min=0).float()
        d_max = max_distance.float().clamp(min=1)
        f = (d / d_max).pow(self.power) if self.form == "power" else torch.log1p(d) / torch.log1p(d_max)
        return 1.0 + self.alpha(progress) * f


def pair_distance(pos_q: torch.Tensor, pos_k: torch.Tensor) -> torch.Tensor:
    """(B, c, S) max over position axes of |pos(i) - pos(j)|; pos_q (A, B, c), pos_k (A, B, S)."""
    return (pos_q[..., :, None] - pos_k[..., None, :]).abs().amax(dim=0)


def max_distance(positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) largest pair distance among valid tokens: max over axes of (max - min) position."""
    big = torch.iinfo(torch.long).max // 4
    pos = positions.long()
    hi = pos.masked_fill(~mask[None], -big).amax(-1)  # (A, B)
    lo = pos.masked_fill(~mask[None], big).amin(-1)
    return (hi - lo).clamp(min=0).amax(0)


def _logits(q, k, scale):
    """q (B, H, c, D), k (B, H_kv, S, D) -> (B, H, c, S) fp32, without materialising repeat_kv."""
    b, h, c, d = q.shape
    h_kv, s = k.shape[1], k.shape[2]
    return torch.einsum("bkgcd,bksd->bkgcs", q.float().view(b, h_kv, h // h_kv, c, d), k.float()).reshape(b, h, c, s) * scale


def require_patterns(**patterns) -> None:
    """Refuse a missing AttentionPattern in one line naming the argument: no mask is assumed (module doc)."""
    for name, pattern in patterns.items():
        require_pattern(pattern, f"attention matching's {name}")


def _target_probs(tq, tk, mix, allowed, scale):
    """(B, H, c, S) target rows: softmax of (tq, tk) when mix is None, else the convex mix of the
    teacher's own per-head maps (tq (B, H_t, c, D), tk (B, H_t_kv, S, D), mix (H, H_t))."""
    p = torch.softmax(_logits(tq, tk, scale).masked_fill(~allowed, _MASKED), dim=-1)
    return p if mix is None else torch.einsum("ht,btcs->bhcs", mix.float(), p)


def _chunk_divergence(*args):
    # fp32 even under bf16 autocast: attention probabilities of long rows are small and the
    # divergence of near-equal rows is a difference of near-equal numbers.
    with torch.autocast(device_type=args[0].device.type, enabled=False):
        return _chunk_divergence_fp32(*args)


def _chunk_divergence_fp32(sq, sk, tq, tk, mix, start, key_valid, query_valid, query_rows, distance, d_max, weighting,
                           progress, s_pattern, t_pattern):
    """Weighted divergence summed over one query chunk.

    sq (B, H, c, D) student queries of rows [start, start + c), sk (B, H_kv, S, D) keys 0 .. S-1
    (every key a row of the chunk can see); tq / tk the teacher's (raw heads with `mix`, else
    already-mixed targets shaped like sq / sk); key_valid (B, S) bool; query_valid (B, c) bool;
    query_rows (B, c) bool, the valid rows that count (attn_rows); distance (B, c, S); d_max (B,);
    s_pattern / t_pattern the two layers' AttentionPatterns. Returns a 0-d tensor (sum).
    """
    c, s = sq.shape[2], sk.shape[2]
    allowed = s_pattern.allowed(start, c, s, key_valid, query_valid)  # (B, 1, c, S) the student's real mask
    seen = allowed & t_pattern.allowed(start, c, s, key_valid, query_valid)  # the target, where the student can look
    p = _target_probs(tq, tk, mix, seen, t_pattern.scaling)  # (B, H, c, S)
    log_q = torch.log_softmax(_logits(sq, sk, s_pattern.scaling).masked_fill(~allowed, _MASKED), dim=-1)  # student
    q = log_q.exp()
    cross = torch.where(p > 0, p * (p.clamp(min=1e-38).log() - log_q), torch.zeros((), device=p.device))
    term = cross - p + q  # (B, H, c, S), >= 0
    w = weighting.weights(distance[:, None], d_max[:, None, None, None], progress)  # (B, 1, c, S)
    term = torch.where(allowed & query_rows[:, None, :, None], w * term, torch.zeros((), device=term.device))
    return term.sum()


@torch.no_grad()
def head_divergence(sq, sk, tq, tk, mask=None, query_mask=None, student_pattern: AttentionPattern | None = None,
                    target_pattern: AttentionPattern | None = None, chunk_size: int = 256) -> torch.Tensor:
    """(H_s, H_t) mean over the matched query rows of KL(P^t_j || P^s_h): how far each student head's
    attention is from each teacher head's, on this batch.

    sq (B, H_s, S, D), sk (B, H_s_kv, S, D), tq (B, H_t, S, D), tk (B, H_t_kv, S, D); mask (B, S) valid
    tokens; query_mask (B, S) the rows compared (None = every valid row); patterns as in the loss
    (required). What `matched_mix` pairs heads by: function (what a head attends to), not Q/K geometry."""
    b, hs, s, _ = sq.shape
    require_patterns(student_pattern=student_pattern, target_pattern=target_pattern)
    s_pat, t_pat = student_pattern, target_pattern
    mask = torch.ones(b, s, dtype=torch.bool, device=sq.device) if mask is None else mask.bool()
    rows = mask if query_mask is None else mask & query_mask.to(mask.device).bool()
    total = torch.zeros(hs, tq.shape[1], dtype=torch.float64, device=sq.device)
    with torch.autocast(device_type=sq.device.type, enabled=False):
        for start in range(0, s, chunk_size):
            stop = min(start + chunk_size, s)
            r = rows[:, start:stop]  # (B, c)
            if not bool(r.any()):
                continue
            kstop = max(s_pat.key_stop(start, stop), t_pat.key_stop(start, stop))
            allowed = s_pat.allowed(start, stop - start, kstop, mask[:, :kstop], mask[:, start:stop])
            seen = allowed & t_pat.allowed(start, stop - start, kstop, mask[:, :kstop], mask[:, start:stop])
            log_q = torch.log_softmax(_logits(sq[:, :, start:stop], sk[:, :, :kstop], s_pat.scaling).masked_fill(~allowed, _MASKED), -1)
            log_p = torch.log_softmax(_logits(tq[:, :, start:stop], tk[:, :, :kstop], t_pat.scaling).masked_fill(~seen, _MASKED), -1)
            p = log_p.exp() * r[:, None, :, None]  # (B, H_t, c, K), rows not compared zeroed
            own = (p * log_p.masked_fill(~seen, 0.0)).sum((0, 2, 3))  # (H_t,) sum p log p
            cross = torch.einsum("bjck,bhck->hj", p, log_q.masked_fill(~allowed, 0.0))  # (H_s, H_t) sum p log q
            total += (own[None, :] - cross).double()
    return (total / rows.sum().clamp(min=1)).float()


def matched_mix(divergence: torch.Tensor) -> torch.Tensor:
    """(H_s, H_t) one-hot rows: each student head's target is the teacher head whose attention is
    closest to its own (`head_divergence`), so matching pulls a head towards the teacher head that
    does what it does (a retrieval head to the teacher's retrieval head) rather than towards the
    heads a Q/K-geometry mixer happens to weight."""
    return torch.nn.functional.one_hot(divergence.argmin(-1), divergence.shape[1]).float()


def direction_only(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """x (..., D) with the same value and a gradient orthogonal to each vector x[..., :]."""
    n = x.norm(dim=-1, keepdim=True)
    return x / n.clamp(min=eps) * n.detach()


def _positions_or_index(positions, b, s, device) -> torch.Tensor:
    """(A, B, S) position ids: the given M-RoPE ids (3, B, S) / (B, S), or the token index."""
    if positions is None:
        return torch.arange(s, device=device).expand(1, b, s)
    positions = positions.to(device)
    if positions.ndim == 2:
        positions = positions[None]
    if positions.shape[1:] != (b, s):
        raise ValueError(f"positions {tuple(positions.shape)} do not match (axes, B={b}, S={s})")
    return positions


class AttentionMatchingLoss(nn.Module):
    """Distance-weighted match of student attention to the teacher's attention (see module doc).

    forward(student_q (B, H, S, D), student_k (B, H_kv, S, D), target_q, target_k,
            mask (B, S) bool valid tokens or None, progress t in [0, 1],
            mix (H, H_t) convex rows or None, positions (A, B, S) position ids or None,
            student_pattern / target_pattern: each layer's AttentionPattern (required: no default mask),
            query_mask (B, S) bool query rows that are matched or None = every valid row)
    -> scalar: weighted divergence averaged over the matched query rows and heads (keys: every
    valid token). `query_mask` restricts the rows (the recipe's `attn_rows`: text or question rows).
    `direction_only`: the student's Q/K get gradients orthogonal to each vector (module doc).
    With `mix`: target_q (B, H_t, S, D) / target_k (B, H_t_kv, S, D) are the teacher's own heads and
    the target is the convex mix of its attention maps (detached). Without: they are the mixed
    Q/K (B, H, S, D) / (B, H_kv, S, D) of the ablation, and gradients reach them.
    """

    def __init__(self, weighting: DistanceWeighting | None = None, chunk_size: int = 256, use_checkpoint: bool = True,
                 direction_only: bool = False):
        super().__init__()
        self.direction_only = direction_only
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.weighting = weighting or DistanceWeighting()
        self.chunk_size = chunk_size
        self.use_checkpoint = use_checkpoint

    def forward(self, student_q, student_k, target_q, target_k, mask=None, progress: float = 0.0, mix=None, positions=None,
                student_pattern: AttentionPattern | None = None, target_pattern: AttentionPattern | None = None,
                query_mask=None) -> torch.Tensor:
        b, h, s, _ = student_q.shape
        if mix is None and (student_q.shape != target_q.shape or student_k.shape != target_k.shape):
            raise ValueError(
                f"student and target Q/K shapes differ: q {tuple(student_q.shape)} vs {tuple(target_q.shape)}, "
                f"k {tuple(student_k.shape)} vs {tuple(target_k.shape)}"
            )
        if mix is not None:
            if tuple(mix.shape) != (h, target_q.shape[1]):
                raise ValueError(f"attention mix {tuple(mix.shape)} must be (student heads {h}, teacher heads {target_q.shape[1]})")
            mix, target_q, target_k = mix.detach(), target_q.detach(), target_k.detach()
        for name, q, k in (("student", student_q, student_k), ("teacher", target_q, target_k)):
            if q.shape[1] % k.shape[1]:
                raise ValueError(f"{name}: {q.shape[1]} query heads are not a multiple of {k.shape[1]} KV heads")
        if self.direction_only:  # gradients turn the student's vectors, with no component along them
            student_q, student_k = direction_only(student_q), direction_only(student_k)
        require_patterns(student_pattern=student_pattern, target_pattern=target_pattern)
        s_pat, t_pat = student_pattern, target_pattern
        mask = torch.ones(b, s, dtype=torch.bool, device=student_q.device) if mask is None else mask.bool()
        rows = mask if query_mask is None else mask & query_mask.to(mask.device).bool()  # (B, S) matched rows
        pos = _positions_or_index(positions, b, s, student_q.device)  # (A, B, S)
        d_max = max_distance(pos, mask)  # (B,)
        total = student_q.new_zeros((), dtype=torch.float32)
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (student_q, student_k, target_q, target_k))
        # Rows before the first matched row are never computed (attn_rows: question matches ~the last
        # 30 of ~160 tokens of a 20-image toy haystack).
        any_row = rows.any(0).nonzero()
        first = int(any_row[0]) if any_row.numel() else s
        for start in range(first, s, self.chunk_size):
            stop = min(start + self.chunk_size, s)
            # Rows < stop see keys < stop only (causal), or up to the end of an image block they are in.
            kstop = max(s_pat.key_stop(start, stop), t_pat.key_stop(start, stop))
            distance = pair_distance(pos[:, :, start:stop], pos[:, :, :kstop])  # (B, c, kstop)
            args = (
                student_q[:, :, start:stop], student_k[:, :, :kstop], target_q[:, :, start:stop], target_k[:, :, :kstop],
                mix, start, mask[:, :kstop], mask[:, start:stop], rows[:, start:stop], distance, d_max, self.weighting,
                float(progress), s_pat, t_pat,
            )
            if grad and self.use_checkpoint:
                total = total + checkpoint(_chunk_divergence, *args, use_reentrant=False)
            else:
                total = total + _chunk_divergence(*args)
        return total / (rows.sum() * h).clamp(min=1)


@torch.no_grad()
def attention_entropy(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None, chunk_size: int = 256,
                      pattern: AttentionPattern | None = None) -> torch.Tensor:
    """Mean entropy (nats) of the attention rows of q (B, H, S, D), k (B, H_kv, S, D) under the
    layer's `pattern` (required: no default mask).

    Averaged over valid query rows and heads; chunked in queries like the loss (memory linear in S).
    A row that sees n keys has entropy between 0 (one key) and log n (uniform).
    """
    b, h, s, d = q.shape
    require_patterns(pattern=pattern)
    mask = torch.ones(b, s, dtype=torch.bool, device=q.device) if mask is None else mask.bool()
    total = torch.zeros((), dtype=torch.float64, device=q.device)
    for start in range(0, s, chunk_size):
        stop = min(start + chunk_size, s)
        kstop = pattern.key_stop(start, stop)
        allowed = pattern.allowed(start, stop - start, kstop, mask[:, :kstop], mask[:, start:stop])
        with torch.autocast(device_type=q.device.type, enabled=False):
            logits = _logits(q[:, :, start:stop], k[:, :, :kstop], pattern.scaling)
            logp = torch.log_softmax(logits.masked_fill(~allowed, _MASKED), -1)
        ent = -(logp.exp() * logp).masked_fill(~allowed, 0.0).sum(-1)  # (B, H, c)
        total += (ent * mask[:, None, start:stop]).sum().double()
    return (total / (mask.sum() * h).clamp(min=1)).float()
