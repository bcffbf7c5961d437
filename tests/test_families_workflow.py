"""Every command on a tiny teacher -> student pair of each added family: distill (every method, one
step) with export, the export reproducing the in-memory student (gains folded, LoRA merged), eval
under both protocols, diagnose against the teacher."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr
from accelerate import Accelerator
from family_helpers import FAMILIES, haystack_batch
from recipe_helpers import quick_vhs, trained_looking
from transformers import AutoConfig

from laid.eval.run import evaluate
from laid.methods import TRAINED_METHODS
from laid.model.families import family_of
from laid.model.loading import load_model, load_processor
from laid_analysis.analyse import AnalysisSettings
from laid_analysis.diagnose import diagnose
from trainers.config import load_config
from trainers.distill_module import DistillModule
from trainers.export import export_run
from trainers.recipe import distill
from trainers.rope_gain import RopeGain
from trainers.students import build_student

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def vhs(tmp_path_factory):
    return quick_vhs(tmp_path_factory)


def _config(pair, vhs, out, method, **extra):
    return load_config(None, {
        "teacher_dir": str(pair["teacher"]), "student_dir": str(pair["student"]), "output_dir": str(out),
        "method": method, "data.train_dir": str(vhs / "train"), "data.image_root": str(vhs),
        "data.max_haystack": 4, "max_steps": 1, "grad_accum": 1, "lr_student": 1e-3, "lr_aux": 1e-2,
        "warmup_ratio": 0.0, "layer_map": "proportional", **extra})


@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_distills_and_exports(family, family_pairs, vhs, tmp_path):
    runs = [(m, m, {}) for m in TRAINED_METHODS] + [("laid-paper", "laid", {"alignment": "paper"})]  # + the derived entry
    for name, method, extra in runs:
        export = distill(_config(family_pairs[family], vhs, tmp_path / name, method, **extra), progress=False)
        assert family_of(export).name == family
        record = [r for r in map(json.loads, (tmp_path / name / "train_log.jsonl").read_text().splitlines()) if "total_loss" in r][-1]
        assert np.isfinite(record["total_loss"]) and record["total_loss"] > 0
        if method.startswith("laid"):  # every student layer aligned, on its own layer type (Gemma)
            hw = xr.load_dataset(export / "head_weights.nc")
            assert hw["student_layer"].values.tolist() == [0, 1] and hw["teacher_layer"].values.tolist() == [0, 1]
            if family_of(export).qk_norm:  # one gain for all heads: folded into the shared q_norm / k_norm
                assert np.all(hw["gain_q"].values == hw["gain_q"].values[:, :1])
            notes = [r["note"] for r in map(json.loads, (tmp_path / name / "train_log.jsonl").read_text().splitlines()) if "note" in r]
            sliding = [n for n in notes if n.startswith("warning: layer pair 0 <- 0 is on sliding-window layers")]
            assert len(sliding) == (1 if family == "gemma3" else 0)  # Gemma's layer 0 is a sliding one: logged


@pytest.mark.parametrize("family", FAMILIES)
def test_export_reproduces_the_module_and_evaluates_and_diagnoses(family, family_pairs, vhs, tmp_path):
    pair = family_pairs[family]
    processor = load_processor(pair["student"])
    batch = haystack_batch(processor)
    exports = {}
    for method in ("laid", "sft-lora"):
        cfg = _config(pair, vhs, tmp_path / method, method)
        student = build_student(cfg)
        gain = RopeGain.for_model(student, [1]) if cfg.uses_gain else None
        pairs = [(1, 1)] if cfg.uses_mixers else []
        module = trained_looking(DistillModule(student, cfg, pairs, AutoConfig.from_pretrained(pair["teacher"]), gain))
        acc = Accelerator(cpu=True)
        exports[method] = export_run(acc, acc.prepare(module), cfg, processor, pairs, tmp_path / method)
        with torch.no_grad():
            live = module.student(**batch).logits  # gain hooks on / LoRA adapters active
            plain = load_model(pair["student"], device="cpu", dtype=torch.float32)(**batch).logits
            exported = load_model(exports[method], device="cpu", dtype=torch.float32)(**batch).logits
        assert not torch.allclose(live, plain, atol=1e-3)  # the trained parts matter ...
        torch.testing.assert_close(exported, live, rtol=1e-4, atol=1e-4)  # ... and the export keeps them exactly

    for protocol, extra in (("ours", {}), ("official", {"max_new_tokens": 2})):
        ds = evaluate(exports["laid"], vhs / "test", vhs, tmp_path / f"eval_{protocol}.nc", sizes=[1, 2],
                      max_samples_per_size=2, protocol=protocol, progress=False, **extra)
        assert ds.attrs["protocol"] == protocol and np.all(np.isfinite(ds["accuracy"].values))
        assert (tmp_path / f"eval_{protocol}_official").is_dir()

    layers = [1] if family == "gemma3" else None  # one RoPE layout per analysis (Gemma: the full layer)
    written = diagnose(exports["laid"], vhs / "test", vhs, [2, 5], tmp_path / "diagnose", reference=pair["teacher"],
                       head_weights=exports["laid"] / "head_weights.nc", max_samples=1, layers=layers, progress=False,
                       settings=AnalysisSettings(profile_max_samples=1), ablate_layers=[1], ablate_pairs=2, n_bands=2)
    ds, cmp = xr.load_dataset(written["diagnostics"]), xr.load_dataset(written["comparison"])
    layout = family_of(exports["laid"]).layer_rotary_layout(load_model(exports["laid"], device="cpu"), 1)
    np.testing.assert_allclose(ds["rope_freq"].values, layout.inv_freq.numpy() / (2 * np.pi))  # the family's own RoPE
    assert ds["rope_axis"].values.tolist() == layout.axis_labels()
    assert np.isfinite(float(cmp["fidelity_score"])) and int(cmp["teacher_layer"].sel(layer=1)) == 1  # the export's pair
    abl = xr.load_dataset(written["ablation"])  # heads and rotary bands zeroed where RoPE reads (after a QK-norm)
    assert np.all(np.isfinite(abl["margin_change"].values))
    if family == "gemma3":  # two layouts in one run are refused in one line
        with pytest.raises(ValueError, match="2 RoPE layouts.*--layers") as err:
            diagnose(exports["laid"], vhs / "test", vhs, [2], tmp_path / "mixed", max_samples=1, progress=False)
        assert "\n" not in str(err.value)
