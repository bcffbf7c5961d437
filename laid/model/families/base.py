"""What a model family must say about itself, and the two small value types it says it with.

A `Family` adapter owns everything that differs between the VLM families the workbench supports
(Qwen2.5-VL, Qwen2-VL, Qwen3-VL, InternVL3, Gemma 3): where the text decoder is, the position ids
RoPE rotates by, each layer's rotary layout, mask and scale, where a RoPE gain folds, the prompt's
end-of-turn text, the image token and the vision tower's parameters. Generic code (hooks, losses,
recipe, analysis) asks the adapter (`laid.model.families.family_of`) and assumes nothing else.

Shared by all five families, so fixed here rather than per adapter:
- the decoder layers live at `<model>.model.language_model.layers[i]` and each has
  `self_attn.{q_proj,k_proj,v_proj}` (InternVL: `language_model` is a Qwen2 model);
- text attention goes through transformers' `ALL_ATTENTION_FUNCTIONS`, which receives post-RoPE
  q (B, H, S, D) and k (B, H_kv, S, D) (`laid.model.hooks.record_qk` relies on it);
- RoPE rotates dims (p, p + D/2) together (transformers' `rotate_half`): rotary pair p;
- pre-RoPE q / k are the output of `self_attn.q_norm` / `k_norm` where the family has a per-head
  QK-norm (Qwen3-VL, Gemma 3) and of `q_proj` / `k_proj` otherwise (`pre_rope_module`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

AXES_MROPE = ("temporal", "height", "width")
AXES_1D = ("position",)
FULL = "full_attention"
SLIDING = "sliding_attention"


@dataclass(frozen=True)
class RotaryLayout:
    """Frequency and position axis of every rotary pair of one text layer.

    inv_freq (P,) float64: radians per position of pair p (as the model's rotary module holds it,
    YaRN / linear scaling included); axis (P,): index into `axis_names` of the position component
    that rotates pair p (M-RoPE: temporal / height / width; 1-D RoPE: the one position).
    """

    inv_freq: torch.Tensor
    axis: tuple[int, ...]
    axis_names: tuple[str, ...] = AXES_1D
    attention_scaling: float = 1.0  # multiplies cos/sin (YaRN's 0.1 ln F + 1; 1 otherwise)

    def __post_init__(self):
        if len(self.axis) != len(self.inv_freq):
            raise ValueError(f"rotary layout has {len(self.inv_freq)} frequencies but {len(self.axis)} axes")

    @property
    def n_pairs(self) -> int:
        return len(self.axis)

    def axis_labels(self) -> list[str]:
        return [self.axis_names[a] for a in self.axis]

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """positions (A, B, S) -> rotation angle (B, S, P) of every pair at every token."""
        axis = torch.tensor(self.axis, device=positions.device)
        pos = positions.double().permute(1, 2, 0)[..., axis]  # (B, S, P): each pair's own component
        return pos * self.inv_freq.to(positions.device)

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Apply this RoPE to pre-RoPE x (B, H, S, D) at positions (A, B, S), in float64."""
        a = self.angles(positions)[:, None]  # (B, 1, S, P)
        cos, sin = torch.cat([a.cos(), a.cos()], -1), torch.cat([a.sin(), a.sin()], -1)
        half = x.shape[-1] // 2
        xd = x.double()
        rot = torch.cat([-xd[..., half:], xd[..., :half]], -1)  # rotate_half
        return (xd * cos + rot * sin) * self.attention_scaling

    def signature(self) -> tuple:
        """Hashable summary for comparing two models' layers (frequencies to 6 significant digits)."""
        return tuple(float(f"{f:.6g}") for f in self.inv_freq.tolist()), self.axis, self.axis_names, round(self.attention_scaling, 6)


