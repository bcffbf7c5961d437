"""`laid main --quick` end to end: the real main job (laid_workflows.main_job.run_main) into a tmp run folder,
then every stage's outputs checked against docs/CONTRACTS.md and against each other (the figures'
data must be the numbers of the evaluations, comparison and analyses they claim to show).

One run (a few minutes on 2 CPU cores) shared by every test through a module fixture.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from laid.eval.results import REQUIRED_ATTRS, REQUIRED_VARIABLES, load_result
from laid_workflows.figures import NOTEBOOKS, STUDY_NOTEBOOKS
from laid.model.loading import load_model
from laid_workflows.main_job import STAGES, MainConfig, eval_settings, run_main
from laid.zoo.configs import load_zoo_config
from laid.methods import ALL_METHODS, INFERENCE_VARIANTS
from page_helpers import check_links_resolve, check_page_numbers

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
FIGURE_DATA = ("fig1_effective_window", "fig3_distillation_bars", "fig4_key_activations", "head_weights", "spectra",
               "table1", "table2", "table3")  # fmt: skip
LAID_MIXER_METHODS = ("laid", "laid-light", "laid-paper", "laid-all-layers", "laid-no-kl", "laid-no-laid")  # entries that train head mixers


def checkout_state() -> list[str]:
    """`git status` of this checkout, ignored files included (caches aside): what a run wrote into it."""
    import subprocess

    out = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return sorted(line for line in out.splitlines() if "__pycache__" not in line and ".pytest_cache" not in line)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("main_quick")
    cfg = MainConfig(name="quick-test", quick=True, run_dir=str(root / "run"))  # every output path its default
    log: list[str] = []
    before = checkout_state()
    summary = run_main(cfg, progress_log=log.append)
    return {"cfg": cfg, "run": cfg.run, "figures": cfg.run / "figures", "summary": summary, "log": log,
            "checkout": (before, checkout_state())}


def test_the_checkout_is_unchanged_and_everything_is_in_the_run_folder(quick_run):
    """The figures, the executed notebooks and the results page go into the run folder; the
    repository's figures/ and docs/results.md change only by `laid results --publish`."""
    before, after = quick_run["checkout"]
    assert after == before, f"the main job wrote into the checkout: {sorted(set(after) ^ set(before))}"
    run = quick_run["run"]
    assert (run / "figures" / "fig1_effective_window.png").is_file() and (run / "figures" / "data" / "table1.nc").is_file()
    assert (run / "executed_notebooks" / "fig1_effective_window.ipynb").is_file() and (run / "results.md").is_file()


def models(cfg: MainConfig) -> list[str]:
    return [cfg.teacher, *cfg.students]


def test_config_timings_and_data_manifest(quick_run):
    cfg, run = quick_run["cfg"], quick_run["run"]
    logged = yaml.safe_load((run / "config.yaml").read_text())
    assert logged["quick"] is True and logged["run_dir"] == cfg.run_dir
    assert set(json.loads((run / "timings.json").read_text())) == set(STAGES)
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    assert manifest["generator"] == "laid.data.synth"
    for rel, info in manifest["files"].items():  # every listed file exists and holds what it says
        entries = json.loads((run / "data" / rel).read_text())
        assert len(entries) == info["n_questions"] > 0, rel
        for e in entries:
            images = e["pos_image"] + e["neg_image"]
            assert len(images) == info["haystack_size"], rel
            assert all((run / "data" / p).is_file() for p in images), rel
    splits = {(i["split"], i["setting"]) for i in manifest["files"].values()}
    assert {("test", "single_needle"), ("train", "single_needle")} <= splits


def test_zoo_folders_load_with_their_architecture(quick_run):
    cfg, run = quick_run["cfg"], quick_run["run"]
    for name in models(cfg):
        zoo = load_zoo_config(REPO / cfg.zoo_config_dir / f"{name}.yaml")
        model = load_model(run / "zoo" / name, device="cpu")
        text = model.config.get_text_config()
        assert model.config.model_type == "qwen2_5_vl"
        assert (text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads, text.vocab_size) == (
            zoo.text.num_hidden_layers, zoo.text.num_attention_heads, zoo.text.num_key_value_heads, zoo.text.vocab_size)
        assert all(bool(p.isfinite().all()) for p in model.parameters()), name
        assert (run / "zoo" / name / "laid_zoo.json").is_file()


def single_needle_counts(run: Path) -> dict[int, int]:
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    return {i["haystack_size"]: i["n_questions"] for i in manifest["files"].values()
            if i["split"] == "test" and i["setting"] == "single_needle"}  # fmt: skip


