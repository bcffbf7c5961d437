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
    assert ds["key_activation"].dims == ("layer", "head", "haystack_size")
    assert ds["haystack_size"].values.tolist() == [1, 5] and ds["n_samples"].values.tolist() == [2, 2]
    assert ds.sizes["layer"] == 2 and ds.sizes["head"] == 2 and ds.attrs["model_name"] == "tiny-3b"
    assert ds["attention"].dims == ("layer", "head", "distance") and ds["distance"].attrs["units"] == "tokens"
    assert ds["power"].dims == ("layer", "head", "freq_distance")
    assert ds["rope_usage"].dims == ("layer", "head", "rotary_pair")
    assert set(ds["head_class"].values.ravel()) <= {"local", "global"}
    assert np.nanmin(ds["key_activation"]) >= 0 and np.nanmax(ds["key_activation"]) <= 1
    assert np.isfinite(ds["key_activation_raw"]).all()

    ref = read_netcdf(out / "reference.nc")
    assert ref["layer"].values.tolist() == [0, 3]  # only the teacher layers paired with the student's (first, last)
    cmp = read_netcdf(out / "comparison.nc")
    assert cmp["teacher_layer"].sel(layer=1).item() == 3
    assert str(cmp["head_matching"].sel(layer=1).values) == "head_weights"
    assert 0.0 <= float(cmp["preservation_score"]) <= 1.0
    models = read_netcdf(out / "models.nc")
    assert models["model"].values.tolist() == ["tiny-3b", "tiny-32b"]
    hw = read_netcdf(out / "head_weights.nc")
    assert hw["w_q_top_teacher"].dims == ("layer_pair", "student_head")

    page = (out / "report.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert {"key_activation.png", "distance_profile.png", "comparison.png", "head_weights.png", "rope_gain.png"} <= set(images)
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
