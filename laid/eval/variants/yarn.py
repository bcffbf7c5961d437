"""YaRN for any supported family through transformers' own RoPE code (Peng et al. 2024).

`load_model(dir, factor=F, original_max_position_embeddings=N)` loads the folder with the text
config's rope_parameters switched to
    {"rope_type": "yarn", "factor": F, "original_max_position_embeddings": N, <the other keys unchanged:
     rope_theta, mrope_section, Qwen3-VL's mrope_interleaved>}
so transformers' ROPE_INIT_FUNCTIONS["yarn"] computes the interpolated inverse frequencies and the
attention (cos/sin) scaling 0.1 ln F + 1, and the family's RoPE (M-RoPE sections, contiguous or
interleaved, or 1-D) applies them as usual. Text and image positions share the same frequencies, so
YaRN covers both (the paper's "applying YaRN's RoPE frequency interpolation to textual embeddings
... and potentially to visual").

Where it applies: to the layers whose RoPE spans the context (`Family.long_rope_layers`): all of
them, except in Gemma 3, whose per-layer-type rope_parameters get YaRN on the full-attention type
only (its sliding layers see a 1024-token window, inside their trained range). Only default RoPE is
extended: a layer type already scaled (the published Gemma 3 4B-27B full layers: linear x8) is
refused in one line, since YaRN on top of another scaling is a different method.

N must be explicit: transformers silently falls back to max_position_embeddings when it is
missing, which for real Qwen2.5-VL (128000) would make YaRN a no-op-like change. Default N (see
`training_length`): the longest position span the model was trained on, read from laid_zoo.json
(`pretrain_log.max_position`, written by zoo pretraining) when recorded, else
max_position_embeddings / F (real Qwen2.5-VL: 128000 / 4 = 32000, about its 32768 training length).
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoConfig

from laid.model.families import family_of
from laid.model.loading import check_model_dir
from laid.model.loading import load_model as load_plain


def training_length(model_dir: str | Path, factor: float = 4.0) -> int:
    """Positions the model was trained on: laid_zoo.json pretrain_log.max_position, else max_pos / factor."""
    path = check_model_dir(model_dir)
    zoo = path / "laid_zoo.json"
    if zoo.is_file():
        recorded = json.loads(zoo.read_text()).get("pretrain_log", {}).get("max_position")
        if recorded:
            return int(recorded)
    max_pos = AutoConfig.from_pretrained(path).get_text_config().max_position_embeddings
    return max(1, int(max_pos / factor))


def yarn_config(model_dir: str | Path, factor: float = 4.0, original_max_position_embeddings: int | None = None):
    """The folder's config with YaRN rope_parameters in its text config."""
    if factor <= 1.0:
        raise ValueError(f"YaRN factor must be > 1 (it extends the context by that much), got {factor}")
    path = check_model_dir(model_dir)
    family = family_of(path)
    cfg = AutoConfig.from_pretrained(path)
    text = cfg.get_text_config()
    n = original_max_position_embeddings or training_length(path, factor)
    params = dict(text.rope_parameters)
    nested = all(isinstance(v, dict) for v in params.values())  # one entry per layer type (Gemma 3)
    types = {family.layer_types(cfg)[i] for i in family.long_rope_layers(cfg)} if nested else {None}
    for kind in types:
        rope = dict(params[kind] if nested else params)
        if rope.get("rope_type", "default") != "default":
            where = f"{kind} layers" if nested else "its text layers"
            raise ValueError(f"{path}: YaRN does not apply to this {family.label} model: {where} already use rope_type "
                             f"{rope['rope_type']!r} (YaRN extends default RoPE only)")
        rope.update(rope_type="yarn", factor=float(factor), original_max_position_embeddings=int(n))
        params = {**params, kind: rope} if nested else rope
    text.rope_parameters = params
    return cfg


def load_model(model_dir: str | Path, device=None, dtype=None, factor: float = 4.0,
               original_max_position_embeddings: int | None = None, **kw):
    """laid.model.loading.load_model with YaRN RoPE (factor, original_max_position_embeddings)."""
    cfg = yarn_config(model_dir, factor, original_max_position_embeddings)
    return load_plain(model_dir, device=device, dtype=dtype, config=cfg, **kw)
