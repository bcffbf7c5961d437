"""What may read the test split: screens and default choices read val; a study reports test numbers
only when a frozen preregistration registers its config as it is (laid_workflows/prereg.py
`claim_for`, laid_workflows/study.py `Study.claim`), or labelled exploratory when asked to."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from laid_workflows import prereg as pr
from laid_workflows.study import Study, load_study_config

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((REPO / "configs" / "experiments").glob("*.yaml"))
EXAMPLE = REPO / "docs" / "preregistration-example.yaml"


def _is_study(path: Path) -> bool:
    return "arms" in yaml.safe_load(path.read_text())


def test_no_screen_or_default_choice_reads_test():
    """Studies are where the workbench chooses (variants, seeds, budgets, defaults): each reads val, unless
    a frozen preregistration registers it (a confirmatory study, which reads test once). Comparisons
    (`laid compare`: the main job's headline, the paper's tables) choose nothing and are labelled
    exploratory on the results page whatever they read."""
    studies = [p for p in EXPERIMENTS if _is_study(p)]
    assert len(studies) >= 3, [p.name for p in EXPERIMENTS]
    for path in studies:
        split = load_study_config(path).data.eval_split
        assert split == "val" or pr.claim_for(path).confirmatory, f"{path.name} reads {split} and no frozen preregistration registers it"


def _study(tmp_path, split: str, **kwargs) -> Study:
    cfg = load_study_config(REPO / "configs" / "experiments" / "testbed.yaml", [f"data.eval_split={split}"])
    return Study(cfg, tmp_path / "run", workers=1, log=lambda *a: None, **kwargs)


def test_a_study_on_test_without_a_frozen_preregistration_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="reads the test split, and no frozen preregistration") as e:
        _study(tmp_path, "test").run()
    assert "\n" not in str(e.value) and "--exploratory" in str(e.value)
    assert not (tmp_path / "run").exists()  # nothing trained, evaluated or written
    assert not _study(tmp_path, "val").claim().confirmatory  # val: choices, never claims
    claim = _study(tmp_path, "test", exploratory=True).claim()  # reported, labelled
    assert claim.attrs() == {"confirmatory": 0, "preregistration": "", "prereg_commit": ""}


def _git(root: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, env=env)


def test_a_frozen_preregistration_makes_exactly_its_config_confirmatory(tmp_path):
    root = tmp_path / "repo"
    (root / "configs" / "experiments").mkdir(parents=True)
    (root / "configs" / "preregistration").mkdir(parents=True)
    config = root / "configs" / "experiments" / "testbed.yaml"
    shutil.copy(REPO / "configs" / "experiments" / "testbed.yaml", config)
    config.write_text(config.read_text().replace("eval_split: val", "eval_split: test"))
    distill = root / "configs" / "distill" / "d.yaml"  # a file the runs read: registered by its hash
    distill.parent.mkdir(parents=True)
    distill.write_text("lambdas: {laid: 1.0}\n")
    prereg = yaml.safe_load(EXAMPLE.read_text())
    prereg["study"]["sha256"] = pr.sha256_of(config)
    prereg["study"]["inputs"] = {"configs/distill/d.yaml": pr.sha256_of(distill)}
    path = root / "configs" / "preregistration" / "h.yaml"
    path.write_text(yaml.safe_dump(prereg))
    _git(root, "init", "-q")
    _git(root, "add", "configs/experiments/testbed.yaml", "configs/distill/d.yaml")
    _git(root, "commit", "-qm", "config")
    assert not pr.claim_for(config).confirmatory  # registered but not committed: not frozen
    _git(root, "add", "configs/preregistration/h.yaml")
    _git(root, "commit", "-qm", "freeze")
    claim = pr.claim_for(config)
    assert claim.confirmatory and claim.prereg == path.resolve() and claim.commit == pr.freeze_status(path).commit
    assert claim.attrs()["preregistration"] == "h.yaml"
    cfg = load_study_config(config)
    study = Study(cfg, tmp_path / "run", workers=1, config_path=config)
    assert study.claim().confirmatory  # the study itself: allowed on test
    assert not pr.claim_for(config, modified=True).confirmatory  # --override / --quick: not the registered config
    with pytest.raises(ValueError, match="no frozen preregistration"):
        Study(cfg, tmp_path / "run", workers=1, config_path=config, modified=True).claim()
    distill.write_text("lambdas: {laid: 0.0}\n")  # the training changed though the study config did not
    assert not pr.claim_for(config).confirmatory
    assert any("d.yaml was edited after the freeze" in p for p in pr.config_problems(pr.load_prereg(path), path))
    distill.write_text("lambdas: {laid: 1.0}\n")
    assert pr.claim_for(config).confirmatory
    config.write_text(config.read_text() + "\n# edited after the freeze\n")
    assert not pr.claim_for(config).confirmatory  # its hash no longer matches
