"""Zoo pretraining tasks: the haystacks follow the benchmark's rule, the naming task copies, the
vision stage learns."""

from __future__ import annotations

import numpy as np
import pytest

from laid.data import questions as qs
from laid.data.render import CATEGORIES
from laid.zoo import pretrain as P


def _parts(seed: int, size: int, n: int = 1, mode: str = "all"):
    return P._needle_parts(np.random.default_rng(seed), size, n, mode)


@pytest.mark.parametrize("size,n,mode", [(1, 1, "all"), (2, 1, "all"), (10, 1, "all"), (10, 3, "all"), (10, 2, "any")])
def test_haystack_recipe_follows_the_vhs_rule(size, n, mode):
    for seed in range(40):
        anchor, target, yes, recipes = _parts(seed, size, n, mode)
        assert len(recipes) == size and anchor != target
        needles = [have for have, _ in recipes if anchor in have]
        assert len(needles) == min(n, size)
        with_t = [target in have for have in needles]
        expected = all(with_t) if (n == 1 or mode == "all") else any(with_t)
        assert yes == expected
        for have, not_have in recipes:  # no image both requires and forbids a category
            assert not set(have) & set(not_have)
            if anchor not in have:
                assert anchor in not_have  # distractors never show the anchor


def test_target_count_does_not_give_the_answer_away():
    """The old sampler put the target in exactly one distractor, so "2 images show it" meant yes."""
    counts = {True: [], False: []}
    for seed in range(600):
        _, target, yes, recipes = _parts(seed, 10)
        counts[yes].append(sum(target in have for have, _ in recipes))
    assert min(counts[True]) >= 2 and min(counts[False]) >= 2  # the target is always in a distractor too
    assert abs(np.mean(counts[True]) - np.mean(counts[False])) < 0.3
    assert set(counts[True]) & set(counts[False]) == set(counts[True])  # every yes count also occurs for no


def test_naming_example_answers_with_a_word_of_its_question():
    answers = set()
    for seed in range(30):
        ex = P.sample_naming_example(np.random.default_rng(seed), 3)
        assert len(ex.images) == 3
        anchor = ex.question.split("with a ")[1].split(",")[0]
        target = ex.question.split("there a ")[1].split("?")[0]
        assert {anchor, target} <= set(CATEGORIES)
        if ex.question.endswith(qs.NAME_TARGET):
            assert ex.answer == target
        else:
            assert ex.question.endswith(qs.NAME_ANCHOR) and ex.answer == anchor
        answers.add(ex.question.endswith(qs.NAME_TARGET))
    assert answers == {True, False}


def test_naming_words_are_in_the_tokenizer():
    from laid.zoo.tokenizer import build_tokenizer

    tok = build_tokenizer()
    ids = tok(f"{qs.NAME_TARGET} {qs.NAME_ANCHOR}", add_special_tokens=False).input_ids
    assert tok.unk_token_id not in ids


def test_vision_stage_learns_the_categories():
    import torch

    from laid.zoo.build import build_model, build_processor
    from laid.zoo.configs import ZooModelConfig

    torch.manual_seed(0)
    cfg = ZooModelConfig(name="t", role="student", mirrors="none")
    cfg.pretrain.vision_batch_size = 32
    model, proc = build_model(cfg), build_processor()
    log = P.pretrain_vision(model, proc, cfg.pretrain, steps=80, progress=False)
    # BCE of a constant predictor at the category base rate (~2 of 12 present) is ~0.45.
    assert log["vision_loss"][0] > 0.4
    assert log["vision_loss"][-1] < log["vision_loss"][0] - 0.1, log["vision_loss"]


def test_category_schedule_limits_what_questions_name():
    from laid.zoo.configs import PretrainConfig

    cfg = PretrainConfig(caption_fraction=0.0, retrieval_caption_fraction=0.3, naming_fraction=0.3,
                         multi_needle_fraction=0.2, batch_size=4, max_haystack=4,
                         category_schedule=[[0, 3], [50, 12]], minimal_pairs=False)
    # (A pair's twin with answer yes may name any category its needle image shows.)
    sampler = P.TaskSampler(cfg, np.random.default_rng(0))

    def named(step):
        sampler.step = step
        words = set()
        for _ in range(40):
            for ex in sampler.batch():
                words |= {c for c in CATEGORIES if c in ex.question}
        return words

    early, late = named(0), named(50)
    assert early == set(CATEGORIES[:3])
    assert late == set(CATEGORIES)
    sampler.cfg = PretrainConfig(category_schedule=[])
    assert sampler.asked == CATEGORIES


@pytest.mark.parametrize("field,value,match", [
    ("category_schedule", [[0, 1]], "2 <= k <= 12"),
    ("category_schedule", [[0, 4, 9]], "from_step, k"),
    ("category_schedule", [[600, 8], [0, 4]], "must increase"),
    ("short_max_haystack", 0, "short_max_haystack"),
    ("image_bank_size", -1, "image_bank_size"),
    ("retrieval_attention_query", "anchr", "retrieval_attention_query"),
])
def test_bad_pretrain_settings_fail_with_one_line_naming_the_field(tmp_path, field, value, match):
    import yaml

    from laid.zoo.configs import load_zoo_config

    from zoo_helpers import ZOO_CONFIGS

    src = yaml.safe_load((ZOO_CONFIGS / "tiny-7b.yaml").read_text())
    src["pretrain"][field] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(src))
    with pytest.raises(ValueError, match=match) as e:
        load_zoo_config(path)
    assert "\n" not in str(e.value) and "tiny-7b" in str(e.value)
