"""Preregistration (laid_workflows.prereg): the file format's one-line errors, freezing in a real
temporary git repository, and verdicts on planted study Datasets with known answers. The ablation
is the reading it replaces: "no harm" = "the interval includes 0", which calls a case with a
possible 8-point loss harmless."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from laid.eval.results import SampleResult, build_result
from laid.layout import RunLayout
from laid.io import write_netcdf
from laid_workflows import prereg as pr
from laid_workflows.cli import main as laid_main
from laid_workflows.results_page import write_results_page
from laid_workflows.study_stats import build_study

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "preregistration-example.yaml"
SIZES = [1, 2, 50, 100]
GROUPS = {"short": [1, 2], "beyond": [50, 100]}
N = 100


def _git(root: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, env=env)


def _prereg_dict(sha: str, **changes) -> dict:
    d = yaml.safe_load(EXAMPLE.read_text())
    d["study"]["sha256"] = sha
    d.update(changes)
    return d


@pytest.fixture
def repo(tmp_path) -> Path:
    """A git repository holding the testbed study config and a preregistration of it (not committed)."""
    root = tmp_path / "repo"
    (root / "configs" / "experiments").mkdir(parents=True)
    (root / "configs" / "preregistration").mkdir(parents=True)
    config = root / "configs" / "experiments" / "testbed.yaml"
    shutil.copy(REPO / "configs" / "experiments" / "testbed.yaml", config)
    (root / "configs" / "preregistration" / "h.yaml").write_text(yaml.safe_dump(_prereg_dict(pr.sha256_of(config))))
    _git(root, "init", "-q")
    _git(root, "add", "configs/experiments/testbed.yaml")
    _git(root, "commit", "-qm", "the study config")
    return root


def test_the_example_loads_and_bad_files_are_one_line_errors(tmp_path):
    p = pr.load_prereg(EXAMPLE)
    assert [h.kind for h in p.hypotheses] == ["superiority", "non-inferiority"] and p.split == "test"
    assert p.hypotheses[1].statement(p.margin).endswith("non-inferior at margin 3 points")
    sha = "0" * 64
    bad = {"split val": ({"split": "val"}, "reads the test split"),
           "unknown key": ({"seed": 3}, r"unknown config key.*seed"),
           "no hash": ({"study": {"config": "x.yaml", "sha256": ""}}, "sha256"),
           "interval": ({"analysis": {"interval": "wald", "confidence": 0.95}}, "interval must be one of"),
           "arm": ({"arms": ["kd"]}, "hypothesis H1: student, arm and budget")}
    for name, (change, match) in bad.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(_prereg_dict(sha, **change)))
        with pytest.raises(ValueError, match=match) as e:
            pr.load_prereg(path)
        assert "\n" not in str(e.value) and str(path) in str(e.value), name


def test_frozen_only_when_committed_clean_and_its_config_unchanged(repo):
    path = repo / "configs" / "preregistration" / "h.yaml"
    p = pr.load_prereg(path)
    status = pr.freeze_status(path)
    assert not status.frozen and "not committed" in status.describe()
    _git(repo, "add", str(path))
    _git(repo, "commit", "-qm", "freeze")
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    status = pr.freeze_status(path)
    assert status.frozen and status.commit == head and pr.config_problems(p, path, status) == []
    assert laid_main(["prereg", str(path)]) == 0
    # later commits keep the freeze at the prereg's own commit
    (repo / "notes.txt").write_text("later")
    _git(repo, "add", "notes.txt")
    _git(repo, "commit", "-qm", "later work")
    assert pr.freeze_status(path).commit == head
    # an edited (even committed) study config no longer matches
    config = repo / "configs" / "experiments" / "testbed.yaml"
    config.write_text(config.read_text().replace("seeds: [0, 1, 2]", "seeds: [0, 1, 2, 3]"))
    problems = pr.config_problems(p, path, pr.freeze_status(path))
    assert len(problems) == 1 and "edited after the freeze" in problems[0] and pr.sha256_of(config) in problems[0]
    assert laid_main(["prereg", str(path)]) == 1
    _git(repo, "checkout", "--", "configs/experiments/testbed.yaml")
    # an uncommitted edit of the preregistration unfreezes it
    path.write_text(path.read_text().replace("margin: 0.03", "margin: 0.05"))
    status = pr.freeze_status(path)
    assert not status.frozen and "uncommitted changes" in status.describe()


def test_a_config_committed_after_the_freeze_or_not_running_the_registered_grid(repo, tmp_path):
    config = repo / "configs" / "experiments" / "testbed.yaml"
    text = config.read_text()
    config.write_text(text.replace("seeds: [0, 1, 2]", "seeds: [0, 1]"))
    _git(repo, "commit", "-qam", "two seeds")
    path = repo / "configs" / "preregistration" / "h.yaml"
    path.write_text(yaml.safe_dump(_prereg_dict(pr.sha256_of(config))))
    _git(repo, "add", str(path))
    _git(repo, "commit", "-qm", "freeze")
    problems = pr.config_problems(pr.load_prereg(path), path, pr.freeze_status(path))
    assert problems == ["registered seeds [2] are not in the study config's [0, 1]"]
    config.write_text(text)  # the three-seed config, committed after the freeze under a preregistration of it
    path.write_text(yaml.safe_dump(_prereg_dict(pr.sha256_of(config))))
    _git(repo, "commit", "-qam", "config and prereg together, fine")
    assert pr.config_problems(pr.load_prereg(path), path, pr.freeze_status(path)) == []
    old = pr.Freeze(True, subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD~1"], capture_output=True,
                                         text=True).stdout.strip())
    assert "was not committed with this content by the freeze commit" in pr.config_problems(pr.load_prereg(path), path, old)[0]


# --- verdicts on planted studies -------------------------------------------------------------------


def _eval(correct: np.ndarray):
    samples = {s: [SampleResult(bool(c), 1.0, True, 10, i % s, bool(i % 2)) for i, c in enumerate(row)]
               for s, row in zip(SIZES, correct)}
    return build_result(samples, threshold=0.6, seed=0, attrs={"model_name": "planted"})


def _study(laid_gains: list[int], short_losses: list[int], seeds: int = 3):
    """KD = base (3 seeds that agree); LAid seed k answers laid_gains[k] more of the 100 questions per
    long size and short_losses[k] fewer per short size, on the same questions."""
    rng = np.random.default_rng(0)
    base = (rng.random((len(SIZES), N)) < np.array([[0.9], [0.8], [0.5], [0.5]])).astype(float)
    laid = []
    for gain, loss in zip(laid_gains[:seeds], short_losses[:seeds]):
        c = base.copy()
        for j in (2, 3):
            wrong = np.flatnonzero(c[j] == 0)
            c[j, wrong[:gain]] = 1.0
        for j in (0, 1):
            right = np.flatnonzero(c[j] == 1)
            c[j, right[:loss]] = 0.0
        laid.append(_eval(c))
    evals = {("tiny-32b-short", "kd", 2500): [_eval(base)] * 3, ("tiny-32b-short", "laid", 2500): laid}
    return build_study(evals, {"tiny-32b-short": _eval(base)}, _eval(base), ["tiny-32b-short"], ["kd", "laid"], [2500],
                       GROUPS, global_batch=8)


def _verdicts(ds) -> dict[str, str]:
    return {v.hypothesis.id: v.outcome for v in pr.evaluate(pr.load_prereg(EXAMPLE), ds)}


def test_held_not_held_and_inconclusive_on_planted_studies():
    assert _verdicts(_study([15, 16, 14], [0, 1, 0])) == {"H1": "held", "H2": "held"}
    # LAid gains nothing beyond (every seed answers as KD) and loses 12 at short range: both excluded
    assert _verdicts(_study([0, 0, 0], [12, 13, 12])) == {"H1": "not held", "H2": "not held"}
    # seeds that disagree: +20, 0, 0 beyond, 0-16 lost at short range
    assert _verdicts(_study([20, 0, 0], [0, 16, 8])) == {"H1": "inconclusive", "H2": "inconclusive"}
    two = pr.evaluate(pr.load_prereg(EXAMPLE), _study([15, 16], [0, 1], seeds=2))  # off-plan: 2 seeds, not 3
    assert {v.outcome for v in two} == {"inconclusive"} and "2 seeds ran, 3 registered" in two[0].reason


def test_no_harm_is_not_an_interval_that_includes_zero():
    """The ablation: short - KD of about -4 [-9, +1] includes 0 (the old "no harm"), yet an 8-point loss
    is as plausible: the registered non-inferiority at 3 points is not shown."""
    ds = _study([15, 16, 14], [2, 6, 4])
    v = next(v for v in pr.evaluate(pr.load_prereg(EXAMPLE), ds) if v.hypothesis.id == "H2")
    assert v.interval.ci_low < 0 < v.interval.ci_high  # the old reading: "includes 0", no harm
    assert v.interval.ci_low < -0.03 and v.outcome == "inconclusive"


def test_a_study_read_with_other_groups_or_intervals_is_refused():
    ds = _study([15, 16, 14], [0, 1, 0])
    ds.attrs["groups"] = '{"short": [1, 2], "beyond": [50]}'
    with pytest.raises(ValueError, match=r"hypothesis H1: the study's group 'beyond' is \[50\], registered \[50, 100\]"):
        pr.evaluate(pr.load_prereg(EXAMPLE), ds)
    ds = _study([15, 16, 14], [0, 1, 0])
    ds["diff"].attrs["interval"] = "95% percentile bootstrap"
    with pytest.raises(ValueError, match="the study's intervals are"):
        pr.evaluate(pr.load_prereg(EXAMPLE), ds)


def test_results_page_prints_the_commit_and_one_line_per_hypothesis(repo, tmp_path, monkeypatch):
    path = repo / "configs" / "preregistration" / "h.yaml"
    _git(repo, "add", str(path))
    _git(repo, "commit", "-qm", "freeze")
    commit = pr.freeze_status(path).commit
    run = RunLayout(tmp_path / "run")
    write_netcdf(_study([15, 16, 14], [0, 1, 0]), run.study_result("testbed"))
    monkeypatch.setattr(pr, "PREREG_DIR", repo / "configs" / "preregistration")
    text = write_results_page(run.root).read_text()
    section = text.split("## Preregistered hypotheses", 1)[1]
    assert f"frozen at commit {commit[:10]}" in section and "as registered" in section
    assert "- H1: laid - kd over sizes [50, 100] at 2500 steps on tiny-32b-short > 0: **held**" in section
    assert "- H2: " in section and "non-inferior at margin 3 points: **held**" in section
    assert f"Confirmatory: preregistered in `h.yaml`, frozen at commit `{commit[:10]}`." in text  # the study's own section
    path.write_text(path.read_text().replace("margin: 0.03", "margin: 0.05"))  # edited after the freeze
    text = write_results_page(run.root).read_text()
    assert "NOT FROZEN" in text and "Exploratory: no frozen preregistration reads it." in text


def test_a_study_of_the_same_name_with_other_groups_gets_no_verdicts_and_the_page_is_written(repo, tmp_path, monkeypatch):
    """A --quick run of a registered study (other groups) must not be judged, nor break the results page."""
    path = repo / "configs" / "preregistration" / "h.yaml"
    _git(repo, "add", str(path))
    _git(repo, "commit", "-qm", "freeze")
    ds = _study([15, 16, 14], [0, 1, 0])
    ds.attrs["groups"] = '{"short": [1, 2], "beyond": [50]}'
    run = RunLayout(tmp_path / "run")
    write_netcdf(ds, run.study_result("testbed"))
    monkeypatch.setattr(pr, "PREREG_DIR", repo / "configs" / "preregistration")
    section = write_results_page(run.root).read_text().split("## Preregistered hypotheses", 1)[1]
    assert "No verdicts: " in section and "**held**" not in section
