"""`laid diagnose`: mechanistic diagnostics of one checkpoint (and its teacher) on VHs haystacks."""

from __future__ import annotations

import argparse

from laid.data.vhs import SETTINGS
from laid.eval.cli import SIZES_HELP, add_placement_arguments
from laid.eval.settings import choose_sizes, parse_sizes
from laid.model.loading import DTYPES
from laid_analysis import spectra, tokens
from laid_analysis.key_activation import DEFAULT_LOCAL_THRESHOLD


class _Formatter(argparse.HelpFormatter):
    """Shows an option's default in --help unless its help already says it (or there is none to show)."""

    def _get_help_string(self, action):
        text = action.help or ""
        # identity, not ==: a default of 0 (== False) is a value to show
        if "default" in text or any(action.default is d for d in (None, False, argparse.SUPPRESS)) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "diagnose", help="per-head key activations, attention-distance spectra and RoPE usage of a checkpoint",
        description="Analyse MODEL_DIR on Visual Haystacks haystacks: per head and haystack the answer query's "
                    "attention mass on the needle and on all images, needle-vs-distractor margin, locality and "
                    "health (q/k norms, logit scale, entropy, sink mass) vs haystack size with bootstrap intervals; "
                    "attention vs M-RoPE position distance; the exact per-rotary-pair spectrum a_p; RoPE pair "
                    "usage; with --reference also the teacher and the fidelity of each student head to its "
                    "virtual teacher head; with --ablate-layers the accuracy change on minimal pairs when each head "
                    "or rotary-pair band of those layers is ablated. Writes netCDF, PNG and report.html to --out.",
        formatter_class=_Formatter,
    )
    p.add_argument("model_dir", help="Hugging Face folder of the checkpoint (toy or real; any supported family)")
    p.add_argument("--data", required=True, help="a VHs root (e.g. runs/default/data/test or the real benchmark), a setting "
                   "folder or one visual_haystack_N.json file")
    p.add_argument("--image-root", required=True, help="folder the image paths of the VHs files are relative to")
    p.add_argument("--allow-outside-image-root", action="store_true",
                   help="accept absolute image paths and paths leaving --image-root with '..' (refused by default)")
    p.add_argument("--sizes", nargs="+", metavar="N", default=None, help=SIZES_HELP)
    p.add_argument("--out", required=True, help="output folder (e.g. runs/default/analysis/<label>)")
    p.add_argument("--reference", default=None, help="teacher folder: also analyse it and compare")
    p.add_argument("--head-weights", default=None, help="head_weights.nc of a LAid export")
    p.add_argument("--max-samples", type=int, default=32, help="haystacks per size (0 = all)")
    p.add_argument("--profile-max-samples", type=int, default=8,
                   help="haystacks per profile size feeding the distance profile and pair spectrum (0 = all)")
    p.add_argument("--distance-units", choices=("positions", "tokens"), default="positions",
                   help="distance axis: M-RoPE position difference, or token-index difference (ablation)")
    p.add_argument("--layers", type=int, nargs="+", default=None,
                   help="text layers of the checkpoint (default all; -1 = last); Gemma 3: layers of one type (sliding or full)")
    p.add_argument("--profile-sizes", type=int, nargs="+", default=None,
                   help="sizes feeding the distance profile and RoPE usage (default: the largest)")
    p.add_argument("--queries", choices=tokens.QUERY_CHOICES, default="all", help="query tokens of the distance profile")
    p.add_argument("--keys", choices=tokens.KEY_CHOICES, default="image", help="key tokens of the distance profile")
    p.add_argument("--chunk-size", type=int, default=None, help="queries per chunk (default: from a 256 MiB budget)")
    p.add_argument("--batch-size", type=int, default=1, help="haystacks per forward pass (memory, not results)")
    p.add_argument("--low-freq-cycles", type=float, default=spectra.DEFAULT_LOW_FREQ_CYCLES,
                   help="ablation score: low-frequency cutoff, in cycles over the analysed distance range")
    p.add_argument("--global-threshold", type=float, default=spectra.DEFAULT_GLOBAL_THRESHOLD,
                   help="ablation reach classes: mean-distance ratio at or above which a head is 'global'")
    p.add_argument("--local-threshold", type=float, default=DEFAULT_LOCAL_THRESHOLD,
                   help="locality (logit drop per 100 positions) at or above which a head is 'local'")
    p.add_argument("--ablate-layers", type=int, nargs="+", default=None,
                   help="text layers whose heads and rotary-pair bands are ablated on minimal pairs (needs synthetic data)")
    p.add_argument("--ablate-size", type=int, default=None, help="haystack size of the minimal pairs (default: the largest)")
    p.add_argument("--ablate-pairs", type=int, default=16, help="minimal pairs at most")
    p.add_argument("--rope-bands", type=int, default=4, help="rotary-pair bands ablated (equal contiguous groups, fast -> slow)")
    p.add_argument("--setting", default="single_needle", choices=SETTINGS, help="VHs needle setting")
    p.add_argument("--seed", type=int, default=0, help="haystack arrangement seed")
    p.add_argument("--label", default=None, help="model name in results (default: folder name)")
    add_placement_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="full tracebacks")
    p.set_defaults(func=run)

    c = subparsers.add_parser(
        "diagnose-compare", help="one report comparing several `laid diagnose` outputs side by side",
        description="Read the folders of several `laid diagnose` runs (LABEL=DIR) and write models.nc, summary.nc, "
                    "figures on shared axes and report.html to --out.",
        formatter_class=_Formatter,
    )
    c.add_argument("folders", nargs="+", help="LABEL=DIR of each analysed checkpoint (DIR holds diagnostics.nc)")
    c.add_argument("--teacher", default=None, help="label of the teacher, taken from a folder's reference.nc if not listed")
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("--debug", action="store_true", help="full tracebacks")
    c.set_defaults(func=run_compare)


def run(args) -> int:
    from laid_analysis.analyse import AnalysisSettings
    from laid_analysis.diagnose import diagnose

    settings = AnalysisSettings(
        layers=args.layers, queries=args.queries, keys=args.keys, profile_sizes=args.profile_sizes,
        chunk_size=args.chunk_size, batch_size=args.batch_size, low_freq_cycles=args.low_freq_cycles,
        global_threshold=args.global_threshold, seed=args.seed, local_threshold=args.local_threshold,
        profile_max_samples=args.profile_max_samples or None, distance_units=args.distance_units,
    )
    sizes, note = choose_sizes(args.data, args.setting, parse_sizes(args.sizes))
    if note:
        print(note)
    written = diagnose(
        args.model_dir, args.data, args.image_root, sizes, args.out, reference=args.reference,
        head_weights=args.head_weights, max_samples=args.max_samples or None, settings=settings,
        setting=args.setting, label=args.label, device=args.device, dtype=DTYPES[args.dtype], progress=not args.no_progress,
        ablate_layers=args.ablate_layers, ablate_size=args.ablate_size, ablate_pairs=args.ablate_pairs, n_bands=args.rope_bands,
        allow_outside_image_root=args.allow_outside_image_root,
    )
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


def run_compare(args) -> int:
    from laid_analysis.checkpoints import compare_checkpoints

    folders = {}
    for item in args.folders:
        label, sep, folder = item.partition("=")
        if not sep or not label or not folder:
            raise ValueError(f"folder argument {item!r}: write it as LABEL=DIR, e.g. tiny-7b__laid=runs/default/analysis/tiny-7b__laid")
        folders[label] = folder
    for name, path in compare_checkpoints(folders, args.out, args.teacher).items():
        print(f"{name}: {path}")
    return 0
