"""Per family, against the model's own inputs and post-RoPE Q/K: the pixel cache builds exactly the
processor's batch (where the family has one: Qwen2-VL, Qwen3-VL; InternVL3 and Gemma 3 bypass it and
still get the processor's batch), and YaRN's rotary layout reproduces the YaRN model's own post-RoPE
queries and keys on the family's long-RoPE layers (Gemma 3: a variant whose full layers have default
RoPE, since the published ones are already scaled), while the plain layout does not."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from family_helpers import FAMILIES, haystack_batch
from PIL import Image
from transformers import AutoConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from laid.data.questions import single_needle_question
from laid.data.render import sample_image
from laid.eval.scoring import estimate_input_tokens
from laid.eval.variants import yarn
from laid.model.families import family_of
from laid.model.hooks import record_qk, site_name
from laid.model.loading import load_model, load_processor
from laid.model.pixel_cache import PixelCache
from laid.model.prompting import Example, encode_batch

torch.set_num_threads(1)


def _images(folder, sizes, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (w, h) in enumerate(sizes):
        path = folder / f"img_{i}.png"
        sample_image(rng, size=56)[0].resize((w, h), Image.BILINEAR).save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("family", FAMILIES)
def test_the_pixel_cache_gives_the_processors_batch(family, family_pairs, tmp_path):
    folder = family_pairs[family]["student"]
    processor = load_processor(folder)
    paths = _images(tmp_path, [(56, 56), (84, 56), (56, 112), (112, 84)])
    question = single_needle_question("red circle", "blue square")
    examples = [Example([paths[0], paths[2], paths[1]], question, "yes"), Example(paths[1:] + [paths[0], paths[3]], question, "no")]
    reference = encode_batch(processor, examples, with_answers=True)  # the processor on decoded images
    cache = PixelCache()
    cached = encode_batch(processor, examples, with_answers=True, pixel_cache=cache)
    assert sorted(cached) == sorted(reference)
    for key in reference:
        assert cached[key].dtype == reference[key].dtype and torch.equal(cached[key], reference[key]), key
    if family_of(folder).pixel_cache:  # really served from the cache: each file preprocessed once
        assert cache.misses == len(paths) and cache.hits == sum(len(ex.images) for ex in examples) - len(paths)
        grids = reference["image_grid_thw"]
        assert len({tuple(g) for g in grids.tolist()}) >= 3  # different grids in one batch
    else:  # tiles / fixed-size images: the processor's own path, the cache untouched
        assert cache.misses == cache.hits == 0
    with torch.no_grad():  # the model reads both batches alike
        model = load_model(folder, device="cpu")
        torch.testing.assert_close(model(**{k: v for k, v in cached.items() if k != "labels"}).logits,
                                   model(**{k: v for k, v in reference.items() if k != "labels"}).logits, rtol=0, atol=0)


def _yarn_folder(family, family_pairs, tmp_path):
    folder = family_pairs[family]["student"]
    if family != "gemma3":
        return folder
    copy = tmp_path / "gemma-default-rope"  # full layers with default RoPE: what YaRN extends
    shutil.copytree(folder, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["text_config"]["rope_parameters"]["full_attention"] = {"rope_type": "default", "rope_theta": 1_000_000.0}
    (copy / "config.json").write_text(json.dumps(cfg))
    return copy


def _qk(model, batch):
    with torch.no_grad(), record_qk(model, sites=("q", "k", "q_rot", "k_rot")) as rec:
        model(**batch)
    return rec.tensors


@pytest.mark.parametrize("family", FAMILIES)
def test_yarn_layout_reproduces_the_yarn_models_post_rope_qk(family, family_pairs, tmp_path):
    folder = _yarn_folder(family, family_pairs, tmp_path)
    batch = haystack_batch(load_processor(folder))  # ~60-90 tokens: beyond the 16 positions YaRN is told of
    model = yarn.load_model(folder, device="cpu", factor=4.0, original_max_position_embeddings=16)
    plain = load_model(folder, device="cpu")
    fam = family_of(model)
    qk, pos = _qk(model, batch), fam.positions(model, batch)
    types = fam.layer_types(model.config)
    text = model.config.get_text_config()
    for layer in range(len(types)):
        layout, before = fam.layer_rotary_layout(model, layer), fam.layer_rotary_layout(plain, layer)
        for x in ("q", "k"):  # the family's layout with YaRN's frequencies and scaling = the model's own RoPE
            got = layout.rotate(qk[site_name(layer, x)], pos)
            assert float((got - qk[site_name(layer, x + "_rot")].double()).abs().max()) < 1e-4
        assert layout.axis == before.axis  # M-RoPE sections and their interleaving kept
        if layer in fam.long_rope_layers(model.config):
            inv_freq, scaling = ROPE_INIT_FUNCTIONS["yarn"](text, layer_type=types[layer] if fam.name == "gemma3" else None)
            torch.testing.assert_close(layout.inv_freq, inv_freq.double())
            assert layout.attention_scaling == pytest.approx(0.1 * math.log(4.0) + 1.0) == pytest.approx(scaling)
            wrong = before.rotate(qk[site_name(layer, "q")], pos)  # the plain layout misses YaRN
            assert float((wrong - qk[site_name(layer, "q_rot")].double()).abs().max()) > 1e-3
        else:  # Gemma's sliding layer: its window is inside the trained range, YaRN leaves it alone
            assert fam.name == "gemma3" and torch.equal(layout.inv_freq, before.inv_freq) and layout.attention_scaling == 1.0


@pytest.mark.parametrize("family", FAMILIES)
def test_planned_image_tokens_are_what_the_processor_makes(family, family_pairs, tmp_path):
    """`laid plan` counts image tokens from config files alone (Family.planned_image_tokens); the
    family's processor, on real images of those sizes, makes exactly that many."""
    from trainers.pairing import read_shape

    folder = family_pairs[family]["student"]
    shape, processor, fam = read_shape(folder), load_processor(folder), family_of(folder)
    sizes = [(56, 56), (84, 56), (56, 112)]
    for path, (w, h) in zip(_images(tmp_path, sizes), sizes):
        batch = encode_batch(processor, [Example([path], single_needle_question("red circle", "blue square"))])
        made = int((batch["input_ids"] == fam.image_token_id(AutoConfig.from_pretrained(folder))).sum())
        assert fam.planned_image_tokens(shape.vision, shape.token_ids, shape.image_processor, w, h) == made, (w, h)
        # the evaluation's batch planning (from image sizes, before any pixel is decoded) counts the same prompt
        question = single_needle_question("red circle", "blue square")
        assert estimate_input_tokens(processor, question, [(w, h)]) == batch["input_ids"].shape[1], (w, h)
