"""Chunked distance profile: equals one built from eager attention weights; chunk-size invariant."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from laid.data.render import sample_image
from laid.model.families import AttentionPattern, family_of
from laid.model.loading import load_model, load_processor
from laid.model.prompting import Example, encode_batch
from laid_analysis import tokens
from laid_analysis.distance import DistanceProfile, distance_sums
from laid.model.hooks import record_qk, text_decoder

CAUSAL_16 = AttentionPattern.causal(16)  # the planted tensors' layer: plain causal, head_dim 16


@pytest.fixture(scope="module")
def student_7b(random_zoo):
    # GQA (4 query heads / 2 KV heads): the profile must pair each query head with its KV head.
    path = random_zoo["tiny-7b"]
    return path, load_processor(path)


def _batch(processor, sizes, seed=1):
    rng = np.random.default_rng(seed)
    return encode_batch(processor, [Example([sample_image(rng)[0] for _ in range(n)], "Is there a blue square?") for n in sizes])


def _reference_from_weights(weights, logits, real, qsel, ksel, positions=None):
    """Direct per-pair loops over full (H, S, S) matrices: the definition, no chunking.
    positions (B, S): distance = position difference; None: difference of the real tokens' ranks."""
    n_heads = weights.shape[1]
    S = weights.shape[-1]
    attn = np.zeros((n_heads, S)); logit = np.zeros((n_heads, S)); count = np.zeros(S)
    for b in range(weights.shape[0]):
        pos = np.flatnonzero(real[b])  # real tokens in order
        for a, i in enumerate(pos):
            if not qsel[b, i]:
                continue
            for c, j in enumerate(pos[: a + 1]):
                if ksel[b, j]:
                    d = a - c if positions is None else positions[b, i] - positions[b, j]
                    attn[:, d] += weights[b, :, i, j]
                    logit[:, d] += logits[b, :, i, j]
                    count[d] += 1
    with np.errstate(invalid="ignore"):
        return attn / count, logit / count, count


@pytest.mark.parametrize("queries,keys,units", [("all", "all", "tokens"), ("question", "image", "positions"),
                                                ("all", "all", "positions")])
