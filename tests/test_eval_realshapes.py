"""What of the evaluation depends on the real Qwen2.5-VL-7B shapes, checked without weights.

What this covers: the model built from the 7B config on the meta device (no memory), the answer
logits taken at one position (logits_to_keep), yes/no id resolution on a byte-level BPE tokenizer
that, like Qwen's, has distinct ids for "yes", "Yes", " yes", " Yes", and token counting / batch
planning with the real image processor settings (448x448 -> 256 tokens).
What it cannot cover: accuracy, numerics, or the real tokenizer's exact ids (no weights or
tokenizer files can be downloaded here); run `laid eval --model <Qwen2.5-VL folder>` for that.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from laid.eval.scoring import (
    answer_logits,
    estimate_input_tokens,
    image_token_count,
    plan_batches,
    resolve_answer_tokens,
    yes_no_margin,
)
from laid.model.prompting import Example, encode_batch
from laid.model.processor import LaidQwen2_5_VLProcessor
from laid.zoo.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS

VOCAB_7B = 152064


def qwen7b_config() -> Qwen2_5_VLConfig:
    """Qwen2.5-VL-7B shapes (docs: platform-facts.md; vision tower as published)."""
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
            num_key_value_heads=4, vocab_size=VOCAB_7B, max_position_embeddings=128000,
            rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[16, 24, 24]),
        ),
        vision_config=dict(
            depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
            fullatt_block_indexes=[7, 15, 23, 31],
        ),
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
    )  # fmt: skip
    cfg._attn_implementation = "sdpa"
    return cfg


def bpe_tokenizer(corpus: list[str]) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 / Qwen style: " yes" is its own token "Ġyes")."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(corpus * 50, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<|endoftext|>", eos_token="<|im_end|>",
        additional_special_tokens=SPECIAL_TOKENS, padding_side="left",
    )  # fmt: skip
    tok.chat_template = CHAT_TEMPLATE
    return tok


ANSWERS = ["Yes", "yes", "No", "no", "Yes.", "No.", "The answer is yes", "I say no", "Yes it is", "No it is not"]


def test_7b_model_on_meta_has_the_real_size_and_keeps_one_logit_row():
    torch.set_num_threads(1)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(qwen7b_config())
    n_params = sum(p.numel() for p in model.parameters())
    assert 8.2e9 < n_params < 8.4e9  # "7B" is 8.29B parameters with the vision tower
    assert model.config.get_text_config().vocab_size == VOCAB_7B
    # Text-only pass (image positions need real values; .tolist() is impossible on meta tensors).
    ids = torch.zeros(2, 4096, dtype=torch.long, device="meta")
    logits = answer_logits(model, {"input_ids": ids})
    # (B, V), not (B, S, V): at 53.6k tokens (150 images) full fp32 logits would be 32.6 GB per row.
    assert tuple(logits.shape) == (2, VOCAB_7B)
    tokens = resolve_answer_tokens(bpe_tokenizer(ANSWERS), vocab_size=VOCAB_7B)
    assert tuple(yes_no_margin(logits, tokens).shape) == (2,)


def test_bpe_tokenizer_gives_every_single_token_spelling():
    tok = bpe_tokenizer(ANSWERS)
    answers = resolve_answer_tokens(tok)
    for word, ids in (("yes", answers.yes), ("no", answers.no)):
        assert len(ids) >= 3  # e.g. "yes", "Yes", "Ġyes" are different ids in byte-level BPE
        assert all(tok.decode([i]).strip().lower() == word for i in ids)
    assert len(set(answers.yes) | set(answers.no)) == len(answers.yes) + len(answers.no)


def test_tokenizer_without_single_token_yes_is_a_clear_error():
    tok = bpe_tokenizer(["No", "no", "No.", "I say no", "maybe"])  # "yes" never seen: split into bytes
    with pytest.raises(ValueError, match="no single-token spelling of 'yes'.*--generate"):
        resolve_answer_tokens(tok)


@pytest.fixture(scope="module")
def real_image_processor_setup():
    # Qwen2.5-VL's published preprocessor settings: 14 px patches, 2x2 merge, pixels in [3136, 12845056].
    ip = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056, patch_size=14, merge_size=2, temporal_patch_size=2)
    tok = bpe_tokenizer(ANSWERS + ["You are given a set of images. Please answer the following question in Yes or No:"])
    return LaidQwen2_5_VLProcessor(ip, tok, chat_template=tok.chat_template)


def test_real_image_token_counts(real_image_processor_setup):
    processor = real_image_processor_setup
    assert image_token_count(processor, 448, 448) == 256  # 32 x 32 patches / (2 x 2)
    assert image_token_count(processor, 640, 480) == 391  # a typical COCO image: 644 x 476 -> 46 x 34 / 4
    # The estimate (from sizes only) equals the encoded prompt for 448 px images.
    example = Example([Image.new("RGB", (448, 448), "white")] * 2, "For the image with a cat, is there a dog?", "yes")
    encoded = encode_batch(processor, [example])["input_ids"].shape[1]
    assert estimate_input_tokens(processor, example.question, [(448, 448)] * 2) == encoded


def test_batches_by_token_budget_with_real_image_counts(real_image_processor_setup):
    processor = real_image_processor_setup
    q = "For the image with a cat, is there a dog?"
    sizes = [1, 5, 10, 20, 50, 100, 150]
    counts = [estimate_input_tokens(processor, q, [(448, 448)] * n) for n in sizes for _ in range(4)]
    assert counts[-1] > 150 * 256  # 38.4k vision tokens + text
    batches = plan_batches(counts, batch_tokens=16384, max_batch_size=32)
    for b in batches:
        assert len(b) == 1 or len(b) * max(counts[i] for i in b) <= 16384
    by_size = {n: [b for b in batches if any(i // 4 == k for i in b)] for k, n in enumerate(sizes)}
    assert len(by_size[1]) == 1 and len(by_size[1][0]) > 4  # short haystacks share a pass (1- and 5-image)
    assert all(len(b) == 1 for b in by_size[50] + by_size[100] + by_size[150])  # long ones run alone
    assert sorted(i for b in batches for i in b) == list(range(len(counts)))
