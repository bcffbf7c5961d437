"""The toy zoo in any supported family: a ZooModelConfig -> tokenizer, processor and HF config.

The zoo YAMLs describe a tiny model once (width, layers, heads, vision tower); each family turns
that into its own Hugging Face config with what the real family has and the toy must keep:
Qwen3-VL's interleaved M-RoPE, QK-norm and DeepStack; InternVL3's 1-D RoPE and <img> blocks;
Gemma 3's sliding local layers (every other layer, window `GEMMA_WINDOW` tokens, about ten toy
images), two RoPE bases (1e4 local; 1e6 with linear x8 global, as the published configs), image
blocks and a scale query_pre_attn_scalar ** -0.5 that differs from head_dim ** -0.5 (as in 27B).
Tokenizers share the synthetic task's words and carry the family's special tokens and chat format.
The shipped zoo stays Qwen2.5-VL (`ZooModelConfig.to_hf`); `laid zoo --family F` uses this module.
"""

from __future__ import annotations

import torch
from transformers import Gemma3Config, InternVLConfig, Qwen2VLConfig, Qwen3VLConfig
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

from laid.model.families import FAMILIES, family_named
from laid.model.processor import build_image_processor
from laid.zoo import tokenizer as tk
from laid.zoo.configs import ZooModelConfig

GEMMA_WINDOW = 64  # toy sliding window in tokens (real: 1024 of ~256-token images)
QWEN3_PATCH = 16  # Qwen3-VL's patch size: one token per 32 x 32 px after the 2x2 merge

