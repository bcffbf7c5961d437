"""Causal checks: ablate one head or one band of rotary pairs and measure the accuracy change on
minimal pairs.

Minimal pair. Two questions on the same haystack (same images in the same order) with opposite
answers: "For the image with a <anchor>, is there a <target>?" asked once with a target the
needle image holds (yes) and once with one it does not hold (no), chosen from the synthetic
benchmark's ground truth (images/<split>/objects.json). Everything but the one object word is
the same, so a model that answers both right read the needle; one that answers from priors on
the haystack or the question form cannot get both (a constant answer gets exactly one).

Ablations (at one text layer, inside a context manager that removes its hooks on exit):
    head h   the head's output is zeroed before o_proj (it contributes nothing to the residual)
    band b   rotary pairs of band b (contiguous pairs, i.e. a frequency band; n_bands equal parts
             from fastest to slowest) are zeroed in q and k of every head, so they contribute
             nothing to any logit: pair p's logit term is Re(q_p conj k_p e^{i theta delta}).
Scores use the evaluation's logit scoring (laid.eval.scoring.score_examples): correct(ablation,
layer, minimal_pair, member); accuracy_change = accuracy(ablation) - accuracy(none) with a paired
percentile bootstrap over minimal pairs; pair_accuracy = both members right.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from laid.data.questions import SINGLE, single_needle_question
from laid.data.vhs import VHsEntry, arrange_haystack, load_images
from laid.model.families import pre_rope_module
from laid.model.hooks import text_decoder
from laid.model.prompting import Example
from laid_analysis.intervals import bootstrap_mean

_SINGLE_RE = re.compile("^" + re.escape(SINGLE).replace(r"\{anchor\}", "(?P<anchor>.+)").replace(r"\{target\}", "(?P<target>.+)") + "$")


def load_ground_truth(image_root: str | Path) -> dict[str, list[str]]:
    """{image path relative to image_root: categories} of every synthetic pool (test and train)."""
    import json

    out = {}
    for path in sorted(Path(image_root).glob("images/*/objects.json")):
        out.update(json.loads(path.read_text(encoding="utf-8")))
    if not out:
        raise FileNotFoundError(f"no images/*/objects.json under {image_root}: minimal pairs need the synthetic "
                                "benchmark's ground truth (`laid data synth`); the real VHs has none here")
    return out


def minimal_pairs(entries: list[VHsEntry], objects: dict[str, list[str]], seed: int = 0) -> list[tuple[Example, Example]]:
    """(yes example, no example) on the same arranged haystack, for each single-needle entry whose
    needle image has another object (for yes) and lacks one (for no); others are skipped."""
    vocabulary = sorted({c for cats in objects.values() for c in cats})
    rng = np.random.default_rng(seed)
    pairs = []
    for entry in entries:
        m = _SINGLE_RE.match(entry.question.strip())
        if m is None or len(entry.pos_image) != 1 or entry.pos_image[0] not in objects:
            continue
        anchor, needle = m["anchor"], set(objects[entry.pos_image[0]])
        present = sorted(needle - {anchor})
        absent = sorted(set(vocabulary) - needle)
        if not present or not absent:
            continue
        paths, needles = arrange_haystack(entry, seed)
        images = load_images(paths)
        yes_t, no_t = present[rng.integers(len(present))], absent[rng.integers(len(absent))]
        pairs.append((Example(images, single_needle_question(anchor, yes_t), "yes", tuple(needles)),
                      Example(images, single_needle_question(anchor, no_t), "no", tuple(needles))))
    return pairs


def rope_bands(n_pairs: int, n_bands: int) -> list[list[int]]:
    """n_bands contiguous, near-equal groups of rotary pair indices (fast -> slow)."""
    return [list(map(int, b)) for b in np.array_split(np.arange(n_pairs), n_bands) if len(b)]


@contextmanager
def ablate(model, layer: int, head: int | None = None, pairs: list[int] | None = None):
    """Zero one head's output (head) or some rotary pairs of q and k (pairs) at a text layer."""
    attn = text_decoder(model)[1][layer].self_attn
    d = attn.head_dim
    handles = []
    if head is not None:
        def zero_head(module, args):
            x = args[0].clone()  # (B, S, H*D): heads concatenated before o_proj
            x[..., head * d:(head + 1) * d] = 0
            return (x,) + tuple(args[1:])
        handles.append(attn.o_proj.register_forward_pre_hook(zero_head))
    if pairs:
        idx = torch.tensor(list(pairs) + [p + d // 2 for p in pairs])

        def zero_pairs(module, args, out):
            if out.ndim == 4:  # a QK-norm's output (Qwen3-VL, Gemma 3), heads split already: what RoPE rotates
                out = out.clone()
                out[..., idx] = 0
                return out
            b, s, _ = out.shape
            out = out.view(b, s, -1, d).clone()
            out[..., idx] = 0
            return out.view(b, s, -1)
        # On the module RoPE reads from: zeroing q_proj rows before a QK-norm would be renormalised away.
        handles += [pre_rope_module(attn, w).register_forward_hook(zero_pairs) for w in ("q", "k")]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def ablation_study(model, processor, pairs: list[tuple[Example, Example]], layers: list[int], n_bands: int = 4,
                   batch_size: int = 2, seed: int = 0) -> xr.Dataset:
    """correct(layer, ablation, minimal_pair, member) and accuracy summaries (module docstring)."""
    from laid.eval.scoring import resolve_answer_tokens, score_examples

    if not pairs:
        raise ValueError("no minimal pairs: the haystacks' needle images need one object to ask about and one absent")
    tokens = resolve_answer_tokens(processor.tokenizer, model.config.text_config.vocab_size)
    n_heads = model.config.text_config.num_attention_heads
    n_rot = text_decoder(model)[1][0].self_attn.head_dim // 2
    bands = rope_bands(n_rot, n_bands)
    conditions = [("none", None, None)] + [(f"head {h}", h, None) for h in range(n_heads)] + \
                 [(f"pairs {b[0]}-{b[-1]}", None, b) for b in bands]
    flat = [ex for pair in pairs for ex in pair]
    correct = np.zeros((len(layers), len(conditions), len(pairs), 2), dtype=bool)
    margin = np.zeros(correct.shape)
    for li, layer in enumerate(layers):
        for ci, (_, head, band) in enumerate(conditions):
            if ci == 0 and li > 0:  # the intact model does not depend on the layer
                correct[li, 0], margin[li, 0] = correct[0, 0], margin[0, 0]
                continue
            scores = []
            with torch.inference_mode(), ablate(model, layer, head, band):
                for start in range(0, len(flat), batch_size):
                    scores += score_examples(model, processor, flat[start:start + batch_size], tokens)
            correct[li, ci] = np.array([s.correct for s in scores]).reshape(len(pairs), 2)
            sign = np.array([1.0, -1.0])  # margin toward the right answer: yes for member 0, no for 1
            margin[li, ci] = np.array([s.margin for s in scores]).reshape(len(pairs), 2) * sign
    return ablation_dataset(correct, margin, layers, conditions, seed)


def ablation_dataset(correct, margin, layers, conditions, seed: int = 0) -> xr.Dataset:
    dims = ("layer", "ablation", "minimal_pair", "member")
    ds = xr.Dataset(
        {"correct": (dims, correct, {"long_name": "answer correct under the ablation"}),
         "signed_margin": (dims, margin, {"long_name": "yes-no logit margin toward the right answer", "units": "logit"})},
        coords={"layer": ("layer", list(layers), {"long_name": "ablated text decoder layer"}),
                "ablation": ("ablation", [c[0] for c in conditions]),
                "ablation_kind": ("ablation", [c[0].split()[0] for c in conditions]),
                "member": ("member", ["yes", "no"]), "minimal_pair": np.arange(correct.shape[2])},
    )
    acc = ds["correct"].astype(float).mean("member")  # (layer, ablation, minimal_pair)
    change = (acc - acc.sel(ablation="none")).rename(minimal_pair="sample")
    mean, lo, hi = bootstrap_mean(change, seed=seed)
    ds["accuracy"] = acc.mean("minimal_pair").assign_attrs(long_name="accuracy over both members", units="1")
    ds["pair_accuracy"] = ds["correct"].all("member").astype(float).mean("minimal_pair").assign_attrs(
        long_name="share of minimal pairs with both answers right", units="1")
    ds["accuracy_change"] = mean.assign_attrs(long_name="accuracy(ablation) - accuracy(none), paired", units="1")
    ds["accuracy_change_lo"], ds["accuracy_change_hi"] = lo, hi
    m = (ds["signed_margin"] - ds["signed_margin"].sel(ablation="none")).mean("member").rename(minimal_pair="sample")
    ds["margin_change"] = bootstrap_mean(m, seed=seed)[0].assign_attrs(
        long_name="mean change of the signed margin", units="logit")
    return ds
