"""The command line explains itself: every option of every command has help, no help prints its
default twice (or "(default: None)"), no help names a flag that does not exist, no description prints
"%%"; and the packaging
metadata points at what exists. Each check also runs on a deliberately broken parser, which must fail.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

from laid_workflows.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _parsers(parser: argparse.ArgumentParser, prog: str | None = None):
    """(prog, parser) of the command and every sub-command, depth first."""
    prog = prog or parser.prog
    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{prog} {name}")


def help_problems(parser: argparse.ArgumentParser) -> list[str]:
    """What is wrong with the help of `parser` and its sub-commands (empty: nothing)."""
    problems, every_flag = [], set()
    parsers = list(_parsers(parser))
    for _, p in parsers:
        every_flag.update(o for a in p._actions for o in a.option_strings)
    for prog, p in parsers:
        formatter = p._get_formatter()
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            name = "/".join(action.option_strings) or action.dest
            if not action.help:
                problems.append(f"{prog} {name}: no help")
                continue
            shown = formatter._expand_help(action)  # as --help prints it, the formatter's default suffix included
            if shown.count("(default") > 1 or "(default: None)" in shown:
                problems.append(f"{prog} {name}: default shown twice or as None: {shown!r}")
        text = " ".join([p.description or ""] + [a.help or "" for a in p._actions])
        if "%%" in (p.description or ""):  # argparse %-formats every help, a description only if it names %(prog)
            problems.append(f"{prog}: the description prints '%%'")
        problems += [f"{prog}: names {flag}, which no command has" for flag in sorted(set(FLAG.findall(text)) - every_flag)]
    return problems


def test_every_option_has_help_and_no_default_twice():
    assert help_problems(build_parser()) == []


def test_the_check_fails_on_a_broken_parser():
    parser = argparse.ArgumentParser(prog="x")
    sub = parser.add_subparsers(dest="command").add_parser("diagnose", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                                            description="with --ablate-heads the accuracy change (95%% of it)")
    sub.add_argument("--sizes", nargs="+", help="haystack sizes (default: all in --data)")
    sub.add_argument("--data", help="data")
    sub.add_argument("--batch-size", type=int, default=1)
    problems = "\n".join(help_problems(parser))
    assert "x diagnose --sizes: default shown twice" in problems
    assert "x diagnose --batch-size: no help" in problems
    assert "names --ablate-heads" in problems
    assert "x diagnose: the description prints '%%'" in problems


def test_packaging_metadata():
    """An SPDX license string (a TOML table makes setuptools print a deprecation at every install;
    the string needs setuptools >= 77), and every README section a comment points to exists."""
    text = (REPO / "pyproject.toml").read_text()
    meta = tomllib.loads(text)
    assert isinstance(meta["project"]["license"], str)
    assert any(re.fullmatch(r"setuptools>=(7[7-9]|[89]\d)(\.\d+)*", r) for r in meta["build-system"]["requires"])
    headings = {line.lstrip("#").strip() for line in (REPO / "README.md").read_text().splitlines() if line.startswith("#")}
    for section in re.findall(r'README "([^"]+)"', text):
        assert section in headings, f"pyproject.toml points to README section {section!r}, which does not exist"