@dataclass
class AttentionPattern:
    """Which keys a query row of one layer sees, and the logit scale: the layer's real attention.

    Beyond padding: causal (key j <= query i), or inside the same bidirectional block (`blocks`
    (B, S) long, -1 outside any block: Gemma 3's image blocks), and then within the sliding window
    (i - j < sliding_window, token indices) on sliding layers. Logits are q . k * scaling.
    """

    scaling: float
    sliding_window: int | None = None
    blocks: torch.Tensor | None = None
    _block_end: torch.Tensor | None = field(default=None, repr=False)

    @classmethod
    def causal(cls, head_dim: int) -> "AttentionPattern":
        """Plain causal attention at head_dim ** -0.5: Qwen2.5-VL's, and the degenerate reading
        of a family with windows, blocks or another scale (kept as the ablation the tests fail)."""
        return cls(scaling=head_dim**-0.5)

    def visible(self, rows: torch.Tensor, n_keys: int) -> torch.Tensor:
        """(1 or B, c, n_keys) bool: keys [0, n_keys) that query tokens `rows` (c,) see by the rule
        (causal | same block, then & window); padding is the caller's business."""
        i = rows[:, None]  # (c, 1)
        j = torch.arange(n_keys, device=rows.device)[None, :]  # (1, n)
        ok = (j <= i)[None]  # (1, c, n)
        if self.blocks is not None:
            blocks = self.blocks.to(rows.device)
            bq, bk = blocks[:, rows][:, :, None], blocks[:, :n_keys][:, None, :]  # (B, c, 1), (B, 1, n)
            ok = ok | ((bq == bk) & (bq >= 0))
        if self.sliding_window is not None:
            ok = ok & (j > i - self.sliding_window)[None]
        return ok

    def allowed(self, start: int, n_rows: int, n_keys: int, key_valid: torch.Tensor, query_valid: torch.Tensor) -> torch.Tensor:
        """(B, 1, c, n_keys) bool for query rows [start, start + c) and keys [0, n_keys).

        key_valid (B, n_keys), query_valid (B, c) bool (padding False). A padding query row keeps its
        diagonal so a softmax over it stays finite (callers drop those rows)."""
        rows = torch.arange(start, start + n_rows, device=key_valid.device)
        ok = self.visible(rows, n_keys) & key_valid[:, None, :] & query_valid[:, :, None]
        ok = ok | ((torch.arange(n_keys, device=rows.device)[None, :] == rows[:, None])[None] & ~query_valid[:, :, None])
        return ok[:, None]

    def key_stop(self, start: int, stop: int) -> int:
        """Keys [0, key_stop) hold every key a row in [start, stop) can see (later image-block keys)."""
        return self.rows_key_stop(torch.arange(start, stop))

    def rows_key_stop(self, rows: torch.Tensor) -> int:
        """Keys [0, key_stop) hold every key query tokens `rows` can see."""
        last = int(rows.max()) + 1
        if self.blocks is None:
            return last
        if self._block_end is None:
            self._block_end = block_ends(self.blocks)
        return max(last, int(self._block_end[:, rows.to(self._block_end.device)].max()) + 1)

    def select(self, index: torch.Tensor, row: int = 0) -> "AttentionPattern":
        """The pattern of one row (batch index `row`) restricted to the tokens `index` (S',), e.g.
        with the padding removed. The window stays in token-index units, which dropping left padding
        does not change."""
        blocks = None if self.blocks is None else self.blocks[row:row + 1, index.to(self.blocks.device)]
        return AttentionPattern(self.scaling, self.sliding_window, blocks)


def require_pattern(pattern, what: str) -> AttentionPattern:
    """`pattern` if it is an AttentionPattern, else one line refusing `what`: no mask is ever assumed
    (a Gemma 3 layer read as causal would silently drop its window, image blocks and scale)."""
    if not isinstance(pattern, AttentionPattern):
        raise ValueError(f"{what} needs its layer's AttentionPattern (family.attention_pattern(model, layer, batch)); "
                         "no mask is assumed (AttentionPattern.causal(head_dim) where plain causal attention is the layer's own)")
    return pattern


def block_ends(blocks: torch.Tensor) -> torch.Tensor:
    """(B, S): for a token in block b the index of b's last token, for any other token itself."""
    b, s = blocks.shape
    idx = torch.arange(s, device=blocks.device).expand(b, s)
    # A block is a run of equal ids >= 0; its end is the run's last index, the first end at or after t.
    nxt = torch.nn.functional.pad(blocks, (0, 1), value=-1)[:, 1:]
    ends = torch.where((blocks >= 0) & (nxt != blocks), idx, torch.full_like(idx, s))
    first_end = torch.flip(torch.cummin(torch.flip(ends, [1]), dim=1).values, [1])
    return torch.where(blocks >= 0, first_end, idx)


def image_blocks(token_is_image: torch.Tensor) -> torch.Tensor:
    """(B, S) long block ids from an image-token mask: one id per contiguous run, -1 for text
    (the rule of transformers' gemma3 `get_block_sequence_ids_for_mask`)."""
    is_image = token_is_image.bool()
    prev = torch.nn.functional.pad(is_image, (1, 0))[:, :-1]
    ids = torch.cumsum((is_image & ~prev).long(), dim=1) - 1
    return torch.where(is_image, ids, torch.full_like(ids, -1))


# --------------------------------------------------------------------------- structure (all families)
def is_decoder_list(layers) -> bool:
    return isinstance(layers, nn.ModuleList) and len(layers) > 0 and hasattr(getattr(layers[0], "self_attn", None), "q_proj")