def check_eval(ds: xr.Dataset, name: str) -> None:
    assert all(v in ds.variables for v in REQUIRED_VARIABLES), name
    assert all(a in ds.attrs for a in REQUIRED_ATTRS), name
    acc = ds.accuracy.values
    assert np.all((acc >= 0) & (acc <= 1)), name
    np.testing.assert_allclose(acc, ds.correct.mean("sample", skipna=True).values, err_msg=name)
    assert np.all(ds.accuracy_ci_low.values <= acc + 1e-9) and np.all(acc <= ds.accuracy_ci_high.values + 1e-9), name
    assert np.all(ds.compliance.values == 1.0), name  # logit scoring
    assert ds.attrs["scoring"] == "logits" and ds.effective_window.dims == ()


def test_base_evaluations_follow_the_contract_and_the_data(quick_run):
    cfg, run = quick_run["cfg"], quick_run["run"]
    # Every size of the data, capped at the run's samples per size (shared with the comparison).
    counts = {n: min(c, eval_settings(cfg).samples_per_size) for n, c in single_needle_counts(run).items()}
    for name in models(cfg):
        ds = load_result(cfg.layout.eval_result(name))
        check_eval(ds, name)
        assert ds.attrs["model_name"] == name and ds.attrs["variant"] == "base"
        assert Path(ds.attrs["model_dir"]).resolve() == (run / "zoo" / name).resolve()
        assert ds.attrs["needle_setting"] == "single_needle"
        assert dict(zip(ds.haystack_size.values.tolist(), ds.n_samples.values.tolist())) == counts
        assert float(ds.attrs["threshold"]) == cfg.eval.threshold


def the_eval_compared(run: Path, model: str, variant: str, comparison: xr.Dataset) -> xr.Dataset:
    """The evaluation the comparison used. The main job evaluates the base models with the
    comparison's settings, so the comparison must reuse eval/ and never make its own copy
    (two numbers for one model would reach Figure 1 and Table 1)."""
    want = json.loads(comparison.attrs["config"])["eval"]["samples_per_size"]
    assert not (run / "compare" / "eval" / f"{model}__{variant}.nc").exists(), f"{model} {variant} evaluated twice"
    ds = load_result(run / "eval" / f"{model}__{variant}.nc")
    assert want is None or set(ds.n_samples.values.tolist()) == {want}
    return ds


def test_comparison_holds_every_student_and_method_from_its_evaluations(quick_run):
    cfg, run = quick_run["cfg"], quick_run["run"]
    comp = xr.load_dataset(run / "compare" / "comparison.nc")
    assert list(comp.student.values) == cfg.students
    assert list(comp.method.values) == list(ALL_METHODS)
    assert set(comp.haystack_size.values.tolist()) == set(single_needle_counts(run))
    for v in ("accuracy", "accuracy_std", "effective_window", "gain_short", "gain_long", "teacher_accuracy", "teacher_effective_window"):
        assert v in comp, v
    assert comp.accuracy.dims == ("student", "method", "haystack_size")
    acc = comp.accuracy.values
    assert not np.isnan(acc).any() and np.all((acc >= 0) & (acc <= 1))
    teacher = the_eval_compared(run, cfg.teacher, "base", comp)
    np.testing.assert_allclose(comp.teacher_accuracy.values, teacher.accuracy.values)
    for s in cfg.students:
        for variant in ("base", "yarn", "selfextend"):
            ds = the_eval_compared(run, s, variant, comp)
            check_eval(ds, f"{s} {variant}")
            np.testing.assert_allclose(comp.accuracy.sel({"student": s, "method": variant}).values, ds.accuracy.values, err_msg=variant)
        for method in [m for m in ALL_METHODS if m not in INFERENCE_VARIANTS]:
            out = run / "distill" / f"{s}__{method}"
            seeds = [load_result(out / "eval.nc"), load_result(run / "distill" / f"{s}__{method}__seed1" / "eval.nc")]
            for ds in seeds:
                check_eval(ds, f"{s} {method}")
            np.testing.assert_allclose(comp.accuracy.sel({"student": s, "method": method}).values,
                                       np.mean([ds.accuracy.values for ds in seeds], axis=0), err_msg=method)
            assert int(comp.n_seeds.sel({"student": s, "method": method})) == 2
            exported = load_model(out / "export", device="cpu")  # the distilled student is a loadable HF folder
            assert exported.config.get_text_config().num_hidden_layers == load_zoo_config(
                REPO / cfg.zoo_config_dir / f"{s}.yaml").text.num_hidden_layers
            assert (out / "head_weights.nc").is_file() == (method in LAID_MIXER_METHODS), method
    for v in ("acc_long", "diff_long_vs_base", "diff_long_vs_kd", "window_ratio_paired"):
        lo, mid, hi = (comp[v + s].values for s in ("_ci_low", "", "_ci_high"))
        ok = ~np.isnan(mid)
        assert ok.any() and np.all(lo[ok] <= hi[ok]) and np.isfinite(lo[ok]).all(), v
    md = (run / "compare" / "comparison.md").read_text()
    assert "| Model | Method |" in md and "### Headline: paired differences" in md


