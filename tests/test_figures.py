"""`laid figures`: every notebook executed through papermill on a fixture run (tests/figures_fixture.py),
the data behind each figure checked against the fixture's numbers, files and sources checked,
and bad parameters stopping a notebook with a message that names the parameter."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil

import nbformat
import numpy as np
import pytest
import xarray as xr

import figures_fixture as fx
from laid_workflows import figures
from laid_workflows import figures_diagnosis as fd
from laid_workflows.figures import NOTEBOOK_DIR, NOTEBOOKS, run_figures, run_notebook

FIGURES = ["fig1_effective_window", "fig3_distillation_bars", "fig4_key_activations", "head_weights", "spectra",
           "learning_curves_testbed"]


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Run every notebook once, quick mode, on the fixture run; sources hashed before and after."""
    root = tmp_path_factory.mktemp("figures")
    run = fx.build_run(root / "runs" / "fixture")
    before = {n: digest(NOTEBOOK_DIR / f"{n}.ipynb") for n in NOTEBOOKS}
    outcomes = run_figures(run, root / "figures", quick=True, executed_dir=root / "executed", progress=False)
    after = {n: digest(NOTEBOOK_DIR / f"{n}.ipynb") for n in NOTEBOOKS}
    return {"run": run, "figures": root / "figures", "executed": root / "executed", "outcomes": outcomes,
            "before": before, "after": after}  # fmt: skip


def figure_data(executed, name) -> xr.Dataset:
    return xr.load_dataset(executed["figures"] / "data" / f"{name}.nc")


def test_sources_have_one_parameters_cell_and_no_outputs():
    for name in NOTEBOOKS:
        nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, name
        keys = ("figures_dir", "quick", "interactive") + (("analyses", "reference", "layers") if name in ("fig4_key_activations", "spectra")
                                                          else ("head_weights",) if name == "head_weights" else ("run_dir",))
        for key in keys:
            assert f"\n{key} = " in "\n" + tagged[0].source, (name, key)
        # Opened in JupyterLab (cwd notebooks/), a notebook writes into the run folder, never the repository's figures/.
        assert 'figures_dir = "../runs/default/figures"' in tagged[0].source, name
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.outputs == [] and c.execution_count is None for c in code), f"{name}: outputs not cleared"
        assert nb.metadata.kernelspec.name == "laid"


def test_every_notebook_runs_and_sources_stay_unchanged(executed):
    assert [(o.name, o.status) for o in executed["outcomes"]] == [(n, "ok") for n in NOTEBOOKS]
    assert executed["before"] == executed["after"]
    for name in NOTEBOOKS:
        nb = nbformat.read(executed["executed"] / f"{name}.ipynb", as_version=4)
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert len(injected) == 1 and str(executed["run"]) in injected[0].source and "quick = True" in injected[0].source
        assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{name}: executed copy has no outputs"


def test_figure_files_are_real_images(executed):
    figs = executed["figures"]
    for name in FIGURES:
        png, pdf, html = (figs / f"{name}.{ext}" for ext in ("png", "pdf", "html"))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, name
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5_000, name
        text = html.read_text()
        assert 'src="plotly.min.js"' in text and "Plotly.newPlot" in text and len(text) < 300_000, name
    assert (figs / "plotly.min.js").is_file()  # one shared copy: the pages draw offline


def test_fig1_data_equals_eval_files(executed):
    data = figure_data(executed, "fig1_effective_window")
    assert list(data.model.values) == ["tiny-32b", "tiny-7b", "tiny-3b"]
    for model in data.model.values:
        ev = xr.load_dataset(executed["run"] / "eval" / f"{model}__base.nc")
        np.testing.assert_array_equal(data.accuracy.sel(model=model).values, ev.accuracy.values)
        assert float(data.effective_window.sel(model=model)) == pytest.approx(float(ev.effective_window), nan_ok=True)
    # tiny-7b gets 6 of 10 right at 10 images in the fixture.
    assert float(data.accuracy.sel(model="tiny-7b", haystack_size=10)) == 0.6
    assert int(data.effective_window_censored.sel(model="tiny-32b")) == 1  # the teacher never drops below 0.6
    # Paper curves: Table 1's base rows.
    assert float(data.paper_accuracy.sel(paper_model="7B", paper_haystack_size=100)) == pytest.approx(0.5108)
    assert float(data.paper_effective_window.sel(paper_model="3B")) == pytest.approx(53.25, abs=0.01)


