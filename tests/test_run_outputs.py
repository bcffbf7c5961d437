"""Where the commands write by default: into their run folder, never the repository's figures/ or
docs/results.md (those change only by `laid results --publish`, tests/test_results_page.py). The
runs themselves are stubbed: this checks the paths the command lines hand on. The quick main job
end to end, with `git status` unchanged after it: tests/test_main_quick.py."""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from laid_workflows import main_job, study
from laid_workflows.cli import build_parser

REPO = Path(__file__).resolve().parents[1]


def test_laid_study_writes_its_figure_and_page_into_the_run_folder(tmp_path, monkeypatch):
    seen = {}

    class FakeStudy:
        def __init__(self, cfg, run_dir, **kwargs):
            seen.update(kwargs, run_dir=run_dir)

        def run(self):
            return xr.Dataset(coords={"student": ["s"], "arm": ["kd"], "budget": [1]})

    monkeypatch.setattr(study, "Study", FakeStudy)
    for argv in (["study", "--run-dir", str(tmp_path / "run")], ["study", "--run-dir", str(tmp_path / "run"), "--quick"]):
        args = build_parser().parse_args(argv)
        assert args.func(args) == 0
        assert Path(seen["figures_dir"]) == tmp_path / "run" / "figures" and Path(seen["results_page"]) == tmp_path / "run" / "results.md"
    # The embedded default's run folder is no exception any more (it used to write figures/ and docs/results.md).
    args = build_parser().parse_args(["study"])
    args.func(args)
    assert Path(seen["figures_dir"]) == Path("runs/default/figures") and Path(seen["results_page"]) == Path("runs/default/results.md")


def test_laid_main_writes_its_figures_and_page_into_the_run_folder(monkeypatch):
    seen = []
    monkeypatch.setattr(main_job, "run_main", lambda cfg, stages: seen.append(cfg))
    for argv, run in ((["main"], "runs/default"), (["main", "--quick"], "runs/quick"), (["main", "--run-dir", "/elsewhere/x"], "/elsewhere/x")):
        args = build_parser().parse_args(argv)
        assert args.func(args) == 0
        cfg = seen[-1]
        assert cfg.run == REPO / run and cfg.figures == REPO / run / "figures" and cfg.results_page is None
