"""Training and diagnosis of every family against the models' own attention maps.

One distillation step's attention-matching term (DistillModule, the recipe's path: teacher_forward,
the family's patterns and positions, chunked loss) and one `laid diagnose` distance profile
(analyse_model) must equal brute-force computations from the full (S, S) attention maps the tiny
teacher and student compute themselves in eager mode (tests/family_helpers.py). Reading Gemma 3's
attention as plain causal at head_dim ** -0.5 (laid.model.families.ablations.causal_pattern) is kept
as the degenerate reading and must fail both; a missing pattern or an unknown family is refused in
one line naming the layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from family_helpers import FAMILIES, brute_force_attention_matching, brute_force_profile, haystack_batch
from transformers import AutoConfig

from laid.data.questions import single_needle_question
from laid.data.render import sample_image
from laid.model.families import UnknownFamilyError, family_of
from laid.model.families.ablations import causal_pattern
from laid.model.families.gemma3 import Gemma3
from laid.model.loading import load_model, load_processor
from laid.model.prompting import Example, encode_batch
from laid_analysis import tokens
from laid_analysis.analyse import AnalysisSettings, analyse_model
from trainers.config import load_config
from trainers.distill_module import DistillModule, head_energy, model_inputs, tail_length, teacher_forward
from trainers.head_mixer import attention_mix
from trainers.rope_gain import RopeGain

torch.set_num_threads(1)
PROGRESS = 0.7  # alpha(t) = 2.1: the distance weights matter


def _eager(folder):
    return load_model(folder, device="cpu", dtype=torch.float32, attn_implementation="eager")


def _distill_step(pair, family):
    """(attention term of one DistillModule forward, brute force from both models' eager maps)."""
    cfg = load_config(None, {"method": "laid", "teacher_dir": str(pair["teacher"]), "student_dir": str(pair["student"]),
                             "layer_map": "proportional"})
    student, teacher = _eager(pair["student"]), _eager(pair["teacher"])
    pairs = [(0, 0), (1, 1)]  # every layer; Gemma: its sliding layer and its full layer
    gain = RopeGain.for_model(student, [0, 1])
    module = DistillModule(student, cfg, pairs, AutoConfig.from_pretrained(pair["teacher"]), gain).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # trained-looking gains and mixers: the term sees them as training would
        gain.q.copy_(0.7 + 0.6 * torch.rand(gain.q.shape, generator=g))
        for align in module.align:
            align.mixer.q.weight.add_(0.3 * torch.rand(align.mixer.q.weight.shape, generator=g))
    batch = haystack_batch(load_processor(pair["student"]), with_answers=True)
    keep = tail_length(batch["labels"])
    t_out = teacher_forward(teacher, batch, [t for _, t in pairs], keep, want_qk=True)
    with torch.no_grad():
        got = module(batch, t_out, PROGRESS)["attn"]
        s_maps = module.student(**model_inputs(batch), output_attentions=True).attentions  # gains applied, as trained
        t_maps = teacher(**model_inputs(batch), output_attentions=True).attentions
    valid = batch["attention_mask"].bool()
    pos = family_of(student).positions(student, batch)
    ref = 0.0
    for align, (ls, lt) in zip(module.align, pairs):
        mix = attention_mix(align.mixer.q.effective(), head_energy(t_out.q[lt], valid), cfg.attn_mix_power)
        ref = ref + brute_force_attention_matching(s_maps[ls], t_maps[lt], mix, pos, valid, cfg.attention_matching.alpha(PROGRESS))
    module.release_gain()
    return got, ref


@pytest.mark.parametrize("family", FAMILIES)
def test_a_distillation_steps_attention_term_equals_the_models_own_maps(family, family_pairs, monkeypatch):
    got, ref = _distill_step(family_pairs[family], family)
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-7)
    if family == "gemma3":  # the degenerate reading (causal at head_dim ** -0.5) is caught end to end
        monkeypatch.setattr(Gemma3, "attention_pattern", lambda self, model, layer, batch: causal_pattern(model, layer))
        wrong, _ = _distill_step(family_pairs[family], family)
        assert abs(float(wrong) - float(ref)) > 1e-2 * float(ref)


