"""`laid diagnose` end to end on synthetic VHs data and random zoo models."""

from __future__ import annotations

import re

import numpy as np
import pytest
import xarray as xr

from laid_workflows.cli import main
from laid.io import read_netcdf
from zoo_helpers import zoo_text


@pytest.fixture(scope="module")
def vhs_data(tmp_path_factory):
    from laid.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("vhs")
    generate(SynthConfig.quick(), root, progress=False)
    return root


def test_diagnose_student_against_teacher_with_head_weights(random_zoo, vhs_data, tmp_path, capsys):
    hw_path = tmp_path / "head_weights.nc"
    rng = np.random.default_rng(0)
    # tiny-3b distilled from tiny-32b, last layers paired; mixer shapes from the zoo configs.
    s_cfg, t_cfg = zoo_text("tiny-3b"), zoo_text("tiny-32b")
    xr.Dataset({"w_q": (("layer_pair", "student_head", "teacher_head"),
                        rng.normal(size=(1, s_cfg.num_attention_heads, t_cfg.num_attention_heads))),
                "w_k": (("layer_pair", "student_kv_head", "teacher_kv_head"),
                        rng.normal(size=(1, s_cfg.num_key_value_heads, t_cfg.num_key_value_heads))),
                "gain_q": (("gain_layer", "student_head", "rotary_pair"), 1 + rng.random((1, 2, 16)))},
               coords={"student_layer": ("layer_pair", [-1]), "teacher_layer": ("layer_pair", [-1]),
                       "gain_layer": [1]}).to_netcdf(hw_path)  # as trainers.export writes it
    out = tmp_path / "analysis"
    rc = main(["diagnose", str(random_zoo["tiny-3b"]), "--data", str(vhs_data / "test"), "--image-root", str(vhs_data),
               "--sizes", "1", "5", "--max-samples", "2", "--out", str(out), "--reference", str(random_zoo["tiny-32b"]),
               "--head-weights", str(hw_path), "--no-progress"])
    assert rc == 0

    ds = read_netcdf(out / "diagnostics.nc")
    assert ds["haystack_size"].values.tolist() == [1, 5] and ds["n_samples"].values.tolist() == [2, 2]
    assert ds.sizes["layer"] == 2 and ds.sizes["head"] == 2 and ds.attrs["model_name"] == "tiny-3b"
    # Distance in M-RoPE positions, units in attrs; fewer positions than tokens (an image shares one temporal id).
    assert ds["attention"].dims == ("layer", "head", "distance") and ds["distance"].attrs["units"] == "positions"
    # The exact pair spectrum, with each pair's frequency per position.
    assert ds["pair_coef_re"].dims == ("layer", "head", "rotary_pair") and ds["rope_freq"].attrs["units"] == "cycles/position"
    assert np.isfinite(ds["pair_coef_abs"]).all() and ds["rope_profile"].dims == ("layer", "head", "distance")
    # Per-haystack answer statistics and health vs haystack size, with bootstrap intervals.
    for v in ("needle_mass", "image_mass", "needle_margin", "attn_entropy", "sink_mass", "logit_scale", "q_norm", "locality"):
        assert ds[v].dims == ("layer", "head", "haystack_size", "sample"), v
    assert ds["k_norm"].dims == ("layer", "kv_head", "haystack_size", "sample")
    assert np.isnan(ds["needle_margin"].sel(haystack_size=1)).all()  # no distractor in a 1-image haystack
    assert np.isfinite(ds["needle_margin"].sel(haystack_size=5)).all()
    mass = ds["needle_mass"].sel(haystack_size=5)
    assert ((mass >= 0) & (mass <= ds["image_mass"].sel(haystack_size=5) + 1e-6)).all()
    np.testing.assert_allclose(ds["needle_mass"].sel(haystack_size=1), ds["image_mass"].sel(haystack_size=1), rtol=1e-6)
    assert (ds["needle_mass_lo"] <= ds["needle_mass_mean"] + 1e-12).all() and "bootstrap" in ds["needle_mass_lo"].attrs["interval"]
    assert set(ds["head_class"].values.ravel()) <= {"local", "global"} and "rule" in ds["head_class"].attrs
    assert ds["head_locality"].dims == ("layer", "head")
    ds["pair_coef_abs"].sel(head=0).plot()  # labelled dims: plots straight away
    ds["needle_mass_mean"].sel(head=0).plot()
    assert np.isfinite(ds["key_activation_raw"]).all()  # the old statistic stays, as an ablation

    ref = read_netcdf(out / "reference.nc")
    assert ref["layer"].values.tolist() == [0, 3]  # only the teacher layers paired with the student's (first, last)
    cmp = read_netcdf(out / "comparison.nc")
    assert cmp["teacher_layer"].sel(layer=1).item() == 3
    assert str(cmp["head_matching"].sel(layer=1).values) == "head_weights"
    assert cmp["virtual_coef_re"].dims == ("layer", "head", "rotary_pair")
    assert cmp["spectral_fidelity"].dims == ("layer", "head") and np.isfinite(cmp["spectral_fidelity"]).all()
    assert ((cmp["spectral_fidelity_scaled"] <= 1 + 1e-9) & (cmp["spectral_fidelity_scaled"] >= -1e-9)).all()
    assert 0.0 <= float(cmp["preservation_score"]) <= 1.0  # ablation kept beside it
    assert cmp["preservation"].attrs["long_name"].startswith("ABLATION")
    models = read_netcdf(out / "models.nc")
    assert models["model"].values.tolist() == ["tiny-3b", "tiny-32b"]
    hw = read_netcdf(out / "head_weights.nc")
    assert hw["w_q_top_teacher"].dims == ("layer_pair", "student_head")

    page = (out / "report.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert {"key_activation.png", "distance_profile.png", "comparison.png", "head_weights.png", "rope_gain.png",
            "health.png"} <= set(images)
    assert all((out / name).stat().st_size > 1000 for name in images)
    assert not list(out.glob(".*.tmp"))  # no temp files left behind
    assert "comparison:" in capsys.readouterr().out


