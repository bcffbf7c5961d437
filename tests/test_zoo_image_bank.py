"""The pretraining image bank: same image distribution as fresh renders, exact cached features,
and minimal pairs that differ only in the target and the answer."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from laid.data.render import CATEGORIES
from laid.model.prompting import Example, encode_batch
from laid.zoo import pretrain as P
from laid.zoo.build import build_model, build_processor
from laid.zoo.configs import ZooModelConfig
from laid.zoo.image_bank import BankImage, FreshImages, ImageBank, encoder_outputs


@pytest.fixture(scope="module")
def model_and_processor():
    torch.manual_seed(0)
    cfg = ZooModelConfig(name="t", role="student", mirrors="none")
    return build_model(cfg).eval(), build_processor()


@pytest.fixture(scope="module")
def bank(model_and_processor):
    model, proc = model_and_processor
    return ImageBank(model, proc, size=1500, seed=0, progress=False)


def _object_counts(source, have, not_have, n=600):
    rng = np.random.default_rng(1)
    return Counter(len(source.draw(rng, have, not_have)[1]) for _ in range(n))


A, B = CATEGORIES[0], CATEGORIES[1]


@pytest.mark.parametrize("have,not_have", [((), ()), ((A,), (B,)), ((A, B), ())])
def test_bank_draws_follow_the_fresh_object_count_distribution(bank, have, not_have):
    """Conditioning on "shows anchor and target" must not favour 3-object images (a cue for yes)."""
    bank_counts, fresh_counts = _object_counts(bank, have, not_have), _object_counts(FreshImages(), have, not_have)
    for k in (1, 2, 3):
        assert abs(bank_counts[k] - fresh_counts[k]) / 600 < 0.08, (k, bank_counts, fresh_counts)


def test_bank_draws_meet_their_constraints(bank):
    rng = np.random.default_rng(2)
    for _ in range(200):
        have = tuple(rng.choice(CATEGORIES, size=int(rng.integers(0, 3)), replace=False))
        not_have = tuple(c for c in rng.choice(CATEGORIES, size=2, replace=False) if c not in have)
        image, cats = bank.draw(rng, have, not_have)
        assert isinstance(image, BankImage)
        assert set(have) <= set(cats) and not set(not_have) & set(cats)


def test_bank_features_give_the_same_logits_as_pixels(model_and_processor, bank):
    """A batch carrying cached features through mm_encoder_outputs == the pixel batch."""
    from laid.model.pixel_cache import preprocess_images

    model, proc = model_and_processor
    rng = np.random.default_rng(3)
    images = [FreshImages().draw(rng)[0] for _ in range(3)]
    pixels = preprocess_images(proc, images)
    banked = ImageBank._encode(model, proc, images, progress=False, desc="t")
    question = P.qs.single_needle_question(A, B)
    with torch.no_grad():
        ref = model(**encode_batch(proc, [Example(images, question, "yes")], with_answers=True)).logits
        batch = encode_batch(proc, [Example(banked, question, "yes")], with_answers=True)
        assert batch["pixel_values"].shape[0] == 0
        batch.pop("pixel_values")
        batch["mm_encoder_outputs"] = encoder_outputs([Example(banked, question, "yes")])
        got = model(**batch).logits
    assert len(pixels) == len(banked) == 3
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_encoder_outputs_only_for_all_bank_batches(bank):
    rng = np.random.default_rng(4)
    fresh = Example([FreshImages().draw(rng)[0]], "q", "yes")
    banked = Example([bank.draw(rng)[0]], "q", "yes")
    assert encoder_outputs([banked]) is not None
    assert encoder_outputs([fresh, banked]) is None


def test_a_small_bank_renders_missing_images_on_demand(model_and_processor):
    model, proc = model_and_processor
    small = ImageBank(model, proc, size=20, seed=0, progress=False)
    rng = np.random.default_rng(0)
    for _ in range(30):
        have = tuple(rng.choice(CATEGORIES, size=2, replace=False))
        image, cats = small.draw(rng, have, ())
        assert set(have) <= set(cats) and image is small.images[small.categories.index(cats)]
    assert 20 < len(small) <= 50 and small.table.shape == (len(small), len(CATEGORIES))
    with pytest.raises(ValueError, match="show and not show"):
        small.draw(rng, must_have=(A,), must_not_have=(A,))


@pytest.mark.parametrize("size", [1, 3, 8])
def test_minimal_pairs_share_the_haystack_and_flip_the_answer(bank, size):
    rng = np.random.default_rng(5)
    answers = Counter()
    for _ in range(60):
        pair = P.sample_needle_pair(rng, size, bank)
        first = pair[0]
        anchor = first.question.split("with a ")[1].split(",")[0]
        assert len(first.images) == size and len(first.needles) == 1
        answers[first.answer] += 1
        if len(pair) == 1:
            continue
        second = pair[1]
        assert second.images is first.images and second.needles == first.needles
        assert second.answer != first.answer
        assert second.question.split("with a ")[1].split(",")[0] == anchor
        needle = bank.categories[[im is first.images[first.needles[0]] for im in bank.images].index(True)]
        target = second.question.split("there a ")[1].split("?")[0]
        assert (target in needle) == (second.answer == "yes") and target != anchor
    assert min(answers.values()) > 15  # first questions stay balanced


def test_task_sampler_uses_pairs_and_the_bank(bank):
    from laid.zoo.configs import PretrainConfig

    cfg = PretrainConfig(caption_fraction=0.0, retrieval_caption_fraction=0.0, naming_fraction=0.0,
                         multi_needle_fraction=0.0, batch_size=16, max_haystack=3)
    batch = P.TaskSampler(cfg, np.random.default_rng(6), bank).batch()
    assert len(batch) == 16
    assert all(isinstance(im, BankImage) for ex in batch for im in ex.images)
    shared = sum(a.images is b.images for a, b in zip(batch[:-1], batch[1:]))
    assert shared >= 5  # most consecutive examples are pair twins
