"""Family adapters against each model's own computation: RoPE, attention masks and scales, the
attention-matching loss, RoPE-gain folding. Each check is also run on the degenerate reading kept in
laid.model.families.ablations, which must fail it where the family differs from Qwen2.5-VL."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from family_helpers import FAMILIES, brute_force_attention_matching, haystack_batch

from laid.model.families import family_of, text_decoder
from laid.model.families.ablations import causal_pattern, contiguous_layout
from laid.model.hooks import record_qk, site_name
from laid.model.loading import ModelFolderError, check_model_dir, load_model, load_processor
from trainers.losses.attention_matching import AttentionMatchingLoss, DistanceWeighting
from trainers.rope_gain import RopeGain, fold_into_projections

torch.set_num_threads(1)


def _run(model_dir, attn="sdpa", sites=("q", "k", "q_rot", "k_rot"), output_attentions=False):
    model = load_model(model_dir, device="cpu", dtype=torch.float32, attn_implementation=attn)
    batch = haystack_batch(load_processor(model_dir))
    with torch.no_grad(), record_qk(model, sites=sites) as rec:
        out = model(**batch, output_attentions=output_attentions)
    return model, batch, rec.tensors, out


def _max_err(a, b):
    return float((a.double() - b.double()).abs().max())


@pytest.mark.parametrize("family", FAMILIES)
def test_rotary_layout_and_positions_reproduce_the_models_rope(family, family_pairs):
    model, batch, qk, _ = _run(family_pairs[family]["teacher"])
    fam = family_of(model)
    pos = fam.positions(model, batch)  # (A, B, S)
    assert pos.shape[0] == len(fam.axis_names)
    for layer in range(len(text_decoder(model)[1])):
        layout = fam.layer_rotary_layout(model, layer)
        for q in ("q", "k"):  # pre-RoPE (after the QK-norm where there is one) rotated by the layout
            assert _max_err(layout.rotate(qk[site_name(layer, q)], pos), qk[site_name(layer, q + "_rot")]) < 1e-4
    image = batch["input_ids"] == fam.image_token_id(model.config)
    q, q_rot = qk[site_name(1, "q")], qk[site_name(1, "q_rot")]
    if family == "qwen3_vl":  # interleaved sections read as contiguous: image tokens rotate wrongly
        wrong = contiguous_layout(fam.rotary_module(model)).rotate(q, pos)
        assert _max_err(wrong.transpose(1, 2)[image], q_rot.transpose(1, 2)[image]) > 1e-2  # (N_image, H, D)
    if family == "gemma3":  # the full layer read with the sliding layers' base: wrong everywhere but position 0
        wrong = fam.rotary_layout(fam.rotary_module(model), "sliding_attention").rotate(q, pos)
        assert _max_err(wrong, q_rot) > 1e-2


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_pattern_is_the_layers_real_attention(family, family_pairs):
    model, batch, qk, out = _run(family_pairs[family]["teacher"], attn="eager", sites=("q_rot", "k_rot"), output_attentions=True)
    fam = family_of(model)
    valid = batch["attention_mask"].bool()
    b, s = valid.shape
    for layer, real in enumerate(out.attentions):  # (B, H, S, S) the model's softmax weights
        q, k = qk[site_name(layer, "q_rot")], qk[site_name(layer, "k_rot")].repeat_interleave(2, dim=1)

        def weights(pattern):
            allowed = pattern.allowed(0, s, s, valid, valid)  # (B, 1, S, S)
            logits = (q.double() @ k.double().mT) * pattern.scaling
            return torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1)

        rows = valid[:, None, :, None].expand_as(real)
        pattern = fam.attention_pattern(model, layer, batch)
        assert _max_err(weights(pattern)[rows], real[rows]) < 1e-5
        degenerate = _max_err(weights(causal_pattern(model, layer))[rows], real[rows])
        assert (degenerate > 1e-2) if family == "gemma3" else (degenerate < 1e-5)
        if family == "gemma3":  # the image blocks alone matter, on both layer types
            assert pattern.blocks is not None and _max_err(weights(replace(pattern, blocks=None))[rows], real[rows]) > 1e-2


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_matching_equals_a_brute_force_reference_with_the_real_masks(family, family_pairs):
    pair = family_pairs[family]
    student, batch, sqk, s_out = _run(pair["student"], attn="eager", sites=("q_rot", "k_rot"), output_attentions=True)
    teacher, _, tqk, t_out = _run(pair["teacher"], attn="eager", sites=("q_rot", "k_rot"), output_attentions=True)
    fam, valid = family_of(student), batch["attention_mask"].bool()
    pos = fam.positions(student, batch)
    mix = torch.softmax(torch.randn(2, 4, generator=torch.Generator().manual_seed(0)), -1)  # (H_s, H_t) convex rows
    loss = AttentionMatchingLoss(DistanceWeighting(), chunk_size=7)  # chunks cut through image blocks
    for layer in (0, 1):  # Gemma: a sliding layer, then a full one (same type in both models)
        args = (sqk[site_name(layer, "q_rot")], sqk[site_name(layer, "k_rot")], tqk[site_name(layer, "q_rot")],
                tqk[site_name(layer, "k_rot")], valid, 1.0)
        ref = brute_force_attention_matching(s_out.attentions[layer], t_out.attentions[layer], mix, pos, valid, DistanceWeighting().alpha(1.0))
        got = loss(*args, mix=mix, positions=pos, student_pattern=fam.attention_pattern(student, layer, batch),
                   target_pattern=fam.attention_pattern(teacher, layer, batch))
        torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-6)
        degenerate = loss(*args, mix=mix, positions=pos, student_pattern=causal_pattern(student, layer),
                          target_pattern=causal_pattern(teacher, layer))  # causal at head_dim ** -0.5 on both sides
        with pytest.raises(ValueError, match="target_pattern needs its layer's AttentionPattern"):
            loss(*args, mix=mix, positions=pos, student_pattern=causal_pattern(student, layer))  # no default mask
        if family == "gemma3":  # ignores the window, the image blocks and the scale: fails the reference
            assert abs(float(degenerate) - float(ref)) > 1e-2 * float(ref)
            no_blocks = [replace(fam.attention_pattern(m, layer, batch), blocks=None) for m in (student, teacher)]
            blind = loss(*args, mix=mix, positions=pos, student_pattern=no_blocks[0], target_pattern=no_blocks[1])
            assert abs(float(blind) - float(ref)) > 1e-3 * float(ref)  # the image-block mask alone is caught
        else:
            torch.testing.assert_close(degenerate.double(), ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_rope_gain_folds_exactly_and_is_shared_under_a_qk_norm(family, family_pairs):
    model_dir = family_pairs[family]["student"]
    model = load_model(model_dir, device="cpu", dtype=torch.float32)
    batch = haystack_batch(load_processor(model_dir))
    gains = RopeGain.for_model(model)
    qk_norm = family_of(model).qk_norm
    assert gains.shared == qk_norm and gains.q.shape[1] == (1 if qk_norm else 2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        base = model(**batch).logits
        gains.q.copy_(1 + 0.5 * torch.rand(gains.q.shape, generator=g))
        gains.k.copy_(1 + 0.5 * torch.rand(gains.k.shape, generator=g))
        with gains.applied(model):
            hooked = model(**batch).logits
        assert _max_err(hooked, base) > 1e-3  # the gains act (on the norm output where there is one)
        fold_into_projections(model, gains)
        assert _max_err(model(**batch).logits, hooked) < 1e-4  # exported = trained, exactly
    if qk_norm:  # a per-head gain cannot fold into the shared norm weight: refused in one line
        per_head = RopeGain(gains.n_heads, gains.n_kv_heads, gains.head_dim, gains.layers)
        with torch.no_grad():
            per_head.q.copy_(torch.rand(per_head.q.shape, generator=g) + 0.5)
        with pytest.raises(ValueError, match="differs between heads") as err:
            fold_into_projections(model, per_head)
        assert "\n" not in str(err.value)


def test_an_unknown_model_type_is_refused_in_one_line(family_pairs, tmp_path):
    import json
    import shutil

    folder = tmp_path / "llava"
    shutil.copytree(family_pairs["gemma3"]["student"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "llava"}))
    with pytest.raises(ModelFolderError, match="model type 'llava'.*supported: qwen2_5_vl") as err:
        check_model_dir(folder)
    assert "\n" not in str(err.value)
