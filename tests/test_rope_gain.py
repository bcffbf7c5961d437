"""RoPE response gain on the tiny Qwen2.5-VL student: pairing convention, hooks, exact folding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

from laid.data.questions import single_needle_question
from laid.data.render import sample_image
from laid.model.loading import load_model, load_processor
from laid.model.prompting import Example, encode_batch
from trainers.rope_gain import RopeGain, fold_into_projections, pair_gain_to_dims
from zoo_helpers import zoo_text

torch.set_num_threads(1)


def haystack_batch(model_dir, sizes=(3, 5), seed=0):
    rng = np.random.default_rng(seed)
    examples = [
        Example([sample_image(rng)[0] for _ in range(n)], single_needle_question("red circle", "blue square"), "yes")
        for n in sizes
    ]
    return encode_batch(load_processor(model_dir), examples, with_answers=True)


def forward_logits(model, batch):
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return model(**inputs).logits


def random_gains(gains, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        gains.q.copy_(1 + 0.5 * torch.randn(gains.q.shape, generator=g))
        gains.k.copy_(1 + 0.5 * torch.randn(gains.k.shape, generator=g))


def test_pair_gain_commutes_with_mrope_only_in_rotate_half_pairing(random_zoo):
    model = load_model(random_zoo["tiny-7b"], device="cpu")
    batch = haystack_batch(random_zoo["tiny-7b"])
    pos, _ = model.model.get_rope_index(batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
                                        image_grid_thw=batch["image_grid_thw"], attention_mask=batch["attention_mask"])
    b, s = batch["input_ids"].shape
    x = torch.randn(b, 4, s, 32)
    cos, sin = model.model.language_model.rotary_emb(x, pos)  # real M-RoPE cos/sin (3-D positions)
    gain = 1 + torch.rand(4, 16)
    rot = lambda t: apply_rotary_pos_emb(t, t, cos, sin)[0]
    full = pair_gain_to_dims(gain)[None, :, None, :]  # pairs (p, p + D/2)
    assert torch.allclose(rot(x * full), rot(x) * full, atol=1e-5)
    interleaved = gain.repeat_interleave(2, dim=-1)[None, :, None, :]  # the other convention: (2p, 2p+1)
    assert not torch.allclose(rot(x * interleaved), rot(x) * interleaved, atol=1e-3)


def test_gains_start_as_identity_and_fold_exactly(random_zoo):
    model = load_model(random_zoo["tiny-7b"], device="cpu")
    batch = haystack_batch(random_zoo["tiny-7b"])
    with torch.no_grad():
        base = forward_logits(model, batch)
        gains = RopeGain.for_model(model)
        s = zoo_text("tiny-7b")
        pairs = s.hidden_size // s.num_attention_heads // 2
        assert gains.q.shape == (s.num_hidden_layers, s.num_attention_heads, pairs)
        assert gains.k.shape == (s.num_hidden_layers, s.num_key_value_heads, pairs)
        with gains.applied(model):
            assert torch.equal(forward_logits(model, batch), base)  # init 1 = no change at all
        random_gains(gains)
        with gains.applied(model):
            hooked = forward_logits(model, batch)
        assert not torch.allclose(hooked, base, atol=1e-3)
        assert torch.equal(forward_logits(model, batch), base)  # hooks gone after the block
        fold_into_projections(model, gains)
        folded = forward_logits(model, batch)
    assert torch.allclose(folded, hooked, atol=1e-5, rtol=1e-5)


def test_fold_refuses_while_attached_and_gradients_reach_gains(random_zoo):
    model = load_model(random_zoo["tiny-7b"], device="cpu")
    batch = haystack_batch(random_zoo["tiny-7b"], sizes=(2,))
    gains = RopeGain.for_model(model, layers=[-1])  # the mapped (last) layer only
    assert gains.layers == [2]
    random_gains(gains, seed=1)
    with gains.applied(model):
        with pytest.raises(RuntimeError, match="remove"):
            fold_into_projections(model, gains)
        out = model(**batch)  # labels in batch -> the model's own answer cross-entropy
        out.loss.backward()
    assert gains.q.grad is not None and gains.q.grad.abs().sum() > 0
    assert gains.k.grad is not None and gains.k.grad.abs().sum() > 0