def test_diagnose_errors_are_one_line_and_keep_old_results(random_zoo, vhs_data, tmp_path, capsys):
    out = tmp_path / "analysis"
    out.mkdir()
    (out / "diagnostics.nc").write_text("earlier result")
    rc = main(["diagnose", str(random_zoo["tiny-3b"]), "--data", str(vhs_data / "test"), "--image-root", str(vhs_data),
               "--sizes", "3", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "sizes [3]" in err and "available sizes: [1, 2, 5, 10]" in err and len(err.strip().splitlines()) == 1
    assert (out / "diagnostics.nc").read_text() == "earlier result"
    rc = main(["diagnose", str(tmp_path), "--data", str(vhs_data / "test"), "--image-root", str(vhs_data),
               "--out", str(out), "--no-progress"])
    assert rc == 1 and "config.json" in capsys.readouterr().err


def test_random_init_student_scores_below_a_copy_of_the_teacher(random_zoo, vhs_data):
    """On real model activations: the teacher itself (a perfectly distilled student, identity
    mixers) scores ~1 against its virtual heads; a random-init student with the mixers'
    starting point (overlap averages) scores clearly lower on both fidelity scores."""
    from laid.model.loading import load_model, load_processor
    from laid_analysis.analyse import AnalysisSettings, analyse_model
    from laid.data.vhs import load_entries
    from laid_analysis.pair_spectrum import compare_spectra

    entries = load_entries(vhs_data / "test", vhs_data, "single_needle", [5], 2)
    settings = AnalysisSettings(queries="question", keys="image")
    run = {name: analyse_model(load_model(random_zoo[name], device="cpu"), load_processor(random_zoo[name]), entries, settings,
                               progress=False) for name in ("tiny-32b", "tiny-7b")}
    teacher, student = run["tiny-32b"], run["tiny-7b"]

    def weights(w_q, w_k, s_layer):
        return xr.Dataset({"w_q": (("layer_pair", "student_head", "teacher_head"), w_q[None]),
                           "w_k": (("layer_pair", "student_kv_head", "teacher_kv_head"), w_k[None])},
                          coords={"student_layer": ("layer_pair", [s_layer]), "teacher_layer": ("layer_pair", [3])})

    copy = compare_spectra(teacher, teacher, {3: 3}, weights(np.eye(4), np.eye(2), 3))
    overlap_q = np.array([[0.75, 0.25, 0, 0], [0, 0.5, 0.5, 0], [0, 0, 0.25, 0.75]])  # trainers.head_mixer.overlap_init(3, 4)
    rand = compare_spectra(student, teacher, {2: 3}, weights(overlap_q, np.array([[0.5, 0.5]]), 2))
    assert float(copy["fidelity_score"]) == pytest.approx(1.0, abs=0.02)
    assert float(copy["profile_score"]) == pytest.approx(1.0, abs=0.02)
    print("random-init student:", float(rand["fidelity_score"]), float(rand["profile_score"]))
    assert float(rand["fidelity_score"]) < 0.5 and float(rand["profile_score"]) < 0.5


def test_ablations_equal_zeroed_weights_and_minimal_pairs_flip_the_answer(random_zoo, vhs_data):
    import torch

    from laid.model.hooks import text_decoder
    from laid.model.loading import load_model, load_processor
    from laid.model.prompting import encode_batch
    from laid_analysis.ablation import ablate, load_ground_truth, minimal_pairs
    from laid.data.vhs import load_entries

    objects = load_ground_truth(vhs_data)
    entries = load_entries(vhs_data / "test", vhs_data, "single_needle", [5], 4)[5]
    pairs = minimal_pairs(entries, objects)
    assert pairs
    for yes, no in pairs:  # same haystack, opposite answers, each answer true by the ground truth
        assert yes.images is no.images and yes.needles == no.needles and (yes.answer, no.answer) == ("yes", "no")
        assert yes.question != no.question
    path = random_zoo["tiny-32b"]
    model, processor = load_model(path, device="cpu"), load_processor(path)
    batch = encode_batch(processor, [pairs[0][0]])
    attn = text_decoder(model)[1][3].self_attn
    d = attn.head_dim
    with torch.no_grad():
        with ablate(model, 3, head=1):
            hooked = model(**batch).logits
        saved = attn.o_proj.weight.clone()
        attn.o_proj.weight[:, d:2 * d] = 0  # the same ablation in the weights
        direct = model(**batch).logits
        attn.o_proj.weight.copy_(saved)
        torch.testing.assert_close(hooked, direct)
        band = [2, 3]
        with ablate(model, 3, pairs=band):
            hooked = model(**batch).logits
        saved = {n: p.clone() for n, p in attn.named_parameters()}
        rows = torch.tensor(band + [p + d // 2 for p in band])
        for proj in (attn.q_proj, attn.k_proj):
            w = proj.weight.view(-1, d, proj.weight.shape[1])
            w[:, rows] = 0
            if proj.bias is not None:
                proj.bias.view(-1, d)[:, rows] = 0
        direct = model(**batch).logits
        for n, p in attn.named_parameters():
            p.copy_(saved[n])
        torch.testing.assert_close(hooked, direct)
        assert not torch.allclose(hooked, model(**batch).logits)  # and it did change something


def test_diagnose_writes_ablations(random_zoo, vhs_data, tmp_path):
    out = tmp_path / "abl"
    rc = main(["diagnose", str(random_zoo["tiny-3b"]), "--data", str(vhs_data / "test"), "--image-root", str(vhs_data),
               "--sizes", "5", "--max-samples", "4", "--out", str(out), "--ablate-layers", "-1", "--ablate-pairs", "3",
               "--rope-bands", "2", "--no-progress"])
    assert rc == 0
    abl = read_netcdf(out / "ablation.nc")
    assert abl["ablation"].values.tolist() == ["none", "head 0", "head 1", "pairs 0-7", "pairs 8-15"]
    assert abl["correct"].dims == ("layer", "ablation", "minimal_pair", "member") and abl["layer"].values.tolist() == [1]
    assert (abl["accuracy_change"].sel(ablation="none") == 0.0).all()
    assert (abl["accuracy_change_lo"] <= abl["accuracy_change"] + 1e-12).all()
    # A constant answer gets exactly one member of each pair right: pair accuracy is what needs the needle.
    assert (abl["pair_accuracy"] <= abl["accuracy"] + 1e-12).all()
    assert "ablation.png" in (out / "report.html").read_text()


def test_checkpoints_compared_side_by_side(random_zoo, vhs_data, tmp_path, capsys):
    from laid_analysis.diagnose import diagnose

    import shutil

    folders = {"tiny-3b": tmp_path / "tiny-3b", "tiny-3b-again": tmp_path / "again"}
    diagnose(random_zoo["tiny-3b"], vhs_data / "test", vhs_data, [5], folders["tiny-3b"], reference=random_zoo["tiny-32b"],
             max_samples=2, label="tiny-3b", reference_label="teacher", progress=False)
    shutil.copytree(folders["tiny-3b"], folders["tiny-3b-again"])
    rc = main(["diagnose-compare", *[f"{k}={v}" for k, v in folders.items()], "--teacher", "teacher", "--out", str(tmp_path / "cmp")])
    assert rc == 0
    summ = read_netcdf(tmp_path / "cmp" / "summary.nc")
    assert summ["model"].values.tolist() == ["teacher", "tiny-3b", "tiny-3b-again"]
    assert np.isnan(summ["fidelity_score"].sel(model="teacher")) and np.isfinite(summ["fidelity_score"].sel(model="tiny-3b"))
    models = read_netcdf(tmp_path / "cmp" / "models.nc")
    assert models["needle_mass_mean"].dims == ("model", "layer", "head", "haystack_size")
    assert "answer_stats.png" in (tmp_path / "cmp" / "report.html").read_text()
    rc = main(["diagnose-compare", "nolabel", "--out", str(tmp_path / "x")])
    assert rc == 1 and "LABEL=DIR" in capsys.readouterr().err
