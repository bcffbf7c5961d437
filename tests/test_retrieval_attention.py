"""The zoo's retrieval-attention loss: known values, masking, and the needle-token bookkeeping."""

from __future__ import annotations

import math

import pytest
import torch

from laid.zoo.retrieval_attention import RetrievalAttentionLoss, needle_token_mask

IMG = 9  # image pad token id in these hand-made rows


def test_uniform_attention_gives_minus_log_of_the_needle_share():
    B, H, S, D = 2, 2, 8, 4
    q = torch.zeros(B, H, S, D)  # zero queries: uniform attention over the visible keys
    k = torch.randn(B, 1, S, D)
    needles = torch.zeros(B, S, dtype=torch.bool)
    needles[0, [1, 2]] = True
    needles[1, [5]] = True
    key_mask = torch.ones(B, S)
    key_mask[1, :2] = 0  # row 1 is left-padded by two tokens
    query_pos = torch.tensor([5, 7])
    loss = RetrievalAttentionLoss(head=1)(q, k, query_pos, needles, key_mask)
    # row 0 sees positions 0..5 (6 keys, 2 needles); row 1 sees 2..7 (6 keys, 1 needle)
    expected = -(math.log(2 / 6) + math.log(1 / 6)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_loss_falls_when_the_head_looks_at_the_needle_and_ignores_future_keys():
    S, D = 6, 4
    k = torch.zeros(1, 1, S, D)
    k[0, 0, 2, 0] = 1.0  # the needle's key
    k[0, 0, 5, 0] = 100.0  # a key after the query position: must not count
    needles = torch.zeros(1, S, dtype=torch.bool)
    needles[0, 2] = True
    mask, pos = torch.ones(1, S), torch.tensor([4])
    loss_fn = RetrievalAttentionLoss()
    losses = []
    for strength in (0.0, 4.0, 16.0):
        q = torch.zeros(1, 1, S, D)
        q[0, 0, 4, 0] = strength
        losses.append(loss_fn(q, k, pos, needles, mask).item())
    assert losses[0] == pytest.approx(math.log(5))  # uniform over positions 0..4
    assert losses[0] > losses[1] > losses[2] > 0


def test_rows_without_needles_are_skipped_and_gradients_reach_q_and_k():
    q = torch.randn(2, 2, 5, 4, requires_grad=True)
    k = torch.randn(2, 1, 5, 4, requires_grad=True)
    needles = torch.zeros(2, 5, dtype=torch.bool)
    needles[0, 1] = True
    loss = RetrievalAttentionLoss()(q, k, torch.tensor([4, 4]), needles, torch.ones(2, 5))
    loss.backward()
    assert q.grad[0].abs().sum() > 0 and k.grad[0].abs().sum() > 0
    assert q.grad[1].abs().sum() == 0  # row 1 has no needle: no gradient
    none = RetrievalAttentionLoss()(q, k, torch.tensor([4, 4]), torch.zeros(2, 5, dtype=torch.bool), torch.ones(2, 5))
    assert none.item() == 0.0


def test_needle_token_mask_follows_each_rows_images_in_order():
    # row 0: pad, 2 images of 2 tokens; row 1: 3 images of 1, 2, 1 tokens
    ids = torch.tensor([[0, 5, IMG, IMG, 5, IMG, IMG, 5], [5, IMG, 5, IMG, IMG, 5, IMG, 5]])
    mask = needle_token_mask(ids, IMG, [2, 2, 1, 2, 1], [(1,), (0, 2)])
    assert mask[0].nonzero().squeeze(-1).tolist() == [5, 6]
    assert mask[1].nonzero().squeeze(-1).tolist() == [1, 6]
    with pytest.raises(ValueError, match="needle image 2"):
        needle_token_mask(ids, IMG, [2, 2, 1, 2, 1], [(2,), ()])
    with pytest.raises(ValueError, match="images"):
        needle_token_mask(ids, IMG, [2, 2, 1, 2, 1, 3], [(0,), ()])


def test_pretraining_marks_the_images_that_hold_the_anchor():
    import numpy as np

    from laid.zoo import pretrain as P

    for seed in range(20):
        for n in (1, 2, 3):
            anchor, _, _, recipes = P._needle_parts(np.random.default_rng(seed), 6, n, "any")
            ex = P.sample_needle_example(np.random.default_rng(seed), 6, n_needles=n, mode="any")
            assert ex.needles == tuple(i for i, (have, _) in enumerate(recipes) if anchor in have)
            assert len(ex.needles) == n
        rc = P.sample_retrieval_caption_example(np.random.default_rng(seed), 5)
        assert len(rc.needles) == 1 and 0 <= rc.needles[0] < 5


def test_anchor_positions_point_at_the_anchor_colour_word():
    import numpy as np
    import torch

    from laid.model.prompting import encode_batch
    from laid.zoo import pretrain as P
    from laid.zoo.build import build_processor

    proc = build_processor()
    rng = np.random.default_rng(3)
    examples = [P.sample_needle_example(rng, 3), P.sample_retrieval_caption_example(rng, 2), P.sample_needle_example(rng, 1)]
    batch = encode_batch(proc, examples, with_answers=True)  # left-padded: rows differ in length
    image_id = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    colours = torch.tensor(P.category_token_ids(proc))
    pos = P.anchor_positions(batch["input_ids"], image_id, colours)
    for row, ex in enumerate(examples):
        anchor = ex.question.split(" with a ")[1].split(",")[0].rstrip("?")  # e.g. "brown circle"
        words = proc.tokenizer.convert_ids_to_tokens(batch["input_ids"][row, pos[row] : pos[row] + 2].tolist())
        assert " ".join(words) == anchor
    no_object = encode_batch(proc, [P.sample_caption_example(rng)])["input_ids"]  # "What objects are in the image?"
    with pytest.raises(ValueError, match="names no object after its images"):
        P.anchor_positions(no_object, image_id, colours)


@pytest.mark.parametrize("query", ["answer", "anchor"])
def test_pretraining_with_the_loss_on_computes_and_logs_it(query):
    from laid.zoo import pretrain as P
    from laid.zoo.build import build_model, build_processor
    from laid.zoo.configs import ZooModelConfig

    cfg = ZooModelConfig(name="t", role="student", mirrors="none")
    p = cfg.pretrain
    p.retrieval_attention_weight, p.caption_fraction, p.max_haystack, p.batch_size = 1.0, 0.0, 4, 4
    p.retrieval_attention_query, p.retrieval_attention_layer = query, 0
    model, proc = build_model(cfg), build_processor()
    log = P.pretrain(model, proc, p, steps=3, progress=False)
    losses = [v for v in log["retrieval_attention_loss"] if v is not None]
    assert losses and all(0 < v < 10 for v in losses)


def test_supervised_anchor_head_learns_to_find_the_needle():
    """Training with the loss from the anchor word at layer 0 moves head 0's attention onto the needle image
    of held-out haystacks (fresh renders, never in the training bank)."""
    import numpy as np

    from laid.model.prompting import encode_batch
    from laid.zoo import pretrain as P
    from laid.zoo.build import build_model, build_processor
    from laid.zoo.configs import ZooModelConfig
    from laid.zoo.image_bank import encoder_outputs
    from laid.model.hooks import record_qk

    torch.manual_seed(0)
    cfg = ZooModelConfig(name="t", role="student", mirrors="none")
    cfg.text.initializer_range = 0.09
    p = cfg.pretrain
    p.retrieval_attention_weight, p.retrieval_attention_query, p.retrieval_attention_layer = 1.0, "anchor", 0
    p.caption_fraction, p.retrieval_caption_fraction, p.batch_size, p.image_bank_size = 0.0, 1.0, 8, 1000
    # Always 4 images: with 1-image haystacks in the mix the head first learns "the nearest image".
    p.min_haystack = p.max_haystack = p.short_max_haystack = 4
    model, proc = build_model(cfg), build_processor()
    P.pretrain_vision(model, proc, p, 100, progress=False)
    rng = np.random.default_rng(7)
    asked = P.CATEGORIES[:4]  # what the category curriculum (cfg.category_schedule) asks about in 100 steps
    held_out = [P.sample_needle_example(rng, 4, asked=asked) for _ in range(16)]
    assert encoder_outputs(held_out) is None  # fresh renders, not bank images
    batch = encode_batch(proc, held_out, with_answers=True)
    supervision = P._RetrievalSupervision(model, proc, "anchor")

    @torch.no_grad()
    def needle_mass() -> float:
        model.eval()
        with record_qk(model, layers=[0], sites=("q_rot", "k_rot")) as rec:
            model(**batch)
        return math.exp(-float(supervision(batch, held_out, rec)))  # geometric mean over rows

    before = needle_mass()  # ~ 4 needle tokens among ~70 visible ones
    P.pretrain(model, proc, p, steps=100, progress=False)
    after = needle_mass()
    assert before < 0.15 and after > max(0.3, 5 * before), (before, after)  # measured: 0.05 -> 0.42
