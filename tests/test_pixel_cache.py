"""laid.model.pixel_cache: inputs built from cached pixels equal the processor's, tensor for tensor.

Covers the toy processor (56 px images, 4 tokens each) and a processor with Qwen2.5-VL's
published image settings (112 px and non-square images: 16+ tokens each, different grids in one
batch), left padding over haystacks of different sizes, SFT labels, the cache's bookkeeping (hits,
LRU eviction by bytes, a rewritten file, two processors) and, end to end, that an evaluation with
the cache gives exactly the results of one without it.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import xarray as xr
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from laid.data.render import sample_image
from laid.model.pixel_cache import PixelCache, encode_from_pixels, expand_image_tokens, processor_fingerprint, to_pixels
from laid.model.prompting import Example, encode_batch, render_prompt
from laid.zoo.build import build_processor
from laid.model.processor import LaidQwen2_5_VLProcessor

QUESTION = "For the image with a red circle, is there a blue square?"


def write_images(folder, sizes, seed=0):
    """PNG files of rendered toy images, resized to each (width, height) in sizes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (w, h) in enumerate(sizes):
        image, _ = sample_image(rng, size=56)
        path = folder / f"img_{i:03d}.png"
        image.resize((w, h), Image.BILINEAR).save(path)
        paths.append(path)
    return paths


def haystacks(paths, sizes, answers=("yes", "no")):
    """Examples with haystacks of the given sizes, drawn from paths with overlap between them."""
    out = []
    for k, n in enumerate(sizes):
        start = (3 * k) % len(paths)
        images = [paths[(start + i) % len(paths)] for i in range(n)]
        out.append(Example(images, QUESTION, answers[k % len(answers)]))
    return out


def processor_reference(processor, examples):
    """The processor itself on decoded images (what encode_batch did before the cache)."""
    processor.tokenizer.padding_side = "left"
    texts = [render_prompt(processor, len(ex.images), ex.question) for ex in examples]
    images = [Image.open(p).convert("RGB") for ex in examples for p in ex.images]
    return dict(processor(text=texts, images=images, padding=True, return_tensors="pt"))


def assert_same_batch(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def toy_processor():
    torch.set_num_threads(1)
    return build_processor()


@pytest.fixture(scope="module")
def qwen_like_processor(toy_processor):
    # Qwen2.5-VL's published preprocessor settings: 14 px patches, 2x2 merge, pixels in [3136, 12845056].
    ip = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056, patch_size=14, merge_size=2, temporal_patch_size=2)
    tok = toy_processor.tokenizer
    return LaidQwen2_5_VLProcessor(ip, tok, chat_template=toy_processor.chat_template)


def test_toy_batches_equal_the_processor(toy_processor, tmp_path):
    paths = write_images(tmp_path / "toy", [(56, 56)] * 12)
    examples = haystacks(paths, [1, 9, 4, 12, 2])  # rows of different lengths: left padding
    reference = processor_reference(toy_processor, examples)
    cache = PixelCache()
    cached = encode_batch(toy_processor, examples, pixel_cache=cache)
    assert_same_batch(reference, cached)
    assert reference["attention_mask"][0, 0] == 0 and reference["attention_mask"][:, -1].all()  # left-padded
    assert cache.misses == 12 and cache.hits == 28 - 12  # each distinct file preprocessed once
    # Again: all hits, same tensors; and paths without a cache give the same batch too.
    assert_same_batch(reference, encode_batch(toy_processor, examples, pixel_cache=cache))
    assert cache.misses == 12
    assert_same_batch(reference, encode_batch(toy_processor, examples))