def test_fig3_data_equals_comparison(executed):
    data = figure_data(executed, "fig3_distillation_bars")
    comparison = xr.load_dataset(executed["run"] / "compare" / "comparison.nc")
    assert list(data.method.values) == ["base", "kd", "laid"]
    assert list(data.student.values) == fx.STUDENTS
    for s in data.student.values:
        for m in data.method.values:
            pick = {"student": s, "method": m}
            np.testing.assert_array_equal(data.accuracy.sel(pick), comparison.accuracy.sel(pick))
            np.testing.assert_array_equal(data.accuracy_std.sel(pick), comparison.accuracy_std.sel(pick))
    laid = fx.METHODS.index("laid")
    assert float(data.accuracy.sel({"student": "tiny-7b", "method": "laid", "haystack_size": 5})) == fx.comparison_correct(0, laid, 5) / 20
    assert float(data.paper_accuracy.sel(paper_method="kd", paper_haystack_size=100)) == pytest.approx(0.6150)
    # Paired differences vs base on the same questions, from the per-question eval files, with intervals.
    assert list(data.diff_method.values) == ["kd", "laid"]
    for si, s in enumerate(fx.STUDENTS):
        for m in ("kd", "laid"):
            mi, bi = fx.METHODS.index(m), fx.METHODS.index("base")
            expected = [(fx.comparison_correct(si, mi, n) - fx.comparison_correct(si, bi, n)) / 20 for n in fx.SIZES]
            got = data.difference.sel(student=s, diff_method=m)
            np.testing.assert_allclose(got.values, expected)
            assert (data.difference_lo.sel(student=s, diff_method=m) <= got + 1e-12).all()
            assert (data.difference_hi.sel(student=s, diff_method=m) >= got - 1e-12).all()
    assert (data.n_questions == 20).all() and "paired" in data.attrs["difference_interval"]


def test_fig4_draws_each_checkpoint_at_the_layer_its_diagnosis_finds_reading_the_needle(executed):
    """The fixture plants each diagnosis' needle-reading layer (question rows) away from the last layer,
    and a teacher layer without local heads: Figure 4 draws those layers, titled with the labels, and
    drops (and names) the panel that would be empty."""
    from trainers.layer_choice import choose_layers

    data = figure_data(executed, "fig4_key_activations")
    labels = ["tiny-7b__base", "tiny-7b__kd", "tiny-7b__laid"]  # every analysis of the run's first student, methods in order
    teacher = f"{fx.TEACHER}__base"  # from the reference.nc beside the first analysis
    assert list(data.checkpoint.values) == [*labels, teacher] and list(data.role.values) == ["checkpoint"] * 3 + ["teacher"]
    layers = json.loads(data.attrs["layers"])
    assert layers == fx.NEEDLE_LAYER and [int(v) for v in data.layer_index.values] == [fx.NEEDLE_LAYER[x] for x in [*labels, teacher]]
    # The ablation: the last layer (the old default) and the answer row's needle mass miss the planted layers.
    run = executed["run"]
    for label in labels:
        path = run / "analysis" / label / "diagnostics.nc"
        assert choose_layers(path).teacher_layers == [fx.NEEDLE_LAYER[label]]
        assert choose_layers(path, rows="answer").teacher_layers == [2]  # the answer row ranks the last layer first
    assert sum(fx.NEEDLE_LAYER[x] != 2 for x in labels) == 2
    for ck, label in zip(data.checkpoint.values, [*labels, teacher]):
        layer, heads = fx.NEEDLE_LAYER[label], fx.SHAPES[label.split("__")[0]][1]
        d = data.sel(checkpoint=ck).isel(head=slice(0, heads))
        np.testing.assert_allclose(d.needle_mass_question_mean.values,
                                   [[fx.needle_mass_question(label, layer, h, n) for n in fx.SIZES] for h in range(heads)])
        np.testing.assert_allclose(d.needle_mass_mean.values, [[fx.needle_mass(label, layer, h, n) for n in fx.SIZES] for h in range(heads)])
        np.testing.assert_allclose(d.needle_margin_mean.values, [[fx.needle_margin(label, layer, h, n) for n in fx.SIZES] for h in range(heads)])
        np.testing.assert_allclose(d.head_locality.values, [fx.locality(label, layer, h) for h in range(heads)])
        assert np.isnan(data.sel(checkpoint=ck).needle_mass_mean.isel(head=slice(heads, None))).all()  # fewer heads: NaN, not made up
    # Titles from the labels, never "before/after LAid"; every drawn panel has heads; the empty one is named.
    panels = json.loads(data.attrs["panels"])
    assert [p["title"].split("\n")[0] for p in panels] == [*labels, f"{teacher}: global position heads"]
    for p in panels:
        assert fd.heads_of(data, p["checkpoint"], p["head_class"]), p
    assert json.loads(data.attrs["dropped_panels"]) == [f"{teacher} has no local heads at layer 1 ({data.attrs['head_class_rule']})"]
    text = data.attrs["title"] + data.attrs["caption"] + "".join(p["title"] for p in panels)
    assert all(x in data.attrs["title"] for x in [*labels, teacher]) and "before" not in text and "after" not in text
    assert f"{teacher} at layer 1 (reads the needle: mass 0.88" in data.attrs["caption"] and "no local heads" in data.attrs["caption"]
    assert "bootstrap" in data.attrs["interval"] and "1.0" in data.attrs["head_class_rule"]


