"""One distillation step of every method on the random tiny zoo: what trains, what is logged."""

from __future__ import annotations

import pytest
import torch
import xarray as xr
from recipe_helpers import quick_vhs, tiny_config
from safetensors.torch import load_file

from trainers.config import METHODS
from trainers.recipe import distill
from trainers.trainlog import read_log
from zoo_helpers import zoo_text

TERMS = {
    "laid": {"laid", "attn", "kl", "sft"},
    "laid-no-kl": {"laid", "attn", "sft"},
    "laid-no-laid": {"attn", "kl", "sft"},
    "kd": {"kl", "sft"},
    "sft": {"sft"},
    "sft-lora": {"sft"},
}


@pytest.fixture(scope="module")
def vhs(tmp_path_factory):
    return quick_vhs(tmp_path_factory)


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("method", METHODS)
def test_one_step_changes_the_student(method, random_zoo, vhs, tmp_path):
    torch.set_num_threads(1)
    cfg = tiny_config(random_zoo, vhs, tmp_path / method, method=method, max_steps=1, grad_accum=1)
    export = distill(cfg, progress=False)
    before, after = _weights(random_zoo["tiny-7b"]), _weights(export)
    assert set(before) == set(after)  # LoRA merged, gains folded: a plain Qwen2.5-VL state dict
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # (checkpoint key names: model.layers.* = text decoder, visual.* = vision tower)
    assert any(k.startswith("model.layers.") for k in changed)
    assert not any(k.startswith("visual.") for k in changed)  # vision tower frozen (freeze_vision)
    if method == "sft-lora":  # adapters on the language model's linear layers only
        assert all(k.endswith(".weight") and "_proj" in k for k in changed)
    if method == "sft":  # full fine-tuning: norms and embeddings train too, not only projections
        assert any("_proj" not in k for k in changed)
    row = [r for r in read_log(tmp_path / method / "train_log.jsonl") if "note" not in r][0]
    logged = {k[: -len("_loss")] for k in row if k.endswith("_loss")}
    assert logged == TERMS[method] | {"total"}
    assert all(torch.isfinite(torch.tensor(row[f"{t}_loss"])) for t in TERMS[method])
    head = tmp_path / method / "head_weights.nc"
    assert head.is_file() == method.startswith("laid")
    assert (export / "distill_config.yaml").is_file() and (export / "train_log.jsonl").is_file()
    if method not in ("sft-lora", "sft"):  # health telemetry at the aligned layer (2 <- 3), also for KD
        assert set(row["q_norm_ratio"]) == set(row["k_norm_ratio"]) == set(row["attn_entropy"]) == {"2"}
        assert {f"{t}_grad_norm" for t in TERMS[method]} <= set(row)
        assert all(row[f"{t}_grad_norm"] > 0 for t in TERMS[method])
    if method.startswith("laid"):
        assert row["mixer_row_norm"]["2"] == pytest.approx([1.0] * zoo_text("tiny-7b").num_attention_heads)
        ds = xr.load_dataset(head)
        t, s = zoo_text("tiny-32b"), zoo_text("tiny-7b")
        assert ds["w_q"].dims == ("layer_pair", "student_head", "teacher_head")
        assert ds["w_q"].shape == (1, s.num_attention_heads, t.num_attention_heads)
        assert ds["w_k"].dims == ("layer_pair", "student_kv_head", "teacher_kv_head")
        assert ds["w_k"].shape == (1, s.num_key_value_heads, t.num_key_value_heads)
        assert int(ds["student_layer"][0]) == 2 and int(ds["teacher_layer"][0]) == 3  # last layers
        assert float(abs(ds["gain_q"] - 1).max()) > 0  # the gains trained (they start at exactly 1)
        assert ds["gain_product"].dims == ("gain_layer", "student_head", "rotary_pair")
        assert ds["q_norm_ratio"].dims == ("step", "layer_pair") and ds.attrs["alignment"] == "cosine"
        assert torch.allclose(torch.tensor(ds["w_q"].values).norm(dim=-1), torch.ones(1, s.num_attention_heads))


