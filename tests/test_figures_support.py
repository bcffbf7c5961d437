"""The notebooks' shared helpers, without a kernel: parameter checks, loaders, writers."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import figures_fixture as fx
from laid_workflows import figures_diagnosis as fd
from laid_workflows import figures_support as fs


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return fx.build_run(tmp_path_factory.mktemp("support") / "run")


def test_run_dir_and_choices():
    with pytest.raises(fs.MissingResultsError, match=r"parameter run_dir: .*nope not found; run `laid main` first"):
        fs.check_run_dir("/nope")
    with pytest.raises(ValueError, match=r"parameter profile: unknown value 'fft'; choose from \['attention', 'logit'\]"):
        fs.check_choice("profile", "fft", ["attention", "logit"])
    assert fs.check_list("models", "tiny-7b") == ["tiny-7b"]
    with pytest.raises(ValueError, match="parameter models: empty"):
        fs.check_list("models", [])


def test_unknown_model_vs_missing_result(run):
    assert fs.known_models(run) == ["tiny-32b", "tiny-3b", "tiny-7b"]
    assert float(fs.load_eval(run, "tiny-7b").accuracy.sel(haystack_size=10)) == 0.6
    with pytest.raises(ValueError, match=r"parameter models: unknown model 'tiny-70b'; this run has \['tiny-32b', 'tiny-3b', 'tiny-7b'\]"):
        fs.load_eval(run, "tiny-70b")
    # A model the run knows whose evaluation is not there yet: missing (skippable), not unknown.
    with pytest.raises(fs.MissingResultsError, match=r"parameter models: .*tiny-3b__yarn\.nc not found; run `laid eval`"):
        fs.load_eval(run, "tiny-3b", "yarn")


def test_diagnosis_folders_missing_files_and_variables(run):
    folder = run / "analysis" / "tiny-7b__base"
    with pytest.raises(fd.MissingResultsError, match=r"parameter head_weights: after: .*tiny-3b__laid/head_weights\.nc not found; give the head_weights\.nc"):
        fd.load_head_weights(run / "distill" / "tiny-3b__laid", "after")
    assert fd.load_head_weights(run / "distill" / "tiny-7b__laid", "after").attrs["label"] == "after"  # the folder or the file
    with pytest.raises(fd.MissingResultsError, match=r"parameter analyses: base: .*elsewhere/diagnostics\.nc not found; run `laid diagnose "
                                                     r"MODEL_DIR .* --out .*elsewhere` first"):
        fd.load_diagnosis(run / "elsewhere", "base", ["power"], "analyses")
    with pytest.raises(fd.MissingResultsError, match=r"comparison\.nc not found; run `laid diagnose` with --reference"):
        fd.load_diagnosis(run / "eval", "base", ["power"], "analyses", file=fd.COMPARISON)
    with pytest.raises(ValueError, match=r"parameter analyses: base: .*diagnostics\.nc lacks \['w_q'\]"):
        fd.load_diagnosis(folder, "base", ["w_q"], "analyses")
    assert fd.check_folders("analyses", [str(folder)]) == {"tiny-7b__base": folder}
    with pytest.raises(ValueError, match="parameter analyses: {} must map labels to folders"):
        fd.check_folders("analyses", {})


def test_methods_unknown_vs_not_compared(run):
    comparison = fs.load_comparison(run)
    assert fs.check_methods("methods", ["base", "laid"], comparison) == (["base", "laid"], [])
    with pytest.raises(ValueError, match="parameter methods: unknown method 'lora'"):
        fs.check_methods("methods", ["base", "lora"], comparison)
    assert fs.check_methods("methods", ["kd"], comparison.drop_sel(method="kd")) == ([], ["kd"])


def test_teacher_is_the_reference_given_else_the_reference_nc_beside_an_analysis(tmp_path):
    run = fx.build_run(tmp_path / "run")
    analyses = {"before": run / "analysis" / "tiny-7b__base", "after": run / "analysis" / "tiny-7b__laid"}
    # Without a teacher folder, the teacher's data is the reference.nc beside the first analysis, under its own name.
    ref = fd.load_reference(analyses, None, ["key_activation"])
    assert list(ref.layer.values) == [1, 2, 3] and ref.attrs["file"].endswith("tiny-7b__base/reference.nc")
    assert ref.attrs["label"] == "tiny-32b__base"
    own = tmp_path / "teacher"
    own.mkdir()
    fx.analysis_dataset("tiny-32b__base").to_netcdf(own / "diagnostics.nc")
    mine = fd.load_reference(analyses, {"the 32B": str(own)}, ["key_activation"])
    assert list(mine.layer.values) == [0, 1, 2, 3] and mine.attrs["label"] == "the 32B"
    with pytest.raises(ValueError, match="parameter reference: one teacher"):
        fd.load_reference(analyses, {"a": own, "b": own}, ["key_activation"])
    with pytest.raises(ValueError, match="label 'before' names an analysis and the teacher"):
        fd.check_labels(analyses, mine.assign_attrs(label="before"))
    for folder in analyses.values():
        (folder / "reference.nc").unlink()
    assert fd.load_reference(analyses, None, ["key_activation"]) is None  # no teacher: the figures say so


def test_layer_choice_is_the_needle_reading_layer_or_the_named_one(run):
    """On the fixture's planted diagnoses each checkpoint reads the needle at its own layer (not the last)."""
    for label, layer in fx.NEEDLE_LAYER.items():
        folder, file = (run / "analysis" / "tiny-7b__base", fd.REFERENCE) if label.startswith(fx.TEACHER) else (run / "analysis" / label, fd.DIAGNOSIS)
        ds = fd.load_diagnosis(folder, label, ["head_locality"], "analyses", file=file)
        got, why = fd.choose_layer(ds, None)
        assert got == layer and why.startswith("reads the needle: mass 0.88 [0.83, 0.93], head 1, question rows, 5-20 images")
        assert fd.choose_layer(ds, -1) == (int(ds.layer[-1]), "named")
        assert fd.choose_layer(ds, {label: int(ds.layer[0])}) == (int(ds.layer[0]), "named")
        assert fd.choose_layer(ds, {"someone else": 0})[0] == layer  # labels not named keep their needle-reading layer
    with pytest.raises(ValueError, match=r"parameter layers: unknown label 'x'; the figure's labels are \['a'\]"):
        fd.check_layers({"x": 0}, ["a"])
    with pytest.raises(ValueError, match="must be None"):
        fd.check_layers("last", ["a"])
    old = fx.analysis_dataset("tiny-7b__base").drop_vars(["needle_mass_question_mean", "needle_mass_question_lo", "needle_mass_question_hi"])
    old.to_netcdf(run / "old.nc")
    with pytest.raises(ValueError, match=r"parameter layers: old: .*has no needle_mass_question.*; or name its layer in `layers`"):
        fd.needle_layer(xr.Dataset(attrs={"file": str(run / "old.nc"), "label": "old"}))


