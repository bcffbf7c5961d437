"""`laid zoo --family F --quick` in each added family, and the context-extension variants per family:
SelfExtend equal to plain attention inside its window (the family's own masks kept), different beyond
it, on the long-RoPE layers only; YaRN keeping the family's RoPE keys, refused where the published
RoPE is already scaled (Gemma 3's full layers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from family_helpers import FAMILIES, haystack_batch

from laid.eval.variants import selfextend, yarn
from laid.model.families import family_of, text_decoder
from laid.model.loading import load_model, load_processor
from laid.zoo import cli as zoo_cli
from laid_workflows.cli import main

torch.set_num_threads(1)


@pytest.mark.parametrize("family", FAMILIES)
def test_zoo_builds_the_toys_in_another_family(family, tmp_path, monkeypatch):
    # The smoke run's step counts, smaller still: the point is the code path of every stage.
    monkeypatch.setattr(zoo_cli, "QUICK_STEPS", 2)
    monkeypatch.setattr(zoo_cli, "QUICK_VISION_STEPS", 1)
    cfg = yaml.safe_load((zoo_cli.DEFAULT_CONFIG_DIR / "tiny-3b.yaml").read_text())
    cfg["name"] = "toy"
    cfg["pretrain"].update(batch_size=2, vision_batch_size=4, retrieval_attention_weight=0.3)  # + the retrieval loss
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "toy.yaml").write_text(yaml.safe_dump(cfg))
    argv = ["zoo", "--out", str(tmp_path / "zoo"), "--config-dir", str(tmp_path / "configs"), "--models", "toy",
            "--family", family, "--quick", "--workers", "1"]
    assert main(argv) == 0
    folder = tmp_path / "zoo" / "toy"
    assert family_of(folder).name == family and json.loads((folder / "laid_zoo.json").read_text())["pretrain_log"]["steps"] == 2
    model = load_model(folder, device="cpu")
    with torch.no_grad():
        assert torch.isfinite(model(**haystack_batch(load_processor(folder))).logits).all()
    assert zoo_cli._is_complete(folder, zoo_cli._quick(zoo_cli.zoo_configs(tmp_path / "configs", ["toy"])[0]), family)
    assert not zoo_cli._is_complete(folder, zoo_cli._quick(zoo_cli.zoo_configs(tmp_path / "configs", ["toy"])[0]))  # not Qwen2.5-VL


@pytest.mark.parametrize("family", FAMILIES)
def test_selfextend_and_yarn_per_family(family, family_pairs):
    folder = family_pairs[family]["student"]
    batch = haystack_batch(load_processor(folder))
    with torch.no_grad():
        base = load_model(folder, device="cpu")(**batch).logits
        wide = selfextend.load_model(folder, device="cpu", group_size=2, window=100_000)
        narrow = selfextend.load_model(folder, device="cpu", group_size=2, window=4)
        torch.testing.assert_close(wide(**batch).logits, base, rtol=1e-5, atol=1e-5)  # masks and positions kept
        assert (narrow(**batch).logits - base).abs().max() > 1e-3
    extended = [i for i, layer in enumerate(text_decoder(narrow)[1]) if hasattr(layer.self_attn, selfextend._STATE)]
    assert extended == family_of(folder).long_rope_layers(narrow.config)  # Gemma: the full layer only
    if family == "gemma3":
        assert extended == [1]
        with pytest.raises(ValueError, match="YaRN does not apply.*'linear'") as err:
            yarn.load_model(folder, device="cpu", factor=2.0)
        assert "\n" not in str(err.value)
        return
    plain_rope = load_model(folder, device="cpu").config.get_text_config().rope_parameters
    model = yarn.load_model(folder, device="cpu", factor=4.0, original_max_position_embeddings=64)
    rope = model.config.get_text_config().rope_parameters
    assert rope["rope_type"] == "yarn" and {k: rope[k] for k in plain_rope if k != "rope_type"} == \
        {k: v for k, v in plain_rope.items() if k != "rope_type"}  # mrope_section, interleaving, theta kept
    fam = family_of(model)
    assert not torch.equal(fam.layer_rotary_layout(model, 0).inv_freq, fam.layer_rotary_layout(load_model(folder, device="cpu"), 0).inv_freq)


@pytest.mark.parametrize("family", FAMILIES)
def test_compare_quick_runs_in_every_family(family, family_pairs, tmp_path, tmp_path_factory):
    """`laid compare --quick` on a tiny teacher -> student of the family: the untrained rows and the
    trained methods (KD, LAid; 2 steps each) evaluated on every quick test size, the table written."""
    import xarray as xr
    from recipe_helpers import quick_vhs

    run = tmp_path / "run"
    (run / "zoo").mkdir(parents=True)
    for role in ("teacher", "student"):
        (run / "zoo" / f"toy-{role}").symlink_to(family_pairs[family][role])
    (run / "data").symlink_to(quick_vhs(tmp_path_factory))
    distill = Path(__file__).resolve().parents[1] / "configs" / "distill" / "tiny-32b_to_tiny-7b.yaml"
    overrides = ["teacher=toy-teacher", "students=[toy-student]", "variants=[base]", "methods=[kd, laid]", "seeds=[0]",
                 f"distill_configs={{toy-student: {distill}}}", "method_overrides={}"]
    argv = ["compare", "--quick", "--run-dir", str(run), "--workers", "1", "--no-progress"]
    assert main(argv + [a for o in overrides for a in ("--override", o)]) == 0
    ds = xr.load_dataset(run / "compare" / "comparison.nc")
    assert ds["accuracy"].sizes["method"] == 3 and not ds["accuracy"].isnull().any()  # base, kd, laid
    export = run / "distill" / "toy-student__laid" / "export"
    assert family_of(export).name == family
    hw = xr.load_dataset(export / "head_weights.nc")  # layer_map last: the last full layers (Gemma: not its sliding layer 0)
    assert hw["student_layer"].values.tolist() == [1] and hw["teacher_layer"].values.tolist() == [1]