def test_proportional_layer_map_aligns_every_student_layer(random_zoo, vhs, tmp_path):
    torch.set_num_threads(1)
    cfg = tiny_config(random_zoo, vhs, tmp_path / "prop", layer_map="proportional", max_steps=1, grad_accum=1)
    distill(cfg, progress=False)
    ds = xr.load_dataset(tmp_path / "prop" / "head_weights.nc")
    assert ds["student_layer"].values.tolist() == [0, 1, 2] and ds["teacher_layer"].values.tolist() == [0, 2, 3]
    assert ds["gain_layer"].values.tolist() == [0, 1, 2]  # gains on the aligned layers
    row = [r for r in read_log(tmp_path / "prop" / "train_log.jsonl") if "note" not in r][0]
    assert set(row["q_norm_ratio"]) == {"0", "1", "2"}


def test_vocabulary_mismatch_uses_shared_ids_and_says_so(random_zoo, vhs, tmp_path):
    torch.set_num_threads(1)
    cfg = tiny_config(random_zoo, vhs, tmp_path / "kd3b", method="kd", student="tiny-3b", max_steps=1, grad_accum=1)
    distill(cfg, progress=False)
    records = read_log(tmp_path / "kd3b" / "train_log.jsonl")
    notes = [r["note"] for r in records if "note" in r]
    assert any("student 112, teacher 128" in n and "shared" in n for n in notes)
    assert all(torch.isfinite(torch.tensor(r["kl_loss"])) and r["kl_loss"] >= 0 for r in records if "kl_loss" in r)


def test_gradient_checkpointing_gives_the_same_run(random_zoo, vhs, tmp_path):
    from trainers.students import build_student

    torch.set_num_threads(1)
    student = build_student(tiny_config(random_zoo, vhs, tmp_path / "x", gradient_checkpointing=True))
    assert any(getattr(m, "gradient_checkpointing", False) for m in student.modules())  # it is really on
    runs = {}
    for gc in (False, True):
        cfg = tiny_config(random_zoo, vhs, tmp_path / f"gc{gc}", gradient_checkpointing=gc)
        runs[gc] = (_weights(distill(cfg, progress=False)), read_log(tmp_path / f"gc{gc}" / "train_log.jsonl"))
    for a, b in zip(runs[False][1], runs[True][1]):
        assert a["total_loss"] == pytest.approx(b["total_loss"], rel=1e-5)
    for k, v in runs[False][0].items():
        torch.testing.assert_close(runs[True][0][k], v, rtol=1e-4, atol=1e-6)


def test_least_squares_mixer_start_lowers_the_first_alignment_loss(random_zoo, vhs, tmp_path):
    torch.set_num_threads(1)
    first = {}
    for init in ("overlap", "least_squares"):
        cfg = tiny_config(random_zoo, vhs, tmp_path / init, mixer_init=init, max_steps=1, grad_accum=1)
        distill(cfg, progress=False)
        first[init] = read_log(tmp_path / init / "train_log.jsonl")[0]["laid_loss"]
    assert first["least_squares"] < first["overlap"]


def test_existing_run_needs_resume(random_zoo, vhs, tmp_path):
    cfg = tiny_config(random_zoo, vhs, tmp_path / "again", max_steps=1, grad_accum=1)
    distill(cfg, progress=False)
    with pytest.raises(ValueError, match="already holds checkpoints; pass --resume"):
        distill(cfg, progress=False)


@pytest.mark.parametrize("align", [0.0, 1.0])
def test_head_mixers_train_only_with_the_alignment_term(align, random_zoo, vhs, tmp_path):
    """Attention matching to the teacher's own maps weights them by the mixers, detached: without the
    Q/K alignment term (the testbed default) the mixers stay at their first-batch fit, and
    head_weights.nc says so, so a figure of them is not read as learned."""
    torch.set_num_threads(1)
    lambdas = {"laid": align, "attn": 1.0, "kl": 0.3, "sft": 0.7}
    cfg = tiny_config(random_zoo, vhs, tmp_path, lambdas=lambdas, max_steps=3, export_steps=[1], grad_accum=1,
                      mixer_init="least_squares")
    distill(cfg, progress=False)
    early = xr.load_dataset(tmp_path / "budgets" / "step-00000001" / "head_weights.nc")
    final = xr.load_dataset(tmp_path / "head_weights.nc")
    moved = float(abs(final["w_q"] - early["w_q"]).max())
    assert final.attrs["mixers_trained"] == int(align > 0) and final.attrs["mixer_init"] == "least_squares"
    assert (moved > 1e-6) == (align > 0), moved
