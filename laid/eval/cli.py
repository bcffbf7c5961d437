"""`laid eval`: evaluate one model (and variant) on Visual Haystacks, write a netCDF result."""

from __future__ import annotations

import argparse

from laid.eval.metrics import DEFAULT_THRESHOLD
from laid.eval.protocol import OFFICIAL_MAX_NEW_TOKENS, OURS_MAX_NEW_TOKENS, PROTOCOLS, official_dir
from laid.eval.results import summary_text
from laid.eval.run import DEFAULT_BATCH_TOKENS, evaluate
from laid.eval.settings import PAPER_SIZES, SCORINGS, SETTINGS, EvalSettings, choose_sizes, parse_sizes
from laid.eval.variants import VARIANTS, parse_options
from laid.model.loading import DTYPES

SIZES_HELP = (f"haystack sizes to run: numbers, or paper (the paper's {', '.join(map(str, PAPER_SIZES))} that the data "
              f"holds) or all (every size found: the real benchmark's go to 10,000 images); default: paper")
DEVICE_HELP = ("auto: the CPU, the one GPU, or the model sharded across all visible GPUs (accelerate device_map=auto) "
               "for models no single GPU holds; or cpu, cuda, cuda:<index>")
DTYPE_HELP = "model dtype; auto: bfloat16 on GPUs, float32 on the CPU"


def add_placement_arguments(p) -> None:
    """--device and --dtype, shared by `laid eval` and `laid diagnose` (laid.model.loading.placement)."""
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--dtype", choices=list(DTYPES), default="auto", help=DTYPE_HELP)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a model on Visual Haystacks (accuracy per haystack size, effective window)",
        description=__doc__,
    )
    p.add_argument("--model", required=True, help="Hugging Face model folder (toy zoo or real; any supported family)")
    p.add_argument("--data", required=True, help="a VHs root holding single_needle/ and multi_needle/ (e.g. runs/default/"
                   "data/test), a setting folder (e.g. single_needle/VHs_large) or one visual_haystack_N.json file")
    p.add_argument("--image-root", required=True, help="folder the image paths in the JSON files are relative to")
    p.add_argument("--allow-outside-image-root", action="store_true",
                   help="accept absolute image paths and paths leaving --image-root with '..' (refused by default)")
    p.add_argument("--out", required=True, help="result file (.nc), written atomically; the official per-question "
                   "JSON goes to <out stem>_official/{N}_images/ beside it")
    p.add_argument("--sizes", nargs="+", metavar="N", help=SIZES_HELP)
    p.add_argument("--setting", default=None, choices=SETTINGS,
                   help="needle setting (default: the only one in --data, else single_needle)")
    p.add_argument("--protocol", default="auto", choices=PROTOCOLS,
                   help="official: the vhs_benchmark placement (single needle at every 10%% position, distractors in "
                        "file order) and scoring (greedy reply, nltk word tokens); ours: shuffled haystacks scored by "
                        "yes/no logits; auto: official for real VHs, ours for `laid data synth` data")
    p.add_argument("--max-samples", type=int, help="first N questions per size (default: all)")
    p.add_argument("--variant", default="base", choices=VARIANTS,
                   help="base: the checkpoint as it is; yarn / selfextend: the inference-time context extensions "
                        "(the paper's Table 1 baselines, laid/eval/variants/)")
    p.add_argument("--variant-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option passed to the variant's loader, e.g. factor=4 (repeatable)")  # fmt: skip
    p.add_argument("--scoring", choices=SCORINGS, default=None,
                   help="logits (yes/no margin) or generate (greedy reply, official word rule); default: the protocol's")
    p.add_argument("--generate", action="store_true", help="same as --scoring generate")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"reply length under generation (default: {OFFICIAL_MAX_NEW_TOKENS} official, {OURS_MAX_NEW_TOKENS} ours)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="accuracy threshold of the effective window")
    p.add_argument("--seed", type=int, default=0, help="seed of haystack shuffling and bootstrap")
    p.add_argument("--needle-positions", action="store_true",
                   help="protocol ours: place the needle at range(0, N, N//10), the other images shuffled")
    add_placement_arguments(p)
    p.add_argument("--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS, help="padded tokens per forward pass")
    p.add_argument("--model-name", help="label stored in the result (default: the model folder's name)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> EvalSettings:
    """The command line's evaluation settings, range-checked like every config's."""
    if args.max_samples is not None and args.max_samples < 1:
        raise ValueError(f"--max-samples must be >= 1 (or left out for every question), got {args.max_samples}")
    sizes, note = choose_sizes(args.data, args.setting, parse_sizes(args.sizes))
    if note:
        print(note)
    return EvalSettings(sizes=sizes, samples_per_size=args.max_samples, setting=args.setting,
                        threshold=args.threshold, seed=args.seed, batch_tokens=args.batch_tokens,
                        protocol=args.protocol, scoring="generate" if args.generate else args.scoring,
                        max_new_tokens=args.max_new_tokens)


def run(args: argparse.Namespace) -> int:
    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the weight-loading bar too
    settings = settings_from_args(args)
    ds = evaluate(
        args.model,
        args.data,
        args.image_root,
        args.out,
        variant=args.variant,
        variant_options=parse_options(args.variant_option),
        allow_outside_image_root=args.allow_outside_image_root,
        needle_position_mode=args.needle_positions,
        device=args.device,
        dtype=DTYPES[args.dtype],
        progress=not args.no_progress,
        model_name=args.model_name,
        **settings.evaluate_kwargs(),
    )
    print(summary_text(ds))
    print(f"wrote {args.out} and the per-question JSON in {official_dir(args.out)}/")
    return 0