def test_chunked_profile_equals_eager_attention(student_7b, queries, keys, units):
    path, processor = student_7b
    batch = _batch(processor, sizes=(2, 3))  # left padding on row 0
    eager = load_model(path, device="cpu", attn_implementation="eager")
    with torch.no_grad():
        out = eager(**batch, output_attentions=True)
    sdpa = load_model(path, device="cpu")
    image_id = sdpa.config.image_token_id
    real = tokens.real_token_mask(batch)
    qsel, ksel = tokens.select(batch, queries, image_id), tokens.select(batch, keys, image_id)
    positions = tokens.rope_positions(sdpa, batch)[0] if units == "positions" else None  # the model's temporal ids
    profile = DistanceProfile(chunk_size=5, units=units)
    _, layers = text_decoder(sdpa)
    with torch.no_grad(), record_qk(sdpa, sites=("q_rot", "k_rot")) as rec:
        sdpa(**batch)
    for i in range(len(layers)):
        q, k = rec.tensors[f"layers.{i}.attn.q_rot"], rec.tensors[f"layers.{i}.attn.k_rot"]
        profile.update(i, q, k, layers[i].self_attn.scaling, real, qsel, ksel, positions,
                       pattern=family_of(sdpa).attention_pattern(sdpa, i, batch))
    ds = profile.to_dataset()
    assert ds["distance"].attrs["units"] == units
    for i in range(len(layers)):
        q, k = rec.tensors[f"layers.{i}.attn.q_rot"], rec.tensors[f"layers.{i}.attn.k_rot"]
        k_full = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        logits = (q @ k_full.transpose(-1, -2) * layers[i].self_attn.scaling).numpy()  # (B, H, S, S) reference
        attn, logit, count = _reference_from_weights(out.attentions[i].numpy(), logits, real.numpy(), qsel.numpy(), ksel.numpy(),
                                                     None if positions is None else positions.numpy())
        n = ds.sizes["distance"]
        np.testing.assert_array_equal(ds["pair_count"].values, count[:n])
        assert count[n:].sum() == 0
        np.testing.assert_allclose(ds["attention"].sel(layer=i).values, attn[:, :n], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(ds["logit"].sel(layer=i).values, logit[:, :n], rtol=1e-5, atol=1e-6)
    if keys == "image":
        assert ds["pair_count"].values[0] == 0  # question tokens come after every image token
    if units == "positions":  # an image's tokens share one temporal id: fewer positions than tokens
        assert ds.sizes["distance"] < int(real.sum(1).max())


def test_statistics_invariant_to_chunk_size():
    torch.manual_seed(0)
    q, k = torch.randn(4, 37, 16), torch.randn(2, 37, 16)
    qm, km = torch.rand(37) < 0.7, torch.rand(37) < 0.6
    ref = distance_sums(q, k, 0.25, qm, km, chunk_size=37, pattern=CAUSAL_16)
    for chunk in (1, 3, 8, 100):
        got = distance_sums(q, k, 0.25, qm, km, chunk_size=chunk, pattern=CAUSAL_16)
        for a, b in zip(ref, got):  # fp32 matmuls round differently per block shape: 1e-5, not bits
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # Attention of every query sums to 1 over its causal keys: with all pairs counted the total
    # attention mass equals the number of queries, and the uniform baseline's too.
    attn, _, _, uniform, count = distance_sums(q, k, 0.25, pattern=CAUSAL_16)
    torch.testing.assert_close(attn.sum(-1), torch.full((4,), 37.0, dtype=torch.float64))
    torch.testing.assert_close(uniform.sum(), torch.tensor(37.0, dtype=torch.float64))
    assert count.tolist() == list(range(37, 0, -1))  # S - d pairs at distance d


def test_profile_accumulates_sequences_of_different_length():
    torch.manual_seed(1)
    prof = DistanceProfile()
    for seq in (5, 9):
        q, k = torch.randn(1, 2, seq, 8), torch.randn(1, 1, seq, 8)
        prof.update(0, q, k, 8**-0.5, torch.ones(1, seq, dtype=torch.bool), pattern=AttentionPattern.causal(8))
    ds = prof.to_dataset()
    assert ds.sizes["distance"] == 9
    assert ds["pair_count"].values.tolist() == [14, 12, 10, 8, 6, 4, 3, 2, 1]
    assert ds["attention"].sel(head=1).plot is not None  # labelled dims, plot-ready


def test_pair_spectrum_matches_the_models_own_rotated_logits(student_7b):
    """a_p from the model's pre-RoPE Q/K reproduces the mean logit that the model's own RoPE gives
    a key placed delta text positions before a query (all three M-RoPE axes shifted alike)."""
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen

    from laid_analysis.pair_spectrum import PairMoments
    from laid_analysis.rope_usage import rotary_pairs

    path, processor = student_7b
    model = load_model(path, device="cpu")
    batch = _batch(processor, sizes=(2,))
    image_id = model.config.image_token_id
    qsel, ksel = tokens.select(batch, "question", image_id), tokens.select(batch, "image", image_id)
    with torch.no_grad(), record_qk(model, layers=[2], sites=("q", "k")) as rec:
        model(**batch)
    q, k = rec.tensors["layers.2.attn.q"], rec.tensors["layers.2.attn.k"]
    scaling = text_decoder(model)[1][2].self_attn.scaling
    moments = PairMoments()
    moments.update(2, q, k, qsel, ksel)
    deltas = np.array([0, 1, 5, 40, 300])
    ds = moments.to_dataset(rotary_pairs(model), {2: scaling}, deltas)
    text_model, _ = text_decoder(model)
    qs, ks = q[0][:, qsel[0]], k[0][:, ksel[0]]  # (H, Nq, D), (H_kv, Nk, D)
    for delta in deltas:
        qpos = torch.full((3, 1, qs.shape[1]), 1000 + int(delta))
        kpos = torch.full((3, 1, ks.shape[1]), 1000)
        cq, sq = text_model.rotary_emb(qs[None], qpos)
        ck, sk = text_model.rotary_emb(ks[None], kpos)
        q_rot = qwen.apply_rotary_pos_emb(qs[None], qs[None], cq, sq)[0][0]
        k_rot = qwen.apply_rotary_pos_emb(ks[None], ks[None], ck, sk)[0][0]
        k_rot = k_rot.repeat_interleave(q_rot.shape[0] // k_rot.shape[0], dim=0)
        measured = (q_rot @ k_rot.transpose(-1, -2) * scaling).mean((-1, -2)).double()  # (H,)
        np.testing.assert_allclose(ds["rope_profile"].sel(layer=2, distance=delta).values, measured.numpy(), rtol=1e-4, atol=1e-5)
