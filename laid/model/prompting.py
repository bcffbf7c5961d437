"""Turn a haystack (images + question [+ answer]) into model inputs, for any supported family.

The prompt follows the reference Visual Haystacks protocol: all images first in one user turn,
then "You are given a set of images. Please answer the following question in Yes or No: " and the
question. The chat template of the processor (toy or real, any family) renders the turn, so the same
code serves all. Batches are left-padded so the last position of every row is the answer position;
an answer ends with the family's end-of-turn text (`Family.end_of_turn`).

Images may be PIL images, image paths or preprocessed `ImagePixels`; with a `PixelCache`, each
distinct image file is preprocessed once (laid/model/pixel_cache.py) and the batch is the same, tensor
for tensor, as the processor's. The cache serves the families whose images are patch grids
(`Family.pixel_cache`: the Qwen-VL ones); for the others (InternVL3, Gemma 3) image paths are loaded
and the processor preprocesses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from laid.data.vhs import load_image
from laid.model.families import family_of
from laid.model.pixel_cache import ImageLike, PixelCache, encode_from_pixels, to_pixels

VHS_INSTRUCTION = "You are given a set of images. Please answer the following question in Yes or No: "


@dataclass
class Example:
    images: list[ImageLike]  # PIL images, image file paths, or ImagePixels
    question: str
    answer: str | None = None  # "yes" / "no" (or any text) for training and SFT
    # Zoo pretraining only: indices (into `images`) of the images that hold the question's anchor;
    # a retrieval head is supervised with them (laid/zoo/retrieval_attention.py). () = unknown.
    needles: tuple[int, ...] = ()


def build_messages(n_images: int, question: str, instruction: str = VHS_INSTRUCTION) -> list[dict]:
    content = [{"type": "image"} for _ in range(n_images)]
    content.append({"type": "text", "text": instruction + question})
    return [{"role": "user", "content": content}]


def render_prompt(processor, n_images: int, question: str, instruction: str = VHS_INSTRUCTION) -> str:
    return processor.apply_chat_template(
        build_messages(n_images, question, instruction), tokenize=False, add_generation_prompt=True
    )


def answer_suffix(processor) -> str:
    """Text that ends an assistant turn in this processor's chat format."""
    return family_of(processor).answer_suffix(processor)


def encode_batch(
    processor,
    examples: list[Example],
    with_answers: bool = False,
    instruction: str = VHS_INSTRUCTION,
    pixel_cache: PixelCache | None = None,
):
    """Encode a batch. Returns a dict of tensors for the model, plus `labels` when with_answers.

    Shapes: input_ids / attention_mask (B, S), the family's image-token markers (B, S)
    (mm_token_type_ids; Gemma 3: token_type_ids); Qwen-VL: pixel_values (P, C*T*ph*pw) and
    image_grid_thw (n_images_total, 3), InternVL3 / Gemma 3: pixel_values (tiles, C, H, W);
    labels (B, S) with -100 everywhere except answer tokens.
    Image paths are looked up in `pixel_cache` (preprocessed on a miss); the result does not
    depend on whether a cache is used.
    """
    texts, images, per_row = [], [], []
    prompt_lens = []
    for ex in examples:
        prompt = render_prompt(processor, len(ex.images), ex.question, instruction)
        if with_answers:
            if ex.answer is None:
                raise ValueError("encode_batch(with_answers=True) needs every example to have an answer")
            prompt_lens.append(prompt)
            prompt = prompt + ex.answer + answer_suffix(processor)
        texts.append(prompt)
        images.extend(ex.images)
        per_row.append(list(ex.images))
    tok = processor.tokenizer
    tok.padding_side = "left"
    if not family_of(processor).pixel_cache:
        pixel_cache = None  # grid-free image processors (tiles, fixed size): the processor's own path
        if any(not isinstance(im, (Image.Image, str, Path)) for im in images):
            raise ValueError(f"{type(processor).__name__} takes PIL images or image paths, not preprocessed ImagePixels")
    if pixel_cache is None and all(isinstance(im, (Image.Image, str, Path)) for im in images):
        # One list of images per row: Gemma 3's processor checks them row by row.
        nested = [[load_image(im) if isinstance(im, (str, Path)) else im for im in row] for row in per_row]
        batch = dict(processor(text=texts, images=nested if images else None, return_tensors="pt", padding=True))
    else:
        batch = encode_from_pixels(processor, texts, to_pixels(processor, images, pixel_cache))
    if with_answers:
        # Answer tokens = the tail of each row after its prompt; count them on the text alone.
        labels = torch.full_like(batch["input_ids"], -100)
        for i, ex in enumerate(examples):
            n_ans = len(tok(ex.answer + answer_suffix(processor), add_special_tokens=False).input_ids)
            labels[i, -n_ans:] = batch["input_ids"][i, -n_ans:]
        batch["labels"] = labels
    return batch
