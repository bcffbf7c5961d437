"""`laid distill` and `laid plan` (registered into the `laid` command).

    laid distill --config configs/distill/tiny-32b_to_tiny-7b.yaml [--override key=value ...] [--resume]
    laid plan --teacher DIR --student DIR                      (trainers/plan.py)

Multi-GPU: `accelerate launch --config_file configs/accelerate/zero3.yaml -m laid_workflows.cli distill ...`
(every process runs the same command; accelerate wires them together).
"""

from __future__ import annotations

import logging
import sys

from trainers.plan import register_plan


def _distill(args) -> int:
    from trainers.config import load_config
    from trainers.recipe import distill

    cfg = load_config(args.config, args.override or [])
    export = distill(cfg, resume=args.resume, progress=not args.no_progress)
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(f"export: {export}")
    return 0


def register(subparsers) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    p = subparsers.add_parser(
        "distill",
        help="distil a student from a teacher (LAid, KD, SFT-LoRA, ablations); writes an HF export",
        description="Train one student per the config (YAML, typed; unknown keys are errors) and export it "
        "with the RoPE gains folded in. Runs under `accelerate launch` for several processes/GPUs.",
    )
    p.add_argument("--config", required=True, help="distill config YAML (configs/distill/*.yaml)")
    p.add_argument("--override", action="append", metavar="KEY=VALUE",
                   help="set a config key (dotted for sections, e.g. lambdas.kl=0.5); repeatable")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    p.set_defaults(func=_distill)

    register_plan(subparsers)

