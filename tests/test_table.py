"""`laid table`: paired tables from evaluation files (ours and the official per-question output).

A comparison run by `laid compare` is rebuilt from its own evaluation files, as netCDF and as
official folders, and must come out equal in every variable; Figure 3 is drawn from the output
folder and checked through its data; files evaluated on other questions are refused in one line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from cli_helpers import one_line_error
from recipe_helpers import mini_run

from laid.eval.official import read_official
from laid.eval.protocol import official_dir
from laid.eval.results import SampleResult, build_result, load_result
from laid.io import write_netcdf
from laid_workflows.cli import main
from laid_workflows.compare import load_compare_config, run_comparison

REPO = Path(__file__).resolve().parents[1]


def fake_eval(answers_yes, right, sizes=(1, 5, 20)) -> xr.Dataset:
    """An eval result on questions given by their answers; the first `right` samples of a size are correct."""
    samples = {s: [SampleResult(i < right, 1.0, True, 10, i % 3, bool(a)) for i, a in enumerate(answers_yes)] for s in sizes}
    return build_result(samples, threshold=0.6, seed=0, attrs={"model_name": "fake"})


def test_refuses_files_on_other_questions_in_one_line(tmp_path, capsys):
    """Same sizes and sample counts, one answer flipped: another question set, named with both files.
    (A check of sizes and counts alone, the degenerate version, would pass these files.)"""
    answers = [1, 0] * 10
    files = {}
    for name, ans, right, sizes in (("base", answers, 10, (1, 5, 20)), ("kd", answers, 14, (1, 5, 20)),
                                    ("other", [1 - answers[0]] + answers[1:], 14, (1, 5, 20)),
                                    ("fewer", answers, 14, (1, 5))):
        files[name] = write_netcdf(fake_eval(ans, right, sizes), tmp_path / f"{name}.nc")
    out = tmp_path / "table"
    base = ["table", "--eval", f"s:base={files['base']}", "--out", str(out), "--no-figure"]
    err = one_line_error(capsys, base + ["--eval", f"s:kd={files['other']}"], "not evaluated on the same questions",
                    "answer_yes differs at 1 image")
    assert str(files["base"]) in err and str(files["other"]) in err
    one_line_error(capsys, base + ["--eval", f"s:kd={files['fewer']}"], "haystack sizes [1, 5, 20] vs [1, 5]", str(files["fewer"]))
    assert not out.exists()  # nothing written
    one_line_error(capsys, base + ["--eval", f"s:magic={files['kd']}"], "unknown method 'magic'")
    one_line_error(capsys, base + ["--eval", f"s:base:1={files['kd']}"], "base is not trained")
    one_line_error(capsys, base + ["--eval", f"s/x:kd={files['kd']}"], "model label 's/x'")
    one_line_error(capsys, base + ["--eval", f"s:kd:x={files['kd']}"], "seed 'x' is not an integer")
    one_line_error(capsys, base + ["--eval", f"s:kd={files['kd']}", "--long-sizes", "100"], "long sizes [100] must be evaluated")
    one_line_error(capsys, base + ["--eval", f"s:kd={files['kd']}"], "long sizes (the evaluated sizes in the paper window 50-150)")
    assert main(base + ["--eval", f"s:kd={files['kd']}", "--short-sizes", "1", "5", "--long-sizes", "20"]) == 0  # tabled
    table = xr.load_dataset(out / "compare" / "comparison.nc")
    diff = table["diff_short_vs_base"].sel({"student": "s", "method": "kd"})
    assert float(diff) == pytest.approx(4 / 20) and float(table["diff_short_vs_base_ci_low"].sel({"student": "s", "method": "kd"})) > 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    one_line_error(capsys, ["table", "--eval", f"s:base={files['base']}", "--out", str(mine), "--no-figure"], "not written by `laid table`")
    assert (mine / "notes.txt").read_text() == "keep"


@pytest.fixture(scope="module")
def compared(random_zoo, tmp_path_factory):
    """A mini comparison (KD with two training seeds against base; the teacher row) in a run folder."""
    torch.set_num_threads(1)
    run = mini_run(random_zoo, tmp_path_factory, tmp_path_factory.mktemp("table") / "run")
    cfg = load_compare_config(
        REPO / "configs" / "experiments" / "compare.yaml",
        {"teacher": "tiny-32b", "students": ["tiny-7b"], "distill_configs": {"tiny-7b": str(REPO / "configs/distill/tiny-32b_to_tiny-7b.yaml")},
         "variants": ["base"], "methods": ["kd"], "seeds": [0, 1], "eval.sizes": [1, 2, 5], "eval.samples_per_size": 3,
         "short_sizes": [1, 2], "long_sizes": [5], "method_overrides": {"kd": {"max_steps": 1, "per_device_batch_size": 1}}},
    )  # fmt: skip
    return run, run_comparison(cfg, run, progress=False)


def _files(run: Path, official: bool) -> dict[str, Path]:
    files = {"tiny-7b:base": run / "eval" / "tiny-7b__base.nc", "tiny-7b:kd:0": run / "distill" / "tiny-7b__kd" / "eval.nc",
             "tiny-7b:kd:1": run / "distill" / "tiny-7b__kd__seed1" / "eval.nc", "teacher": run / "eval" / "tiny-32b__base.nc"}
    return {k: official_dir(v) if official else v for k, v in files.items()}


def _table_args(files: dict[str, Path], out: Path, *extra) -> list[str]:
    evals = [f"{tag}={path}" for tag, path in files.items() if tag != "teacher"]
    return ["table", "--eval", *evals, "--teacher", f"tiny-32b={files['teacher']}", "--short-sizes", "1", "2",
            "--long-sizes", "5", "--out", str(out), "--no-progress", *extra]


def _assert_same_comparison(mine: xr.Dataset, theirs: xr.Dataset) -> None:
    assert set(mine.data_vars) == set(theirs.data_vars)
    for name in theirs.data_vars:
        xr.testing.assert_equal(mine[name], theirs[name])
    for key in ("seeds", "short_sizes", "long_sizes", "threshold", "teacher"):
        assert np.array_equal(np.atleast_1d(mine.attrs[key]), np.atleast_1d(theirs.attrs[key])), key


def test_reproduces_the_comparison_from_its_files_and_draws_figure_3(compared, tmp_path, capsys):
    run, _ = compared
    theirs = xr.load_dataset(run / "compare" / "comparison.nc")
    out = tmp_path / "from_nc"
    assert main(_table_args(_files(run, official=False), out)) == 0
    printed = capsys.readouterr().out
    assert "Headline" in printed and "figure: " in printed
    mine = xr.load_dataset(out / "compare" / "comparison.nc")
    _assert_same_comparison(mine, theirs)
    assert (out / "compare" / "comparison.md").read_text() == (run / "compare" / "comparison.md").read_text()
    # Figure 3, checked through the data behind it: the comparison's accuracies and the paired
    # differences of the per-question files the output folder holds.
    data = xr.load_dataset(out / "figures" / "data" / "fig3_distillation_bars.nc")
    assert (out / "figures" / "fig3_distillation_bars.png").is_file()
    np.testing.assert_array_equal(data["accuracy"].sel({"method": ["base", "kd"]}).values,
                                  theirs["accuracy"].sel({"method": ["base", "kd"]}).values)
    kd = [load_result(run / "distill" / d / "eval.nc")["correct"].values for d in ("tiny-7b__kd", "tiny-7b__kd__seed1")]
    base = load_result(run / "eval" / "tiny-7b__base.nc")["correct"].values
    want = np.nanmean(np.nanmean(np.stack(kd), axis=2), axis=0) - np.nanmean(base, axis=1)
    assert not np.isnan(want).any()
    np.testing.assert_allclose(data["difference"].sel({"student": "tiny-7b", "diff_method": "kd"}).values, want)
    assert int(data["n_questions"].sel({"student": "tiny-7b", "diff_method": "kd"}).values[0]) == 3


def test_reproduces_the_comparison_from_official_folders(compared, tmp_path):
    """The official per-question JSON beside each evaluation, scored by the official rule, gives the
    same table: the other harness's output enters the comparison like our files."""
    run, _ = compared
    for nc in _files(run, official=False).values():
        ours, official = load_result(nc), read_official(official_dir(nc))
        for var in ("correct", "answer_yes", "needle_index", "n_samples", "accuracy", "accuracy_std", "compliance"):
            xr.testing.assert_equal(official[var], ours[var])
    out = tmp_path / "from_official"
    assert main(_table_args(_files(run, official=True), out, "--no-figure")) == 0
    _assert_same_comparison(xr.load_dataset(out / "compare" / "comparison.nc"),
                            xr.load_dataset(run / "compare" / "comparison.nc"))
    # Rerunning into the same folder replaces it (it holds table.yaml); a spec file says the same.
    spec = tmp_path / "table.yaml"
    files = _files(run, official=False)
    spec.write_text("evals:\n" + "".join(
        f"  - {{student: tiny-7b, method: {tag.split(':')[1]}, seed: {tag.split(':')[2] if tag.count(':') == 2 else 0}, "
        f"file: {path}}}\n" for tag, path in files.items() if tag != "teacher")
        + f"teacher: {{label: tiny-32b, file: {files['teacher']}}}\nshort_sizes: [1, 2]\nlong_sizes: [5]\n")
    assert main(["table", "--spec", str(spec), "--out", str(out), "--no-figure"]) == 0
    _assert_same_comparison(xr.load_dataset(out / "compare" / "comparison.nc"),
                            xr.load_dataset(run / "compare" / "comparison.nc"))