_QWEN_TURNS = tk.CHAT_TEMPLATE
INTERNVL = tk.TokenizerSpec(
    special_tokens=(tk.PAD, tk.IM_START, tk.IM_END, "<img>", "</img>", "<IMG_CONTEXT>", "<video>"),
    chat_template=_QWEN_TURNS.replace("<|vision_start|><|image_pad|><|vision_end|>", "<IMG_CONTEXT>"),
    named={"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
           "video_token": "<video>"},
)
GEMMA = tk.TokenizerSpec(
    special_tokens=("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                    "<end_of_image>", "<image_soft_token>"),
    pad="<pad>", eos="<eos>",
    chat_template=(
        "<bos>{% for message in messages %}"
        "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for item in message['content'] %}"
        "{% if item['type'] == 'image' %}<start_of_image>"
        "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
        "{% endfor %}{% endif %}<end_of_turn>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    ),
    named={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"},
    extra_words=("model",),
)
SPECS = {"qwen2_5_vl": tk.QWEN, "qwen2_vl": tk.QWEN, "qwen3_vl": tk.QWEN, "internvl": INTERNVL, "gemma3": GEMMA}
FAMILY_NAMES = tuple(FAMILIES)


def build_tokenizer(family: str = "qwen2_5_vl"):
    return tk.build_tokenizer(SPECS[family_named(family).name])


def image_size(family: str, cfg: ZooModelConfig) -> int:
    """Pixels per side the family's toy processor resizes an image to (Qwen3-VL: a multiple of 32)."""
    if family == "qwen3_vl":
        return max(2, round(cfg.image_size / (2 * QWEN3_PATCH))) * 2 * QWEN3_PATCH
    return cfg.image_size


def tokens_per_image(family: str, cfg: ZooModelConfig) -> int:
    patch = QWEN3_PATCH if family == "qwen3_vl" else cfg.vision.patch_size
    side = image_size(family, cfg) // patch
    return side * side // 4  # 2x2 merge (Qwen), pixel shuffle 0.5 (InternVL), 2x2 pooling (Gemma toy)


def build_processor(family: str, cfg: ZooModelConfig):
    fam, tok, size = family_named(family), build_tokenizer(family), image_size(family, cfg)
    if family in ("qwen2_5_vl", "qwen2_vl", "qwen3_vl"):
        patch = QWEN3_PATCH if family == "qwen3_vl" else cfg.vision.patch_size
        return fam.processor_class(build_image_processor(size, patch, cfg.vision.spatial_merge_size), tok,
                                   chat_template=tok.chat_template)
    square = {"height": size, "width": size}
    if family == "internvl":
        ip = GotOcr2ImageProcessorPil(size=square, crop_to_patches=False)
    else:
        ip = Gemma3ImageProcessorPil(size=square)
    return fam.processor_class(ip, tok, image_seq_length=tokens_per_image(family, cfg), chat_template=tok.chat_template)


def _text(cfg: ZooModelConfig, **extra) -> dict:
    t = cfg.text
    return dict(vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
                num_key_value_heads=t.num_key_value_heads, max_position_embeddings=t.max_position_embeddings,
                initializer_range=t.initializer_range, **extra)


def init_toy(model, family: str, cfg: ZooModelConfig) -> None:
    """Family-specific initialisation of a random toy. Gemma 3 zero-initialises its image projection
    (transformers' _init_weights), so every image token of a random toy would enter the LM as the
    same zero vector (attention over an image uniform, image Q/K of layer 0 zero); a random toy gets
    the text's init instead, so untrained toys and the tests see distinct image tokens."""
    if family == "gemma3":
        with torch.no_grad():
            model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, cfg.text.initializer_range)


def interleaved_section(n_pairs: int) -> list[int]:
    """[T, H, W] counts for Qwen3-VL's interleaved layout: H = W = n_pairs // 3 (3 W <= n_pairs)."""
    hw = n_pairs // 3
    return [n_pairs - 2 * hw, hw, hw]


def hf_config(family: str, cfg: ZooModelConfig, tokenizer, **text_overrides):
    """The family's Hugging Face config for the toy `cfg`; text_overrides go into its text config."""
    family = family_named(family).name
    if family == "qwen2_5_vl":
        hf = cfg.to_hf(tokenizer)
        for k, v in text_overrides.items():
            setattr(hf.text_config, k, v)
        return hf
    cfg.validate()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECS[family].special_tokens}
    t, v, d = cfg.text, cfg.vision, cfg.head_dim
    tie = {"tie_word_embeddings": t.tie_word_embeddings}
    if family in ("qwen2_vl", "qwen3_vl"):
        qwen_ids = dict(image_token_id=ids[tk.IMAGE_PAD], video_token_id=ids[tk.VIDEO_PAD],
                        vision_start_token_id=ids[tk.VISION_START], vision_end_token_id=ids[tk.VISION_END])
        special = dict(bos_token_id=None, eos_token_id=ids[tk.IM_END], pad_token_id=ids[tk.PAD])
        if family == "qwen2_vl":
            rope = {"rope_type": "default", "rope_theta": t.rope_theta, "mrope_section": list(t.mrope_section)}
            vision = dict(depth=v.depth, embed_dim=v.hidden_size, hidden_size=t.hidden_size, num_heads=v.num_heads,
                          mlp_ratio=max(1, v.intermediate_size // v.hidden_size), patch_size=v.patch_size,
                          spatial_merge_size=v.spatial_merge_size, temporal_patch_size=2)
            return Qwen2VLConfig(text_config=_text(cfg, rope_parameters=rope, **special, **text_overrides),
                                 vision_config=vision, **qwen_ids, **tie)
        rope = {"rope_type": "default", "rope_theta": t.rope_theta, "mrope_section": interleaved_section(d // 2),
                "mrope_interleaved": True}
        side = image_size(family, cfg) // QWEN3_PATCH
        vision = dict(depth=v.depth, hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_heads=v.num_heads,
                      out_hidden_size=t.hidden_size, patch_size=QWEN3_PATCH, spatial_merge_size=v.spatial_merge_size,
                      temporal_patch_size=2, num_position_embeddings=side * side,
                      deepstack_visual_indexes=list(range(min(2, v.depth))))
        return Qwen3VLConfig(text_config=_text(cfg, head_dim=d, rope_parameters=rope, **special, **text_overrides),
                             vision_config=vision, **qwen_ids, **tie)
    vision = dict(hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_hidden_layers=v.depth,
                  num_attention_heads=v.num_heads)
    size = image_size(family, cfg)
    if family == "internvl":
        text = _text(cfg, model_type="qwen2", rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta},
                     bos_token_id=None, eos_token_id=ids[tk.IM_END], pad_token_id=ids[tk.PAD], **tie, **text_overrides)
        return InternVLConfig(text_config=text, vision_config={**vision, "image_size": [size, size],
                                                              "patch_size": [v.patch_size, v.patch_size]},
                              image_token_id=ids["<IMG_CONTEXT>"], image_seq_length=tokens_per_image(family, cfg), **tie)
    layer_types = ["full_attention" if (i + 1) % 2 == 0 else "sliding_attention" for i in range(t.num_hidden_layers)]
    rope = {"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0}}
    text = _text(cfg, head_dim=d, query_pre_attn_scalar=int(1.5 * d), sliding_window=GEMMA_WINDOW,
                 layer_types=layer_types, rope_parameters=rope, pad_token_id=ids["<pad>"], bos_token_id=ids["<bos>"],
                 eos_token_id=ids["<end_of_turn>"], **tie)
    text.update(text_overrides)
    return Gemma3Config(text_config=text, vision_config={**vision, "image_size": size, "patch_size": v.patch_size},
                        mm_tokens_per_image=tokens_per_image(family, cfg), image_token_index=ids["<image_soft_token>"],
                        boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"], **tie)
