"""Real-width, layer-truncated Qwen2.5-VL models: the real attention shapes at a fraction of the cost.

The LAid machinery (Q/K capture, head mixers, RoPE gains, chunked attention matching, logits at
the answer tail) depends on the width of a model, not on its depth: hidden size, query heads,
KV heads and head_dim. `truncated_config("7b", n_layers=1)` keeps those of the published config
(platform-facts.md) and cuts the rest: 1-2 decoder layers, a 1-block vision tower of width 64,
a reduced vocabulary (the zoo's special-token ids 3-6 are kept), and optionally a narrower MLP
(`intermediate_size`; it changes no attention shape). Weights are random: only shapes, memory
and time are measured with these models, never quality.

`distill_step` runs one full distillation step of a method (teacher forward with Q/K capture,
DistillModule forward, backward, AdamW step) and reports the time and the bytes of the
components `laid plan` lists (trainers/plan.py), measured: teacher weights, student states
(weights, grads, AdamW state), student activations (the tensors autograd saves for backward),
captured Q/K (teacher Q/K and mixed targets; the student's own are inside the activations) and
logits. tests/test_plan_realwidth.py compares them with the plan; bench/ uses the timings.
"""

from __future__ import annotations

import copy
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, Qwen2_5_VLConfig

# Published text-decoder shapes (platform-facts.md; intermediate sizes from the published configs).
REAL_TEXT = {
    "32b": dict(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40, num_key_value_heads=8),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4),
    "3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2),
}
SMALL_VISION = dict(depth=1, hidden_size=64, intermediate_size=128, num_heads=2, patch_size=14, spatial_merge_size=2,
                    temporal_patch_size=2, window_size=112, fullatt_block_indexes=[0], tokens_per_second=2)
TOKENS = dict(image_token_id=5, video_token_id=6, vision_start_token_id=3, vision_end_token_id=4)
PATCHES_PER_IMAGE = 16  # a 4x4 patch grid: 4 image tokens after the 2x2 merge


def truncated_config(name: str, n_layers: int = 1, vocab_size: int = 1024, intermediate_size: int | None = None) -> Qwen2_5_VLConfig:
    """Qwen2.5-VL-{32b,7b,3b} width (hidden, heads, KV heads, head_dim 128), `n_layers` decoder layers."""
    if name not in REAL_TEXT:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(REAL_TEXT)}")
    text = dict(REAL_TEXT[name], num_hidden_layers=n_layers, vocab_size=vocab_size, max_position_embeddings=128000,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]})
    if intermediate_size is not None:
        text["intermediate_size"] = intermediate_size
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=dict(SMALL_VISION, out_hidden_size=text["hidden_size"]),
                           tie_word_embeddings=False, **TOKENS)  # fmt: skip
    cfg._attn_implementation = "sdpa"
    return cfg


def write_config_folder(cfg: Qwen2_5_VLConfig, out: str | Path) -> Path:
    """A config-only model folder (what `laid plan` reads)."""
    out = Path(out)
    cfg.save_pretrained(out)
    return out


