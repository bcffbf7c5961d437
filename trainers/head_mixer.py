"""Learnable teacher -> student head mixers (paper Eq. 3 / 7).

Each student head i at a mapped layer is matched to a weighted sum of the teacher's heads at its
mapped layer:  Q^s_i ~ sum_j w_ij Q^t_j  and  K^s_i ~ sum_j w_ij K^t_j.  Real Qwen2.5-VL models use
grouped-query attention (7B: 28 query / 4 KV heads, 32B: 40 / 8, 3B: 16 / 2), so queries and keys
get separate mixers: W_Q (student heads x teacher heads) and W_K (student KV heads x teacher KV
heads). Mixing is over heads only; the head dimension (equal in teacher and student, checked by
`trainers.pairing`) and the positions (teacher and student see the same tokens) are untouched, so
mixing post-RoPE Q/K mixes rotated vectors at the same positions (Eq. 5).

Row parameterisation (`rows`), chosen with the alignment form (`trainers.losses.qk_alignment`):

- "unit" (default, `alignment: cosine`): W = V / ||V||_row, every row has norm 1 by construction.
  The scale-free alignment ignores a row's scale, so a learned scale would receive no gradient;
  fixing it at 1 makes the zero mix unrepresentable and the row norm a constant that can't drift.
  The signs and relative sizes of a row are free, so a student head can be any mix of teacher
  heads (also differences); how much larger the student's Q/K are than the teacher's is reported
  by the health telemetry (`q_norm_ratio`), not hidden in W.
- "free" (`alignment: paper`, the ablation): free real scalars, as the paper's w_ij. With the
  paper's squared error, W and the student's Q/K can shrink together towards the zero mix.

Attention-mix weights (`attention_mix`): the attention-matching target is a convex mix of the
teacher's own attention maps, weighted by a_ij = w_ij^2 e_j / sum_j w_ij^2 e_j, with e_j the mean
energy (squared norm per token) of teacher query head j on the batch: the share of the mixed
query's energy that teacher head j supplies when the teacher heads are uncorrelated. Rows sum to 1
and are >= 0 for any W (free or unit, any signs); the weights are computed detached (the teacher is
frozen), so the attention term never moves W. `power` > 1 sharpens the rows (a_ij proportional to
(w_ij^2 e_j)^power; large powers approach the single dominant teacher head): a mix of maps that
attend to different keys is flatter than each map, and matching a flatter target lowers the
student's attention logits (see `trainers.losses.attention_matching`).

Initialisation ("overlap", the default): lay the T teacher heads and the S student heads on the
same interval [0, T); student head i covers [i*T/S, (i+1)*T/S) and takes from teacher head j the
fraction of its interval that overlaps [j, j+1). Rows sum to 1, so each student head starts as an
average of a contiguous block of teacher heads (T = 2S: pairs of heads; T = S: the identity;
40 -> 28: blocks of 1-2 heads with fractional edges). Contiguous blocks respect GQA grouping,
where neighbouring query heads share a KV head in both models. `fit_least_squares_` re-initialises
from a batch (the best mix for the current student: the alignment loss then starts at its
irreducible residual instead of pulling the student toward an arbitrary average); the recipe may
call it on its first batch.
"""

from __future__ import annotations

import torch
from torch import nn


def overlap_init(n_student_heads: int, n_teacher_heads: int) -> torch.Tensor:
    """(S_h, T_h) weights: student head i averages the teacher heads its interval overlaps."""
    s, t = n_student_heads, n_teacher_heads
    lo = torch.arange(s, dtype=torch.float64)[:, None] * t / s  # (S, 1) start of student interval
    hi = lo + t / s
    j = torch.arange(t, dtype=torch.float64)[None, :]  # (1, T)
    overlap = (torch.minimum(hi, j + 1) - torch.maximum(lo, j)).clamp(min=0)  # (S, T)
    return (overlap / (t / s)).float()


ROWS = ("unit", "free")


def effective_weight(raw: torch.Tensor, rows: str) -> torch.Tensor:
    """(S_h, T_h) mixing weights W from the stored parameter V: V ("free") or V / ||V||_row ("unit")."""
    if rows == "free":
        return raw
    if rows == "unit":
        return raw / raw.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    raise ValueError(f"mixer rows must be one of {ROWS}, got {rows!r}")


