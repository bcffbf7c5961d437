"""The learning-curve study: planted numbers through the statistics, and a resumable mini study."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from recipe_helpers import mini_run

from laid.eval.paired import paired_difference, stack_seeds
from laid.eval.results import SampleResult, build_result
from laid_workflows.study import Study, load_study_config
from laid_workflows.study_stats import build_study, learning_curve, study_markdown

REPO = Path(__file__).resolve().parents[1]
SIZES = [1, 2, 5, 10]
GROUPS = {"short": [1, 2], "long": [5, 10]}


def planted_eval(correct: np.ndarray) -> xr.Dataset:
    """An eval result answering exactly `correct` (size, question) right, on shared questions."""
    samples = {s: [SampleResult(bool(c), 1.0, True, 10, i % s, bool(i % 2)) for i, c in enumerate(row)]
               for s, row in zip(SIZES, correct)}
    return build_result(samples, threshold=0.6, seed=0, attrs={"model_name": "planted"})


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    base = rng.random((4, 40)) < np.array([[0.9], [0.8], [0.5], [0.5]])  # short window
    teacher = base.copy()
    teacher[2:] |= rng.random((2, 40)) < 0.6  # the teacher answers more long questions
    t, b = planted_eval(teacher), planted_eval(base)
    # KD carries the teacher's answers at budget 1 and forgets them at 2; SFT stays at base (two seeds
    # each, that agree); LAid has two seeds at budget 1 (one is the teacher, one the base) and one at 2.
    evals = {("s", "kd", 1): [t, t], ("s", "kd", 2): [b, b], ("s", "sft", 1): [b, b], ("s", "sft", 2): [b, b],
             ("s", "laid", 1): [t, b], ("s", "laid", 2): [b]}
    ds = build_study(evals, {"s": b}, t, ["s"], ["sft", "kd", "laid"], [1, 2], GROUPS, global_batch=8,
                     retrieval={("s", "laid", 2): (0.7, 0), ("s", "base"): (0.2, 0), "teacher": (0.8, 0)})
    return ds, t, b


def test_planted_differences_are_paired_at_the_same_budget(planted):
    ds, t, b = planted
    d = lambda arm, budget, group, ref: ds["diff"].sel(student="s", arm=arm, budget=budget, group=group, ref=ref)  # noqa: E731
    lead = paired_difference(stack_seeds([t]), stack_seeds([b]), GROUPS["long"])
    assert float(ds["teacher_lead"].sel(student="s", group="long")) == pytest.approx(lead.value)
    assert lead.ci_low > 0  # the planted teacher leads
    assert float(d("kd", 1, "long", "base")) == pytest.approx(lead.value)  # KD at budget 1 carries it all ...
    assert float(d("kd", 2, "long", "base")) == 0  # ... and none at budget 2
    assert float(d("sft", 1, "long", "base")) == 0 and float(ds["diff_ci_high"].sel(
        student="s", arm="sft", budget=1, group="long", ref="base")) == 0  # same answers: a zero-width interval
    assert float(d("laid", 1, "long", "kd")) == pytest.approx(-lead.value / 2)  # seeds averaged, vs KD at budget 1
    assert float(d("laid", 2, "long", "kd")) == 0  # vs KD at budget 2, not budget 1
    assert float(d("kd", 1, "long", "sft")) == pytest.approx(lead.value)  # what the teacher adds over the labels
    assert np.isnan(float(d("kd", 1, "long", "kd")))  # no self-reference
    assert int(ds["n_seeds"].sel(student="s", arm="laid", budget=1)) == 2
    assert ds["haystacks"].values.tolist() == [8, 16]
    assert float(ds["retrieval_mass"].sel(student="s", arm="laid", budget=2)) == 0.7


def test_window_ratios_over_base_are_the_planted_windows(planted):
    """KD at budget 1 answers as the teacher on every question: its window over base is the teacher's
    over base, claimed (2 agreeing seeds); SFT answers as base: ratio 1 with a zero-width interval; the
    degenerate ratio of a seed-mean curve to itself at budget 2 (KD = base) is 1, not a window gain."""
    from laid.eval.paired import windows

    ds, t, b = planted
    sel = lambda arm, budget: {"student": "s", "arm": arm, "budget": budget}  # noqa: E731
    want = float(windows(SIZES, t["accuracy"].values, 0.6) / windows(SIZES, b["accuracy"].values, 0.6))
    assert want > 1.5  # the planted teacher holds more sizes
    assert float(ds["window_ratio"].sel(sel("kd", 1))) == pytest.approx(want)
    assert float(ds["effective_window"].sel(sel("kd", 1))) == pytest.approx(float(ds["teacher_effective_window"]))
    assert float(ds["window_ratio_ci_low"].sel(sel("kd", 1))) > 1  # excludes 1: a window extended
    for arm, budget in (("sft", 1), ("kd", 2)):
        assert float(ds["window_ratio"].sel(sel(arm, budget))) == pytest.approx(1.0)
        assert float(ds["window_ratio_ci_low"].sel(sel(arm, budget))) <= 1 <= float(ds["window_ratio_ci_high"].sel(sel(arm, budget)))
    md = study_markdown(ds)
    kd1 = next(line for line in md.splitlines() if line.startswith("| KD | 1 |"))
    assert f"**{want:.2f}x [" in kd1 and "Effective window (images): base" in md


def test_markdown_and_curve_show_what_the_intervals_support(planted):
    ds, _, _ = planted
    md = study_markdown(ds)
    kd1 = next(line for line in md.splitlines() if line.startswith("| KD | 1 |"))
    sft1 = next(line for line in md.splitlines() if line.startswith("| SFT (full, labels only) | 1 |"))
    assert kd1.split(" | ")[4].startswith("**+")  # long - base: bold, its interval excludes 0
    assert "**" not in sft1.split(" | ")[4] and sft1.split(" | ")[5].startswith("**-")  # = base; below KD there
    laid1 = next(line for line in md.splitlines() if line.startswith("| LAid | 1 |"))
    laid2 = next(line for line in md.splitlines() if line.startswith("| LAid | 2 |"))
    assert "**" not in laid1.split(" | ")[4]  # two seeds that disagree completely: +16 with 1 df, not claimed
    assert laid2.split(" | ")[5] == "+0.0 [+0.0, +0.0]"  # one seed, = KD on every question: zero width, yet ...
    assert laid2.split(" | ")[10] == "- / -"  # ... one trained seed gives no verdict on harm
    assert kd1.split(" | ")[10] == "yes / -"  # KD at budget 1 equals the teacher at short range: no harm
    curve = learning_curve(ds, "s", "long")
    assert curve["arms"]["kd"]["x"].tolist() == [8, 16]
    assert curve["arms"]["kd"]["y"].tolist() == pytest.approx([float(ds["acc"].sel(student="s", arm="kd", budget=b, group="long"))
                                                               for b in (1, 2)])
    assert curve["teacher"][0] > curve["base"][0]


def test_mini_study_runs_resumes_and_refuses_changed_arms(random_zoo, tmp_path_factory, tmp_path):
    torch.set_num_threads(1)
    run = mini_run(random_zoo, tmp_path_factory, tmp_path / "run")
    overrides = {
        "students": ["tiny-7b"], "distill_configs": {"tiny-7b": str(REPO / "configs/distill/tiny-32b_testbed.yaml")},
        "seeds": [0, 1], "budgets": [1, 2], "student_budgets": {}, "save_every": 1,
        "training": {"lr_schedule": "constant", "warmup_steps": 0, "per_device_batch_size": 1, "grad_accum": 2},
        "arms": {"sft": {"method": "sft", "seeds": [0]}, "kd": {"method": "kd"},
                 "laid": {"method": "laid", "overrides": {"layer_map": "diagnosed", "attn_rows": "question"}, "seeds": [0]}},
        "eval.sizes": None, "eval.samples_per_size": 4, "groups": GROUPS,
        "diagnose": {"seeds": [0], "sizes": [5, 10], "samples": 2}, "data.root": "data",
    }
    cfg = load_study_config(REPO / "configs" / "experiments" / "testbed.yaml", overrides)
    ds = Study(cfg, run, workers=1, log=lambda *a: None, exploratory=True).run()
    assert (run / "study" / "testbed.nc").is_file() and (run / "study" / "testbed.md").is_file()
    assert (run / "analysis" / "tiny-32b__base" / "diagnostics.nc").is_file()  # the diagnosed arm's evidence
    # the table's numbers are the eval files' numbers
    kd = [xr.load_dataset(run / "study" / "runs" / f"tiny-7b__kd__seed{s}" / "evals" / "step-00000002.nc") for s in (0, 1)]
    base = xr.load_dataset(run / "eval" / "tiny-7b__base.nc")
    want = paired_difference(stack_seeds(kd), stack_seeds([base]), GROUPS["long"])
    got = ds["diff"].sel(student="tiny-7b", arm="kd", budget=2, group="long", ref="base")
    assert float(got) == pytest.approx(want.value)
    assert int(ds["n_seeds"].sel(student="tiny-7b", arm="kd", budget=2)) == 2
    assert not np.isnan(float(ds["retrieval_mass"].sel(student="tiny-7b", arm="laid", budget=2)))
    # every run's job time is kept with the run, so a resumed study still reports the whole grid's time
    assert int(ds.attrs["jobs_timed"]) == int(ds.attrs["jobs"]) == 4 and float(ds.attrs["job_seconds"]) > 0
    # resume: nothing left to do, and the job seconds are not lost
    assert Study(cfg, run, workers=1, exploratory=True).jobs() == []
    again = Study(cfg, run, workers=1, log=lambda *a: None, exploratory=True).run()
    assert float(again.attrs["job_seconds"]) == float(ds.attrs["job_seconds"])
    # an arm whose settings changed under the same name is refused, not silently mixed
    cfg.arms["laid"].overrides["attn_rows"] = "text"
    with pytest.raises(ValueError, match=r"was trained with other \['attn_rows'\]"):
        Study(cfg, run, workers=1, exploratory=True).jobs()


def test_shipped_study_config_loads_and_its_grid():
    cfg = load_study_config(REPO / "configs" / "experiments" / "testbed.yaml")
    grid = cfg.grid()
    assert {a for _, a, _, _ in grid} == set(cfg.arms) and {"sft", "kd", "laid"} <= set(cfg.arms)
    same_arch = [(a, s, b) for st, a, s, b in grid if st == "tiny-32b-short"]
    for arm in ("sft", "kd", "laid"):  # >= 3 seeds, 150 steps to 4 epochs
        assert sorted(s for a, s, _ in same_arch if a == arm) == [0, 1, 2]
        assert all(b == [150, 625, 1250, 2500] for a, _, b in same_arch if a == arm)
    full = cfg.grid(full=True)
    assert len(full) == len(cfg.students) * len(cfg.arms) * len(cfg.seeds) and all(b == cfg.budgets for *_, b in full)


def test_shipped_studies_agree_on_every_shared_run(tmp_path):
    """Study configs share run folders (student__arm__seed): an arm name must mean one training in
    every config, or a second study would refuse (or, worse, mix) the first one's runs."""
    configs = [p for p in sorted((REPO / "configs" / "experiments").glob("*.yaml")) if "arms:" in p.read_text()]
    assert {"testbed.yaml", "testbed_variants.yaml", "testbed_seeds.yaml"} <= {p.name for p in configs}
    seen: dict[tuple, tuple[str, dict]] = {}
    for path in configs:
        cfg = load_study_config(path)
        study = Study(cfg, tmp_path, workers=1, exploratory=True)
        for student, arm, seed, budgets in cfg.grid(full=True):
            sig = study.distill_config(student, arm, seed, budgets).training_signature()
            first = seen.setdefault((student, arm, seed), (path.name, sig))
            assert first[1] == sig, f"{student}__{arm}__seed{seed}: {first[0]} and {path.name} train it differently"
    assert ("tiny-7b-ret", "laid", 3) in seen and ("tiny-32b-short", "laid", 0) in seen
