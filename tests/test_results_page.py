"""The results page (laid_workflows.results_page) on a hand-made run folder: every number on it is
the netCDF's, a section whose file is absent is left out and named, and a registered section shows
up where it was put. The page of a real run is checked in tests/test_main_quick.py."""

from __future__ import annotations

import json
import math

import pytest
import xarray as xr

from laid.eval.results import SampleResult, build_result
from laid.io import write_json, write_netcdf
from laid.layout import RunLayout
from laid_workflows import results_page
from laid_workflows.headline import add_paired_statistics
from laid_workflows.results_page import PageContext, Section, add_section, results_markdown, write_results_page
from laid_workflows.tables import build_comparison
from page_helpers import check_links_resolve, check_page_numbers, numbers, parse_table

SIZES = [1, 2, 5, 20]


def fake_eval(rights, model, n=20) -> xr.Dataset:
    """An evaluation answering the first `rights[k]` of n questions right at SIZES[k]."""
    samples = {s: [SampleResult(i < r, 1.0, True, 10, 0, bool(i % 2)) for i in range(n)] for s, r in zip(SIZES, rights)}
    return build_result(samples, threshold=0.6, seed=0, attrs={"model_name": model, "git_commit": "abc1234def"})


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunLayout:
    layout = RunLayout(tmp_path_factory.mktemp("results_page") / "run")
    evals = {"tiny-32b": fake_eval([19, 18, 15, 13], "tiny-32b"), "tiny-7b": fake_eval([17, 15, 9, 10], "tiny-7b")}
    for model, ds in evals.items():
        write_netcdf(ds, layout.eval_result(model))
    layout.config.write_text("name: fake\nteacher: tiny-32b\nstudents: [tiny-7b]\n")
    per_method = {("tiny-7b", "base"): evals["tiny-7b"], ("tiny-7b", "kd"): [fake_eval([16, 15, 12, 11], "kd"), fake_eval([17, 14, 11, 12], "kd")]}
    comp = build_comparison(per_method, evals["tiny-32b"], ["tiny-7b"], ["base", "kd"],
                            {"teacher": "tiny-32b", "threshold": 0.6, "seeds": [0, 1],
                             "timings_s": json.dumps({"distill tiny-7b kd seed 0": 30.4, "distill tiny-7b kd seed 1": 41.6, "eval tiny-7b-kd base": 12.0})})
    write_netcdf(add_paired_statistics(comp, per_method, [1, 2], [5, 20], n_boot=200), layout.comparison)
    write_json({"data": 3.2, "eval": 40.0, "compare": 200.4}, layout.timings)
    return layout


def test_numbers_on_the_page_are_the_netcdf_numbers(run):
    page = write_results_page(run.root, run.root / "docs" / "results.md")
    text = page.read_text()
    assert [row[0] for row in parse_table(text, "## Base models")] == ["tiny-32b", "tiny-7b"]  # the config's order
    assert check_page_numbers(text, run) == 2 * 5 + 3 + 5  # base: 4 sizes + window each; headline: base 3, KD 5 cells
    row = next(line for line in text.splitlines() if line.startswith("| tiny-7b | 0.85"))
    with pytest.raises(AssertionError):  # one hand-edited number is caught
        check_page_numbers(text.replace(row, row.replace("0.85", "0.86", 1)), run)
    kd = parse_table(text, "## Headline comparison")[1]
    assert kd[1] == "KD" and numbers(kd[5])[0] > 0  # the planted KD gain at long range is on the page
    assert "commit `abc1234def`" in text and "3 evaluation files" not in text  # two eval files, named
    assert "| compare | 200 |" in text and "| total | 244 |" in text
    assert "2 distill runs took 30-42 s each; 1 eval run took 12 s." in text
    assert "acc short [1, 2] | acc long [5, 20]" in text
    assert ("Not in this run folder, so not shown: preregistered (`configs/preregistration/*.yaml + study/<name>.nc`), "
            "learning-curves (`study/<name>.nc`), diagnosed-pairing "
            "(`analysis/<teacher>__base/diagnostics.nc`), other-comparisons (`compare/<name>.nc`), figures") in text


def test_absent_sources_are_named_and_links_are_relative(tmp_path, run):
    empty = RunLayout(tmp_path / "empty")
    empty.root.mkdir()
    text = write_results_page(empty.root).read_text()
    assert "## " not in text and all(s.source in text for s in results_page.SECTIONS)
    figures = tmp_path / "figures"
    figures.mkdir()
    (figures / "fig1_effective_window.png").write_bytes(b"png")
    text = results_markdown(PageContext(run, tmp_path / "docs" / "results.md", figures))
    assert "![Figure 1](../figures/fig1_effective_window.png)" in text
    with pytest.raises(FileNotFoundError, match="run folder .*missing.* not found"):
        write_results_page(tmp_path / "missing")


