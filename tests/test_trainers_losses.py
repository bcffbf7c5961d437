"""LAid loss modules and head mixers on tensors: known values, invariances, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pattern_helpers import causal as causal_patterns

from trainers.head_mixer import HeadMixer, QKMixer, overlap_init
from trainers.losses import (
    AttentionMatchingLoss,
    DistanceWeighting,
    KLDistillationLoss,
    QKAlignmentLoss,
    SFTLoss,
    answer_logit_mask,
)

torch.set_num_threads(1)


def left_padded_mask(lengths, s):
    return torch.stack([torch.arange(s) >= s - n for n in lengths])  # (B, S)


# ---------------------------------------------------------------- head mixer
def test_overlap_init_blocks_identity_and_gqa_shapes():
    assert torch.equal(overlap_init(4, 4), torch.eye(4))
    w = overlap_init(4, 8)  # each student head = mean of 2 contiguous teacher heads
    assert torch.allclose(w[1], torch.tensor([0, 0, 0.5, 0.5, 0, 0, 0, 0.0]))
    w = overlap_init(28, 40)  # Qwen2.5-VL 7B <- 32B query heads
    assert w.shape == (28, 40)
    assert torch.allclose(w.sum(1), torch.ones(28))
    assert torch.allclose(w.sum(0), torch.full((40,), 28 / 40))  # every teacher head used equally
    assert (w > 0).sum(1).max() <= 3  # contiguous blocks of at most 3 heads (1.43 wide)


def test_fit_least_squares_recovers_true_mix():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 8, 10, 16, generator=g)
    w_true = torch.randn(4, 8, generator=g)
    student = torch.einsum("st,btnd->bsnd", w_true, teacher)
    mixer = HeadMixer(4, 8)
    mask = left_padded_mask([10, 7], 10)
    student = student.masked_fill(~mask[:, None, :, None], 123.0)  # padding garbage must be ignored
    mixer.fit_least_squares_(student, teacher, mask)
    assert torch.allclose(mixer.weight, w_true, atol=1e-3)


def test_mixer_rejects_wrong_head_count():
    with pytest.raises(ValueError, match="teacher heads"):
        HeadMixer(2, 8)(torch.zeros(1, 4, 3, 8))


# ---------------------------------------------------------------- Q/K alignment (Eq. 7)
def qk_tensors(b=2, s=12, d=8, hs=4, hs_kv=2, ht=8, ht_kv=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)
    return r(b, hs, s, d), r(b, hs_kv, s, d), r(b, ht, s, d), r(b, ht_kv, s, d)


def test_qk_alignment_paper_form_zero_when_student_is_the_mix_and_known_value():
    sq, sk, tq, tk = qk_tensors()
    loss = QKAlignmentLoss(4, 8, 2, 4, form="paper")
    mq, mk = loss.mixer(tq, tk)
    assert loss(mq.detach(), mk.detach(), tq, tk).item() == pytest.approx(0.0, abs=1e-10)
    # Known value: student = mix + 1 on Q, + 2 on K -> mean squared error 1 + 4.
    assert loss(mq.detach() + 1, mk.detach() + 2, tq, tk).item() == pytest.approx(5.0, rel=1e-6)


def test_qk_alignment_cosine_form_known_values():
    sq, sk, tq, tk = qk_tensors()
    loss = QKAlignmentLoss(4, 8, 2, 4)  # the default: alignment "cosine"
    assert loss.form == "cosine" and loss.mixer.q.rows == "unit"
    mq, mk = (x.detach() for x in loss.mixer(tq, tk))
    assert loss(mq, mk, tq, tk).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(3 * mq, 0.2 * mk, tq, tk).item() == pytest.approx(0.0, abs=1e-6)  # any positive scale: still 0
    assert loss(-mq, -mk, tq, tk).item() == pytest.approx(4.0, rel=1e-6)  # opposite direction: 2 per Q and K
    # Orthogonal blocks (cosine 0): 1 per Q and K.
    flip = lambda x: torch.cat([x[..., 4:], -x[..., :4]], dim=-1)  # per token <x, flip(x)> = 0
    assert loss(flip(mq), flip(mk), tq, tk).item() == pytest.approx(2.0, abs=1e-5)
    assert torch.allclose(loss.mixer.q.effective().norm(dim=-1), torch.ones(4))  # unit rows


@pytest.mark.parametrize("form", ["cosine", "paper"])
def test_qk_alignment_ignores_padding_and_does_not_grow_with_length(form):
    sq, sk, tq, tk = qk_tensors(b=2, s=6)
    loss = QKAlignmentLoss(4, 8, 2, 4, form=form)
    mask = left_padded_mask([6, 4], 6)
    base = loss(sq, sk, tq, tk, mask)
    sq2 = sq.clone()
    sq2[1, :, :2] = 1e3  # padding positions of row 1
    assert torch.allclose(loss(sq2, sk, tq, tk, mask), base)
    # The same tokens twice over: a longer sequence with the same per-token error -> same loss.
    twice = [torch.cat([x, x], dim=2) for x in (sq, sk, tq, tk)]
    assert torch.allclose(loss(*twice, torch.cat([mask, mask], dim=1)), base, rtol=1e-6)


@pytest.mark.parametrize("form", ["cosine", "paper"])
def test_qk_alignment_gradients_reach_student_and_both_mixers(form):
    sq, sk, tq, tk = qk_tensors()
    sq.requires_grad_(True)
    sk.requires_grad_(True)
    loss = QKAlignmentLoss(4, 8, 2, 4, form=form)
    loss(sq, sk, tq, tk, left_padded_mask([12, 9], 12)).backward()
    for grad in (sq.grad, sk.grad, loss.mixer.q.weight.grad, loss.mixer.k.weight.grad):
        assert grad is not None and grad.abs().sum() > 0
    assert sq.grad[1, :, :3].abs().sum() == 0  # no gradient into padding


# ---------------------------------------------------------------- attention matching
def dense_reference(sq, sk, tq, tk, mask, alpha, power=1.0):
    """Row-by-row weighted generalised KL over the visible keys, written independently of the module."""
    b, h, s, d = sq.shape
    g = h // sk.shape[1]
    total, rows = 0.0, 0
    for bi in range(b):
        keys = mask[bi].nonzero().squeeze(-1)  # valid positions (left padding: contiguous)
        n = len(keys)
        for hi in range(h):
            for i in keys.tolist():
                js = keys[keys <= i]
                q = torch.softmax(sk[bi, hi // g, js] @ sq[bi, hi, i] / math.sqrt(d), -1)
                p = torch.softmax(tk[bi, hi // g, js] @ tq[bi, hi, i] / math.sqrt(d), -1)
                w = 1 + alpha * ((i - js).float() / (n - 1)).pow(power)
                total = total + (w * (p * (p.log() - q.log()) - p + q)).sum()
                rows += 1
    return total / rows


@pytest.mark.parametrize("chunk", [1, 3, 5, 64])
def test_attention_matching_chunked_equals_dense_reference(chunk):
    b, h, h_kv, s, d = 2, 4, 2, 11, 8
    g = torch.Generator().manual_seed(1)
    sq, tq = torch.randn(b, h, s, d, generator=g), torch.randn(b, h, s, d, generator=g)
    sk, tk = torch.randn(b, h_kv, s, d, generator=g), torch.randn(b, h_kv, s, d, generator=g)
    mask = left_padded_mask([11, 7], s)
    weighting = DistanceWeighting(alpha_start=0.0, alpha_end=2.0, power=1.5)
    leaves = [x.clone().requires_grad_(True) for x in (sq, sk, tq, tk)]
    ref = dense_reference(*leaves, mask, alpha=weighting.alpha(0.5), power=1.5)
    ref.backward()
    got_leaves = [x.clone().requires_grad_(True) for x in (sq, sk, tq, tk)]
    got = AttentionMatchingLoss(weighting, chunk_size=chunk)(*got_leaves, mask, progress=0.5, **causal_patterns(sq))
    got.backward()
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-7)
    for a, r in zip(got_leaves, leaves):
        assert torch.allclose(a.grad, r.grad, rtol=1e-4, atol=1e-7)


def test_attention_matching_with_uniform_weights_is_the_attention_kl():
    b, h, s, d = 1, 2, 6, 4
    g = torch.Generator().manual_seed(2)
    sq, sk, tq, tk = (torch.randn(b, h, s, d, generator=g) for _ in range(4))
    loss = AttentionMatchingLoss(DistanceWeighting(alpha_start=0, alpha_end=0), chunk_size=2)(sq, sk, tq, tk, **causal_patterns(sq))
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    logp = torch.log_softmax((tq @ tk.mT / 2).masked_fill(~causal, float("-inf")), -1)
    logq = torch.log_softmax((sq @ sk.mT / 2).masked_fill(~causal, float("-inf")), -1)
    kl = F.kl_div(logq, logp, log_target=True, reduction="none").nan_to_num(0).sum(-1)  # (B, H, S)
    assert loss.item() == pytest.approx(kl.mean().item(), rel=1e-5)


def test_attention_matching_query_rows_average_over_the_selected_rows_only():
    # Planted: the student's queries equal the teacher's on the last rows (the "question"), keys are
    # shared, earlier rows differ. Matching the question rows must see a perfect student; matching
    # all rows must not; the restricted loss is the mean attention KL over exactly those rows, and
    # rows left out get no gradient.
    b, h, s, d = 1, 2, 9, 4
    g = torch.Generator().manual_seed(4)
    tq, tk = torch.randn(b, h, s, d, generator=g), torch.randn(b, h, s, d, generator=g)
    rows = torch.arange(s)[None] >= 5  # (B, S)
    sq = torch.where(rows[:, None, :, None], tq, torch.randn(b, h, s, d, generator=g)).requires_grad_(True)
    loss_fn = AttentionMatchingLoss(DistanceWeighting(alpha_start=0, alpha_end=0), chunk_size=4)
    restricted = loss_fn(sq, tk, tq, tk, query_mask=rows, **causal_patterns(sq))
    assert restricted.item() == pytest.approx(0.0, abs=1e-6)
    assert loss_fn(sq, tk, tq, tk, **causal_patterns(sq)).item() > 1e-2
    other = torch.randn(b, h, s, d, generator=g)
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    logp = torch.log_softmax((tq @ tk.mT / 2).masked_fill(~causal, float("-inf")), -1)
    logq = torch.log_softmax((other @ tk.mT / 2).masked_fill(~causal, float("-inf")), -1)
    kl = F.kl_div(logq, logp, log_target=True, reduction="none").nan_to_num(0).sum(-1)  # (B, H, S)
    assert loss_fn(other, tk, tq, tk, query_mask=rows, **causal_patterns(sq)).item() == pytest.approx(kl[..., 5:].mean().item(), rel=1e-5)
    sq2 = other.clone().requires_grad_(True)
    loss_fn(sq2, tk, tq, tk, query_mask=rows, **causal_patterns(sq)).backward()
    assert sq2.grad[:, :, :5].abs().max() == 0 and sq2.grad[:, :, 5:].abs().max() > 0


def test_matched_heads_pair_student_heads_with_the_teacher_heads_that_attend_alike():
    # Planted: the student is the teacher with its heads in another order (Q and K permuted together).
    # Matching by attention finds the permutation and the loss is 0 there; the identity pairing (what a
    # mixer that missed the permutation gives) leaves a loss, which matching by function does not.
    from trainers.losses.attention_matching import head_divergence, matched_mix

    b, h, s, d = 2, 3, 9, 4
    g = torch.Generator().manual_seed(5)
    tq, tk = 2 * torch.randn(b, h, s, d, generator=g), 2 * torch.randn(b, h, s, d, generator=g)
    perm = [2, 0, 1]
    sq, sk = tq[:, perm], tk[:, perm]
    div = head_divergence(sq, sk, tq, tk, **causal_patterns(sq))
    assert div.shape == (h, h) and torch.all(div >= -1e-6)
    mix = matched_mix(div)
    assert mix.argmax(-1).tolist() == perm
    loss = AttentionMatchingLoss(DistanceWeighting(alpha_start=0, alpha_end=0))
    assert loss(sq, sk, tq, tk, mix=mix, **causal_patterns(sq)).item() == pytest.approx(0.0, abs=1e-5)
    assert loss(sq, sk, tq, tk, mix=torch.eye(h), **causal_patterns(sq)).item() > 0.05
    rows = torch.arange(s)[None].expand(b, s) >= 6  # compared on some rows only: the same pairing
    assert matched_mix(head_divergence(sq, sk, tq, tk, query_mask=rows, **causal_patterns(sq))).argmax(-1).tolist() == perm


def test_attention_matching_mixed_qk_ablation_zero_at_target_and_grads_reach_mixers():
    # The ablation target (softmax of mixed Q/K, mix=None): gradients reach the mixers through it.
    sq, sk, tq, tk = qk_tensors(hs=4, hs_kv=2, ht=8, ht_kv=4)
    mixer = QKMixer(4, 8, 2, 4)
    loss_fn = AttentionMatchingLoss(DistanceWeighting(alpha_end=5.0), chunk_size=4)
    mask = left_padded_mask([12, 8], 12)
    mq, mk = mixer(tq, tk)
    assert loss_fn(mq.detach(), mk.detach(), mq, mk, mask, progress=1.0, **causal_patterns(sq)).item() == pytest.approx(0.0, abs=1e-6)
    sq.requires_grad_(True)
    sk.requires_grad_(True)
    loss = loss_fn(sq, sk, mq, mk, mask, progress=1.0, **causal_patterns(sq))
    assert loss.item() > 0
    loss.backward()
    for grad in (sq.grad, sk.grad, mixer.q.weight.grad, mixer.k.weight.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_distance_weighting_schedule_and_growth():
    lin = DistanceWeighting(alpha_start=1.0, alpha_end=3.0, schedule="linear")
    cos = DistanceWeighting(alpha_start=1.0, alpha_end=3.0, schedule="cosine")
    assert [lin.alpha(t) for t in (0, 0.25, 1, 2)] == pytest.approx([1.0, 1.5, 3.0, 3.0])
    assert [cos.alpha(t) for t in (0, 0.5, 1)] == pytest.approx([1.0, 2.0, 3.0])
    assert cos.alpha(0.25) < lin.alpha(0.25)  # cosine starts slower
    d_max = torch.tensor([[[[8]]]])  # the farthest pair of the sequence
    for form in ("power", "log"):
        w = DistanceWeighting(alpha_end=2.0, form=form, schedule="constant").weights(torch.arange(9.0), d_max, 0.0)
        assert w[..., 0].item() == pytest.approx(1.0) and w[..., -1].item() == pytest.approx(3.0)
        assert bool((w.diff() > 0).all())
    with pytest.raises(ValueError, match="schedule"):
        DistanceWeighting(schedule="step")


def test_progress_shifts_emphasis_to_long_distances():
    # Error only at the farthest key of the last row: later progress weighs it more.
    s, d = 8, 4
    g = torch.Generator().manual_seed(3)
    tq, tk = torch.randn(1, 1, s, d, generator=g), torch.randn(1, 1, s, d, generator=g)
    sk = tk.clone()
    sk[0, 0, 0] += 1.0  # changes attention to key 0 (distance up to 7) only
    loss = AttentionMatchingLoss(DistanceWeighting(alpha_start=0, alpha_end=4), chunk_size=3)
    assert loss(tq, sk, tq, tk, progress=1.0, **causal_patterns(tq)) > loss(tq, sk, tq, tk, progress=0.0, **causal_patterns(tq)) > 0


# ---------------------------------------------------------------- KL + SFT (Eq. 8)
def test_kl_known_values_identical_and_two_token_case():
    kl = KLDistillationLoss(tau=1.0)
    z = torch.randn(3, 5, 7)
    assert kl(z, z).item() == pytest.approx(0.0, abs=1e-7)
    teacher = torch.tensor([[0.0, 0.0]])  # p = (1/2, 1/2)
    student = torch.tensor([[0.0, math.log(3.0)]])  # q = (1/4, 3/4)
    assert kl(student, teacher).item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)


def test_kl_temperature_scaling_mask_and_direction():
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(2, 4, 6, generator=g), torch.randn(2, 4, 6, generator=g)
    tau = 2.0
    assert KLDistillationLoss(tau)(s, t).item() == pytest.approx(tau**2 * KLDistillationLoss(1.0)(s / tau, t / tau).item(), rel=1e-6)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[0, 3] = mask[1, 2] = True
    expect = KLDistillationLoss(1.0)(torch.stack([s[0, 3], s[1, 2]]), torch.stack([t[0, 3], t[1, 2]]))
    assert KLDistillationLoss(1.0)(s, t, mask).item() == pytest.approx(expect.item(), rel=1e-6)
    ref = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="none").sum(-1).mean()
    assert KLDistillationLoss(1.0)(s, t).item() == pytest.approx(ref.item(), rel=1e-6)  # KL(teacher || student)


def test_kl_vocab_mismatch_uses_shared_ids_and_says_so(caplog):
    g = torch.Generator().manual_seed(5)
    student, teacher = torch.randn(3, 112, generator=g), torch.randn(3, 128, generator=g)  # tiny-3b vs tiny-32b
    kl = KLDistillationLoss(1.0)
    with caplog.at_level("WARNING"):
        value = kl(student, teacher)
    assert "shared token ids [0, 112)" in kl.vocab_note and "112" in caplog.text
    assert value.item() == pytest.approx(KLDistillationLoss(1.0)(student, teacher[:, :112]).item(), rel=1e-6)
    same = KLDistillationLoss(1.0)
    same(student, student)
    assert same.vocab_note is None
    # Renormalised over the shared range: the teacher's mass on padding rows does not count.
    t2 = teacher.clone()
    t2[:, 112:] += 5.0
    assert kl(student, t2).item() == pytest.approx(value.item(), rel=1e-6)


def test_sft_on_answer_tokens_and_answer_mask_shift():
    labels = torch.tensor([[-100, -100, 3, 1], [-100, -100, -100, 2]])
    mask = answer_logit_mask(labels)
    assert mask.tolist() == [[False, True, True, False], [False, False, True, False]]
    logits = torch.zeros(2, 4, 5)
    logits[0, 1, 3] = logits[0, 2, 1] = logits[1, 2, 2] = math.log(4.0)  # p(correct) = 4/8 = 1/2
    assert SFTLoss()(logits, labels).item() == pytest.approx(math.log(2.0), rel=1e-6)
    with pytest.raises(ValueError, match="no answer tokens"):
        SFTLoss()(logits, torch.full_like(labels, -100))


def test_losses_stay_fp32_under_bf16_autocast():
    sq, sk, tq, tk = qk_tensors()
    align = QKAlignmentLoss(4, 8, 2, 4)
    attn = AttentionMatchingLoss(chunk_size=5)
    mask = left_padded_mask([12, 9], 12)
    ref_attn = attn(sq, sk, *align.mixer(tq, tk), mask, progress=0.3, **causal_patterns(sq))
    ref_align = align(sq, sk, tq, tk, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got_attn = attn(sq, sk, *align.mixer(tq, tk), mask, progress=0.3, **causal_patterns(sq))
        got_align = align(sq, sk, tq, tk, mask)
    assert got_attn.dtype == torch.float32 and torch.allclose(got_attn, ref_attn, rtol=1e-6)
    assert torch.allclose(got_align, ref_align, rtol=1e-6)


@pytest.mark.parametrize("form", ["cosine", "paper"])
def test_least_squares_mixer_init_removes_the_explained_part(form):
    sq, sk, tq, tk = qk_tensors(s=20)
    align = QKAlignmentLoss(4, 8, 2, 4, form=form)
    g = torch.Generator().manual_seed(9)
    wq, wk = torch.randn(4, 8, generator=g), torch.randn(2, 4, generator=g)
    sq = torch.einsum("st,btnd->bsnd", wq, tq) + 0.1 * sq  # explained by a mix + small residual
    sk = torch.einsum("st,btnd->bsnd", wk, tk) + 0.1 * sk
    before = align(sq, sk, tq, tk)
    align.init_mixers_least_squares_(sq, sk, tq, tk)
    after = align(sq, sk, tq, tk)
    # Only the residual (variance 0.01 per element, Q + K) remains: MSE ~0.02, or 1 - cos ~0.01 per side.
    assert after < 0.03 and before > (1.0 if form == "paper" else 0.1)
