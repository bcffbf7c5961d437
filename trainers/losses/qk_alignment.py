"""Head-level Q/K alignment loss of one mapped layer pair (paper Eq. 7), in two forms.

`alignment: paper` (the ablation) is Eq. 7 as written, with free mixing weights:

    L = || Q^s - W_Q Q^t ||_F^2 + || K^s - W_K K^t ||_F^2

averaged over valid tokens, heads and head dims (Q and K separately, then added), so the value
does not grow with sequence length or head count (a constant factor absorbed into lambda_LAid).
This form is degenerate: the zero student with the zero mix has loss 0, and at the least-squares
mix the derivative of the loss along a uniform rescaling c Q^s is 2 ||residual||^2 > 0, so every
step that can shrink the student (a RoPE gain, a q_proj row scale) lowers the loss by shrinking,
and W follows: the mixers and the aligned layer's Q/K norms decay together.

`alignment: cosine` (the default) compares directions per head, not energies:

    L = mean over (example b, student head h) of  1 - <X_bh, M_bh> / (||X_bh|| ||M_bh||)

for Q and for K (then added), where X_bh is student head h's (valid tokens x D) block of
post-RoPE Q (or K) in example b and M_bh the same block of the mixed teacher W Q^t. Equivalently
L = 1/2 ||X/||X|| - M/||M|| ||^2: the squared error between per-head energy-standardised tensors.
Why this form:
- It cannot be won by shrinking: it is invariant to any positive rescaling of a student head or a
  mixer row, so the zero mix is no solution (W has unit rows, `trainers.head_mixer`), and its
  gradient w.r.t. the student's Q is orthogonal to Q (sum_g g dL/dg = 0 for the RoPE gains of a
  head): this term cannot push norms or gains down, to first order.
- It is invariant to the q-up / k-down rescaling (Q_h -> c Q_h, K_h -> K_h / c) that leaves the
  attention unchanged. It is not invariant to a per-rotary-pair rescaling (the RoPE gain's
  g_q[p] up, g_k[p] down): the per-frequency energy profile of a head is part of what is
  transferred (which frequencies the teacher's heads use); only g_q * g_k enters the attention,
  and the telemetry reports that product.
- Its minimum over W is the least-squares mix (max cosine = least-squares direction), so the
  mixers still find "which teacher heads make this student head" (planted test in
  tests/test_trainers_alignment.py recovers W* with cosine >= 0.95).
- It is bounded (0 to 2) and has the same scale at any model size: lambda_LAid carries over.
Not centred: a constant offset of Q (from the q_proj bias) changes attention logits, so it is part
of the direction compared.

Both forms use post-RoPE Q/K (Eq. 5). Teacher and student see the same tokens with the same
M-RoPE position ids, so the same rotation acts on both sides at every token; it is orthogonal and
mixing acts on heads only, so this term is the same before and after RoPE: RoPE enters LAid
through the attention matching and the RoPE gain, not here.
"""

from __future__ import annotations

import torch
from torch import nn

from trainers.head_mixer import QKMixer

FORMS = ("cosine", "paper")
ROWS_FOR_FORM = {"cosine": "unit", "paper": "free"}


def masked_mse(student: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of (student - target)^2 over valid tokens, heads and dims.

    student, target (B, H, S, D); mask (B, S) bool (True = valid token) or None (all valid).
    """
    err = (student.float() - target.float()).pow(2).mean(dim=(1, 3))  # (B, S): mean over heads, dims
    if mask is None:
        return err.mean()
    m = mask.to(err.dtype)
    return (err * m).sum() / m.sum().clamp(min=1.0)


def head_cosine(student: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, H) cosine between each example's per-head (valid tokens x D) blocks.

    student, target (B, H, S, D); mask (B, S) bool or None. A zero block has cosine 0 (a tiny
    energy floor keeps the gradient finite there).
    """
    s, t = student.float(), target.float()
    if mask is not None:
        m = mask.to(s.dtype)[:, None, :, None]  # (B, 1, S, 1)
        s, t = s * m, t * m
    dot = (s * t).sum(dim=(2, 3))
    floor = 1e-12
    return dot / ((s.pow(2).sum(dim=(2, 3)) + floor).sqrt() * (t.pow(2).sum(dim=(2, 3)) + floor).sqrt())


def masked_cosine_distance(student: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over (example, head) of 1 - cosine of the per-head blocks (see module doc); 0-d."""
    return (1.0 - head_cosine(student, target, mask)).mean()


class QKAlignmentLoss(nn.Module):
    """Eq. 7 for one layer pair; owns the pair's learnable mixers (`self.mixer.q`, `self.mixer.k`).

    form: "cosine" (default: scale-free, unit-row mixers) or "paper" (literal Eq. 7, free mixers).
    forward(student_q (B, Hs, S, D), student_k (B, Hs_kv, S, D),
            teacher_q (B, Ht, S, D), teacher_k (B, Ht_kv, S, D), mask (B, S) bool) -> scalar.
    Teacher tensors are expected detached (frozen teacher); gradients reach the student Q/K and W.
    """

    def __init__(self, student_heads: int, teacher_heads: int, student_kv_heads: int, teacher_kv_heads: int, form: str = "cosine"):
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"alignment form must be one of {FORMS}, got {form!r}")
        self.form = form
        self.mixer = QKMixer(student_heads, teacher_heads, student_kv_heads, teacher_kv_heads, rows=ROWS_FOR_FORM[form])

    def forward(self, student_q, student_k, teacher_q, teacher_k, mask=None) -> torch.Tensor:
        q_term, k_term = self.terms(student_q, student_k, *self.mixer(teacher_q, teacher_k), mask=mask)
        return q_term + k_term

    @torch.no_grad()
    def init_mixers_least_squares_(self, student_q, student_k, teacher_q, teacher_k, mask=None) -> None:
        """Re-initialise both mixers to the least-squares mix of this batch (see HeadMixer)."""
        self.mixer.q.fit_least_squares_(student_q, teacher_q, mask)
        self.mixer.k.fit_least_squares_(student_k, teacher_k, mask)

    def terms(self, student_q, student_k, mixed_q, mixed_k, mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q term, K term) given already-mixed teacher tensors (B, Hs, S, D) / (B, Hs_kv, S, D)."""
        if student_q.shape != mixed_q.shape or student_k.shape != mixed_k.shape:
            raise ValueError(
                f"Q/K shapes differ after mixing: student q {tuple(student_q.shape)} vs {tuple(mixed_q.shape)}, "
                f"k {tuple(student_k.shape)} vs {tuple(mixed_k.shape)}"
            )
        dist = masked_mse if self.form == "paper" else masked_cosine_distance
        return dist(student_q, mixed_q, mask), dist(student_k, mixed_k, mask)