def test_a_registered_section_appears_where_it_was_put(run, monkeypatch):
    monkeypatch.setattr(results_page, "SECTIONS", list(results_page.SECTIONS))
    extra = lambda ctx: "## Extra\n\nfrom somewhere" if (ctx.run.root / "timings.json").is_file() else None  # noqa: E731
    add_section(Section("extra", "extra/<name>.nc", extra), after="headline")
    text = results_markdown(PageContext(run, run.results_page))
    assert text.index("## Headline comparison") < text.index("## Extra") < text.index("## Per-size tables")
    with pytest.raises(ValueError, match="exists already"):
        add_section(Section("extra", "x", extra))
    with pytest.raises(ValueError, match="'nope' not found"):
        add_section(Section("other", "x", extra), after="nope")


def test_study_section_numbers_are_the_study_netcdf(run, tmp_path):
    """A study (`laid study`) in the run gets its section: every paired cell equals study/<name>.nc."""
    import shutil

    from laid_workflows.study_stats import build_study

    root = tmp_path / "run"
    shutil.copytree(run.root, root)
    layout = RunLayout(root)
    teacher, base = (xr.load_dataset(layout.eval_result(m)) for m in ("tiny-32b", "tiny-7b"))
    evals = {("tiny-7b", "kd", 10): [fake_eval([16, 15, 12, 11], "kd")], ("tiny-7b", "kd", 20): [fake_eval([17, 16, 15, 13], "kd")],
             ("tiny-7b", "laid", 10): [fake_eval([18, 15, 10, 10], "laid")]}
    study = build_study(evals, {"tiny-7b": base}, teacher, ["tiny-7b"], ["kd", "laid"], [10, 20],
                        {"short": [1, 2], "long": [5, 20]}, global_batch=8, attrs={"timings_s": json.dumps({"total": 61.0})},
                        n_boot=200)
    write_netcdf(study, layout.study_result("testbed"))
    text = write_results_page(root, root / "results.md").read_text()
    assert "## Learning curves (`laid study`)" in text and "this invocation took 61 s" in text
    rows = parse_table("\n| arm |" + text.split("### `study/testbed.nc`")[1].split("\n| arm |", 1)[1], "\n")
    checked = 0
    for row in rows:
        arm = {"KD": "kd", "LAid": "laid"}[row[0]]
        sel = {"student": "tiny-7b", "arm": arm, "budget": int(row[1])}
        for col, (group, ref) in enumerate([(g, r) for g in ("long", "short") for r in ("base", "kd", "sft")], start=4):
            want = [float(study["diff" + s].sel({**sel, "group": group, "ref": ref})) for s in ("", "_ci_low", "_ci_high")]
            if row[col] == "-":
                assert math.isnan(want[0])
                continue
            assert numbers(row[col]) == pytest.approx([round(100 * v, 1) for v in want], abs=1e-9), (sel, group, ref)
            checked += 1
    assert len(rows) == 3 and checked == 8  # KD at two budgets vs base (long, short); LAid vs base and KD at one


def test_publish_copies_the_runs_figures_and_writes_the_page_linking_them(tmp_path, run, capsys):
    """`laid results --publish`: the one step that refreshes the repository's copies (here: folders of
    a fake checkout); figures other than the run's stay, executed notebooks are not copied."""
    figures = run.figures
    (figures / "data").mkdir(parents=True, exist_ok=True)
    (figures / "fig1_effective_window.png").write_bytes(b"\x89PNG new")
    (figures / "data" / "fig1_effective_window.nc").write_bytes(b"CDF new")
    (figures / "executed_notebooks").mkdir(exist_ok=True)
    (figures / "executed_notebooks" / "fig1_effective_window.ipynb").write_text("{}")
    checkout = tmp_path / "checkout"
    (checkout / "figures").mkdir(parents=True)
    (checkout / "figures" / "learning_curves_testbed.png").write_bytes(b"\x89PNG kept")
    (checkout / "figures" / "fig1_effective_window.png").write_bytes(b"\x89PNG old")
    page, copied = results_page.publish(run.root, page=checkout / "docs" / "results.md", to_figures=checkout / "figures")
    assert sorted(p.relative_to(checkout).as_posix() for p in copied) == ["figures/data/fig1_effective_window.nc",
                                                                           "figures/fig1_effective_window.png"]
    assert (checkout / "figures" / "fig1_effective_window.png").read_bytes() == b"\x89PNG new"
    assert (checkout / "figures" / "learning_curves_testbed.png").read_bytes() == b"\x89PNG kept"
    assert not (checkout / "figures" / "executed_notebooks").exists()
    text = page.read_text()
    assert "![Figure 1](../figures/fig1_effective_window.png)" in text and check_page_numbers(text, run) == 18
    check_links_resolve(text, page)
    with pytest.raises(FileNotFoundError, match="figures folder .*nowhere not found; run `laid main` or `laid figures --run-dir"):
        results_page.publish(run.root, tmp_path / "nowhere", page=checkout / "p.md", to_figures=checkout / "f")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no figure"):
        results_page.publish(run.root, tmp_path / "empty", page=checkout / "p.md", to_figures=checkout / "f")
    assert not (checkout / "p.md").exists() and not (checkout / "f").exists()  # a refused publish writes nothing
    from laid_workflows.cli import main

    assert main(["results", "--run-dir", str(run.root), "--publish", "--out", str(tmp_path / "x.md")]) == 1
    assert capsys.readouterr().err.strip().endswith("docs/results.md; leave out --out")
