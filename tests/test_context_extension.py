"""YaRN and SelfExtend baselines on tiny Qwen2.5-VL models (with images)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

from laid.model.loading import load_model
from tests.test_rope_gain import haystack_batch
from laid.eval.variants import selfextend, yarn

torch.set_num_threads(1)


def model_inputs(batch):
    return {k: v for k, v in batch.items() if k != "labels"}


# ---------------------------------------------------------------- YaRN
def test_yarn_frequencies_are_transformers_and_match_the_yarn_formula(random_zoo):
    model = yarn.load_model(random_zoo["tiny-7b"], device="cpu", factor=4.0, original_max_position_embeddings=64)
    rotary = model.model.language_model.rotary_emb
    params = model.config.text_config.rope_parameters
    assert params["rope_type"] == "yarn" and params["original_max_position_embeddings"] == 64  # not defaulted
    assert params["mrope_section"] == [4, 6, 6] and params["rope_theta"] == 1e6
    inv_freq, scaling = ROPE_INIT_FUNCTIONS["yarn"](model.config.text_config)
    assert torch.equal(rotary.inv_freq, inv_freq) and rotary.attention_scaling == scaling
    # The YaRN recipe itself: cos/sin scaled by 0.1 ln(s) + 1; the fastest pair keeps its frequency
    # (extrapolated), the slowest pairs are interpolated by 1 / factor.
    default = 1.0 / 1e6 ** (torch.arange(0, 32, 2).float() / 32)
    assert scaling == pytest.approx(0.1 * math.log(4.0) + 1.0)
    assert rotary.inv_freq[0] == pytest.approx(default[0].item())
    assert torch.allclose(rotary.inv_freq[-4:], default[-4:] / 4.0)
    assert bool((rotary.inv_freq <= default + 1e-12).all())
    batch = haystack_batch(random_zoo["tiny-7b"])
    with torch.no_grad():
        logits = model(**model_inputs(batch)).logits
        base = load_model(random_zoo["tiny-7b"], device="cpu")(**model_inputs(batch)).logits
    assert torch.isfinite(logits).all() and not torch.allclose(logits, base, atol=1e-4)


def test_yarn_default_original_length(random_zoo, tmp_path):
    assert yarn.yarn_config(random_zoo["tiny-7b"], factor=4.0).text_config.rope_parameters["original_max_position_embeddings"] == 4096 // 4
    recorded = shutil.copytree(random_zoo["tiny-7b"], tmp_path / "m")
    zoo = json.loads((recorded / "laid_zoo.json").read_text())
    zoo["pretrain_log"]["max_position"] = 300
    (recorded / "laid_zoo.json").write_text(json.dumps(zoo))
    assert yarn.yarn_config(recorded, factor=4.0).text_config.rope_parameters["original_max_position_embeddings"] == 300
    with pytest.raises(ValueError, match="factor must be > 1"):
        yarn.yarn_config(recorded, factor=1.0)


# ---------------------------------------------------------------- SelfExtend
def test_selfextend_attention_equals_explicit_grouped_positions_reference(random_zoo):
    """The delta rotation of post-RoPE q/k equals rotating pre-RoPE q/k at the grouped 3-D positions."""
    model = load_model(random_zoo["tiny-7b"], device="cpu")
    state = selfextend.enable_selfextend(model, selfextend.SelfExtendConfig(group_size=2, window=3, chunk_size=4))
    attn = model.model.language_model.layers[0].self_attn
    rotary = model.model.language_model.rotary_emb
    # Text 0..3, a 2x3 image at t=4 (h 4..5, w 4..6), then text 7..10: real M-RoPE layout.
    t = list(range(4)) + [4] * 6 + list(range(7, 11))
    hh = list(range(4)) + [4, 4, 4, 5, 5, 5] + list(range(7, 11))
    ww = list(range(4)) + [4, 5, 6, 4, 5, 6] + list(range(7, 11))
    pos = torch.tensor([t, hh, ww])[:, None, :]  # (3, B=1, S=14)
    s, G, W = pos.shape[-1], 2, 3
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(1, 4, s, 32, generator=g), torch.randn(1, 2, s, 32, generator=g), torch.randn(1, 2, s, 32, generator=g)

    def rot(x, p):
        cos, sin = rotary(x, p)
        return apply_rotary_pos_emb(x, x, cos, sin)[0]

    qn, kn = rot(q, pos), rot(k, pos)
    qg, kg = rot(q, pos // G + W - W // G), rot(k, pos // G)
    kn, kg, vv = (x.repeat_interleave(2, dim=1) for x in (kn, kg, v))
    near = (pos[:, 0, :, None] - pos[:, 0, None, :]).abs().amax(0) < W  # (S, S)
    assert near.any() and (~near).any()
    scores = torch.where(near, qn @ kn.mT, qg @ kg.mT) / math.sqrt(32)
    scores = scores.masked_fill(~torch.ones(s, s, dtype=torch.bool).tril(), float("-inf"))
    expected = (torch.softmax(scores, -1) @ vv).transpose(1, 2)

    state.positions = pos
    causal = torch.ones(s, s, dtype=torch.bool).tril()[None, None]  # the mask the model passes (B, 1, S, S)
    got, _ = selfextend.selfextend_attention(attn, qn[:, :, :, :], rot(k, pos), v, causal, scaling=32**-0.5)
    assert torch.allclose(got, expected, atol=1e-5)
    for mask, scale, what in ((None, 32**-0.5, "attention mask"), (causal, None, "logit scale")):  # never guessed
        with pytest.raises(ValueError, match=f"text layer 0 .Qwen2.5-VL. received no {what}") as err:
            selfextend.selfextend_attention(attn, qn, rot(k, pos), v, mask, scaling=scale)
        assert "\n" not in str(err.value)


def test_selfextend_is_plain_attention_inside_the_window_and_differs_beyond(random_zoo):
    d = random_zoo["tiny-7b"]
    batch = haystack_batch(d, sizes=(3, 6))  # padded batch with images
    valid = batch["attention_mask"].bool()
    with torch.no_grad():
        base = load_model(d, device="cpu")(**model_inputs(batch)).logits
        inside = selfextend.load_model(d, device="cpu", group_size=4, window=10_000, chunk_size=7)(**model_inputs(batch)).logits
        beyond = selfextend.load_model(d, device="cpu", group_size=2, window=4)(**model_inputs(batch)).logits
    assert torch.allclose(inside[valid], base[valid], atol=1e-5)
    assert (beyond[valid] - base[valid]).abs().max() > 1e-4
    assert torch.isfinite(beyond[valid]).all()


def test_selfextend_generation_with_cache_matches_full_recompute(random_zoo):
    d = random_zoo["tiny-7b"]
    batch = model_inputs(haystack_batch(d, sizes=(4,)))
    model = selfextend.load_model(d, device="cpu", group_size=2, window=4)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True)
        n_new = out.sequences.shape[1] - batch["input_ids"].shape[1]
        full = dict(batch, input_ids=out.sequences,
                    attention_mask=torch.ones_like(out.sequences),
                    mm_token_type_ids=torch.cat([batch["mm_token_type_ids"], torch.zeros(1, n_new, dtype=torch.long)], 1))
        logits = model(**full).logits
    cached = torch.stack(out.scores, 1)  # (1, n_new, V): logits of each cached decoding step
    recomputed = logits[:, -n_new - 1 : -1]
    assert torch.allclose(cached, recomputed, atol=1e-4)
