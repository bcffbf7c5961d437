"""Experiments on any folders: the comparison and the study on zoo models copied out of the run folder
under other labels, with the data elsewhere, through the code path real checkpoints take."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import xarray as xr
from recipe_helpers import mini_run, quick_vhs

from laid.eval.run import evaluate
from laid_workflows.compare import Comparison, load_compare_config
from laid_workflows.study import Study, load_study_config

REPO = Path(__file__).resolve().parents[1]
DISTILL = str(REPO / "configs" / "distill" / "tiny-32b_to_tiny-7b.yaml")
QUICK = {"variants": ["base"], "methods": ["kd"], "seeds": [0], "eval.sizes": [1, 2], "eval.samples_per_size": 2,
         "method_overrides": {"kd": {"max_steps": 1, "per_device_batch_size": 1}}}


@pytest.fixture(scope="module")
def world(random_zoo, tmp_path_factory):
    """The same comparison twice: on zoo names in a run folder, and on copies of those models under
    other names outside it, with the data outside it too."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("folders")
    ref_run = mini_run(random_zoo, tmp_path_factory, root / "ref")
    ref = Comparison(load_compare_config(None, {**QUICK, "teacher": "tiny-32b", "students": ["tiny-7b"],
                                               "distill_configs": {"tiny-7b": DISTILL}}), ref_run, progress=False, workers=1).run()
    teacher = shutil.copytree(random_zoo["tiny-32b"], root / "weights" / "teacher-32b")
    student = shutil.copytree(random_zoo["tiny-7b"], root / "elsewhere" / "student-7b")
    data = quick_vhs(tmp_path_factory)
    own = {**QUICK, "teacher": {"label": "big", "path": str(teacher)}, "students": [{"label": "small", "path": str(student)}],
           "distill_configs": {"small": DISTILL}, "data": {"root": str(data)}}
    run = root / "mine"
    ds = Comparison(load_compare_config(None, own), run, progress=False, workers=1).run()
    return {"ref": ref, "ds": ds, "run": run, "own": own, "teacher": teacher, "student": student, "data": data, "root": root}


def test_folders_under_labels_give_the_zoo_names_table(world):
    ds, ref = world["ds"], world["ref"]
    assert ds.attrs["teacher"] == "big" and ds["student"].values.tolist() == ["small"]
    xr.testing.assert_equal(ds, ref.assign_coords(student=["small"]))  # every variable, the same numbers
    run = world["run"]
    for f in ("eval/big__base.nc", "eval/small__base.nc", "distill/small__kd/export/config.json", "distill/small__kd/eval.nc",
              "compare/comparison.nc"):
        assert (run / f).is_file(), f
    assert not (run / "zoo").exists() and not (run / "data").exists()  # nothing copied into the run folder
    base = xr.load_dataset(run / "eval" / "small__base.nc")
    assert Path(base.attrs["model_dir"]) == world["student"] and Path(base.attrs["data_path"]) == world["data"] / "test"


def test_a_label_moved_to_another_folder_is_evaluated_again(world, random_zoo):
    """A result is reused only for the model it was made of: the label `big` on another folder gets its
    own evaluation (compare/eval/), and eval/big__base.nc of the first folder is left alone."""
    other = shutil.copytree(random_zoo["tiny-3b"], world["root"] / "weights" / "another")
    before = (world["run"] / "eval" / "big__base.nc").read_bytes()
    cfg = load_compare_config(None, {**world["own"], "teacher": {"label": "big", "path": str(other)}, "methods": []})
    c = Comparison(cfg, world["run"], progress=False, workers=1)
    c.run()
    assert list(c.timings) == ["eval big base"]  # the student's evaluation is reused, the teacher's is not
    again = xr.load_dataset(world["run"] / "compare" / "eval" / "big__base.nc")
    assert Path(again.attrs["model_dir"]) == other
    assert (world["run"] / "eval" / "big__base.nc").read_bytes() == before


def test_evaluations_read_the_split_the_spec_names(world):
    """eval_split: val reads the val folder (here the train split's questions, named by path): the
    result equals a direct evaluation of that folder, not the test split's, whose eval/ file (made
    with these settings at size 2) is not reused for it."""
    data = world["data"]
    spec = {**world["own"], "methods": [], "eval.sizes": [2], "data": {"root": str(data), "val": str(data / "train"),
                                                                      "eval_split": "val"}}
    c = Comparison(load_compare_config(None, spec), world["run"], progress=False, workers=1)
    ds = c.run()
    got = xr.load_dataset(world["run"] / "compare" / "eval" / "small__base.nc")
    assert Path(got.attrs["data_path"]) == data / "train" and got["haystack_size"].values.tolist() == [2]
    want = evaluate(world["student"], data / "train", data, sizes=[2], max_samples_per_size=2, progress=False)
    xr.testing.assert_equal(got["correct"], want["correct"])
    assert ds["accuracy"].sel({"student": "small", "method": "base"}).values.tolist() == want["accuracy"].values.tolist()


def test_a_study_on_folders_under_labels(world):
    cfg = load_study_config(None, {
        "teacher": world["own"]["teacher"], "students": world["own"]["students"], "data": world["own"]["data"],
        "distill_configs": {"small": DISTILL}, "seeds": [0], "budgets": [1], "save_every": 1,
        "training": {"lr_schedule": "constant", "warmup_steps": 0, "per_device_batch_size": 1, "grad_accum": 1},
        "arms": {"kd": {"method": "kd"}}, "eval.sizes": None, "eval.samples_per_size": 2,
        "groups": {"short": [1, 2], "long": [5, 10]}, "diagnose": {"seeds": []}})
    run = world["root"] / "study-run"
    ds = Study(cfg, run, workers=1, log=lambda *a: None, exploratory=True).run()
    assert ds["student"].values.tolist() == ["small"] and (run / "study" / "runs" / "small__kd__seed0" / "evals" / "step-00000001.nc").is_file()
    assert not (run / "zoo").exists()  # path entries are never copied from the shipped zoo