def build_model(cfg, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", seed: int = 0):
    """A random model of `cfg` (any supported family's config)."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(cfg).to(dtype)
    return model


def synthetic_batch(cfg: Qwen2_5_VLConfig, n_images: int, text_tokens: int, answer_tokens: int, device="cpu", seed: int = 0) -> dict:
    """One sequence: n_images images (4 tokens each, random pixels) then text, answer at the end.

    Returns input_ids, attention_mask, mm_token_type_ids (B=1, S), pixel_values, image_grid_thw and
    labels (-100 except the last `answer_tokens` positions).
    """
    g = torch.Generator().manual_seed(seed)
    v = cfg.text_config.vocab_size
    merged = PATCHES_PER_IMAGE // cfg.vision_config.spatial_merge_size**2
    ids = []
    for _ in range(n_images):
        ids += [TOKENS["vision_start_token_id"]] + [TOKENS["image_token_id"]] * merged + [TOKENS["vision_end_token_id"]]
    ids += torch.randint(16, v, (text_tokens + answer_tokens,), generator=g).tolist()
    input_ids = torch.tensor([ids])
    labels = torch.full_like(input_ids, -100)
    labels[:, -answer_tokens:] = input_ids[:, -answer_tokens:]
    vc = cfg.vision_config
    patch_dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
    side = int(PATCHES_PER_IMAGE**0.5)
    batch = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "mm_token_type_ids": (input_ids == TOKENS["image_token_id"]).long(),
        "labels": labels,
    }
    if n_images:
        batch["pixel_values"] = torch.randn(n_images * PATCHES_PER_IMAGE, patch_dim, generator=g)
        batch["image_grid_thw"] = torch.tensor([[1, side, side]] * n_images)
    return {k: t.to(device) for k, t in batch.items()}


def _nbytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None:
            continue
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            total += key[1]
    return total


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def distill_step(teacher, student, method: str, batch: dict, bf16: bool, repeats: int = 1, measure: bool = True, **overrides) -> dict:
    """One (or `repeats`) full distillation step(s) of `method`; returns time and measured bytes.

    teacher / student: models from `build_model` (or trainers.realwidth_families; the student is
    trained in place, its vision tower frozen as the recipe's freeze_vision does; the teacher is
    frozen here). bf16: autocast the forwards to bf16 (the GPU setting). The RoPE gain and the
    mixers are set up as the recipe does (last layers paired; where head_dims differ, the Q/K
    alignment on the rotary pairs both share, as trainers.pairing finds them).
    """
    from trainers.config import load_config
    from trainers.distill_module import DistillModule, tail_length, teacher_forward
    from trainers.optim import build_optimizer
    from trainers.rope_gain import RopeGain

    device = next(student.parameters()).device
    cfg = load_config(None, {"method": method, "max_steps": 1, **overrides})
    if cfg.uses_lora:  # adapters on a copy: the caller's student stays a plain model
        from trainers.students import apply_lora

        student = apply_lora(copy.deepcopy(student), cfg)
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.eval()
    freeze_vision(student)
    n_s, n_t = student.config.text_config.num_hidden_layers, teacher.config.text_config.num_hidden_layers
    pairs = [(n_s - 1, n_t - 1)] if cfg.uses_mixers else []
    gain = RopeGain.for_model(student, [n_s - 1]).to(device) if cfg.uses_gain else None
    module = DistillModule(student, cfg, pairs, teacher.config if cfg.uses_teacher else None, gain,
                           qk_dims=shared_qk_dims(student, teacher, pairs)).to(device).train()
    optimizer = build_optimizer(module, cfg)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    keep = tail_length(batch["labels"])
    saved: list[torch.Tensor] = []
    weights = {(tuple(p.shape), p.untyped_storage().data_ptr()) for p in module.parameters()}
    shapes = {tuple(p.shape) for p in module.parameters() if p.dim() == 2}

    def keep_activation(t: torch.Tensor) -> torch.Tensor:
        # weights (and their bf16 autocast copies: 2-D, a parameter's shape) are states, not activations
        if (tuple(t.shape), t.untyped_storage().data_ptr()) not in weights and not (t.dim() == 2 and tuple(t.shape) in shapes):
            saved.append(t)
        return t

    times, terms, t_out, measured = [], {}, None, {}
    try:
        for i in range(repeats):
            record = measure and i == 0
            _sync(device)
            t0 = time.perf_counter()
            with autocast:
                if cfg.uses_teacher:
                    t_out = teacher_forward(teacher, batch, module.teacher_layers, keep, len(module.align) > 0)
                hooks = torch.autograd.graph.saved_tensors_hooks(keep_activation, lambda t: t) if record else nullcontext()
                with hooks:
                    terms = module(batch, t_out, 0.5)
            terms["total"].backward()
            optimizer.step()
            if record:
                measured = _measure(module, optimizer, saved, t_out, pairs, cfg.uses_teacher, teacher)
            optimizer.zero_grad(set_to_none=True)
            _sync(device)
            times.append(time.perf_counter() - t0)
        terms = {k: float(v.detach()) for k, v in terms.items()}
        return {"seconds": times, "terms": terms, "bytes": measured}
    finally:
        module.release_gain()


def plan_against_measured(plan_memory: dict, laid: dict, kd: dict) -> dict[str, tuple[float, float]]:
    """{component: (measured, planned)} in MiB from a plan's memory (GiB) and the bytes two
    `distill_step`s measured (LAid and KD on the same batch): the student's activations are KD's
    (its saved tensors, tail logits included) and LAid's extra activations are the 'LAid loss' line."""
    est = {k: v * 1024 for k, v in plan_memory.items()}
    laid, kd = ({k: v / 2**20 for k, v in d.items()} for d in (laid, kd))
    return {
        "teacher weights": (laid["teacher weights"], est["teacher weights"]),
        "student states": (laid["student states"], est["student states"]),
        "student activations": (kd["student activations"], est["student activations"] + est["logits"]),
        "captured Q/K": (laid["captured Q/K"], est["captured Q/K"]),
        "LAid loss": (laid["student activations"] - kd["student activations"], est["LAid loss"]),
    }


def freeze_vision(model) -> None:
    """The recipe's freeze_vision: the vision tower and projector get no gradient."""
    from laid.model.families import family_of

    prefixes = family_of(model).vision_prefixes
    for name, p in model.named_parameters():
        if name.startswith(prefixes):
            p.requires_grad_(False)


def shared_qk_dims(student, teacher, pairs) -> dict:
    """{student layer: (student dims, teacher dims)} of the rotary pairs both layers share, where
    head_dims differ (Gemma 3 4B / 27B); {} where they agree (trainers.pairing does it from configs)."""
    from laid.model.families import family_of, pair_dims, shared_pairs

    family, out = family_of(student), {}
    for s, t in pairs:
        a, b = family.layer_rotary_layout(student, s), family.layer_rotary_layout(teacher, t)
        if a.n_pairs != b.n_pairs:
            shared = shared_pairs(a, b)
            out[s] = (pair_dims([i for i, _ in shared], a.n_pairs), pair_dims([j for _, j in shared], b.n_pairs))
    return out


def _measure(module, optimizer, saved, t_out, pairs, uses_teacher, teacher) -> dict:
    """Bytes of the components `laid plan` lists, right after the optimizer step (grads still held)."""
    params = [p for p in module.parameters() if p.requires_grad]
    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
    with torch.no_grad():
        mixed = [m for a, (_, lt) in zip(module.align, pairs) for m in a.mixer(t_out.q[lt], t_out.k[lt])] if pairs else []
    return {
        "teacher weights": _nbytes(teacher.parameters()) if uses_teacher else 0,
        # trainable: weights, grads, AdamW m and v; frozen (vision tower): weights only
        "student states": _nbytes(params) + _nbytes(p.grad for p in params) + _nbytes(state)
        + _nbytes(p for p in module.parameters() if not p.requires_grad),
        # what autograd keeps for backward (weights excluded): layer activations, the student's Q/K
        # and tail logits, the loss terms' intermediates
        "student activations": _nbytes(saved),
        "captured Q/K": (_nbytes([*t_out.q.values(), *t_out.k.values()]) + _nbytes(mixed)) if pairs else 0,
        "teacher logits": _nbytes([t_out.logits]) if t_out is not None else 0,
    }