def test_head_weights_data_equals_distill_file(executed):
    data = figure_data(executed, "head_weights")
    expected = fx.head_weights_dataset("tiny-7b")  # every aligned layer pair by default
    np.testing.assert_array_equal(data.w_q.values, expected.w_q.values)
    np.testing.assert_array_equal(data.w_k.values, expected.w_k.values)
    assert data.w_q.dims == ("layer_pair", "student_head", "teacher_head") and data.w_q.shape == (2, 4, 8)
    np.testing.assert_allclose(data.w_q_share.sum("teacher_head"), 1.0)
    w = expected.w_q.values[1, 0]
    np.testing.assert_allclose(data.w_q_share.values[1, 0], np.abs(w) / np.abs(w).sum())
    assert list(data.attrs["pairs"]) == ["student layer 1 <- teacher layer 2", "student layer 2 <- teacher layer 3"]
    assert data.attrs["mixers"] == "not trained (their least_squares start)"  # not to be read as learned
    assert data.attrs["label"] == "tiny-7b__laid" and data.attrs["title"] == "Head weights of tiny-7b__laid, not trained (their least_squares start)"
    assert data.attrs["source"] == str(executed["run"] / "distill" / "tiny-7b__laid" / "head_weights.nc")
    html = (executed["figures"] / "head_weights.html").read_text()
    assert data.attrs["title"] in html
    assert "student layer 1 \\u003c- teacher layer 2" in html  # the other pair, behind the dropdown (JSON-escaped "<")