def test_pick_layer_by_label_or_from_the_end():
    da = xr.DataArray(np.arange(3), dims="layer", coords={"layer": [1, 2, 3]})
    assert int(fd.pick_layer(da, -1, "layer")) == 2 and int(fd.pick_layer(da, 1, "layer")) == 0
    with pytest.raises(ValueError, match=r"parameter teacher_layer: layer 0 not stored; choose one of \[1, 2, 3\]"):
        fd.pick_layer(da, 0, "teacher_layer")
    with pytest.raises(ValueError, match="parameter layer: layer -4 out of range"):
        fd.pick_layer(da, -4, "layer")


def test_panels_without_heads_are_dropped_and_named():
    data = xr.Dataset({"head_locality": (("checkpoint", "head"), [[0.5, 2.0, np.nan], [0.1, 0.2, 0.3]]),
                       "head_class": (("checkpoint", "head"), [["global", "local", ""], ["global", "global", "global"]])},
                      coords={"checkpoint": ["s", "t"], "head": [0, 1, 2], "layer_index": ("checkpoint", [0, 1])})
    assert fd.heads_of(data, "s") == [0, 1] and fd.heads_of(data, "s", "local") == [1] and fd.heads_of(data, "t", "local") == []
    panels = [{"checkpoint": "s", "head_class": "", "title": "s"}, {"checkpoint": "t", "head_class": "local", "title": "t local"},
              {"checkpoint": "t", "head_class": "global", "title": "t global"}]
    kept, dropped = fd.keep_panels(data, panels, "rule R")
    assert [p["title"] for p in kept] == ["s", "t global"] and dropped == ["t has no local heads at layer 1 (rule R)"]