def test_analysis_of_each_student_before_and_after_distillation(quick_run):
    cfg, run = quick_run["cfg"], quick_run["run"]
    teacher = load_zoo_config(REPO / cfg.zoo_config_dir / f"{cfg.teacher}.yaml").text
    for s in cfg.students:
        arch = load_zoo_config(REPO / cfg.zoo_config_dir / f"{s}.yaml").text
        for method in ("base", "kd", "laid"):
            out = run / "analysis" / f"{s}__{method}"
            assert (out / "report.html").is_file(), out
            diag = xr.load_dataset(out / "diagnostics.nc")
            for v, dims in (("needle_mass_mean", ("layer", "head", "haystack_size")), ("attention", ("layer", "head", "distance")),
                            ("needle_mass", ("layer", "head", "haystack_size", "sample")), ("sink_mass", ("layer", "head", "haystack_size", "sample")),
                            ("logit", ("layer", "head", "distance")), ("pair_coef_re", ("layer", "head", "rotary_pair")),
                            ("head_locality", ("layer", "head")), ("head_class", ("layer", "head")),
                            ("rope_usage", ("layer", "head", "rotary_pair"))):  # fmt: skip
                assert diag[v].dims == dims, (out, v)
            assert diag.sizes["head"] == arch.num_attention_heads and diag.sizes["layer"] <= arch.num_hidden_layers
            assert diag.distance.attrs["units"] == "positions"
            assert np.isfinite(diag.needle_mass_mean.values).all() and np.isfinite(diag.pair_coef_abs.values).all()
            ref = xr.load_dataset(out / "reference.nc")
            assert ref.sizes["head"] == teacher.num_attention_heads
            cmp = xr.load_dataset(out / "comparison.nc")
            assert np.isfinite(cmp.spectral_fidelity.values).all()
            if method == "laid":
                hw = xr.load_dataset(out / "head_weights.nc")
                assert hw.w_q.dims[-2:] == ("student_head", "teacher_head")
                assert hw.w_k.dims[-2:] == ("student_kv_head", "teacher_kv_head")
                assert (hw.sizes["student_head"], hw.sizes["teacher_head"]) == (arch.num_attention_heads, teacher.num_attention_heads)


def figure_data(quick_run, name: str) -> xr.Dataset:
    return xr.load_dataset(quick_run["figures"] / "data" / f"{name}.nc")


def test_figures_and_their_data_are_written(quick_run):
    figures = quick_run["figures"]
    for name in FIGURE_DATA:
        assert (figures / "data" / f"{name}.nc").is_file(), name
    for name in (n for n in NOTEBOOKS if n != "tables" and n not in STUDY_NOTEBOOKS):  # the study draws its own
        for ext in ("png", "pdf", "html"):
            assert (figures / f"{name}.{ext}").stat().st_size > 0, (name, ext)
    assert "Table 1" in (figures / "tables.md").read_text()


