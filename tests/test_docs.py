"""The documentation does what it says: its commands run, its links resolve, its references are the code's.

- Every runnable command block of README.md, docs/*.md and notebooks/README.md (doc_checks: ```bash blocks not marked
  skip) runs on the toy, in page order, README first: the README's tour makes the `runs/tour/` that
  the docs pages' blocks build on. A deliberately broken block fails (test below). A walk page
  (docs/real-checkpoints.md) reads its paths from variables: the test it names runs it.
- Every relative link and image path resolves, every docs page is reachable from the README, and a
  deliberately broken link or anchor is reported.
- docs/cli.md equals what laid_workflows.cli_reference generates from the parsers now, and `laid
  --help` opens with what the workbench does for its user.
- The README stays short (<= 12,000 characters) and starts with the two commands CI and users run.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from doc_checks import REPO, broken_links, reachable, run_block, runnable_blocks, sandbox, walk_test

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS, REPO / "notebooks" / "README.md"]
# Pages another branch adds (repository path -> why). A link to one may dangle until that branch is
# merged; once the file exists it is checked like any other.
PENDING = {"docs/families.md": "written by the model-family adapters (issue 20)"}


@pytest.fixture(scope="module")
def tour(tmp_path_factory) -> dict:
    """One sandbox for every page's blocks, and the pages that ran in it (README's tour first)."""
    return {"dir": sandbox(tmp_path_factory.mktemp("docs_sandbox")), "ran": set()}


WALKS = [p for p in PAGES if walk_test(p)]  # pages whose blocks read variables their own test sets


@pytest.mark.parametrize("page", [p for p in PAGES if runnable_blocks(p) and p not in WALKS], ids=lambda p: p.relative_to(REPO).as_posix())
def test_runnable_blocks_run_on_the_toy(page, tour):
    # A docs page builds on the tour's runs/tour/: run the README first when a page is selected alone (-k).
    for p in ([README] if page != README and README not in tour["ran"] else []) + [page]:
        for block in runnable_blocks(p):
            run_block(block, tour["dir"])
        tour["ran"].add(p)


def test_every_walk_page_is_run_by_the_test_it_names():
    """A walk page is left out above; the test it names must exist and run that page."""
    # docs/testing.md only mentions the marker: a walk is a comment line of its own
    assert [p.name for p in WALKS] == ["real-checkpoints.md"], WALKS
    for page in WALKS:
        test = REPO / walk_test(page)
        assert test.is_file(), f"{page.name} names {test}, which does not exist"
        assert page.relative_to(REPO).as_posix() in test.read_text(), f"{test.name} does not run {page.name}"


def test_a_broken_block_fails(tmp_path):
    page = tmp_path / "broken.md"
    page.write_text("Fine:\n\n```bash\necho ok\n```\n\nSkipped, with a reason:\n\n"
                    "<!--pytest.mark.skip(reason=\"needs real weights\")-->\n```bash\nexit 3\n```\n\n"
                    "Broken:\n\n```bash\nls no/such/folder\necho never\n```\n\nA listing:\n\n```text\nexit 1\n```\n")
    blocks = runnable_blocks(page)
    assert [b.line for b in blocks] == [3, 16]
    run_block(blocks[0], tmp_path)
    with pytest.raises(AssertionError, match=r"broken.md:16: the block exited 2:(?s:.*)no/such/folder") as failed:
        run_block(blocks[1], tmp_path)
    assert "never" not in str(failed.value).split("--- stdout (end) ---")[1]  # the block stopped at its failing command
    page.write_text("<!--pytest.mark.skip-->\n```bash\ntrue\n```\n")
    with pytest.raises(ValueError, match="only pytest.mark.skip"):  # a skip must say why
        runnable_blocks(page)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_links_and_images_resolve(page):
    assert broken_links(page, PENDING) == []


def test_a_broken_link_or_anchor_is_reported(tmp_path, monkeypatch):
    import doc_checks

    monkeypatch.setattr(doc_checks, "REPO", tmp_path)
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n")
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](other.md#a-section) [here](#title) [web](https://example.org/x.md)\n"
                    "[gone](missing.md) ![pic](figures/none.png) [bad anchor](other.md#no-such-section) [self](#nope)\n")
    assert broken_links(page) == ["page.md: missing.md: no such file", "page.md: figures/none.png: no such file",
                                  "page.md: other.md#no-such-section: no heading #no-such-section in other.md",
                                  "page.md: #nope: no heading #nope in page.md"]
    assert broken_links(page, {"missing.md": "another branch", "figures/none.png": "x"})[:1] == [
        "page.md: other.md#no-such-section: no heading #no-such-section in other.md"]


def test_every_docs_page_is_reachable_from_the_readme():
    unreachable = sorted(p.relative_to(REPO).as_posix() for p in PAGES[1:] if p.resolve() not in reachable(README))
    assert unreachable == [], f"link these from README.md or a page it links: {unreachable}"


def test_readme_is_short_and_starts_with_the_two_commands():
    text = README.read_text()
    assert len(text) <= 12_000, f"README.md has {len(text)} characters; move detail into docs/"
    first_block = text.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert [line.split("#")[0].strip() for line in first_block] == ["bash scripts/main.sh", "bash scripts/test.sh"]
    assert "bash scripts/test.sh" in (REPO / ".ci" / "run").read_text()  # CI runs exactly the README's test command


def test_cli_reference_is_generated_from_the_parsers():
    from laid_workflows.cli import build_parser
    from laid_workflows.cli_reference import PAGE, cli_markdown

    assert PAGE.read_text() == cli_markdown(), "docs/cli.md is stale: run `python -m laid_workflows.cli_reference`"
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["eval"]
    sub.add_argument("--brand-new", help="an option the page does not have yet")
    page = cli_markdown(parser)
    assert page != PAGE.read_text() and "| `--brand-new BRAND_NEW` |  | an option the page does not have yet |" in page


def test_laid_help_opens_with_what_the_workbench_does():
    from laid_workflows.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["--help"])
    paragraphs = out.getvalue().split("\n\n")
    assert paragraphs[0].startswith("usage: laid") and paragraphs[1].startswith("LAid workbench: make a small vision-language model")
    assert "registers itself" not in out.getvalue()