def test_head_class_names_from_text_or_flags():
    text = xr.DataArray(np.array([["local", "global"]]), dims=("layer", "head"))
    assert fd.head_class_names(text).tolist() == [["local", "global"]]
    flags = xr.DataArray([[0, 1, 1]], dims=("layer", "head"), attrs={"flag_values": [0, 1], "flag_meanings": "local global"})
    assert fd.head_class_names(flags).tolist() == [["local", "global", "global"]]


def test_writers(tmp_path):
    import plotly.graph_objects as go

    ds = xr.Dataset({"a": ("x", [1.0, 2.0])})
    path = fs.save_data(ds, tmp_path, "thing")
    assert path == tmp_path / "data" / "thing.nc"
    xr.testing.assert_identical(xr.load_dataset(path), ds)
    fig = go.Figure([go.Scatter(y=[1, 2]), go.Scatter(y=[2, 1]), go.Scatter(y=[3, 3])])
    fs.add_dropdown(fig, ["layer 0", "layer 0", "layer 1"], "")
    assert [t.visible for t in fig.data] == [True, True, False]
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == ["layer 0", "layer 1"] and buttons[1].args[0]["visible"] == [False, False, True]
    html = fs.save_plotly(fig, tmp_path, "fig").read_text()
    assert 'src="plotly.min.js"' in html and "cdn.plot.ly" not in html and len(html) < 50_000
    assert (tmp_path / "plotly.min.js").is_file()  # drawn offline: tests/test_figures_offline.py
    df = pd.DataFrame({"1": [0.5, np.nan]}, index=pd.MultiIndex.from_tuples([("7B", "base"), ("7B", "laid")], names=["model", "method"]))
    assert fs.markdown_table(df).splitlines() == ["| model | method | 1 |", "|---|---|---|", "| 7B | base | 0.50 |", "| 7B | laid |  |"]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files behind


def test_paired_differences_pair_questions_and_refuse_different_ones(tmp_path):
    run = fx.build_run(tmp_path / "run")
    d = fs.paired_differences(run, "tiny-7b", ["laid"], fx.SIZES)
    laid, base = fx.METHODS.index("laid"), fx.METHODS.index("base")
    expected = [(fx.comparison_correct(0, laid, n) - fx.comparison_correct(0, base, n)) / 20 for n in fx.SIZES]
    np.testing.assert_allclose(d.difference.sel(diff_method="laid").values, expected)
    assert (d.difference_lo <= d.difference + 1e-12).all() and (d.difference_hi >= d.difference - 1e-12).all()
    # Results on other questions (another needle position) are refused, not silently compared.
    other = fx.eval_dataset("tiny-7b", "laid", [fx.comparison_correct(0, laid, n) for n in fx.SIZES], 20)
    other["needle_index"] = other["needle_index"] + 1
    other.to_netcdf(run / "distill" / "tiny-7b__laid" / "eval.nc")
    with pytest.raises(ValueError, match="same questions"):
        fs.paired_differences(run, "tiny-7b", ["laid"], fx.SIZES)
    with pytest.raises(fs.MissingResultsError, match="no per-question results for tiny-7b base"):
        fs.paired_differences(tmp_path, "tiny-7b", ["yarn"], fx.SIZES)


def test_row_shares():
    w = xr.DataArray([[0.5, -0.5, 0.0], [0.0, 0.0, 0.0]], dims=("student_head", "teacher_head"))
    share = fd.row_shares(w)
    np.testing.assert_allclose(share.values[0], [0.5, 0.5, 0.0])
    assert np.isnan(share.values[1]).all()
