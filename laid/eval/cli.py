"""`laid eval`: evaluate one model (and variant) on Visual Haystacks, write a netCDF result."""

from __future__ import annotations

import argparse

import torch

from laid.eval.metrics import DEFAULT_THRESHOLD
from laid.eval.results import summary_text
from laid.eval.run import DEFAULT_BATCH_TOKENS, evaluate
from laid.eval.settings import SETTINGS, EvalSettings
from laid.eval.variants import VARIANTS, parse_options

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a model on Visual Haystacks (accuracy per haystack size, effective window)",
        description=__doc__,
    )
    p.add_argument("--model", required=True, help="Hugging Face model folder (toy zoo or real Qwen2.5-VL)")
    p.add_argument("--data", required=True, help="VHs root holding single_needle/ and multi_needle/ (e.g. runs/default/data/test)")
    p.add_argument("--image-root", required=True, help="folder the image paths in the JSON files are relative to")
    p.add_argument("--out", required=True, help="result file (.nc), written atomically")
    p.add_argument("--sizes", type=int, nargs="+", help="haystack sizes to evaluate (default: every size found)")
    p.add_argument("--setting", default="single_needle", choices=SETTINGS)
    p.add_argument("--max-samples", type=int, help="first N questions per size (default: all)")
    p.add_argument("--variant", default="base", choices=VARIANTS)
    p.add_argument("--variant-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option passed to the variant's loader, e.g. factor=4 (repeatable)")  # fmt: skip
    p.add_argument("--generate", action="store_true", help="score greedy replies with the reference rule instead of answer logits")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="accuracy threshold of the effective window")
    p.add_argument("--seed", type=int, default=0, help="seed of haystack shuffling and bootstrap")
    p.add_argument("--needle-positions", action="store_true", help="place the needle at range(0, N, N//10) (reference 'detailed' mode)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="model dtype (default: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS, help="padded tokens per forward pass")
    p.add_argument("--model-name", help="label stored in the result (default: the model folder's name)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> EvalSettings:
    """The command line's evaluation settings, range-checked like every config's."""
    return EvalSettings(sizes=args.sizes, samples_per_size=args.max_samples, setting=args.setting,
                        threshold=args.threshold, seed=args.seed, batch_tokens=args.batch_tokens,
                        scoring="generate" if args.generate else "logits")


def run(args: argparse.Namespace) -> int:
    ds = evaluate(
        args.model,
        args.data,
        args.image_root,
        args.out,
        variant=args.variant,
        variant_options=parse_options(args.variant_option),
        needle_position_mode=args.needle_positions,
        device=args.device,
        dtype=DTYPES[args.dtype] if args.dtype else None,
        progress=not args.no_progress,
        model_name=args.model_name,
        **settings_from_args(args).evaluate_kwargs(),
    )
    print(summary_text(ds))
    print(f"wrote {args.out}")
    return 0
