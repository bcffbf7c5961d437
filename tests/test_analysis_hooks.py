"""record_qk: post-RoPE capture through the attention interface, pre-RoPE forward hooks, cleanup."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen

from laid.data.render import sample_image
from laid.model.loading import load_model, load_processor
from laid.model.prompting import Example, encode_batch
from laid.model.hooks import record_qk, resolve_layers, text_decoder


@pytest.fixture(scope="module")
def teacher(random_zoo):
    torch.manual_seed(0)
    return load_model(random_zoo["tiny-32b"], device="cpu"), load_processor(random_zoo["tiny-32b"])


def _batch(processor, sizes=(2, 4), seed=0):
    # Different haystack sizes -> different lengths -> the shorter row is left-padded.
    rng = np.random.default_rng(seed)
    examples = [Example([sample_image(rng)[0] for _ in range(n)], "Is there a red circle?") for n in sizes]
    return encode_batch(processor, examples)


def _no_leftovers(model):
    text_model, layers = text_decoder(model)
    assert model.config.text_config._attn_implementation == "sdpa"
    assert model.config.vision_config._attn_implementation == "sdpa"
    for layer in layers:
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
            assert not proj._forward_hooks
        assert not hasattr(layer.self_attn, "_laid_qk_recorders")


def test_capture_keeps_logits_and_shapes(teacher):
    model, processor = teacher
    batch = _batch(processor)
    assert (batch["attention_mask"][0] == 0).any(), "test needs a left-padded row"
    with torch.no_grad():
        plain = model(**batch).logits
        with record_qk(model, sites=("q_rot", "k_rot", "q", "k", "v")) as rec:
            assert model.config.text_config._attn_implementation == "laid_qk:sdpa"
            assert model.config.vision_config._attn_implementation == "sdpa"  # vision tower untouched
            hooked = model(**batch).logits
    torch.testing.assert_close(hooked, plain, rtol=0, atol=0)
    cfg = model.config.text_config
    B, S = batch["input_ids"].shape
    H, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    assert sorted(rec.tensors) == sorted(rec.names())
    for i in range(cfg.num_hidden_layers):
        assert rec.tensors[f"layers.{i}.attn.q_rot"].shape == (B, H, S, D)
        assert rec.tensors[f"layers.{i}.attn.q"].shape == (B, H, S, D)
        assert rec.tensors[f"layers.{i}.attn.k_rot"].shape == (B, Hkv, S, D)
        assert rec.tensors[f"layers.{i}.attn.k"].shape == (B, Hkv, S, D)
        assert rec.tensors[f"layers.{i}.attn.v"].shape == (B, Hkv, S, D)
    _no_leftovers(model)


def test_restored_after_exception(teacher):
    model, processor = teacher
    batch = _batch(processor, sizes=(1,))
    with pytest.raises(RuntimeError, match="boom"):
        with record_qk(model, sites=("q_rot", "k_rot", "q", "k")):
            with torch.no_grad():
                model(**batch)
            raise RuntimeError("boom")
    _no_leftovers(model)
    with torch.no_grad():  # and the model still runs normally
        model(**batch)


def test_k_rot_is_model_rope_applied_to_pre_rope_k(teacher):
    model, processor = teacher
    batch = _batch(processor)
    with torch.no_grad(), record_qk(model, layers=[1], sites=("q", "k", "q_rot", "k_rot")) as rec:
        model(**batch)
    # The model's own M-RoPE positions (3, B, S): temporal/height/width ids for image tokens.
    position_ids, _ = model.model.get_rope_index(
        batch["input_ids"], batch["mm_token_type_ids"], image_grid_thw=batch["image_grid_thw"],
        attention_mask=batch["attention_mask"],
    )
    assert not torch.equal(position_ids[0], position_ids[1]), "image tokens should get 3-D positions"
    text_model, _ = text_decoder(model)
    q, k = rec.tensors["layers.1.attn.q"], rec.tensors["layers.1.attn.k"]
    cos, sin = text_model.rotary_emb(k, position_ids)
    q_rot, k_rot = qwen.apply_rotary_pos_emb(q, k, cos, sin)
    real = batch["attention_mask"].bool()[:, None, :, None]  # padded positions have no meaningful RoPE
    torch.testing.assert_close(torch.where(real, k_rot, 0), torch.where(real, rec.tensors["layers.1.attn.k_rot"], 0))
    torch.testing.assert_close(torch.where(real, q_rot, 0), torch.where(real, rec.tensors["layers.1.attn.q_rot"], 0))
    assert not torch.allclose(k, rec.tensors["layers.1.attn.k_rot"])  # RoPE did rotate


def test_layer_selection_token_mask_and_callback(teacher):
    model, processor = teacher
    batch = _batch(processor, sizes=(3, 3))
    image = batch["input_ids"] == model.config.image_token_id  # (B, S), same count per row
    streamed = []
    with torch.no_grad(), record_qk(model, layers=-1, token_mask=image, callback=lambda n, t: streamed.append((n, t))) as rec:
        model(**batch)
    assert rec.tensors == {}
    assert [n for n, _ in streamed] == ["layers.3.attn.q_rot", "layers.3.attn.k_rot"]
    with torch.no_grad(), record_qk(model, layers=[3], sites=("k_rot",)) as full:
        model(**batch)
    k_full = full.tensors["layers.3.attn.k_rot"]
    k_img = streamed[1][1]
    cfg = model.config.text_config
    assert k_img.shape == (2, cfg.num_key_value_heads, int(image[0].sum()), cfg.hidden_size // cfg.num_attention_heads)
    torch.testing.assert_close(k_img[1], k_full[1][:, image[1]])
    assert resolve_layers([-1, 0, -4], 4) == [0, 3]
    with pytest.raises(ValueError, match="out of range"):
        resolve_layers([4], 4)
    with pytest.raises(ValueError, match="unknown site"):
        with record_qk(model, sites=("q_rot", "attn")):
            pass


def test_detach_false_keeps_graph_to_q_proj(teacher):
    model, processor = teacher
    batch = _batch(processor, sizes=(1,))
    model.zero_grad()
    with record_qk(model, layers=[0], sites=("q_rot",), detach=False) as rec:
        model(**batch)
    q_rot = rec.tensors["layers.0.attn.q_rot"]
    assert q_rot.requires_grad
    q_rot.square().mean().backward()
    layer0 = text_decoder(model)[1][0].self_attn
    assert layer0.q_proj.weight.grad is not None and layer0.q_proj.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    _no_leftovers(model)


def test_nested_recorders_both_record(teacher):
    model, processor = teacher
    batch = _batch(processor, sizes=(1,))
    with torch.no_grad(), record_qk(model, layers=[0]) as outer:
        with record_qk(model, layers=[2], sites=("k_rot",)) as inner:
            model(**batch)
        assert model.config.text_config._attn_implementation == "laid_qk:sdpa"
    assert sorted(outer.tensors) == ["layers.0.attn.k_rot", "layers.0.attn.q_rot"]
    assert sorted(inner.tensors) == ["layers.2.attn.k_rot"]
    _no_leftovers(model)