def text_decoder(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """(text model, its decoder layers) of a supported VLM, wrapper (PEFT, DistillModule) or not.

    `<model>.model.language_model.layers` in transformers 5.x for every supported family; also the
    inner model or the text model itself, and as a fallback the first `layers` list of blocks with
    `self_attn.q_proj` outside the vision tower.
    """
    for path in ("model.language_model", "language_model", "base_model.model.model.language_model", "model", ""):
        obj = model
        for part in filter(None, path.split(".")):
            obj = getattr(obj, part, None)
        if obj is not None and is_decoder_list(getattr(obj, "layers", None)):
            return obj, obj.layers
    for name, mod in model.named_modules():
        if is_decoder_list(getattr(mod, "layers", None)) and "visual" not in name and "vision" not in name:
            return mod, mod.layers
    raise ValueError(f"{type(model).__name__} has no text decoder layers with self_attn.q_proj: not a supported VLM")


def find_owner(model: nn.Module, attr: str, depth: int = 4) -> nn.Module | None:
    """The first of model, model.model, model.base_model, ... (wrappers: PEFT, the VLM's inner
    model) that has `attr`; None if none within `depth` levels."""
    frontier = [model]
    for _ in range(depth):
        for obj in frontier:
            if hasattr(obj, attr):
                return obj
        frontier = [c for obj in frontier for c in (getattr(obj, "model", None), getattr(obj, "base_model", None)) if c is not None]
    return None


def pre_rope_module(attn: nn.Module, which: str) -> nn.Module:
    """The module whose output RoPE rotates: q_norm / k_norm (QK-norm families), else q_proj / k_proj."""
    return getattr(attn, f"{which}_norm", None) or getattr(attn, f"{which}_proj")


class Family:
    """Base adapter; one subclass per family (laid/model/families/<family>.py). Methods take the
    loaded model (or its config) so the adapter holds no state and is shared by all models."""

    name: str = ""  # registry key, e.g. "qwen2_5_vl"
    label: str = ""  # human name, e.g. "Qwen2.5-VL"
    model_types: tuple[str, ...] = ()  # config.json model_type values (top level and text config)
    axis_names: tuple[str, ...] = AXES_1D
    # Per-head RMSNorm between q_proj/k_proj and RoPE (weight (D,), shared by all heads).
    qk_norm: bool = False
    # The norm multiplies by (norm_offset + w): 1 for Gemma 3 ((1 + w), w initialised to 0), else 0.
    norm_offset: float = 0.0
    # The QK-norm runs on (B, H, S, D) (Gemma 3: after the transpose) rather than (B, S, H, D) (Qwen3-VL).
    norm_heads_first: bool = False
    vision_prefixes: tuple[str, ...] = ("model.visual.",)  # parameter names of vision tower + merger
    token_keys: tuple[str, ...] = ("image_token_id",)  # config keys of the special vision tokens
    vision_keys: tuple[str, ...] = ("patch_size",)  # vision config keys that change the image tokens
    processor_keys: tuple[str, ...] = ("image_mean", "image_std", "size", "do_normalize", "do_rescale", "rescale_factor")
    end_of_turn: str = "<|im_end|>"  # closes an assistant turn in the family's chat format
    pixel_cache: bool = False  # laid.model.pixel_cache can build this family's batches
    # The toy zoo's image bank (laid/zoo/image_bank.py) can feed cached vision features as the model's
    # `mm_encoder_outputs` (Qwen2.5-VL; Qwen3-VL would also need its DeepStack features).
    encoder_cache: bool = False
    processor_class: type | None = None  # the torchvision-free processor (registered with AutoProcessor)
    config_class: type | None = None

    # ---------------------------------------------------------------- config-level facts
    def text_config(self, config):
        return config.get_text_config() if hasattr(config, "get_text_config") else config

    def image_token_id(self, config) -> int:
        return int(config.image_token_id)

    def image_start_token_id(self, config) -> int | None:
        """The token opening each image (an attention sink the analysis reports), None if the config has none."""
        return getattr(config, "vision_start_token_id", None)

    def layer_types(self, config) -> list[str]:
        """One entry per text layer, FULL or SLIDING (the config's `layer_types` where it has them)."""
        text = self.text_config(config)
        return list(getattr(text, "layer_types", None) or [FULL] * text.num_hidden_layers)

    def tie_word_embeddings(self, config) -> bool:
        """Whether the checkpoint's lm_head is its token embedding (what planning counts once)."""
        return bool(getattr(config, "tie_word_embeddings", False))

    def deepstack_layers(self, config) -> list[int]:
        """Text layers after which vision features are added again (Qwen3-VL's DeepStack); [] = none."""
        return []

    def vision_dims(self, config) -> tuple[int, int, int]:
        """(width, MLP width, blocks) of the vision tower (memory planning)."""
        v = config.vision_config
        return v.hidden_size, v.intermediate_size, getattr(v, "depth", None) or v.num_hidden_layers

    def patches_per_token(self, config) -> int:
        """Vision-tower patches behind one image token (memory planning): the merge / shuffle / pooling."""
        return int(config.vision_config.spatial_merge_size) ** 2

    def planned_image_tokens(self, vision: dict, token_ids: dict, image_processor: dict | None, width: int,
                             height: int) -> int:
        """Image tokens one width x height image becomes in the prompt (placeholders only, no start / end
        markers), from config values alone (memory planning: `trainers.pairing.ModelShape`'s vision and
        token_ids dicts and the preprocessor_config.json, if any)."""
        raise NotImplementedError

    def long_rope_layers(self, config) -> list[int]:
        """Layers whose RoPE spans the whole context: where YaRN / SelfExtend act (all, by default)."""
        return list(range(self.text_config(config).num_hidden_layers))

    # ---------------------------------------------------------------- model-level facts
    def positions(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """(A, B, S) long position ids RoPE rotates by for `batch` (A = len(axis_names))."""
        ids = batch["input_ids"]
        return torch.arange(ids.shape[1], device=ids.device).expand(1, *ids.shape)

    def rotary_module(self, model: nn.Module) -> nn.Module:
        return text_decoder(model)[0].rotary_emb

    def rotary_layout(self, rotary: nn.Module, layer_type: str = FULL) -> RotaryLayout:
        """Layout of layers of `layer_type`, read from the rotary module `rotary` (a model's or one
        built from a config: `laid.model.families.rotary_from_config`)."""
        inv = rotary.inv_freq.detach().double().cpu()
        return RotaryLayout(inv, (0,) * len(inv), self.axis_names, float(getattr(rotary, "attention_scaling", 1.0)))

    def layer_rotary_layout(self, model: nn.Module, layer: int) -> RotaryLayout:
        return self.rotary_layout(self.rotary_module(model), self.layer_types(model.config)[layer])

    def attention_pattern(self, model: nn.Module, layer: int, batch: dict) -> AttentionPattern:
        """The mask rule and scale of text layer `layer` on `batch` (`AttentionPattern`)."""
        attn = text_decoder(model)[1][layer].self_attn
        return AttentionPattern(scaling=float(attn.scaling), sliding_window=getattr(attn, "sliding_window", None))

    def answer_suffix(self, processor) -> str:
        return self.end_of_turn

    def image_tokens(self, processor, width: int, height: int) -> int:
        """Tokens one width x height image becomes in the prompt (image placeholders only)."""
        raise NotImplementedError

    def vision_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The vision tower's and its projector's parameters."""
        return [p for n, p in model.named_parameters() if n.startswith(self.vision_prefixes)]

    def image_features(self, model: nn.Module, image_inputs: dict) -> torch.Tensor:
        """(n_images, tokens, hidden) features the LM receives for the image processor's output."""
        inputs = {k: v for k, v in image_inputs.items() if k in ("pixel_values", "image_grid_thw")}
        out = find_owner(model, "get_image_features").get_image_features(**inputs).pooler_output
        return torch.stack(list(out)) if isinstance(out, (tuple, list)) else out


def shared_pairs(a: RotaryLayout, b: RotaryLayout, rtol: float = 1e-5) -> list[tuple[int, int]]:
    """[(pair of a, pair of b)] rotating at the same frequency on the same position axis, in a's order:
    the rotary subspaces where RoPE turns a's and b's vectors identically at any position (e.g. Gemma 3
    4B's 128 pairs hold 27B's 64 at every other index: same base, head_dim 256 vs 128)."""
    names_a, names_b = a.axis_labels(), b.axis_labels()
    out, used = [], set()
    for i, f in enumerate(a.inv_freq.tolist()):
        for j, g in enumerate(b.inv_freq.tolist()):
            if j not in used and names_a[i] == names_b[j] and abs(f - g) <= rtol * max(abs(f), abs(g)):
                out.append((i, j))
                used.add(j)
                break
    return out


def pair_dims(pairs: list[int], n_pairs: int) -> list[int]:
    """Head dims of rotary pairs `pairs` in rotate_half order: [p..., p + D/2...] (D = 2 n_pairs)."""
    return list(pairs) + [p + n_pairs for p in pairs]


def snap_to_type(pairs, student_types: list[str], teacher_types: list[str]) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs with each teacher layer moved to the nearest teacher layer
    of the student layer's type (ties: the shallower), so a named layer map never pairs a Gemma 3
    sliding layer with a full one (their RoPE bases differ); a no-op where all layers are full."""
    out = []
    for s, t in pairs:
        same = [i for i, kind in enumerate(teacher_types) if kind == student_types[s]]
        out.append((s, min(same, key=lambda i: (abs(i - t), i)) if same and t not in same else t))
    return out
