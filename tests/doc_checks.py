"""What tests/test_docs.py checks in the README and docs/, as functions it can also aim at a broken file.

Command blocks: pytest-codeblocks (`extract_from_file`) reads the fenced blocks and the HTML-comment
marks before them. Every ```bash (or ```sh) block runs unless a `<!--pytest.mark.skip(reason="...")-->`
line precedes it; the blocks of one page run in order, in one shell each, in a sandbox folder that
shares `configs/`, `checkpoints/`, `data/` and `notebooks/` with the repository (read-only use) and
holds everything they write, with this checkout's `laid` first on PATH. A *walk* page (a
`<!-- walk: tests/test_x.py ... -->` comment) reads its paths from variables that its own test sets;
the generic runner leaves it to that test.

Links: markdown-it-py parses each page (CommonMark, as GitHub renders it) and mdit-py-plugins gives
every heading GitHub's anchor; every relative link and image must name a file or folder of the
repository, and an anchor must name a heading of the page it points into.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from markdown_it import MarkdownIt
from mdit_py_plugins.anchors import anchors_plugin
from pytest_codeblocks import extract_from_file

REPO = Path(__file__).resolve().parents[1]
RUNNABLE = ("bash", "sh")
SHARED = ("configs", "checkpoints", "data", "notebooks")  # what the blocks read from the repository
BLOCK_TIMEOUT_S = 300


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    code: str

    def where(self) -> str:
        return f"{self.page.relative_to(REPO) if self.page.is_relative_to(REPO) else self.page}:{self.line}"


WALK = re.compile(r"^<!--\s*walk:\s*(\S+)", re.MULTILINE)  # a comment line of its own, not a mention in text


def walk_test(page: Path) -> str | None:
    """The test file a walk page names (`<!-- walk: tests/test_x.py ... -->`), or None: not a walk."""
    m = WALK.search(page.read_text())
    return m.group(1) if m else None


def runnable_blocks(page: Path) -> list[Block]:
    """The page's command blocks that run: bash/sh blocks not marked skip (a skip must say why)."""
    out = []
    for block in extract_from_file(page):
        if block.syntax not in RUNNABLE:
            continue
        for mark in block.marks:
            if not mark.startswith("pytest.mark.skip(") or "reason=" not in mark:
                raise ValueError(f"{page}:{block.lineno}: mark {mark!r}: only pytest.mark.skip(reason=...) is supported")
        if not block.marks:
            out.append(Block(page, block.lineno, block.code))
    return out


def sandbox(root: Path) -> Path:
    """A folder to run blocks in: the repository's inputs linked in, everything written stays here."""
    root.mkdir(parents=True, exist_ok=True)
    for name in SHARED:
        if not (root / name).exists():
            (root / name).symlink_to(REPO / name, target_is_directory=True)
    return root


def block_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # this venv's `laid`
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)  # this checkout
    env.update(TQDM_DISABLE="1", MPLBACKEND="Agg", HF_HUB_OFFLINE="1")
    return env


def run_block(block: Block, cwd: Path, variables: dict[str, str] | None = None) -> str:
    """Run one block with bash -e (a failing command fails the block); raise naming the block; return
    its stdout. With `variables` (a walk's), they are set and an unset one fails the block (bash -u)."""
    flags = ["-e", "-o", "pipefail"] + (["-u"] if variables is not None else [])
    try:
        res = subprocess.run(["bash", *flags, "-c", block.code], cwd=cwd, env={**block_env(), **(variables or {})},
                             capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{block.where()}: the block ran past {BLOCK_TIMEOUT_S} s") from None
    if res.returncode != 0:
        raise AssertionError(f"{block.where()}: the block exited {res.returncode}:\n{block.code}\n"
                             f"--- stderr (end) ---\n{res.stderr[-3000:]}\n--- stdout (end) ---\n{res.stdout[-1500:]}")
    return res.stdout


def _parser() -> MarkdownIt:
    return MarkdownIt("commonmark").enable("table").use(anchors_plugin, min_level=1, max_level=6)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of the page's headings."""
    return {t.attrGet("id") for t in _parser().parse(page.read_text()) if t.type == "heading_open"}


def link_targets(page: Path) -> list[str]:
    """Every link and image target of the page, in order."""
    out = []
    stack = list(_parser().parse(page.read_text()))
    while stack:
        token = stack.pop(0)
        if token.children:
            stack[0:0] = token.children
        if token.type == "link_open":
            out.append(str(token.attrGet("href")))
        elif token.type == "image":
            out.append(str(token.attrGet("src")))
    return out


def broken_links(page: Path, pending: dict[str, str] | None = None) -> list[str]:
    """Relative links and images of `page` that name no file of the repository, or no heading.

    `pending` maps repository paths another branch adds to why; they may be absent, nothing else."""
    problems = []
    for target in link_targets(page):
        url = urlparse(target)
        if url.scheme or url.netloc:
            continue  # external: not checked (no network in CI)
        path = page if not url.path else (page.parent / unquote(url.path)).resolve()
        rel = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else None
        if not path.exists():
            if rel not in (pending or {}):
                problems.append(f"{page.name}: {target}: no such file")
            continue
        if rel is None:
            problems.append(f"{page.name}: {target}: outside the repository")
        elif url.fragment and path.suffix == ".md" and url.fragment not in anchors(path):
            problems.append(f"{page.name}: {target}: no heading #{url.fragment} in {path.name}")
    return problems


def reachable(start: Path) -> set[Path]:
    """Markdown pages reachable from `start` by relative links."""
    seen, todo = set(), [start.resolve()]
    while todo:
        page = todo.pop()
        if page in seen or not page.is_file():
            continue
        seen.add(page)
        for target in link_targets(page):
            url = urlparse(target)
            if not url.scheme and url.path.endswith(".md"):
                todo.append((page.parent / unquote(url.path)).resolve())
    return seen
