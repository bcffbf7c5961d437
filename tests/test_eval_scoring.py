"""laid.eval.scoring on the random tiny zoo: margins vs a manual forward, batching invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from laid.data.questions import single_needle_question
from laid.data.render import sample_image
from laid.eval.metrics import is_compliant, reference_correct
from laid.eval.scoring import (
    estimate_input_tokens,
    plan_batches,
    resolve_answer_tokens,
    score_examples,
    yes_no_margin,
)
from laid.model.loading import load_model, load_processor
from laid.model.prompting import Example, encode_batch


@pytest.fixture(scope="module")
def student(random_zoo):
    torch.set_num_threads(1)
    d = random_zoo["tiny-7b"]
    return load_model(d, device="cpu"), load_processor(d)


def make_examples(sizes, seed=0):
    rng = np.random.default_rng(seed)
    q = single_needle_question("red circle", "blue square")
    return [Example([sample_image(rng)[0] for _ in range(n)], q, "yes" if i % 2 else "no") for i, n in enumerate(sizes)]


def test_answer_tokens_of_the_toy_tokenizer(student):
    model, processor = student
    tok = resolve_answer_tokens(processor.tokenizer, model.config.get_text_config().vocab_size)
    # Word-level and lower-casing: every spelling maps to the one "yes" / "no" word id.
    assert tok.yes == (processor.tokenizer.convert_tokens_to_ids("yes"),)
    assert tok.no == (processor.tokenizer.convert_tokens_to_ids("no"),)
    with pytest.raises(ValueError, match="vocabulary"):
        resolve_answer_tokens(processor.tokenizer, vocab_size=min(tok.yes + tok.no))


def test_yes_no_margin_is_logsumexp_difference():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0], [5.0, 0.0, 0.0, 0.0]])
    from laid.eval.scoring import AnswerTokens

    m = yes_no_margin(logits, AnswerTokens(yes=(0, 1), no=(2,)))
    expected = [np.log(np.exp(0) + np.exp(1)) - 2.0, np.log(np.exp(5) + 1) - 0.0]
    np.testing.assert_allclose(m.numpy(), expected, rtol=1e-6)


def test_logit_margin_matches_a_manual_forward(student):
    model, processor = student
    tok = resolve_answer_tokens(processor.tokenizer)
    examples = make_examples([1, 4, 9])
    with torch.inference_mode():
        scores = score_examples(model, processor, examples, tok)
        batch = encode_batch(processor, examples)
        full = model(**batch).logits  # (B, S, V): every position, no logits_to_keep
    manual = full[:, -1, tok.yes[0]] - full[:, -1, tok.no[0]]
    np.testing.assert_allclose([s.margin for s in scores], manual.numpy(), atol=1e-5)
    for s, ex in zip(scores, examples):
        assert s.correct == (("yes" if s.margin > 0 else "no") == ex.answer)
        assert s.compliant and s.reply is None
    assert [s.input_tokens for s in scores] == batch["attention_mask"].sum(1).tolist()


def test_batched_and_one_by_one_margins_agree(student):
    # Rows of very different lengths: left padding must not shift M-RoPE positions or leak attention.
    model, processor = student
    tok = resolve_answer_tokens(processor.tokenizer)
    examples = make_examples([1, 12, 3, 7], seed=1)
    with torch.inference_mode():
        batched = score_examples(model, processor, examples, tok)
        single = [score_examples(model, processor, [ex], tok)[0] for ex in examples]
    np.testing.assert_allclose([s.margin for s in batched], [s.margin for s in single], atol=1e-4)
    assert [s.input_tokens for s in batched] == [s.input_tokens for s in single]


def test_generation_scoring_uses_the_reference_rule(student):
    model, processor = student
    tok = resolve_answer_tokens(processor.tokenizer)
    examples = make_examples([2, 5], seed=2)
    with torch.inference_mode():
        gen = score_examples(model, processor, examples, tok, generate=True, max_new_tokens=3)
        logit = score_examples(model, processor, examples, tok)
    for g, lg, ex in zip(gen, logit, examples):
        assert isinstance(g.reply, str) and len(g.reply.split()) <= 3
        assert g.correct == reference_correct(g.reply, ex.answer)
        assert g.compliant == is_compliant(g.reply)
        assert g.margin == pytest.approx(lg.margin, abs=1e-4)  # first generated step = the answer position


def test_token_estimate_equals_the_encoded_length(student):
    _, processor = student
    for ex in make_examples([1, 6, 20], seed=3):
        est = estimate_input_tokens(processor, ex.question, [im.size for im in ex.images])
        assert est == encode_batch(processor, [ex])["input_ids"].shape[1]


def test_bad_ground_truth_is_a_clear_error(student):
    model, processor = student
    ex = make_examples([1])[0]
    ex.answer = "maybe"
    with pytest.raises(ValueError, match="yes' or 'no"):
        score_examples(model, processor, [ex], resolve_answer_tokens(processor.tokenizer))


def test_plan_batches_by_token_budget():
    # Sorted by length 10, 20, 30, 50, 100: [10, 20] costs 2 x 20 = 40 <= 60; adding 30 would cost 90.
    assert plan_batches([10, 50, 20, 100, 30], batch_tokens=60) == [[0, 2], [4], [1], [3]]
    assert plan_batches([1] * 5, batch_tokens=100, max_batch_size=2) == [[0, 1], [2, 3], [4]]
    assert plan_batches([500], batch_tokens=60) == [[0]]  # over budget: alone
    assert plan_batches([], batch_tokens=60) == []
    with pytest.raises(ValueError):
        plan_batches([1], batch_tokens=0)
