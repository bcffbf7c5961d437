"""A word-level tokenizer for the synthetic Visual Haystacks vocabulary, with a family's special tokens.

Built offline with the `tokenizers` library and wrapped in `PreTrainedTokenizerFast`, so it saves
into and loads from a model folder like any Hugging Face tokenizer. The special tokens and the chat
template carry the same names and format as the real family's (`TokenizerSpec`: Qwen's by default,
also InternVL3's and Gemma 3's), so prompts are written once for toy and real models.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from laid.data.render import COLOURS, SHAPES

PAD = "<|endoftext|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
SPECIAL_TOKENS = [PAD, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD]
UNK = "[UNK]"

# Every word the synthetic task, the reference VHs prompt and the chat template use.
TASK_WORDS = (
    "yes no for the image images with a an is are there any all of in what objects "
    "you given set please answer following question or system user assistant helpful "
    "do look which object marks"
).split()
PUNCTUATION = [",", ".", "?", ":", "!"]

# Qwen-style chat template: images come as <|vision_start|><|image_pad|><|vision_end|>; the
# processor expands each <|image_pad|> to the image's number of merged patches.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TokenizerSpec:
    """A family's special tokens (ids 0.. in this order), pad / eos, the named ones its processor
    reads as tokenizer attributes (e.g. Gemma 3's `boi_token`), extra words and its chat template."""

    special_tokens: tuple[str, ...] = tuple(SPECIAL_TOKENS)
    pad: str = PAD
    eos: str = IM_END
    chat_template: str = CHAT_TEMPLATE
    named: dict[str, str] = field(default_factory=dict)
    extra_words: tuple[str, ...] = ()


QWEN = TokenizerSpec()


def vocabulary(spec: TokenizerSpec = QWEN) -> list[str]:
    """Tokens in id order: special tokens first (as in Qwen, they get fixed low ids here)."""
    words = list(dict.fromkeys([*TASK_WORDS, *COLOURS, *SHAPES, *PUNCTUATION, *spec.extra_words]))
    return [*spec.special_tokens, UNK, *words]


def build_tokenizer(spec: TokenizerSpec = QWEN) -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(vocabulary(spec))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()  # words and punctuation runs
    core.decoder = decoders.WordPiece(prefix="##")  # joins tokens with spaces
    kw = {"extra_special_tokens": dict(spec.named)} if spec.named else {"additional_special_tokens": list(spec.special_tokens)}
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token=UNK, pad_token=spec.pad, eos_token=spec.eos,
                                  model_max_length=1 << 20, padding_side="left", **kw)
    if spec.named:  # both keywords at construction would silently drop the list
        tok.add_special_tokens({"additional_special_tokens": list(spec.special_tokens)}, replace_extra_special_tokens=False)
    tok.chat_template = spec.chat_template
    return tok