def test_spectra_data_equals_analysis_at_each_needle_reading_layer(executed):
    data = figure_data(executed, "spectra")
    teacher, labels = f"{fx.TEACHER}__base", ["tiny-7b__base", "tiny-7b__kd", "tiny-7b__laid"]
    assert list(data.checkpoint.values) == [teacher, *labels]
    assert data.attrs["distance_units"] == "positions" and data.rope_freq.attrs["units"] == "cycles/position"
    assert json.loads(data.attrs["layers"]) == fx.NEEDLE_LAYER  # each at the layer its diagnosis reads the needle at
    assert data.attrs["title"] == f"Per-rotary-pair spectra of {', '.join(labels)} against the teacher {teacher}"
    expected = {teacher: fx.analysis_dataset(teacher, layers=[1, 2, 3]).sel(layer=fx.NEEDLE_LAYER[teacher])}
    expected.update({x: fx.analysis_dataset(x).sel(layer=fx.NEEDLE_LAYER[x]) for x in labels})
    for name, a in expected.items():
        assert int(data.layer_index.sel(checkpoint=name)) == int(a.layer)
        np.testing.assert_allclose(data.profile.sel(checkpoint=name).values, a.logit.mean("head").values)
        np.testing.assert_allclose(data.coef_re.sel(checkpoint=name).values, a.pair_coef_re.mean("head").values)
        np.testing.assert_allclose(data.rope_profile.sel(checkpoint=name).values, a.rope_profile.mean("head").values)
    for label in labels:
        layer = fx.NEEDLE_LAYER[label]
        fid = [fx.fidelity(label, layer, h) for h in range(4)]
        assert float(data.fidelity.sel(checkpoint=label)) == pytest.approx(np.mean(fid))
        assert float(data.fidelity_min.sel(checkpoint=label)) == pytest.approx(min(fid))
        np.testing.assert_allclose(data.virtual_coef_re.sel(checkpoint=label).values,
                                   np.mean([[fx.virtual_coef(label, layer, h, p).real for p in range(fx.N_PAIRS)] for h in range(4)], 0))
        assert float(data.preservation.sel(checkpoint=label)) == pytest.approx(np.mean([fx.preservation(label, layer, h) for h in range(4)]))
        assert int(data.virtual_teacher_layer.sel(checkpoint=label)) == [1, 2, 3][layer]  # the fixture's comparison.nc pairing
    assert np.isnan(float(data.fidelity.sel(checkpoint=teacher)))
    assert "ABLATION" in data.attrs["preservation"] and json.loads(data.attrs["dropped_panels"]) == []


def test_tables_data_and_markdown(executed):
    comparison = xr.load_dataset(executed["run"] / "compare" / "comparison.nc")
    t1 = figure_data(executed, "table1")
    np.testing.assert_array_equal(t1.accuracy.sel({"model": "tiny-7b", "method": "laid"}), comparison.accuracy.sel({"student": "tiny-7b", "method": "laid"}))
    np.testing.assert_array_equal(t1.accuracy.sel({"model": "tiny-32b", "method": "base"}), comparison.teacher_accuracy)
    assert float(t1.gain_short.sel({"model": "tiny-3b", "method": "kd"})) == float(comparison.gain_short.sel({"student": "tiny-3b", "method": "kd"}))
    t3 = figure_data(executed, "table3")
    assert sorted(t3.method.values) == sorted(["base", "laid-no-kl", "laid-no-laid", "laid"])
    t2 = figure_data(executed, "table2")
    ev = xr.load_dataset(executed["run"] / "eval" / "tiny-32b__base.nc")
    np.testing.assert_array_equal(t2.avg_input_tokens.values, ev.avg_input_tokens.values)
    md = (executed["figures"] / "tables.md").read_text()
    laid = fx.METHODS.index("laid")
    laid_7b = " | ".join(f"{100 * fx.comparison_correct(0, laid, n) / 20:.2f}" for n in fx.SIZES)
    assert f"| tiny-7b | laid | {fx.LAID_LABEL} | {laid_7b} |" in md  # the row says what trained
    assert "| 7B | laid | 92.83 | 83.26 | 80.46 | 74.09 | 67.04 | 63.37 | 60.17 | 24.10 | 24.50 |" in md  # paper's Table 1
    assert "arXiv 2512.21576" in md


# ---------------------------------------------------------------- bad parameters


def test_learning_curve_data_equals_study(executed):
    data = figure_data(executed, "learning_curves_testbed")
    study = xr.load_dataset(executed["run"] / "study" / "testbed.nc")
    for student in data.student.values:
        for group in data.group.values:
            for arm in data.arm.values:
                want = study.acc.sel(student=student, group=group, arm=arm)
                np.testing.assert_allclose(data.accuracy.sel(student=student, group=group, arm=arm).values, want.values)
            np.testing.assert_allclose(float(data.teacher_accuracy.sel(student=student, group=group)),
                                       float(study.teacher_acc.sel(group=group)))
            np.testing.assert_allclose(float(data.base_accuracy.sel(student=student, group=group)),
                                       float(study.base_acc.sel(student=student, group=group)))
    assert data.haystacks.values.tolist() == [80, 320]  # budgets 10 and 40 of 8 haystacks
    assert (executed["figures"] / "learning_curves_testbed.png").stat().st_size > 10_000


