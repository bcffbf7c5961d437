"""`laid data synth` (write the synthetic benchmark), `laid data coco-split` (a training split from COCO)
and `laid data validate` (check VHs files)."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from tqdm.auto import tqdm

from .coco import CocoSplitConfig, parse_sizes, write_split
from .synth import SPLITS, SynthConfig, generate
from .vhs import check_images_readable, find_vhs_files, load_vhs_file


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="Visual Haystacks data: write the synthetic benchmark, build a training split from COCO, validate files")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("synth", help="write the synthetic VHs benchmark (deterministic for a seed)")
    p.add_argument("--out", required=True, type=Path, help="output folder; it becomes the image root")
    p.add_argument("--seed", type=int, default=0, help="seed of images and questions: the same seed writes the same files")
    p.add_argument("--quick", action="store_true", help="tiny benchmark (few sizes and questions) for smoke tests")
    p.add_argument("--train-sizes", type=int, nargs="+", default=None, metavar="N",
                   help="haystack sizes of the train split (default 2-20, as the paper); e.g. 1 2 3 4 5 for "
                        "distillation on short haystacks only (the window-extension testbed)")
    p.add_argument("--test-sizes", type=int, nargs="+", default=None, metavar="N",
                   help="haystack sizes of the test split (default 1 2 5 10 20 50 100 150)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing benchmark made with another config")
    p.set_defaults(func=_synth)

    p = sub.add_parser(
        "coco-split", help="build a single-needle training split in the VHs format from COCO annotations and images",
        description="Write OUT/single_needle/VHs_large/visual_haystack_{N}.json for every size N from a COCO instances "
                    "file: an anchor and a target category, one needle image holding the anchor, distractors without "
                    "it, half yes and half no per file, the pair drawn independently of the answer and the target's "
                    "count in the haystack drawn alike for yes and no (laid/data/coco.py says how and where COCO does "
                    "not allow it). OUT/coco_split.json records the settings and the checks.")
    p.add_argument("--annotations", required=True, type=Path, help="COCO instances file, e.g. annotations/instances_train2017.json")
    p.add_argument("--images", required=True, type=Path, help="folder holding its images, e.g. /data/coco/train2017")
    p.add_argument("--image-root", type=Path, default=None,
                   help="folder the written image paths are relative to (default: the parent of --images, so paths "
                        "read train2017/<file>; pass the same root to --image-root / data.image_root when reading)")
    p.add_argument("--out", required=True, type=Path, help="output folder (a VHs split root for data.train_dir)")
    p.add_argument("--sizes", nargs="+", default=["2-20"], metavar="N",
                   help="haystack sizes in images: numbers and ranges, e.g. 2-20 or 2 5 10 (default: 2-20, the paper's)")
    p.add_argument("--questions", type=int, default=5000,
                   help="questions in all, spread evenly over the sizes, half yes per size (default: 5000, the paper's)")
    p.add_argument("--exclude", nargs="+", type=Path, default=[], metavar="PATH",
                   help="images never to use, matched by file name: the test split (a VHs root, setting folder or "
                        "visual_haystack_N.json) or text files with one image path per line")
    p.add_argument("--min-area", type=float, default=0.01,
                   help="fraction of the image an annotation must cover for the image to count as holding its "
                        "category; images with only smaller ones are used neither as holding it nor as free of it")
    p.add_argument("--categories", nargs="+", default=None, metavar="NAME",
                   help="anchor and target categories to draw from (default: every annotated category)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw: the same seed and inputs write the same files")
    p.add_argument("--overwrite", action="store_true", help="replace an existing COCO split in --out")
    p.set_defaults(func=_coco_split)

    p = sub.add_parser("validate", help="check VHs files (real or synthetic) and print counts per setting and size")
    p.add_argument("path", type=Path, help="a visual_haystack_N.json file, a split folder (with single_needle/ "
                   "and/or multi_needle/), or a synthetic data folder (with test/, train/ and val/)")
    p.add_argument("--image-root", type=Path, default=None,
                   help="folder the image paths are relative to (default: the synthetic data folder holding "
                        "manifest.json at or above PATH)")
    p.add_argument("--no-images", action="store_true", help="skip checking the image files")
    p.add_argument("--decode", action="store_true",
                   help="decode every image fully (finds truncated files; default: read each header only)")
    p.add_argument("--allow-outside-image-root", action="store_true",
                   help="accept absolute image paths and paths leaving --image-root with '..' (refused by default)")
    p.set_defaults(func=_validate)


def _synth(args: argparse.Namespace) -> int:
    cfg = SynthConfig.quick(args.seed) if args.quick else SynthConfig(seed=args.seed)
    sizes = {k: tuple(v) for k, v in (("train_sizes", args.train_sizes), ("test_sizes", args.test_sizes)) if v}
    if sizes:
        cfg = SynthConfig.from_dict({**cfg.to_dict(), **sizes})
    out = generate(cfg, args.out, overwrite=args.overwrite)
    print(f"synthetic VHs benchmark (seed {cfg.seed}{', quick' if args.quick else ''}) in {out}")
    return 0


def _coco_split(args: argparse.Namespace) -> int:
    cfg = CocoSplitConfig(sizes=parse_sizes(args.sizes), questions=args.questions, seed=args.seed,
                          min_area=args.min_area, categories=args.categories)
    record = write_split(args.annotations, args.images, args.out, cfg, image_root=args.image_root,
                         exclude=args.exclude, overwrite=args.overwrite)
    files = record["files"]
    total = sum(f["n_questions"] for f in files.values())
    print(f"COCO training split in {args.out}: {total} questions over sizes {list(cfg.sizes)} ({len(files)} files), "
          f"{record['images_used']} images of {record['images_left']} left after excluding "
          f"{record['excluded']['in_annotations']}; image paths relative to {record['image_root']}")
    return 0


def _default_image_root(path: Path) -> Path:
    for folder in [path, *path.resolve().parents]:
        if (folder / "manifest.json").is_file():
            return folder
    raise ValueError(f"no --image-root given and no manifest.json at or above {path}; pass --image-root DIR "
                     f"(the folder the image paths in the JSON are relative to)")


def _files_to_check(path: Path) -> dict[str, Path]:
    """{label: file} for a file, a split folder, or a folder of splits."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; pass a VHs file or folder")
    splits = [s for s in SPLITS if path.is_dir() and (path / s).is_dir()]
    roots = {s: path / s for s in splits} if splits else {"": path}
    out = {}
    for split, root in roots.items():
        for (setting, n), f in find_vhs_files(root).items():
            out[f"{split + ' ' if split else ''}{setting} N={n}"] = f
    return out


def _validate(args: argparse.Namespace) -> int:
    image_root = None if args.no_images else (args.image_root or _default_image_root(args.path))
    files = _files_to_check(args.path)
    rows = []
    for label, f in tqdm(files.items(), desc="validate", unit="file", leave=False, disable=None):  # None: no bar off a TTY
        entries = load_vhs_file(f, image_root, check_images=not args.no_images,
                                allow_outside_root=args.allow_outside_image_root)
        if not args.no_images:
            check_images_readable(entries, decode=args.decode)
        answers = Counter(e.answer for e in entries)
        sizes = sorted({e.haystack_size for e in entries})
        rows.append((label, len(entries), answers["yes"], answers["no"], sizes))
    width = max(len(r[0]) for r in rows)
    print(f"{'file':<{width}}  questions   yes    no  haystack sizes")
    for label, n, yes, no, sizes in rows:
        print(f"{label:<{width}}  {n:9d} {yes:5d} {no:5d}  {','.join(map(str, sizes))}")
    print(f"ok: {len(rows)} files, {sum(r[1] for r in rows)} questions valid"
          + ("" if args.no_images else f", images {'decoded' if args.decode else 'readable'} under {image_root}"))
    return 0