def test_figure_data_are_the_numbers_of_the_run(quick_run):
    cfg, run = quick_run["cfg"], quick_run["run"]
    fig1 = figure_data(quick_run, "fig1_effective_window")
    assert list(fig1.model.values) == models(cfg)
    for name in models(cfg):
        ds = load_result(cfg.layout.eval_result(name))
        np.testing.assert_array_equal(fig1.accuracy.sel(model=name).values, ds.accuracy.values)
        np.testing.assert_array_equal(fig1.n_samples.sel(model=name).values, ds.n_samples.values)
        np.testing.assert_array_equal(float(fig1.effective_window.sel(model=name)), float(ds.effective_window))

    comp = xr.load_dataset(run / "compare" / "comparison.nc")
    fig3 = figure_data(quick_run, "fig3_distillation_bars")
    np.testing.assert_array_equal(fig3.accuracy.values, comp.accuracy.sel({"student": fig3.student, "method": fig3.method}).values)
    # Paired differences vs base from the per-question files equal the difference of the accuracies.
    for s in fig3.student.values:
        for m in fig3.diff_method.values:
            expected = comp.accuracy.sel({"student": s, "method": m}) - comp.accuracy.sel({"student": s, "method": "base"})
            np.testing.assert_allclose(fig3.difference.sel(student=s, diff_method=m).values, expected.values, atol=1e-9)
    for table, methods in (("table1", ["base", "yarn", "selfextend", "sft-lora", "kd", "laid"]), ("table3", ["base", "laid-no-kl", "laid-no-laid", "laid"])):
        t = figure_data(quick_run, table)
        assert set(t.method.values) == set(methods), table
        for s in cfg.students:
            np.testing.assert_array_equal(t.accuracy.sel({"model": s, "method": methods}).values, comp.accuracy.sel({"student": s, "method": methods}).values)
    table1 = figure_data(quick_run, "table1")
    np.testing.assert_array_equal(table1.accuracy.sel({"model": cfg.teacher, "method": "base"}).values, comp.teacher_accuracy.values)
    table2 = figure_data(quick_run, "table2")
    np.testing.assert_array_equal(table2.avg_input_tokens.values, load_result(cfg.layout.eval_result(cfg.teacher)).avg_input_tokens.values)

    # Figure 4 and the spectra: the first student's analyses and the teacher's, each at the layer its
    # own diagnosis finds reading the needle (trainers.layer_choice), titled with the run's labels.
    from trainers.layer_choice import choose_layers

    s, t = cfg.students[0], f"{cfg.teacher}__base"
    labels = [f"{s}__base", f"{s}__kd", f"{s}__laid"]
    fig4 = figure_data(quick_run, "fig4_key_activations")
    assert list(fig4.checkpoint.values) == [*labels, t] and all(x in fig4.attrs["title"] for x in [*labels, t])
    layers = json.loads(fig4.attrs["layers"])
    for label in [*labels, t]:
        path = run / "analysis" / label / "diagnostics.nc"  # the teacher analysed once, in its own folder
        ds = xr.load_dataset(path)
        assert layers[label] == choose_layers(path).teacher_layers[0]
        got = fig4.needle_mass_question_mean.sel(checkpoint=label).isel(head=slice(0, ds.sizes["head"]))
        np.testing.assert_array_equal(got.values, ds.needle_mass_question_mean.sel(layer=layers[label]).values)
    from laid_workflows.figures_diagnosis import heads_of

    for panel in json.loads(fig4.attrs["panels"]):  # no empty panel
        assert heads_of(fig4, panel["checkpoint"], panel["head_class"]), panel
    summary = xr.load_dataset(run / "analysis" / "checkpoints" / "summary.nc")
    assert t in summary.model.values and f"{s}__laid" in summary.model.values

    hw_fig = figure_data(quick_run, "head_weights")
    hw = xr.load_dataset(run / "distill" / hw_fig.attrs["label"] / "head_weights.nc")
    np.testing.assert_array_equal(hw_fig.w_q.values, hw.w_q.values)  # every layer pair
    np.testing.assert_array_equal(hw_fig.w_k.values, hw.w_k.values)

    spectra = figure_data(quick_run, "spectra")
    assert json.loads(spectra.attrs["layers"]) == layers
    assert np.isfinite(spectra.fidelity.sel(checkpoint=f"{s}__laid"))
    laid_diag = xr.load_dataset(run / "analysis" / f"{s}__laid" / "diagnostics.nc")
    profile = laid_diag[spectra.attrs["profile"]].sel(layer=layers[f"{s}__laid"]).mean("head")  # the notebook's default: mean over heads
    assert np.isfinite(profile.values).any()
    np.testing.assert_allclose(spectra.profile.sel(checkpoint=f"{s}__laid", distance=profile.distance).values, profile.values)


def test_summary_reports_every_model_and_the_comparison(quick_run):
    cfg, run = quick_run["cfg"], quick_run["run"]
    assert quick_run["summary"] == run / "summary.md"
    text = quick_run["summary"].read_text()
    for name in models(cfg):
        ds = load_result(cfg.layout.eval_result(name))
        accs = ", ".join(f"{int(n)}: {float(a):.2f}" for n, a in zip(ds.haystack_size.values, ds.accuracy.values))
        assert f"**{name}**: accuracy by haystack size {{{accs}}}" in text, name
    assert (run / "compare" / "comparison.md").read_text() in text
    assert all(f"- {stage}:" in text for stage in STAGES)


def test_results_page_is_written_from_the_run(quick_run):
    """The main job ends by writing the results page (into the run folder for a non-default run):
    every base-model and headline number on it is the netCDF's, its figure links resolve, and it
    names the commit and the measured stage times."""
    cfg, run = quick_run["cfg"], quick_run["run"]
    page = cfg.layout.results_page
    text = page.read_text()
    assert check_page_numbers(text, cfg.layout) >= len(models(cfg)) * 2
    check_links_resolve(text, page)
    assert "![Figure 1](" in text and "![Figure 3](" in text
    timings = json.loads((run / "timings.json").read_text())
    assert all(f"| {stage} | {timings[stage]:.0f} |" in text for stage in STAGES)
    commit = load_result(cfg.layout.eval_result(cfg.teacher)).attrs["git_commit"]
    assert f"commit `{commit[:10]}`" in text