def attention_mix(weight: torch.Tensor, teacher_energy: torch.Tensor | None = None, power: float = 1.0) -> torch.Tensor:
    """(S_h, T_h) convex rows a_ij proportional to (w_ij^2 e_j)^power (detached; see module doc).

    weight (S_h, T_h) effective W; teacher_energy (T_h,) mean squared norm per token of each teacher
    head, or None (equal energies); power > 0 (1 = energy shares).
    """
    a = weight.detach().float().pow(2)
    if teacher_energy is not None:
        a = a * teacher_energy.detach().float()[None, :]
    if power != 1.0:  # in log space: large powers must not overflow
        a = torch.softmax(power * a.clamp(min=1e-30).log(), dim=-1)
    return a / a.sum(-1, keepdim=True).clamp(min=1e-30)


def row_entropy(mix: torch.Tensor) -> torch.Tensor:
    """(S_h,) entropy in nats of convex rows (S_h, T_h): 0 = one teacher head, log T_h = uniform."""
    return -(mix * mix.clamp(min=1e-30).log()).sum(-1)


class HeadMixer(nn.Module):
    """W (n_student_heads x n_teacher_heads): mix(teacher (B, T_h, S, D)) -> (B, S_h, S, D).

    rows: "unit" (W = V / ||V||_row) or "free" (W = V); see the module doc. `weight` is the stored
    parameter V; `effective()` is W.
    """

    def __init__(self, n_student_heads: int, n_teacher_heads: int, rows: str = "unit"):
        super().__init__()
        if n_student_heads < 1 or n_teacher_heads < 1:
            raise ValueError(f"HeadMixer needs positive head counts, got {n_student_heads} x {n_teacher_heads}")
        if rows not in ROWS:
            raise ValueError(f"HeadMixer rows must be one of {ROWS}, got {rows!r}")
        self.n_student_heads, self.n_teacher_heads, self.rows = n_student_heads, n_teacher_heads, rows
        self.weight = nn.Parameter(overlap_init(n_student_heads, n_teacher_heads))  # (S_h, T_h) = V

    def effective(self) -> torch.Tensor:
        """(S_h, T_h) the mixing weights W actually applied."""
        return effective_weight(self.weight, self.rows)

    def forward(self, teacher: torch.Tensor) -> torch.Tensor:
        if teacher.shape[1] != self.n_teacher_heads:
            raise ValueError(f"HeadMixer expects {self.n_teacher_heads} teacher heads in dim 1, got shape {tuple(teacher.shape)}")
        # Mix in the weight's dtype (fp32), also under bf16 autocast: teacher activations may be bf16,
        # and a bf16 target would put a ~1e-2 relative noise floor under the alignment losses.
        with torch.autocast(device_type=teacher.device.type, enabled=False):
            w = self.effective()
            return torch.einsum("st,btnd->bsnd", w, teacher.to(w.dtype))

    mix = forward

    @torch.no_grad()
    def fit_least_squares_(self, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None, ridge: float = 1e-4) -> None:
        """Set W to argmin ||student - W teacher||^2 over valid tokens (ridge-regularised).

        student (B, S_h, S, D), teacher (B, T_h, S, D), mask (B, S) bool of valid tokens.
        Every (token, dim) is one sample: W = C_st (C_tt + ridge * mean(diag C_tt) I)^-1.
        With unit rows the stored V is the least-squares W (its direction is what counts: the
        least-squares mix also maximises the per-head cosine of `alignment: cosine`).
        """
        s = student.detach().to(torch.float64)
        t = teacher.detach().to(torch.float64)
        if mask is not None:
            m = mask.to(torch.float64)[:, None, :, None]  # (B, 1, S, 1)
            s, t = s * m, t * m
        c_tt = torch.einsum("bind,bjnd->ij", t, t)  # (T_h, T_h)
        c_st = torch.einsum("bind,bjnd->ij", s, t)  # (S_h, T_h)
        reg = ridge * c_tt.diagonal().mean().clamp(min=1e-12)
        w = torch.linalg.solve(c_tt + reg * torch.eye(c_tt.shape[0], dtype=c_tt.dtype), c_st.T).T
        self.weight.copy_(w.to(self.weight.dtype))

    def extra_repr(self) -> str:
        return f"student_heads={self.n_student_heads}, teacher_heads={self.n_teacher_heads}, rows={self.rows}"


class QKMixer(nn.Module):
    """The pair of mixers of one mapped layer pair: W_Q over query heads, W_K over KV heads."""

    def __init__(self, student_heads: int, teacher_heads: int, student_kv_heads: int, teacher_kv_heads: int, rows: str = "unit"):
        super().__init__()
        self.q = HeadMixer(student_heads, teacher_heads, rows)
        self.k = HeadMixer(student_kv_heads, teacher_kv_heads, rows)

    def forward(self, teacher_q: torch.Tensor, teacher_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """teacher_q (B, T_h, S, D), teacher_k (B, T_kv, S, D) -> (B, S_h, S, D), (B, S_kv, S, D)."""
        return self.q(teacher_q), self.k(teacher_k)