def test_qwen_like_image_settings_equal_the_processor(qwen_like_processor, tmp_path):
    # 112x112 -> 8x8 patches = 16 tokens; 168x84 -> 12x6 = 18 tokens; 70x98 -> 4x6 (resized) ...
    sizes = [(112, 112), (168, 84), (70, 98), (112, 112), (224, 140)]
    paths = write_images(tmp_path / "qwen", sizes)
    examples = haystacks(paths, [3, 1, 5, 2])
    reference = processor_reference(qwen_like_processor, examples)
    grids = reference["image_grid_thw"]
    assert len({tuple(g) for g in grids.tolist()}) >= 3  # really different grids in one batch
    assert (grids.prod(-1) // 4).max() > 4  # more tokens per image than the toy's 4
    cached = encode_batch(qwen_like_processor, examples, pixel_cache=PixelCache())
    assert_same_batch(reference, cached)
    n_image_tokens = (cached["mm_token_type_ids"] == 1).sum()
    assert n_image_tokens == (grids.prod(-1) // 4).sum()


def test_labels_with_answers_are_unchanged(toy_processor, tmp_path):
    paths = write_images(tmp_path / "sft", [(56, 56)] * 6)
    examples = haystacks(paths, [2, 6, 3])
    decoded = [Example([Image.open(p).convert("RGB") for p in ex.images], ex.question, ex.answer) for ex in examples]
    reference = encode_batch(toy_processor, decoded, with_answers=True)
    assert_same_batch(reference, encode_batch(toy_processor, examples, with_answers=True, pixel_cache=PixelCache()))


def test_explicit_keys_and_preprocessed_pixels(toy_processor, tmp_path):
    paths = write_images(tmp_path / "keys", [(56, 56)] * 3)
    images = [Image.open(p).convert("RGB") for p in paths]
    cache = PixelCache()
    loads = []
    pixels = [cache.get(toy_processor, ("pool", i), lambda im=im: loads.append(1) or im) for i, im in enumerate(images)]
    again = cache.get(toy_processor, ("pool", 0), lambda: pytest.fail("a cached key must not load"))
    assert again is pixels[0] and len(loads) == 3
    texts = [render_prompt(toy_processor, 2, QUESTION), render_prompt(toy_processor, 1, QUESTION)]
    reference = dict(toy_processor(text=texts, images=images, padding=True, return_tensors="pt"))
    assert_same_batch(reference, encode_from_pixels(toy_processor, texts, pixels))
    # Examples may mix PIL images, paths and pixels.
    mixed = [Example([images[0], pixels[1]], QUESTION), Example([paths[2]], QUESTION)]
    assert_same_batch(reference, encode_batch(toy_processor, mixed))


def test_lru_evicts_by_bytes(toy_processor, tmp_path):
    paths = write_images(tmp_path / "lru", [(56, 56)] * 4)
    one = to_pixels(toy_processor, paths[:1])[0].nbytes
    cache = PixelCache(max_bytes=int(2.5 * one))  # room for two entries
    fp = processor_fingerprint(toy_processor)
    cache.get_path(toy_processor, paths[0], fp)
    cache.get_path(toy_processor, paths[1], fp)
    cache.get_path(toy_processor, paths[0], fp)  # 0 is now the most recently used
    cache.get_path(toy_processor, paths[2], fp)  # evicts 1
    assert len(cache) == 2 and cache.nbytes == 2 * one <= cache.max_bytes
    misses = cache.misses
    cache.get_path(toy_processor, paths[0], fp)
    assert cache.misses == misses  # kept
    cache.get_path(toy_processor, paths[1], fp)
    assert cache.misses == misses + 1  # was evicted
    nothing = PixelCache(max_bytes=0)
    nothing.get_path(toy_processor, paths[3], fp)
    assert len(nothing) == 0 and nothing.nbytes == 0


def test_rewritten_file_and_other_processor_are_new_entries(toy_processor, qwen_like_processor, tmp_path):
    path = write_images(tmp_path / "rw", [(112, 112)])[0]
    cache = PixelCache()
    toy = cache.get_path(toy_processor, path)
    qwen = cache.get_path(qwen_like_processor, path)
    assert len(cache) == 2 and toy.pixel_values.shape[0] == 16 and qwen.pixel_values.shape[0] == 64
    assert processor_fingerprint(toy_processor) != processor_fingerprint(qwen_like_processor)
    Image.new("RGB", (112, 112), "white").save(path)  # regenerated data in the same place
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a later mtime even on coarse clocks
    fresh = cache.get_path(toy_processor, path)
    assert cache.misses == 3 and not torch.equal(fresh.pixel_values, toy.pixel_values)


def test_bad_inputs_are_clear_errors(toy_processor, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png not found"):
        PixelCache().get_path(toy_processor, tmp_path / "missing.png")
    paths = write_images(tmp_path / "bad", [(56, 56)])
    pixels = to_pixels(toy_processor, paths)
    with pytest.raises(ValueError, match="2 <\\|image_pad\\|> tokens but 1 images"):
        expand_image_tokens(toy_processor, [render_prompt(toy_processor, 2, QUESTION)], pixels)
    with pytest.raises(TypeError, match="got int"):
        to_pixels(toy_processor, [3])


@pytest.fixture(scope="module")
def quick_synth(tmp_path_factory):
    from laid.data.synth import SynthConfig, generate

    torch.set_num_threads(1)
    return generate(SynthConfig.quick(seed=0), tmp_path_factory.mktemp("pixel_synth") / "data", progress=False)


def test_evaluation_results_are_identical_with_and_without_the_cache(random_zoo, quick_synth):
    from laid.eval.run import evaluate_loaded, load_entries
    from laid.eval.variants import load_for_eval

    model, processor = load_for_eval(random_zoo["tiny-7b"], device="cpu")
    entries = load_entries(quick_synth / "test", quick_synth, max_samples_per_size=6)
    plain = evaluate_loaded(model, processor, entries, progress=False, pixel_cache=False)
    cache = PixelCache()
    cached = evaluate_loaded(model, processor, entries, progress=False, pixel_cache=cache)
    n_images = sum(e.haystack_size for rows in entries.values() for e in rows)
    assert 0 < cache.misses < n_images and cache.misses + cache.hits == n_images  # images repeat across haystacks
    again = evaluate_loaded(model, processor, entries, progress=False, pixel_cache=cache)
    assert cache.misses + cache.hits == 2 * n_images and cache.hits >= n_images  # second run: all hits
    for ds in (cached, again):
        np.testing.assert_array_equal(ds["margin"], plain["margin"])  # exactly, not approximately
        xr.testing.assert_equal(ds, plain)  # every variable (attrs aside: they hold the creation time)
