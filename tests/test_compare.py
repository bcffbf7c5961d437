"""The comparison: numbers of the tables on a hand-made result set, and a resumable mini run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import xarray as xr
import yaml
from recipe_helpers import mini_run

from laid.eval.results import SampleResult, build_result
from laid.methods import ALL_METHODS, INFERENCE_VARIANTS
from laid_workflows.compare import CompareConfig, Comparison, load_compare_config, run_comparison
from laid_workflows.headline import run_label
from laid_workflows.tables import build_comparison, comparison_markdown

REPO = Path(__file__).resolve().parents[1]
SIZES = [1, 5, 20, 50, 100]


def fake_eval(accuracies, n=10) -> xr.Dataset:
    """An eval result whose accuracy at each size is exactly the given multiple of 1/n."""
    samples = {
        s: [SampleResult(i < round(a * n), 1.0, True, 10, 0, True) for i in range(n)] for s, a in zip(SIZES, accuracies)
    }
    return build_result(samples, threshold=0.6, seed=0, attrs={"model_name": "fake"})


@pytest.fixture(scope="module")
def table():
    evals = {
        ("tiny-7b", "base"): fake_eval([0.8, 0.7, 0.6, 0.5, 0.5]),
        ("tiny-7b", "kd"): fake_eval([0.8, 0.8, 0.6, 0.5, 0.5]),
        ("tiny-7b", "laid"): fake_eval([0.9, 0.8, 0.7, 0.6, 0.5]),
    }
    teacher = fake_eval([0.9, 0.9, 0.8, 0.7, 0.6])
    return build_comparison(evals, teacher, ["tiny-7b"], ["base", "kd", "laid", "laid-no-kl"], {"teacher": "tiny-32b", "threshold": 0.6})


def test_comparison_numbers(table):
    laid = table.sel({"student": "tiny-7b", "method": "laid"})
    assert laid["accuracy"].values.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.5])
    # short = sizes 1-20: mean of 0.1/0.8, 0.1/0.7, 0.1/0.6; long = 50-150: mean of 0.1/0.5, 0/0.5
    assert float(laid["gain_short"]) == pytest.approx(100 * (0.1 / 0.8 + 0.1 / 0.7 + 0.1 / 0.6) / 3)
    assert float(laid["gain_long"]) == pytest.approx(10.0)
    # accuracy first drops below 0.6 after 20 (base) and after 50 (LAid): windows 20 and 50
    assert float(table["effective_window"].sel({"student": "tiny-7b", "method": "base"})) == pytest.approx(20)
    assert float(laid["effective_window"]) == pytest.approx(50)
    assert float(laid["window_ratio"]) == pytest.approx(2.5)
    assert float(table["gain_short"].sel({"student": "tiny-7b", "method": "base"})) == 0
    assert math.isnan(float(table["accuracy"].sel({"student": "tiny-7b", "method": "laid-no-kl", "haystack_size": 1})))
    assert table["teacher_accuracy"].values.tolist() == pytest.approx([0.9, 0.9, 0.8, 0.7, 0.6])
    assert float(table["teacher_effective_window"]) == 100 and table["teacher_effective_window"].attrs["censored"] == 1
    assert table["accuracy"].dims == ("student", "method", "haystack_size")


def test_comparison_markdown(table):
    md = comparison_markdown(table)
    lines = md.splitlines()
    assert "| tiny-32b | / | 90.00 | 90.00 | 80.00 | 70.00 | 60.00 | - | - | >= 100 | - |" in lines
    base = next(line for line in lines if line.startswith("| tiny-7b | / |"))
    assert "80.00" in base and base.endswith("| - | - | 20.0 | - |")
    assert "**" not in "\n".join(lines[:lines.index("### Table 3: loss ablations")]) or "Headline" in md  # no unsupported bold
    laid = next(line for line in lines if "| LAid |" in line and "90.00" in line)
    assert "90.00" in laid and "+14.5%" in laid and "+10.0%" in laid and laid.endswith("| 50.0 | 2.50x |")
    assert "- tiny-7b: effective window LAid 50.0 vs base 20.0 images -> ratio 2.50x" in lines
    assert "### Table 3: loss ablations" in lines and "w/o L_KL" in md


def load_config_yaml(path):
    return yaml.safe_load(path.read_text())


def test_shipped_comparison_configs_load():
    head = load_compare_config(REPO / "configs" / "experiments" / "compare.yaml")
    assert head.students == ["tiny-32b-w5-s3"] and head.methods == ["sft", "kd", "laid", "laid-light"]  # the window testbed
    assert head.variants == ["base"] and len(head.seeds) >= 3  # the headline rows, several seeds
    # The headline shows the paper's LAid (every term at its weight), and the toy's variant only beside it.
    labels = {m: run_label(Comparison(head, "runs/x").distill_config("tiny-32b-w5-s3", m)) for m in ("laid", "laid-light")}
    assert labels == {"laid": "LAid", "laid-light": "LAid without Q/K alignment, attention matching x0.1"}
    full = load_compare_config(REPO / "configs" / "experiments" / "compare_full.yaml")
    assert set(full.methods) == set(ALL_METHODS) - set(INFERENCE_VARIANTS)
    assert set(full.variants) == set(INFERENCE_VARIANTS)
    assert full.method_overrides["laid-paper"] == {"alignment": "paper", "attn_grad": "full"}
    assert (head.name, full.name) == ("comparison", "comparison_full")
    pairing = load_compare_config(REPO / "configs" / "experiments" / "layer_pairing.yaml")
    assert pairing.name == "layer_pairing" and "laid-all-layers" in pairing.methods and len(pairing.seeds) >= 3
    main_sizes = load_config_yaml(REPO / "configs" / "experiments" / "main.yaml")["eval"]["sizes"]
    for c in (head, full):  # run after the main job on its data, each reuses its evaluations
        assert c.eval.sizes == main_sizes and c.eval.samples_per_size == 100
    assert pairing.data.eval_split == "val"  # a screen (of the paper's 2-20 split)
    with pytest.raises(ValueError, match="plain file stem"):
        CompareConfig(name="../x", distill_configs={"tiny-7b": "x", "tiny-3b": "y"})
    with pytest.raises(ValueError, match="unknown comparison entries"):
        CompareConfig(methods=["laid", "magic"], distill_configs={"tiny-7b": "x", "tiny-3b": "y"})


def test_mini_comparison_runs_and_resumes(random_zoo, tmp_path_factory, tmp_path):
    torch.set_num_threads(1)
    run = mini_run(random_zoo, tmp_path_factory, tmp_path / "run")
    cfg = load_compare_config(
        REPO / "configs" / "experiments" / "compare.yaml",
        {"teacher": "tiny-32b", "students": ["tiny-7b"], "distill_configs": {"tiny-7b": str(REPO / "configs/distill/tiny-32b_to_tiny-7b.yaml")},
         "variants": ["base"], "methods": ["kd"], "seeds": [0], "eval.sizes": [1, 2], "eval.samples_per_size": 2,
         "method_overrides": {"kd": {"max_steps": 1, "per_device_batch_size": 1}}},
    )  # fmt: skip
    # An existing eval of the student made with other settings is left alone (not overwritten).
    other = fake_eval([0.5] * 5)
    other.attrs.update(needle_setting="single_needle", config='{"max_samples_per_size": 7}')
    (run / "eval").mkdir()
    other.to_netcdf(run / "eval" / "tiny-7b__base.nc")
    before = (run / "eval" / "tiny-7b__base.nc").read_bytes()

    ds = run_comparison(cfg, run, progress=False)
    assert ds["accuracy"].sizes == {"student": 1, "method": 2, "haystack_size": 2}
    assert not ds["accuracy"].isnull().any()
    for f in ("eval/tiny-32b__base.nc", "compare/eval/tiny-7b__base.nc", "distill/tiny-7b__kd/eval.nc",
              "distill/tiny-7b__kd/export/config.json", "compare/comparison.nc", "compare/comparison.md"):  # fmt: skip
        assert (run / f).is_file(), f
    assert (run / "eval" / "tiny-7b__base.nc").read_bytes() == before

    again = Comparison(cfg, run, progress=False)
    ds2 = again.run()
    assert again.timings == {}  # nothing trained or evaluated again
    xr.testing.assert_equal(ds2["accuracy"], ds["accuracy"])

    # Another comparison (a study, --full) in the same run folder reuses the runs and writes its own
    # file: the headline comparison.nc the figures read is left byte for byte.
    headline = (run / "compare" / "comparison.nc").read_bytes()
    cfg.name = "study"
    study = Comparison(cfg, run, progress=False)
    study.run()
    assert study.timings == {} and (run / "compare" / "study.nc").is_file() and (run / "compare" / "study.md").is_file()
    assert (run / "compare" / "comparison.nc").read_bytes() == headline

    # An edited distill config does not pass off the old run as its own: refused, the run kept.
    cfg.method_overrides["kd"]["lambdas"] = {"kl": 0.5, "sft": 0.5}
    kept = (run / "distill" / "tiny-7b__kd" / "eval.nc").read_bytes()
    with pytest.raises(ValueError, match=r"tiny-7b__kd was trained with other \['lambdas'\]"):
        Comparison(cfg, run, progress=False).training_jobs()
    assert (run / "distill" / "tiny-7b__kd" / "eval.nc").read_bytes() == kept


def test_headline_bolds_only_what_the_paired_interval_supports():
    """Planted: KD answers 30 more of 100 questions per long size than base (same questions, two seeds
    that agree); LAid answers exactly base's questions; a seed of LAid that differs on 2 questions
    does not turn a null into a claim; a trained row with one seed claims nothing, however narrow."""
    from laid_workflows.headline import add_paired_statistics, headline_markdown

    def ev(rights):
        return build_result({s: [SampleResult(i < r, 1.0, True, 10, 0, bool(i % 2)) for i in range(100)]
                             for s, r in zip(SIZES, rights)}, threshold=0.6, seed=0, attrs={"model_name": "fake"})

    base = [90, 50, 50, 50, 50]
    evals = {("s", "base"): ev(base), ("s", "kd"): [ev([90, 80, 80, 80, 80])] * 2,
             ("s", "laid"): [ev(base), ev([90, 52, 50, 50, 50])]}
    ds = build_comparison(evals, None, ["s"], ["base", "kd", "laid"], {"threshold": 0.6})
    ds = add_paired_statistics(ds, evals, short_sizes=[1], long_sizes=[5, 20, 50], n_boot=500)
    kd, laid = ds.sel({"student": "s", "method": "kd"}), ds.sel({"student": "s", "method": "laid"})
    assert float(kd.diff_long_vs_base) == pytest.approx(0.30) and float(kd.diff_long_vs_base_ci_low) > 0.2
    assert float(laid.diff_long_vs_base_ci_low) <= 0 <= float(laid.diff_long_vs_base_ci_high)
    assert int(laid.n_seeds) == 2 and float(laid.diff_long_vs_kd_ci_high) < 0
    rows = {line.split("|")[2].strip(): line for line in headline_markdown(ds) if line.startswith("| ")}
    assert "**+30.0" in rows["KD"] and "**" not in rows["LAid"].split("|")[6]  # long - base: bold for KD only
    assert "**-" in rows["LAid"].split("|")[7]  # LAid - KD is a supported loss
    assert rows["KD"].split("|")[9].strip() == "yes"  # short - base = 0 exactly: no harm at 3 points
    one = {**evals, ("s", "kd"): evals[("s", "kd")][:1]}  # the ablation: the same KD with one seed
    ds1 = add_paired_statistics(build_comparison(one, None, ["s"], ["base", "kd", "laid"], {"threshold": 0.6}), one, [1], [5, 20, 50])
    kd1 = next(line for line in headline_markdown(ds1) if line.startswith("| ") and "| KD |" in line)
    assert "+30.0 [" in kd1 and "**" not in kd1 and kd1.split("|")[9].strip() == "-"  # narrow, yet never claimed
    assert int(ds1["diff_long_vs_base_seeds_counted"].sel({"student": "s", "method": "kd"})) == 0
