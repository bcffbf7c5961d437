"""The trained side of a distillation run as one nn.Module: student + head mixers + RoPE gains.

Everything that receives gradients lives in `DistillModule`, and its forward computes the loss
terms, so `accelerator.prepare` can wrap it once (DDP / FSDP / DeepSpeed) and gradient sync,
mixed precision and checkpointing treat student, mixers and gains alike. The frozen teacher runs
outside it (`teacher_forward`): under no_grad, its Q/K and answer logits are handed in.

Per micro-batch (teacher and student see the very same input tensors):
    teacher_forward -> q_rot/k_rot at the teacher layers of the pairs, answer-tail logits
    student forward (gains applied to q/k projections, record_qk keeping the graph)
    terms: laid = sum over pairs of the Q/K alignment (QKAlignmentLoss; `alignment`: cosine | paper)
           attn = sum over pairs of the progressive distance-weighted attention matching against
                  the teacher's own per-head attention, mixed with the detached convex weights
                  of W_Q (`attention_target`), distances from the batch's position ids, each side
                  under its layer's real mask and scale (the family adapters, laid.model.families),
                  over the query rows `attn_rows` selects (all, text or question tokens)
           kl   = tau^2 KL(teacher || student) on answer positions (shared vocabulary ids)
           sft  = cross-entropy on answer tokens
    total = sum_t lambda_t * term_t  (terms the method does not use are not computed)

With `health=True` (the recipe sets it on the last micro-batch of a logging step) the forward also
computes the health telemetry (`trainers.health`) into `last_health`: it then records the
aligned layers' Q/K also for methods without LAid terms (KD), so every method is comparable.

Families: position ids, masks and scales come from the student's and the teacher's family adapter
(`laid.model.families`); nothing here assumes Qwen2.5-VL. Where the two head_dims differ (Gemma 3
27B: 128, 4B: 256) the Q/K alignment compares the rotary pairs both layers share (same frequency
and position axis; `qk_dims`, from trainers.pairing), since RoPE rotates those identically.

Logits are computed for the answer tail only (`logits_to_keep`): on real models full-sequence
logits of a 150k vocabulary over ~8k tokens would cost several GB for nothing.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from laid.model.families import AttentionPattern, UnknownFamilyError, family_of
from laid.model.hooks import record_qk, site_name
from laid.model.token_masks import select
from trainers import health as hl
from trainers.config import DistillConfig
from trainers.head_mixer import attention_mix
from trainers.losses import AttentionMatchingLoss, KLDistillationLoss, QKAlignmentLoss, SFTLoss, answer_logit_mask
from trainers.losses.attention_matching import head_divergence, matched_mix


@dataclass
class TeacherOutputs:
    """Detached teacher activations for one micro-batch."""

    logits: torch.Tensor  # (B, K, V_t): the last K positions (answer tail)
    q: dict[int, torch.Tensor]  # teacher layer -> q_rot (B, H_t, S, D)
    k: dict[int, torch.Tensor]  # teacher layer -> k_rot (B, H_t_kv, S, D)
    patterns: dict[int, AttentionPattern] = field(default_factory=dict)  # teacher layer -> its mask rule and scale


def tail_length(labels: torch.Tensor) -> int:
    """K = positions to keep at the end so every answer token's predicting logit is inside.

    labels (B, S) with -100 off the answer (left-padded batches: answers end every row).
    """
    has = (labels != -100).any(0).nonzero()
    if has.numel() == 0:
        raise ValueError("batch has no answer tokens (labels all -100)")
    return labels.shape[1] - int(has[0]) + 1


def model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


@torch.no_grad()
def teacher_forward(teacher: nn.Module, batch: dict, layers: list[int], keep: int, want_qk: bool) -> TeacherOutputs:
    ctx = record_qk(teacher, layers=layers, detach=True) if want_qk else nullcontext()
    with ctx as rec:
        out = teacher(**model_inputs(batch), logits_to_keep=keep, use_cache=False)
    q = {i: rec.tensors[site_name(i, "q_rot")] for i in layers} if want_qk else {}
    k = {i: rec.tensors[site_name(i, "k_rot")] for i in layers} if want_qk else {}
    model = getattr(teacher, "module", teacher)  # a DeepSpeed engine's model (its .config is DeepSpeed's)
    patterns = layer_patterns(model, layers, batch, "teacher") if want_qk else {}
    return TeacherOutputs(out.logits.detach(), q, k, patterns)


def layer_patterns(model: nn.Module, layers, batch: dict, role: str) -> dict[int, AttentionPattern]:
    """{layer: its AttentionPattern on `batch`} from `model`'s family adapter; a model whose family
    LAid does not know is refused in one line naming the layer (no mask is ever assumed)."""
    try:
        family = family_of(model)
    except UnknownFamilyError as err:
        raise UnknownFamilyError(f"cannot read the attention of {role} layer(s) {list(layers)}: {err}") from None
    return {i: family.attention_pattern(model, i, batch) for i in layers}


@torch.no_grad()
def rope_positions(model: nn.Module, batch: dict) -> torch.Tensor:
    """(A, B, S) position ids `model` rotates `batch` by: M-RoPE (temporal, height, width) for the
    Qwen-VL families, one axis for InternVL3 / Gemma 3 (its family adapter)."""
    return family_of(model).positions(model, batch)


def head_energy(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(H,) mean squared norm per valid token of each head of x (B, H, S, D)."""
    e = x.detach().float().pow(2).sum(-1)  # (B, H, S)
    m = mask.to(e.dtype)[:, None, :]
    return (e * m).sum(dim=(0, 2)) / m.sum().clamp(min=1)


