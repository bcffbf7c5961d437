"""The command-line reference, docs/cli.md, generated from the argparse parsers of `laid`.

Every command's description and options come from `laid_workflows.cli.build_parser()`, so the page
says what the code accepts; tests/test_docs.py regenerates it and fails when the committed page
differs. After changing a command's options:

    python -m laid_workflows.cli_reference            # rewrites docs/cli.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from laid.io import write_text

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "cli.md"


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each sub-command, in registration order."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            out += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return out


def _cell(text: str) -> str:
    """Text safe in one Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _portable(default) -> str:
    """A default as the page shows it: paths inside the checkout relative to it, so the page does not
    depend on where the repository was cloned."""
    text = str(default)
    root = str(REPO)
    return text.replace(root + "/", "").replace(root, ".") if root in text else text


def _options_table(parser: argparse.ArgumentParser) -> list[str]:
    formatter = parser._get_formatter()
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or action.help == argparse.SUPPRESS:
            continue
        invocation = formatter._format_action_invocation(action)
        help_text = formatter._expand_help(action) if action.help else ""
        if action.required or not action.option_strings:
            default = "required"
        elif any(action.default is d for d in (None, False, argparse.SUPPRESS)) or isinstance(action, argparse._StoreTrueAction):  # 0 is a default
            default = ""
        else:
            default = f"`{_portable(action.default)}`"
        rows.append(f"| `{_cell(invocation)}` | {default} | {_cell(help_text)} |")
    return ["| argument | default | what it does |", "|---|---|---|", *rows] if rows else []


def _anchor(prog: str) -> str:
    """GitHub's heading anchor of `## <prog>` (lower case, spaces to hyphens, other punctuation dropped)."""
    return "".join(c for c in prog.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def _command(prog: str, help_text: str, parser: argparse.ArgumentParser) -> list[str]:
    lines = [f"## {prog}", ""]
    description = parser.description or help_text
    if description:
        lines += [" ".join(description.split()), ""]
    subs = _subcommands(parser)
    if subs:
        lines += [f"- [`{prog} {name}`](#{_anchor(f'{prog} {name}')}): {_cell(h)}" for name, h, _ in subs] + [""]
    table = _options_table(parser)
    lines += [*table, ""] if table else []
    for name, h, sub in subs:
        lines += _command(f"{prog} {name}", h, sub)
    return lines


def cli_markdown(parser: argparse.ArgumentParser | None = None) -> str:
    """The whole reference page for `parser` (default: the `laid` parser)."""
    if parser is None:
        from laid_workflows.cli import build_parser

        parser = build_parser()
    lines = [
        "# Command-line reference",
        "",
        "Generated from the argparse parsers (`laid_workflows/cli.py`, each command registered by its own module) by "
        "`python -m laid_workflows.cli_reference`; `tests/test_docs.py` fails when this page and the code differ. "
        "Do not edit it by hand. `laid COMMAND --help` prints the same.",
        "",
        *[" ".join(paragraph.split()) + "\n" for paragraph in (parser.description or "").split("\n\n")],
        "| command | what it does |",
        "|---|---|",
        *[f"| [`laid {name}`](#{_anchor('laid ' + name)}) | {_cell(h)} |" for name, h, _ in _subcommands(parser)],
        "",
    ]
    for name, h, sub in _subcommands(parser):
        lines += _command(f"laid {name}", h, sub)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    out = Path(argv[0]) if argv else PAGE
    write_text(cli_markdown(), out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