def _haystacks(seed=3):
    rng = np.random.default_rng(seed)
    return [Example([sample_image(rng)[0] for _ in range(n)], single_needle_question("red circle", "blue square"))
            for n in (3, 4)]


def _profile_and_reference(folder, layers):
    """(analyse_model's distance profile, brute force from the model's eager maps) on two haystacks."""
    model, processor = _eager(folder), load_processor(folder)
    examples = _haystacks()
    settings = AnalysisSettings(layers=layers, profile_sizes=[3, 4], profile_max_samples=None, queries="all", keys="image")
    ds = analyse_model(model, processor, {3: examples[:1], 4: examples[1:]}, settings, progress=False)
    n = ds.sizes["distance"]
    fam = family_of(model)
    sums, count = torch.zeros(len(layers), ds.sizes["head"], n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    for ex in examples:
        batch = encode_batch(processor, [ex])
        with torch.no_grad():
            maps = model(**batch, output_attentions=True).attentions
        pos = fam.positions(model, batch)[0, 0]  # temporal ids / token index: what the profile's distance is
        keys = tokens.select(batch, "image", fam.image_token_id(model.config))[0]
        for li, layer in enumerate(layers):
            s, c = brute_force_profile(maps[layer][0], pos, keys, n)
            sums[li] += s
        count += c
    return ds, sums / count.clamp(min=1), count


@pytest.mark.parametrize("family", FAMILIES)
def test_a_diagnose_distance_profile_equals_the_models_own_maps(family, family_pairs, monkeypatch):
    folder = family_pairs[family]["teacher"]
    for layers in ([0], [1]) if family == "gemma3" else ([0, 1],):  # Gemma: one RoPE layout per analysis
        ds, ref, count = _profile_and_reference(folder, layers)
        np.testing.assert_array_equal(ds["pair_count"].values, count.numpy())
        seen = count.numpy() > 0
        np.testing.assert_allclose(ds["attention"].values[..., seen], ref.numpy()[..., seen], rtol=1e-5, atol=1e-7)
    if family == "gemma3":  # the degenerate reading miscounts the window's pairs and mis-weighs the rest
        monkeypatch.setattr(Gemma3, "attention_pattern", lambda self, model, layer, batch: causal_pattern(model, layer))
        for layers in ([0], [1]):
            ds, ref, count = _profile_and_reference(folder, layers)
            seen = count.numpy() > 0
            same = ds["pair_count"].values.shape == count.shape and np.array_equal(ds["pair_count"].values, count.numpy()) \
                and np.allclose(ds["attention"].values[..., seen], ref.numpy()[..., seen], rtol=1e-3)
            assert not same, f"causal reading of Gemma layer {layers} matched the model's own maps"


def test_a_missing_pattern_or_an_unknown_family_is_refused_naming_the_layer(family_pairs):
    pair = family_pairs["gemma3"]
    cfg = load_config(None, {"method": "laid", "teacher_dir": str(pair["teacher"]), "student_dir": str(pair["student"])})
    student, teacher = load_model(pair["student"], device="cpu"), load_model(pair["teacher"], device="cpu")
    module = DistillModule(student, cfg, [(1, 1)], teacher.config)
    batch = haystack_batch(load_processor(pair["student"]), with_answers=True)
    t_out = teacher_forward(teacher, batch, [1], tail_length(batch["labels"]), want_qk=True)
    t_out.patterns.clear()  # a teacher forward that lost its layer's mask and scale
    with pytest.raises(ValueError, match=r"teacher layer 1 \(Gemma 3\) has no attention pattern") as err:
        module(batch, t_out)
    assert "\n" not in str(err.value)
    student.config.model_type = "llava"  # a family no adapter covers
    with pytest.raises(UnknownFamilyError, match=r"student layer\(s\) \[1\].*model type 'llava'") as err:
        DistillModule(student, cfg, [(1, 1)], teacher.config)
    assert "\n" not in str(err.value)
