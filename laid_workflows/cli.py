"""The `laid` command line. Each command lives with its code and registers itself here.

A command module exposes `register(subparsers)`, which adds its sub-parser and sets
`func=<callable(args) -> int | None>` as the default. The modules are imported by name below (no
import strings), so the import-linter contract sees every arrow from the roof down.
"""

from __future__ import annotations

import argparse
import sys

from laid.data import cli as data_cli
from laid.eval import cli as eval_cli
from laid.zoo import cli as zoo_cli
from laid_analysis import cli as analysis_cli
from laid_workflows import compare, figures, main_job, prereg, results_page, study, table
from trainers import cli as trainers_cli

# What `laid --help` opens with: what the workbench does for its user (the docstring above is for developers).
DESCRIPTION = """\
LAid workbench: make a small vision-language model keep answering when its input holds many images,
by distilling it from a large one. Distil a Qwen2.5-VL student from a teacher (LAid, KD, SFT-LoRA and
ablations), evaluate it on Visual Haystacks (accuracy per haystack size, effective window, paired
intervals), and look inside (attention per head, RoPE spectra): on real checkpoints, or on a tiny toy
zoo that runs on a CPU in minutes.

Start with `laid main --quick` (the whole pipeline on the toy) or the README's five-minute tour;
every command and option is in docs/cli.md."""
EPILOG = "Run `laid COMMAND --help` for a command's options."

# Order = order in `laid --help`.
COMMAND_MODULES = (main_job, data_cli, zoo_cli, eval_cli, trainers_cli, compare, table, study, prereg, analysis_cli,
                   figures, results_page)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="laid", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("laid: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        # Our errors are written to be read: one line that names the thing and what to do.
        if getattr(args, "debug", False):
            raise
        print(f"laid {args.command}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # the system's errors (a full disk, a permission): one line, not a traceback
        if getattr(args, "debug", False):
            raise
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"laid {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