def text_attention_dims(config) -> tuple[int, int, int]:
    """(query heads, KV heads, layers) of a model config's text decoder."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return text.num_attention_heads, text.num_key_value_heads, text.num_hidden_layers


class DistillModule(nn.Module):
    """Student + per-pair mixers (inside QKAlignmentLoss) + optional RoPE gain; forward -> loss terms.

    forward(batch, teacher: TeacherOutputs | None, progress in [0, 1]) -> dict of 0-d tensors:
    one per computed term plus "total" (the weighted sum that is backpropagated).
    """

    def __init__(self, student: nn.Module, cfg: DistillConfig, layer_pairs: list[tuple[int, int]], teacher_config=None,
                 gain: nn.Module | None = None, qk_dims: dict | None = None):
        super().__init__()
        self.student = student
        try:
            self.family = family_of(student)
        except UnknownFamilyError as err:  # the pairs' masks and scales would be unknown: refuse, naming them
            raise UnknownFamilyError(f"cannot read the attention of student layer(s) {[int(s) for s, _ in layer_pairs]}: {err}") from None
        # student layer -> (student dims, teacher dims) of the rotary pairs both share, where head_dims differ
        self.qk_dims = dict(qk_dims or {})
        self.weights = cfg.weights()
        self.layer_pairs = [(int(s), int(t)) for s, t in layer_pairs]
        self.gain = gain
        if gain is not None:
            # Attached for the module's whole life, not per forward: with gradient checkpointing
            # the backward pass re-runs the student's forward, and that re-run must see the same
            # gain hooks. `release_gain()` removes them (before folding at export).
            gain.attach(student)
        self.align = nn.ModuleList()
        if cfg.uses_mixers:
            if teacher_config is None:
                raise ValueError(f"method {cfg.method} needs the teacher config to build the head mixers")
            s_h, s_kv, _ = text_attention_dims(student.config)
            t_h, t_kv, _ = text_attention_dims(teacher_config)
            self.align.extend(QKAlignmentLoss(s_h, t_h, s_kv, t_kv, form=cfg.alignment) for _ in self.layer_pairs)
        self.attn_loss = AttentionMatchingLoss(cfg.attention_matching, chunk_size=cfg.attn_chunk_size,
                                               direction_only=cfg.attn_grad == "direction")
        self.attention_target, self.attn_distance, self.attn_mix_power = cfg.attention_target, cfg.attn_distance, cfg.attn_mix_power
        self.attn_rows = cfg.attn_rows
        self.last_health: dict = {}
        # False under ZeRO-3 / FSDP (set by the recipe): the telemetry then reads activations only (norm
        # ratios, attention entropies), computed on one process; gradient norms, mixer rows and gains
        # would need sharded parameters and collectives that the other processes do not join.
        self.health_params = True
        self.kl_loss = KLDistillationLoss(cfg.tau)
        self.sft_loss = SFTLoss()

    @torch.no_grad()
    def init_mixers_least_squares(self, batch: dict, teacher: TeacherOutputs) -> None:
        """Set every pair's mixers to the least-squares mix of the current student on `batch`."""
        with record_qk(self.student, layers=self.student_layers, detach=True) as rec:
            self.student(**model_inputs(batch), logits_to_keep=1, use_cache=False)
        mask = batch["attention_mask"].bool()
        for align, (ls, lt) in zip(self.align, self.layer_pairs):
            sq, sk, tq, tk = self._shared(ls, rec.tensors[site_name(ls, "q_rot")], rec.tensors[site_name(ls, "k_rot")],
                                          teacher.q[lt], teacher.k[lt])
            align.init_mixers_least_squares_(sq, sk, tq, tk, mask)

    def _shared(self, layer: int, sq, sk, tq, tk):
        """Q/K restricted to the rotary pairs both layers share (identity when head_dims agree)."""
        if layer not in self.qk_dims:
            return sq, sk, tq, tk
        s_dims, t_dims = (torch.as_tensor(d, device=sq.device) for d in self.qk_dims[layer])
        return sq[..., s_dims], sk[..., s_dims], tq[..., t_dims], tk[..., t_dims]

    def _teacher_pattern(self, teacher: TeacherOutputs, layer: int) -> AttentionPattern:
        """The teacher layer's pattern from its forward; missing -> one line naming layer and family (the
        teacher is of the student's family: trainers.pairing refuses cross-family pairs)."""
        if layer not in teacher.patterns:
            raise ValueError(f"teacher layer {layer} ({self.family.label}) has no attention pattern: teacher_forward "
                             f"recorded layers {sorted(teacher.patterns)}; its mask and scale are unknown and LAid assumes none")
        return teacher.patterns[layer]

    def tie_weights(self) -> None:
        """Re-tie the student's shared weights (embeddings / lm_head): accelerate's FSDP2 rank-0 loading
        moves the whole module to the meta device, which unties them, and then calls this."""
        self.student.tie_weights()

    def release_gain(self) -> None:
        if self.gain is not None:
            self.gain.remove()

    @property
    def student_layers(self) -> list[int]:
        return [s for s, _ in self.layer_pairs]

    @property
    def teacher_layers(self) -> list[int]:
        return [t for _, t in self.layer_pairs]

    def needs_teacher_qk(self, health: bool = False) -> bool:
        """Whether teacher_forward must record Q/K: for the LAid terms, or for the telemetry."""
        return len(self.align) > 0 or (health and bool(self.layer_pairs))

    def pop_health(self) -> dict:
        out, self.last_health = self.last_health, {}
        return out

    def forward(self, batch: dict, teacher: TeacherOutputs | None = None, progress: float = 0.0, health: bool = False) -> dict[str, torch.Tensor]:
        labels = batch["labels"]
        keep = tail_length(labels)
        w = self.weights
        health = health and bool(self.layer_pairs) and teacher is not None and bool(teacher.q)
        want_qk = len(self.align) > 0 or health
        if (len(self.align) > 0 or w["kl"] > 0) and teacher is None:
            raise ValueError("this method needs teacher outputs for every micro-batch")
        if self.gain is not None:
            self.gain.use(self.gain())  # this forward's gains, gathered by the gain's own forward (ZeRO-3 / FSDP)
        rec_ctx = record_qk(self.student, layers=self.student_layers, detach=False) if want_qk else nullcontext()
        with rec_ctx as rec:
            out = self.student(**model_inputs(batch), logits_to_keep=keep, use_cache=False)
        logits = out.logits  # (B, K, V_s)
        tail_labels = labels[:, -keep:]  # (B, K)

        terms: dict[str, torch.Tensor] = {}
        if w["sft"] > 0:
            terms["sft"] = self.sft_loss(logits, tail_labels)
        if w["kl"] > 0:
            terms["kl"] = self.kl_loss(logits, teacher.logits, answer_logit_mask(tail_labels))
        mask = batch["attention_mask"].bool()  # (B, S) valid (non-padding) tokens
        patterns = layer_patterns(self.student, self.student_layers, batch, "student") if want_qk else {}
        if len(self.align) > 0:
            positions = rope_positions(self.student, batch) if w["attn"] > 0 and self.attn_distance == "mrope" else None
            rows = None if self.attn_rows == "all" else select(batch, self.attn_rows, self.family.image_token_id(self.student.config))
            laid, attn = [], []
            for align, (ls, lt) in zip(self.align, self.layer_pairs):
                sq, sk = rec.tensors[site_name(ls, "q_rot")], rec.tensors[site_name(ls, "k_rot")]
                tq, tk = teacher.q[lt], teacher.k[lt]
                s_pat, t_pat = patterns[ls], self._teacher_pattern(teacher, lt)
                if w["laid"] > 0 or self.attention_target == "mixed_qk":
                    sq_a, sk_a, tq_a, tk_a = self._shared(ls, sq, sk, tq, tk)
                    mq, mk = align.mixer(tq_a, tk_a)  # (B, Hs, S, D), (B, Hs_kv, S, D)
                if w["laid"] > 0:
                    laid.append(sum(align.terms(sq_a, sk_a, mq, mk, mask)))
                if w["attn"] > 0 and self.attention_target == "matched_heads":
                    mix = matched_mix(head_divergence(sq, sk, tq, tk, mask, rows, s_pat, t_pat, self.attn_loss.chunk_size))
                    attn.append(self.attn_loss(sq, sk, tq, tk, mask, progress, mix=mix, positions=positions,
                                               student_pattern=s_pat, target_pattern=t_pat, query_mask=rows))
                elif w["attn"] > 0 and self.attention_target == "teacher_heads":
                    mix = attention_mix(align.mixer.q.effective(), head_energy(tq, mask), self.attn_mix_power)  # (Hs, Ht), detached
                    attn.append(self.attn_loss(sq, sk, tq, tk, mask, progress, mix=mix, positions=positions,
                                               student_pattern=s_pat, target_pattern=t_pat, query_mask=rows))
                elif w["attn"] > 0:
                    attn.append(self.attn_loss(sq, sk, mq, mk, mask, progress, positions=positions,
                                               student_pattern=s_pat, target_pattern=t_pat, query_mask=rows))
            # Eq. 7 sums over the aligned (layer, head) pairs; so do we over layer pairs.
            if laid:
                terms["laid"] = torch.stack(laid).sum()
            if attn:
                terms["attn"] = torch.stack(attn).sum()
        terms["total"] = sum(w[name] * value for name, value in terms.items())
        if health:
            self.last_health = self._health(terms, rec, teacher, mask, patterns)
        return terms

    def _health(self, terms, rec, teacher: TeacherOutputs, mask, patterns) -> dict:
        """Telemetry of this micro-batch (trainers.health); the graph is kept for the backward.
        Activation part always; the parameter part (gradient norms, mixers, gains) if health_params."""
        out: dict = {}
        for ls, lt in self.layer_pairs:
            values = hl.layer_health(rec.tensors[site_name(ls, "q_rot")], rec.tensors[site_name(ls, "k_rot")],
                                     teacher.q[lt], teacher.k[lt], mask, self.attn_loss.chunk_size,
                                     patterns[ls], self._teacher_pattern(teacher, lt))
            for name, value in values.items():
                out.setdefault(name, {})[str(ls)] = round(value, 6)
        if not self.health_params:
            return out
        qk = [rec.tensors[site_name(ls, site)] for ls in self.student_layers for site in ("q_rot", "k_rot")]
        out.update(hl.grad_norms(terms, self.weights, qk))
        for align, (ls, _) in zip(self.align, self.layer_pairs):
            for name, value in hl.mixer_health(align.mixer).items():
                out.setdefault(name, {})[str(ls)] = value
        if self.gain is not None:
            out.update(hl.gain_summary(self.gain))
        return out
