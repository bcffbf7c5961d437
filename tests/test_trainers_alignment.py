"""Planted problems with known answers for the LAid objective (issue 12, 5 a-d), on synthetic tensors.

Each property is checked for the default (alignment "cosine", attention target "teacher_heads")
and, where the old degenerate form fails it, the test asserts that it fails: that is what shows
these tests can fail for a wrong method, not only for a wrong implementation.
"""

from __future__ import annotations

import math

import pytest
import torch
from pattern_helpers import causal

from trainers.head_mixer import HeadMixer, attention_mix, effective_weight, row_entropy
from trainers.losses import AttentionMatchingLoss, DistanceWeighting, QKAlignmentLoss
from trainers.losses.attention_matching import max_distance, pair_distance

torch.set_num_threads(1)
B, S, D, HS, HS_KV, HT, HT_KV = 2, 24, 8, 4, 2, 8, 4


def planted(seed=0, noise=0.3):
    """Teacher Q/K with unequal head scales, a signed W*, and student Q/K = W* teacher + noise."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)
    tq = r(B, HT, S, D) * (0.5 + torch.rand(1, HT, 1, 1, generator=g) * 2)
    tk = r(B, HT_KV, S, D) * (0.5 + torch.rand(1, HT_KV, 1, 1, generator=g) * 2)
    wq, wk = r(HS, HT), r(HS_KV, HT_KV)
    sq = torch.einsum("st,btnd->bsnd", wq, tq)
    sk = torch.einsum("st,btnd->bsnd", wk, tk)
    sq = sq + noise * sq.std() * r(*sq.shape)
    sk = sk + noise * sk.std() * r(*sk.shape)
    return sq, sk, tq, tk, wq, wk


def row_cosine(w, w_star):
    return torch.nn.functional.cosine_similarity(w, w_star, dim=-1)


def train_gains_and_mixers(form, steps=300, seed=0):
    """Student = per-(head, rotary pair) gain x planted Q/K (the RoPE gain's freedom); the gains
    (lr 1e-2) and the mixers (lr 3e-2) trained on the alignment alone. Returns (loss module, norm
    ratio of the student's Q and K after / before, planted W*_Q, W*_K)."""
    sq, sk, tq, tk, wq, wk = planted(seed)
    loss = QKAlignmentLoss(HS, HT, HS_KV, HT_KV, form=form)  # mixers start at the overlap average
    g_q = torch.ones(1, HS, 1, D // 2, requires_grad=True)
    g_k = torch.ones(1, HS_KV, 1, D // 2, requires_grad=True)
    full = lambda g: torch.cat([g, g], dim=-1)  # rotary pair p = dims p and p + D/2
    opt = torch.optim.Adam([{"params": [g_q, g_k], "lr": 1e-2}, {"params": loss.parameters(), "lr": 3e-2}])
    for _ in range(steps):
        opt.zero_grad()
        loss(sq * full(g_q), sk * full(g_k), tq, tk).backward()
        opt.step()
    with torch.no_grad():
        ratio_q = (sq * full(g_q)).norm() / sq.norm()
        ratio_k = (sk * full(g_k)).norm() / sk.norm()
    return loss, float(ratio_q), float(ratio_k), wq, wk


# ---------------------------------------------------------------- (a) planted mix recovered, no shrink
def test_a_cosine_form_recovers_the_planted_mix_and_keeps_the_norms():
    loss, ratio_q, ratio_k, wq, wk = train_gains_and_mixers("cosine")
    assert row_cosine(loss.mixer.q.effective(), wq).min() >= 0.95
    assert row_cosine(loss.mixer.k.effective(), wk).min() >= 0.95
    assert ratio_q >= 0.95 and ratio_k >= 0.95  # the student's Q/K did not shrink


def test_a_paper_form_shrinks_the_student_and_the_mixers():
    """The literal Eq. 7 fails (a): with a scale it can move (the RoPE gain), the student's Q/K and
    the mixers decay together, because shrinking lowers the squared error (see qk_alignment)."""
    loss, ratio_q, ratio_k, wq, wk = train_gains_and_mixers("paper")
    assert ratio_q < 0.9 and ratio_k < 0.9
    # The least-squares mix of the untrained student is W* itself; the mixers end well below it.
    assert bool((loss.mixer.q.effective().norm(dim=-1) < 0.9 * wq.norm(dim=-1)).all())
    assert bool((loss.mixer.k.effective().norm(dim=-1) < 0.9 * wk.norm(dim=-1)).all())


# ---------------------------------------------------------------- (b) the zero point is not a solution
def test_b_zero_student_and_zero_mix_lose_against_the_planted_solution():
    sq, sk, tq, tk, wq, wk = planted()
    for form in ("cosine", "paper"):
        loss = QKAlignmentLoss(HS, HT, HS_KV, HT_KV, form=form)
        with torch.no_grad():
            loss.mixer.q.weight.copy_(wq)
            loss.mixer.k.weight.copy_(wk)
            at_plant = loss(sq, sk, tq, tk).item()
            loss.mixer.q.weight.zero_()
            loss.mixer.k.weight.zero_()
            at_zero = loss(torch.zeros_like(sq), torch.zeros_like(sk), tq, tk).item()
        if form == "cosine":
            assert at_zero == pytest.approx(2.0) and at_plant < 0.2 < at_zero  # zero: cosine 0 on Q and K
        else:  # the degenerate form: the all-zero point is a global minimum, below the planted solution
            assert at_zero == 0.0 and at_plant > 0.05


def test_b_unit_rows_cannot_represent_the_zero_mix():
    w = torch.randn(3, 5) * 1e-6
    assert torch.allclose(effective_weight(w, "unit").norm(dim=-1), torch.ones(3))
    assert torch.equal(effective_weight(w, "free"), w)


# ---------------------------------------------------------------- (c) q-up / k-down invariance
def test_c_attention_preserving_rescaling_leaves_the_cosine_loss_unchanged():
    sq, sk, tq, tk, _, _ = planted()
    c = torch.tensor([0.2, 5.0])[None, :, None, None]  # per KV head; its query heads share it
    sq2, sk2 = sq * c.repeat_interleave(HS // HS_KV, dim=1), sk / c
    logits = lambda q, k: q @ k.repeat_interleave(HS // HS_KV, dim=1).mT
    assert torch.allclose(logits(sq2, sk2), logits(sq, sk), rtol=1e-4, atol=1e-4)  # attention unchanged
    for form, invariant in (("cosine", True), ("paper", False)):
        loss = QKAlignmentLoss(HS, HT, HS_KV, HT_KV, form=form)
        a, b = loss(sq, sk, tq, tk).item(), loss(sq2, sk2, tq, tk).item()
        assert (a == pytest.approx(b, rel=1e-5)) == invariant


def test_c_cosine_form_exerts_no_force_on_a_heads_overall_scale():
    """sum_p g_p dL/dg_p = 0 per head: the alignment cannot push a head's gains down (paper form: > 0)."""
    sq, sk, tq, tk, wq, wk = planted()
    forces = {}
    for form in ("cosine", "paper"):
        loss = QKAlignmentLoss(HS, HT, HS_KV, HT_KV, form=form)
        loss.init_mixers_least_squares_(sq, sk, tq, tk)
        g = torch.ones(1, HS, 1, D, requires_grad=True)
        loss(sq * g, sk, tq, tk).backward()
        forces[form] = (g * g.grad).sum(dim=(0, 2, 3))  # (HS,) d loss / d log(scale of head h)
    assert forces["cosine"].abs().max() < 1e-6
    assert bool((forces["paper"] > 1e-4).all())  # shrinking every head lowers the literal Eq. 7


# ---------------------------------------------------------------- (d) attention matching target
def dense_teacher_reference(sq, sk, tq, tk, mix, mask, positions, alpha, power=1.0):
    """Row by row: student attention vs the convex mix of the teacher's own per-head maps, weights
    from the max-axis position difference; written independently of the module."""
    b, h, s, d = sq.shape
    g_s, g_t = h // sk.shape[1], tq.shape[1] // tk.shape[1]
    total, rows = 0.0, 0
    for bi in range(b):
        keys = mask[bi].nonzero().squeeze(-1)
        pos = positions[:, bi]  # (A, S)
        d_max = (pos[:, keys].max(-1).values - pos[:, keys].min(-1).values).max()
        for hi in range(h):
            for i in keys.tolist():
                js = keys[keys <= i]
                q = torch.softmax(sk[bi, hi // g_s, js] @ sq[bi, hi, i] / math.sqrt(d), -1)
                p = sum(mix[hi, j] * torch.softmax(tk[bi, j // g_t, js] @ tq[bi, j, i] / math.sqrt(d), -1) for j in range(tq.shape[1]))
                dist = (pos[:, i : i + 1] - pos[:, js]).abs().max(0).values.float()
                w = 1 + alpha * (dist / d_max).pow(power)
                total = total + (w * (p * (p.log() - q.log()) - p + q)).sum()
                rows += 1
    return total / rows


def mrope_like_positions(b, s, seed=0):
    """(3, B, S) ids like Qwen2.5-VL's: text runs with equal axes, 2x2 'images' with fixed t."""
    pos = torch.zeros(3, b, s, dtype=torch.long)
    for bi in range(b):
        p, i = 0, 0
        while i < s:
            if i % 7 == 2 and i + 4 <= s:  # an image of 4 tokens
                for r in range(4):
                    pos[:, bi, i + r] = torch.tensor([p, p + r // 2, p + r % 2])
                p, i = p + 2, i + 4
            else:
                pos[:, bi, i] = p
                p, i = p + 1, i + 1
    return pos


@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_d_teacher_target_chunked_equals_dense_reference(chunk):
    g = torch.Generator().manual_seed(1)
    sq, sk = torch.randn(2, HS, 13, D, generator=g), torch.randn(2, HS_KV, 13, D, generator=g)
    tq, tk = torch.randn(2, HT, 13, D, generator=g), torch.randn(2, HT_KV, 13, D, generator=g)
    mix = attention_mix(torch.randn(HS, HT, generator=g))
    mask = torch.stack([torch.arange(13) >= 13 - n for n in (13, 9)])
    pos = mrope_like_positions(2, 13)
    weighting = DistanceWeighting(alpha_start=0.0, alpha_end=2.0, power=1.5)
    s_ref = [x.clone().requires_grad_(True) for x in (sq, sk)]
    ref = dense_teacher_reference(*s_ref, tq, tk, mix, mask, pos, alpha=weighting.alpha(0.5), power=1.5)
    ref.backward()
    s_got = [x.clone().requires_grad_(True) for x in (sq, sk)]
    got = AttentionMatchingLoss(weighting, chunk_size=chunk)(*s_got, tq, tk, mask, 0.5, mix=mix, positions=pos, **causal(tq))
    got.backward()
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-7)
    for a, r in zip(s_got, s_ref):
        assert torch.allclose(a.grad, r.grad, rtol=1e-4, atol=1e-7)


def test_d_mrope_distance_is_the_max_axis_difference():
    pos = mrope_like_positions(1, 12)
    d = pair_distance(pos[:, :, :], pos)  # (1, 12, 12)
    img = [2, 3, 4, 5]  # tokens of the first image: t = 2, (h, w) = 2 + (r // 2, r % 2)
    assert d[0, img[1], img[0]].item() == 1  # neighbouring patches: w differs by 1, t and h equal
    assert d[0, img[3], img[0]].item() == 1  # diagonal patch: Chebyshev distance 1
    assert d[0, 6, img[0]].item() == pos[0, 0, 6].item() - 2  # text query vs image key: temporal difference
    assert max_distance(pos, torch.ones(1, 12, dtype=torch.bool)).item() < 11  # fewer positions than tokens


def test_d_zero_when_the_student_attends_like_the_mixed_teacher():
    g = torch.Generator().manual_seed(2)
    tq, tk = torch.randn(1, HT, 10, D, generator=g), torch.randn(1, HT_KV, 10, D, generator=g)
    tq[:, 1] = tq[:, 0]  # teacher heads 0 and 1 (KV group 0) attend alike
    loss = AttentionMatchingLoss(DistanceWeighting(alpha_end=3.0), chunk_size=3)
    # Student: 2 query heads on 1 KV head, copies of teacher heads 0 and 1 (both read KV head 0).
    sq, sk = tq[:, [0, 1]].clone(), tk[:, [0]].clone()
    one_hot = torch.tensor([[1.0] + [0.0] * (HT - 1), [0.0, 1.0] + [0.0] * (HT - 2)])
    assert loss(sq, sk, tq, tk, progress=1.0, mix=one_hot, **causal(tq)).item() == pytest.approx(0.0, abs=1e-6)
    # A genuine mix of two heads whose maps are equal: still the same attention, still zero.
    w = torch.zeros(2, HT)
    w[:, 0] = w[:, 1] = 1.0
    mix = attention_mix(effective_weight(w, "unit"))
    assert torch.allclose(mix[:, :2], torch.full((2, 2), 0.5))
    assert loss(sq, sk, tq, tk, progress=1.0, mix=mix, **causal(tq)).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(sq, sk.flip(2), tq, tk, progress=1.0, mix=mix, **causal(tq)).item() > 1e-3  # and positive otherwise


@pytest.mark.parametrize("target", ["teacher_heads", "mixed_qk"])
def test_d_target_does_not_move_when_the_student_trains(target):
    """Student Q/K and the mixers all in the optimizer, attention matching alone: with the teacher's
    own maps the mixers get no gradient and the target stays put; the ablation's target chases the student."""
    sq, sk, tq, tk, _, _ = planted(seed=3)
    mixer_q, mixer_k = HeadMixer(HS, HT), HeadMixer(HS_KV, HT_KV)
    loss = AttentionMatchingLoss(DistanceWeighting(alpha_end=1.0), chunk_size=8)
    student = [sq.clone().requires_grad_(True), sk.clone().requires_grad_(True)]
    opt = torch.optim.Adam([*student, mixer_q.weight, mixer_k.weight], lr=1e-2)
    w0 = (mixer_q.effective().detach().clone(), mixer_k.effective().detach().clone())
    values = []
    for _ in range(40):
        opt.zero_grad()
        if target == "teacher_heads":
            value = loss(*student, tq, tk, progress=0.5, mix=attention_mix(mixer_q.effective()), **causal(tq))
        else:
            value = loss(*student, mixer_q(tq), mixer_k(tk), progress=0.5, **causal(tq))
        value.backward()
        opt.step()
        values.append(value.item())
    moved = max((mixer_q.effective() - w0[0]).abs().max().item(), (mixer_k.effective() - w0[1]).abs().max().item())
    assert values[-1] < values[0]  # the student learns either way
    if target == "teacher_heads":
        assert mixer_q.weight.grad is None and mixer_k.weight.grad is None and moved == 0.0
    else:
        assert moved > 1e-3  # the ablation moves its own target


def test_attention_mix_rows_are_convex_and_entropy_bounds():
    g = torch.Generator().manual_seed(5)
    w, e = torch.randn(3, 5, generator=g), torch.rand(5, generator=g) + 0.1
    mix = attention_mix(w, e)
    assert bool((mix >= 0).all()) and torch.allclose(mix.sum(-1), torch.ones(3))
    assert torch.allclose(mix, (w**2 * e) / (w**2 * e).sum(-1, keepdim=True))  # energy shares
    sharp = attention_mix(w, e, power=100.0)  # -> the dominant teacher head, without overflow
    assert torch.allclose(sharp, torch.nn.functional.one_hot((w**2 * e).argmax(-1), 5).float(), atol=1e-3)
    assert bool((row_entropy(attention_mix(w, e, power=3.0)) < row_entropy(mix)).all())
    ent = row_entropy(attention_mix(torch.eye(4)))
    assert torch.allclose(ent, torch.zeros(4), atol=1e-6)
    assert row_entropy(attention_mix(torch.ones(1, 4))).item() == pytest.approx(math.log(4))


def test_norm_monitor_warns_once_when_the_smoothed_ratio_falls_below_the_fraction(caplog):
    from trainers.health import NormMonitor

    monitor = NormMonitor(0.9, window=2)
    rec = lambda q, k=1.0: {"q_norm_ratio": {"2": q}, "k_norm_ratio": {"2": k}}
    assert [monitor.check(i, rec(q)) for i, q in enumerate([2.0, 2.0, 2.0, 1.7])] == [None] * 4  # mean 1.85: within 10%
    with caplog.at_level("WARNING"):
        text = monitor.check(5, rec(1.5))  # last two: mean 1.6 < 0.9 x 2.0
    assert text.count("\n") == 0 and "layer 2 q_norm_ratio 1.600" in text and "shrinking" in caplog.text
    assert "k_norm_ratio" not in text
    assert monitor.check(6, rec(1.0)) is None  # once per layer and Q/K
    history = [{"step": i, **rec(q)} for i, q in enumerate([2.0, 2.0, 1.6])]
    resumed = NormMonitor.from_log(history, 0.9, window=2)
    assert resumed.check(4, rec(1.6)) is not None  # compares with the run's logged start


@pytest.mark.parametrize("power, shrinks", [(1.0, True), (30.0, False)])
def test_a_flat_mix_target_pulls_the_student_gain_down_a_sharp_one_does_not(power, shrinks):
    """Two teacher heads attend to different keys; the student head is a copy of the first with a
    trainable logit gain. Against the energy-share mix of both maps (w = [1, 0.9]) the gain falls
    (the target is flatter than either head); with attn_mix_power 30 the target is the dominant
    head's own map and the gain stays."""
    g = torch.Generator().manual_seed(4)
    s, d = 16, 8
    tk = torch.randn(1, 1, s, d, generator=g) * 2
    tq = torch.randn(1, 2, s, d, generator=g) * 2
    mix = attention_mix(effective_weight(torch.tensor([[1.0, 0.9]]), "unit"), power=power)
    gain = torch.ones((), requires_grad=True)
    loss = AttentionMatchingLoss(DistanceWeighting(alpha_end=0.0), chunk_size=8)
    opt = torch.optim.Adam([gain], lr=2e-2)
    for _ in range(60):
        opt.zero_grad()
        loss(tq[:, :1] * gain, tk, tq, tk, mix=mix, **causal(tq)).backward()
        opt.step()
    assert (gain.item() < 0.9) == shrinks


def test_direction_only_keeps_the_value_and_projects_the_gradient_off_each_vector():
    from trainers.losses.attention_matching import direction_only

    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 5, D, generator=g, requires_grad=True)
    y = direction_only(x)
    assert torch.allclose(y, x)
    (y * torch.randn(y.shape, generator=g)).sum().backward()
    radial = (x.grad * x).sum(-1)  # (B, H, S): the gradient's component along each vector
    assert radial.abs().max().item() < 1e-5 and x.grad.abs().max().item() > 1e-2


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("direction, shrinks", [(False, True), (True, False)])
def test_a_direction_only_attention_matching_cannot_flatten_the_student_by_shrinking(optimizer, direction, shrinks):
    """The planted flattening problem: the student's query head starts as a copy of teacher head 0
    and the target is the flat energy-share mix of two heads that attend to different keys. With
    plain gradients (`attn_grad: full`, the ablation) the loss is lowered by shrinking the query
    (norm < 0.9x); with direction-only gradients (the default) the norm holds and the loss still
    falls, by turning the query instead."""
    g = torch.Generator().manual_seed(4)
    s = 16
    tk = torch.randn(1, 1, s, D, generator=g) * 2
    tq = torch.randn(1, 2, s, D, generator=g) * 2
    mix = attention_mix(effective_weight(torch.tensor([[1.0, 0.9]]), "unit"))
    q = tq[:, :1].clone().requires_grad_(True)
    loss = AttentionMatchingLoss(DistanceWeighting(alpha_end=0.0), chunk_size=8, direction_only=direction)
    opt = torch.optim.SGD([q], lr=2.0) if optimizer == "sgd" else torch.optim.Adam([q], lr=5e-2)
    n0, values = q.detach().norm().item(), []
    for _ in range(60):
        opt.zero_grad()
        value = loss(q, tk, tq, tk, mix=mix, **causal(tq))
        value.backward()
        opt.step()
        values.append(value.item())
    ratio = q.detach().norm().item() / n0
    assert values[-1] < 0.9 * values[0]  # the student learns either way
    assert (ratio < 0.9) == shrinks, ratio
    if direction:
        assert ratio > 0.97