def test_missing_results_stop_with_parameter_name_or_skip(tmp_path):
    run = fx.build_run(tmp_path / "run")
    shutil.rmtree(run / "compare")
    with pytest.raises(RuntimeError) as err:
        run_figures(run, tmp_path / "figs", quick=True, executed_dir=tmp_path / "exec", notebooks=["fig3_distillation_bars"], progress=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert "fig3_distillation_bars.ipynb" in msg and "MissingResultsError" in msg
    assert "parameter run_dir" in msg and "comparison.nc not found" in msg and "laid compare" in msg and "--allow-missing" in msg
    # The executed copy shows the failing cell; the source is untouched.
    nb = nbformat.read(tmp_path / "exec" / "fig3_distillation_bars.ipynb", as_version=4)
    assert any(o.get("ename") == "MissingResultsError" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    # --allow-missing: the same notebook is skipped with a warning, and no error is raised.
    outcomes = run_figures(run, tmp_path / "figs", quick=True, executed_dir=tmp_path / "exec", notebooks=["fig3_distillation_bars"],
                           allow_missing=True, progress=False)  # fmt: skip
    assert [(o.name, o.status) for o in outcomes] == [("fig3_distillation_bars", "skipped")]
    assert not (tmp_path / "figs" / "fig3_distillation_bars.png").exists()


def test_unknown_model_stops_naming_the_parameter_even_with_allow_missing(tmp_path):
    run = fx.build_run(tmp_path / "run")
    bad = {"fig1_effective_window": {"models": ["tiny-32b", "tiny-70b"]}}
    with pytest.raises(RuntimeError, match=r"fig1_effective_window\.ipynb .*ValueError: parameter models: unknown model 'tiny-70b'; this run has \["):
        run_figures(run, tmp_path / "figs", quick=True, executed_dir=tmp_path / "exec", notebooks=["fig1_effective_window"],
                    allow_missing=True, overrides=bad, progress=False)  # fmt: skip


def test_cli_errors_before_starting_a_kernel(tmp_path):
    parser = argparse.ArgumentParser()
    figures.register(parser.add_subparsers())
    args = parser.parse_args(["figures", "--run-dir", str(tmp_path / "nope"), "--figures-dir", str(tmp_path / "f")])
    assert (args.quick, args.allow_missing, args.executed_dir, args.only, args.figures_dir) == (False, False, None, None, str(tmp_path / "f"))
    with pytest.raises(FileNotFoundError, match="run folder .*nope not found; run `laid main` first"):
        args.func(args)
    with pytest.raises(ValueError, match="executed copies must go elsewhere"):
        run_figures(tmp_path, executed_dir=NOTEBOOK_DIR, notebooks=["fig3_distillation_bars"])
    with pytest.raises(ValueError, match="unknown notebook"):
        run_figures(tmp_path, notebooks=["fig2"])
    with pytest.raises(RuntimeError, match="kernel 'no-such-kernel' not found; run scripts/setup.sh"):
        run_figures(tmp_path, kernel="no-such-kernel", executed_dir=tmp_path / "e", notebooks=["fig3_distillation_bars"])
    # No silent fallback to the notebooks' toy names: a run naming no models is refused for the notebooks needing them.
    with pytest.raises(ValueError, match=r"names no teacher and students .* fig1_effective_window, fig4_key_activations, head_weights, spectra, "
                                         r"tables need them: draw a checkpoint's figures with `laid figures --analysis"):
        run_figures(tmp_path)
    assert figures.run_parameters(tmp_path, ["fig1_effective_window"], given=["fig1_effective_window"]) == {}  # names given: fine
    for bad, match in ((["--analysis", "a=x", "--run-dir", "r"], "not both"), (["--layers", "0"], "go with --analysis"),
                       (["--analysis", f"a={tmp_path}", f"a={tmp_path}"], "label 'a' given twice"),
                       (["--analysis", f"a={tmp_path}", "--layers", "a=x"], "--layers a=x: give one layer"),
                       (["--analysis", f"a={tmp_path / 'gone'}"], "analysis folder a=.*gone not found")):
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            args = parser.parse_args(["figures", *bad])
            args.func(args)
    assert fd.parse_layers(["-1"]) == -1 and fd.parse_layers(["a=0", "b=2"]) == {"a": 0, "b": 2}


def test_the_learning_curves_draw_the_study_that_ran_last(tmp_path):
    """A run folder's studies (study/<name>.nc): `laid figures --run-dir` draws the one written last, not
    the notebook's default name; a run without a study gets no study parameter."""
    import os

    assert "learning_curves" not in figures.run_parameters(tmp_path, ["learning_curves"])
    (tmp_path / "study").mkdir()
    for name, mtime in (("window", 2_000_000_000), ("testbed", 1_000_000_000)):  # written first: window
        (tmp_path / "study" / f"{name}.nc").write_bytes(b"")
        os.utime(tmp_path / "study" / f"{name}.nc", (mtime, mtime))
    assert figures.run_parameters(tmp_path, ["learning_curves"])["learning_curves"] == {"study": "window"}
    os.utime(tmp_path / "study" / "testbed.nc", (3_000_000_000, 3_000_000_000))
    assert figures.run_parameters(tmp_path, ["learning_curves"])["learning_curves"] == {"study": "testbed"}


def test_default_figures_folder_is_the_run_or_beside_the_analyses_never_the_repository(tmp_path):
    assert figures.beside([tmp_path / "run" / "analysis" / "x", tmp_path / "run" / "analysis" / "y"]) == tmp_path / "run" / "figures"
    assert figures.beside([tmp_path / "mine" / "before", tmp_path / "mine" / "after"]) == tmp_path / "mine" / "figures"
    assert figures.beside([tmp_path / "mine" / "before"]) == tmp_path / "mine" / "figures"
    with pytest.raises(ValueError, match="repository's own .*figures; name a folder with --out"):
        figures.beside([figures.REPO / "a", figures.REPO / "b"])
    # A run folder's figures and executed copies land inside it (`laid results` reads <run>/figures).
    run = fx.build_run(tmp_path / "run2")
    [outcome] = run_figures(run, notebooks=["fig3_distillation_bars"], quick=True, progress=False)
    assert outcome.figures == run / "figures" and (run / "figures" / "fig3_distillation_bars.png").is_file()
    assert outcome.executed == run / "executed_notebooks" / "fig3_distillation_bars.ipynb"


def test_interactive_mode_builds_widgets(tmp_path):
    """interactive=True (JupyterLab) takes the ipywidgets + plotly path; papermill can run it headless."""
    run = fx.build_run(tmp_path / "run")
    params = {"analyses": {"base": str(run / "analysis" / "tiny-7b__base")}, "figures_dir": str(tmp_path / "figs"), "quick": True,
              "interactive": True}
    # Every cell takes seconds; a short timeout bounds nbclient's occasional lost reply with widgets
    # (run_notebook restarts the kernel once) to a minute instead of ten.
    out = run_notebook("fig4_key_activations", params, tmp_path / "exec", cell_timeout=60)
    nb = nbformat.read(out, as_version=4)
    mimetypes = {m for c in nb.cells if c.cell_type == "code" for o in c.outputs for m in o.get("data", {})}
    assert "application/vnd.jupyter.widget-view+json" in mimetypes


def files_under(root) -> set:
    return {p for p in root.rglob("*") if p.is_file()}


def git_status() -> str:
    import subprocess

    return subprocess.run(["git", "status", "--porcelain"], cwd=figures.REPO, capture_output=True, text=True, check=True).stdout


def test_any_checkpoints_figures_from_the_command_line(tmp_path, random_zoo):
    """`laid figures --analysis LABEL=DIR` on folders `laid diagnose` wrote (random-init toy models,
    two students of different shapes under labels of the user's own): titles from the labels, each
    at the layer its diagnosis finds reading the needle, and every file in the named folder."""
    from laid.data.synth import SynthConfig, generate
    from laid_analysis.diagnose import diagnose
    from laid_workflows.cli import main
    from trainers.layer_choice import choose_layers

    data = generate(SynthConfig.quick(0), tmp_path / "data", progress=False)
    mine = tmp_path / "my analyses"
    for student in ("tiny-7b", "tiny-3b"):
        diagnose(random_zoo[student], data / "test", data, [1, 5], mine / student, reference=random_zoo["tiny-32b"],
                 max_samples=2, progress=False)  # fmt: skip
    out = tmp_path / "the figures"
    before, status = files_under(tmp_path), git_status()
    assert main(["figures", "--analysis", f"seven B={mine / 'tiny-7b'}", f"three B={mine / 'tiny-3b'}", "--out", str(out),
                 "--quick", "--no-progress"]) == 0  # fmt: skip
    new = files_under(tmp_path) - before
    assert new and all(p.is_relative_to(out) for p in new), sorted(p for p in new if not p.is_relative_to(out))
    assert git_status() == status  # the checkout is untouched
    assert not (out / "head_weights.png").exists()  # no head_weights.nc among the inputs: skipped, and said
    assert {p.name for p in (out / "executed_notebooks").iterdir()} == {"fig4_key_activations.ipynb", "spectra.ipynb"}

    fig4 = xr.load_dataset(out / "data" / "fig4_key_activations.nc")
    assert list(fig4.checkpoint.values) == ["seven B", "three B", "tiny-32b"]  # the teacher: the label `laid diagnose` gave it
    for label, folder in (("seven B", "tiny-7b"), ("three B", "tiny-3b")):
        diag = xr.load_dataset(mine / folder / "diagnostics.nc")
        layer = choose_layers(mine / folder / "diagnostics.nc").teacher_layers[0]
        assert json.loads(fig4.attrs["layers"])[label] == layer
        n = diag.sizes["head"]
        np.testing.assert_array_equal(fig4.needle_mass_question_mean.sel(checkpoint=label).isel(head=slice(0, n)).values,
                                      diag.needle_mass_question_mean.sel(layer=layer).values)
    ref = xr.load_dataset(mine / "tiny-7b" / "reference.nc")  # the teacher from the first analysis' reference.nc
    t_layer = choose_layers(mine / "tiny-7b" / "reference.nc").teacher_layers[0]
    np.testing.assert_array_equal(fig4.needle_margin_lo.sel(checkpoint="tiny-32b").values, ref.needle_margin_lo.sel(layer=t_layer).values)
    assert fig4.attrs["title"].endswith("seven B, three B and the teacher tiny-32b")
    for p in json.loads(fig4.attrs["panels"]):
        assert fd.heads_of(fig4, p["checkpoint"], p["head_class"]), p
    spectra = xr.load_dataset(out / "data" / "spectra.nc")
    comparison = xr.load_dataset(mine / "tiny-3b" / "comparison.nc")
    layer = json.loads(spectra.attrs["layers"])["three B"]
    assert float(spectra.fidelity.sel(checkpoint="three B")) == pytest.approx(float(comparison.spectral_fidelity.sel(layer=layer).mean()))
    assert float(spectra.preservation_score.sel(checkpoint="three B")) == pytest.approx(float(comparison.preservation_score))
    np.testing.assert_allclose(spectra.coef_re.sel(checkpoint="tiny-32b").values, ref.pair_coef_re.sel(layer=t_layer).mean("head").values)
    assert spectra.attrs["distance_units"] == "positions" and "three B" in spectra.attrs["title"]
    # Named layers: one for all, or per label.
    assert main(["figures", "--analysis", f"seven B={mine / 'tiny-7b'}", "--layers", "-1", "--out", str(out / "last"), "--only",
                 "fig4_key_activations", "--quick", "--no-progress"]) == 0  # fmt: skip
    last = xr.load_dataset(out / "last" / "data" / "fig4_key_activations.nc")
    assert json.loads(last.attrs["layers"]) == {"seven B": 2, "tiny-32b": 3} and "(named)" in last.attrs["caption"]
