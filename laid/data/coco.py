"""A single-needle training split in the Visual Haystacks format, built from COCO-format annotations
(`laid data coco-split`): the paper's 5,000 questions of 2-20 images, made from COCO train2017.

Input: a COCO instances file (`images`: id, file_name, width, height; `annotations`: image_id,
category_id, area; `categories`: id, name) and the folder holding its images. Output, under OUT:

    OUT/single_needle/VHs_large/visual_haystack_{N}.json   one file per haystack size N
    OUT/coco_split.json                                     what was asked, what was written, the checks

Image paths are written relative to an image root (default: the parent of the images folder, so a
path reads `train2017/000000000139.jpg`, as the benchmark's do), the one `--image-root` / distill
`data.image_root` that reads them.

How a question is drawn (the benchmark's construction, as its paper and README describe it; its
construction script is not published, so the rules below are ours where they say so):
- an anchor category a and a target t != a; the one needle image holds a, the N - 1 distractors
  do not; "For the image with a <a>, is there a <t>?" is yes iff the needle holds t. Each file is
  exactly half yes, half no, in random order.
- What counts as holding a category (ours): an annotation covering at least `min_area` of the
  image. An image whose only annotations of a category are smaller is *ambiguous* for it and is
  used neither as holding it nor as free of it (a distractor never shows even a small anchor, a
  no-needle never shows even a small target).
- The question alone does not give the answer away (the benchmark's stated aim: guessing without
  the images scores 50%): the pair (a, t) is drawn uniformly among the pairs that admit both a yes
  and a no needle at that size, independently of the answer, so no pair leans to yes.
- The target's prevalence does not give the answer away (the guard of laid.data.synth): the
  number of images holding t in the whole haystack is drawn from one distribution whatever the
  answer (`targets_in_distractors`: Binomial(N, share of images without a that hold t), clipped
  to 2..N-1), so "is t anywhere" and "how many images show t" do not tell the answer. Where COCO
  cannot give it: at N = 2 the counts must differ (yes: both images show t), as in the synthetic
  data; a pair is used at size N only if it has N - 1 distractors of each kind, so rare pairs
  drop out of the large sizes; COCO's co-occurrence (a needle with a dog and a frisbee looks like
  a park) stays, as it does in the benchmark.
- Disjoint from a test split: every image named by an `exclude` source (a VHs file or folder, or
  a text file with one image path per line) is left out, matched by file name (COCO file names
  are image ids, unique across train2017 / val2017, whatever root a test split uses).
- Deterministic for a seed: file N is drawn from the generator seeded by (seed, N).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np

from laid.io import atomic_dir, write_json

from .questions import single_needle_question
from .synth import spread, targets_in_distractors
from .vhs import find_vhs_files, vhs_rel_path

RECORD = "coco_split.json"
GENERATOR = "laid.data.coco"
GENERATOR_VERSION = 1  # bump when the same config would write different files


class CocoFormatError(ValueError):
    """A COCO annotation file that does not follow the format (one line, naming the file and the field)."""


@dataclass(frozen=True)
class CocoSplitConfig:
    """What decides the split's content (stored in coco_split.json)."""

    sizes: tuple[int, ...] = tuple(range(2, 21))  # haystack sizes, images (the paper: 2-20)
    questions: int = 5000  # spread evenly over the sizes, an even number per size (half yes)
    seed: int = 0
    min_area: float = 0.01  # fraction of the image an annotation must cover to count as "holds" (0 = any)
    categories: tuple[str, ...] | None = None  # anchor and target categories (None = every one annotated)

    def __post_init__(self):
        object.__setattr__(self, "sizes", tuple(sorted({int(n) for n in self.sizes})))
        if self.categories is not None:
            object.__setattr__(self, "categories", tuple(self.categories))
        if not self.sizes or self.sizes[0] < 2:
            raise ValueError(f"haystack sizes must be >= 2 (a needle and at least one distractor), got {list(self.sizes)}")
        if self.questions < 2 * len(self.sizes):
            raise ValueError(f"--questions {self.questions} is fewer than 2 per size for {len(self.sizes)} sizes "
                             f"(each file needs a yes and a no question); ask for at least {2 * len(self.sizes)}")
        if not 0 <= self.min_area < 1:
            raise ValueError(f"--min-area must be a fraction of the image in [0, 1), got {self.min_area}")

    def counts(self) -> dict[int, int]:
        """{N: questions} of every file (even counts, as equal as they can be)."""
        return spread(self.questions, self.sizes, 2)


def parse_sizes(tokens: Sequence[str]) -> list[int]:
    """["2-20"] or ["2", "5", "10"] (or both) -> sorted sizes; a bad token is a one-line error."""
    sizes: set[int] = set()
    for token in tokens:
        lo, sep, hi = str(token).partition("-")
        try:
            sizes.update(range(int(lo), int(hi) + 1) if sep else [int(lo)])
        except ValueError:
            raise ValueError(f"haystack size {token!r} is neither a number nor a range like 2-20") from None
    return sorted(sizes)


# --- reading COCO ------------------------------------------------------------------------------


@dataclass
class CocoIndex:
    """Which image holds which category. Rows: images (sorted by id); columns: categories (by id)."""

    files: list[str]  # file_name of each image row
    names: list[str]  # category name of each column
    holds: np.ndarray  # (n_images, n_categories) bool: an annotation covering >= min_area
    touched: np.ndarray  # (n_images, n_categories) bool: any annotation at all

    def keep(self, rows: np.ndarray) -> "CocoIndex":
        return CocoIndex([self.files[i] for i in np.flatnonzero(rows)], self.names, self.holds[rows], self.touched[rows])

    @cached_property
    def by_category(self) -> tuple[np.ndarray, np.ndarray]:
        """(holds, free) transposed to (n_categories, n_images), contiguous per category: a question's
        image pools are then two row ANDs (a column of the image-major tables is a strided read)."""
        return np.ascontiguousarray(self.holds.T), np.ascontiguousarray(~self.touched.T)


def _read_json(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file {path} not found; pass instances_<split>.json with --annotations")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CocoFormatError(f"{path}: not valid JSON ({e}); re-download the COCO annotations") from None
    except UnicodeDecodeError as e:
        raise CocoFormatError(f"{path}: not UTF-8 text (byte {e.start}); re-download the COCO annotations") from None


def _field(record, key: str, kind, where: str):
    value = record.get(key) if isinstance(record, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise CocoFormatError(f"{where}: field {key!r} must be {getattr(kind, '__name__', 'a number')}, got "
                              f"{json.dumps(value)[:40] if isinstance(record, dict) else type(record).__name__}; "
                              f"is this a COCO instances file?")
    return value


def load_coco(path: str | Path, min_area: float = 0.01) -> CocoIndex:
    """Read a COCO instances file into a CocoIndex; a malformed file is one CocoFormatError line."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise CocoFormatError(f"{path}: a COCO instances file is an object with lists 'images', 'annotations' and "
                              f"'categories'; pass instances_<split>.json (not captions or panoptic)")
    cats = sorted((_field(c, "id", int, f"{path}: categories[{i}]"), _field(c, "name", str, f"{path}: categories[{i}]"))
                  for i, c in enumerate(data["categories"]))
    column = {cid: j for j, (cid, _) in enumerate(cats)}
    images = {}
    for i, im in enumerate(data["images"]):
        where = f"{path}: images[{i}]"
        images[_field(im, "id", int, where)] = (_field(im, "file_name", str, where), im.get("width"), im.get("height"))
    ids = sorted(images)
    row = {image_id: r for r, image_id in enumerate(ids)}
    holds = np.zeros((len(ids), len(cats)), dtype=bool)
    touched = np.zeros_like(holds)
    for i, ann in enumerate(data["annotations"]):
        where = f"{path}: annotations[{i}]"
        image_id, cid = _field(ann, "image_id", int, where), _field(ann, "category_id", int, where)
        if image_id not in row:
            raise CocoFormatError(f"{where}: image_id {image_id} is not in 'images'; the file is inconsistent, re-download it")
        if cid not in column:
            raise CocoFormatError(f"{where}: category_id {cid} is not in 'categories'; the file is inconsistent, re-download it")
        r, j = row[image_id], column[cid]
        touched[r, j] = True
        _, w, h = images[image_id]
        area = ann.get("area")
        if isinstance(area, (int, float)) and isinstance(w, (int, float)) and isinstance(h, (int, float)) and w * h > 0:
            holds[r, j] |= area / (w * h) >= min_area
        else:  # no area or image size to judge by: the annotation counts as holding the category
            holds[r, j] = True
    return CocoIndex([images[i][0] for i in ids], [name for _, name in cats], holds, touched)


def excluded_names(sources: Sequence[str | Path]) -> set[str]:
    """File names of the images a test split uses: VHs files / folders, or text files listing paths."""
    names: set[str] = set()
    for source in sources:
        source = Path(source)
        if source.is_dir() or source.suffix == ".json":
            for f in find_vhs_files(source).values():  # read raw, one file at a time: the 10,000-image files are 300 MB
                try:
                    entries = json.loads(f.read_text(encoding="utf-8"))
                    if not all(isinstance(e[k], list) for e in entries for k in ("pos_image", "neg_image")):
                        raise TypeError("pos_image and neg_image must be lists of paths")  # a string would give its letters
                    paths = [p for e in entries for p in e["pos_image"] + e["neg_image"]]
                except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError) as e:
                    raise ValueError(f"--exclude {f}: not a VHs file ({type(e).__name__}: {e}); check it with "
                                     f"`laid data validate {f} --no-images`") from None
                names.update(PurePosixPath(str(p).replace("\\", "/")).name for p in paths)
        elif source.is_file():
            lines = source.read_text(encoding="utf-8").splitlines()
            names.update(PurePosixPath(line.strip().replace("\\", "/")).name for line in lines if line.strip())
        else:
            raise FileNotFoundError(f"--exclude {source} not found; pass a VHs file or folder, or a text file with one "
                                    f"image path per line")
    return names


# --- drawing the questions ---------------------------------------------------------------------


def pair_counts(index: CocoIndex) -> dict[str, np.ndarray]:
    """(C, C) counts per (anchor a, target t) of the four kinds of image a question draws from."""
    # float64 matmuls (BLAS; numpy's integer matmul is ~100x slower), exact for counts below 2**53
    h, free = index.holds.astype(np.float64), (~index.touched).astype(np.float64)  # (I, C)
    counts = {
        "needle_yes": h.T @ h,  # holds a and t
        "needle_no": h.T @ free,  # holds a, no t at all
        "with_t": free.T @ h,  # [a, t]: no a at all, holds t
        "without_t": free.T @ free,  # neither
    }
    return {k: np.rint(v).astype(np.int64) for k, v in counts.items()}


def eligible_pairs(counts: dict[str, np.ndarray], size: int, columns: np.ndarray) -> np.ndarray:
    """(k, 2) pairs (a, t) that admit a yes and a no needle and N - 1 distractors of each kind."""
    ok = (counts["needle_yes"] >= 1) & (counts["needle_no"] >= 1)
    ok &= (counts["with_t"] >= size - 1) & (counts["without_t"] >= size - 1)
    ok &= ~np.eye(len(ok), dtype=bool)
    ok &= columns[:, None] & columns[None, :]
    return np.argwhere(ok)


def _draw(rng, pool: np.ndarray, k: int) -> list[int]:
    return [int(i) for i in rng.choice(pool, size=k, replace=False)] if k else []


def draw_question(index: CocoIndex, rng, pair: tuple[int, int], size: int, answer: str, prevalence: float) -> tuple[dict, int]:
    """One entry (with paths as file names; `write_split` makes them relative to the image root) and
    the number of images in it that hold the target."""
    a, t = pair
    holds, free = index.by_category  # (C, I)
    yes = answer == "yes"
    needle = _draw(rng, np.flatnonzero(holds[a] & (holds[t] if yes else free[t])), 1)
    m = targets_in_distractors(rng, size, 1, int(yes), prevalence)  # distractors holding t
    neg = (_draw(rng, np.flatnonzero(free[a] & holds[t]), m)  # distractors showing the target
           + _draw(rng, np.flatnonzero(free[a] & free[t]), size - 1 - m))
    neg = [neg[i] for i in rng.permutation(len(neg))]
    entry = {
        "conversations": [{"from": "human", "value": single_needle_question(index.names[a], index.names[t])},
                          {"from": "gpt", "value": answer}],
        "pos_image": [index.files[i] for i in needle],
        "neg_image": [index.files[i] for i in neg],
    }
    return entry, m + int(yes)


def build_split(index: CocoIndex, cfg: CocoSplitConfig) -> tuple[dict[int, list[dict]], dict]:
    """{N: entries} and a summary per size (questions, yes, pairs used, mean target count per answer)."""
    columns = index.holds.any(axis=0)
    if cfg.categories is not None:
        unknown = [c for c in cfg.categories if c not in index.names]
        if unknown:
            raise ValueError(f"--categories {unknown} not in the annotation file; its categories: {', '.join(index.names)}")
        never = [c for c in cfg.categories if not columns[index.names.index(c)]]
        if never:
            raise ValueError(f"--categories {never} never occur (no annotation covering --min-area {cfg.min_area} of an "
                             f"image among the images left); drop them or lower --min-area")
        columns = columns & np.isin(index.names, cfg.categories)
    counts = pair_counts(index)
    prevalence = counts["with_t"] / np.maximum(counts["with_t"] + counts["without_t"], 1)  # [a, t]
    entries, summary = {}, {}
    for size, n_questions in cfg.counts().items():
        pairs = eligible_pairs(counts, size, columns)
        if not len(pairs):
            raise ValueError(
                f"too few images for haystacks of {size}: no anchor/target pair has a yes and a no needle and "
                f"{size - 1} distractors of each kind among the {len(index.files)} images left; ask for smaller "
                f"--sizes, lower --min-area, or use a larger annotation file (COCO train2017)")
        rng = np.random.default_rng([cfg.seed, size])
        answers = np.array(["yes", "no"] * (n_questions // 2))[rng.permutation(n_questions)]
        rows, target_counts = [], {"yes": [], "no": []}
        for answer in answers:
            a, t = (int(v) for v in pairs[rng.integers(len(pairs))])
            entry, k = draw_question(index, rng, (a, t), size, str(answer), float(prevalence[a, t]))
            rows.append(entry)
            target_counts[str(answer)].append(k)
        entries[size] = rows
        summary[size] = {"n_questions": n_questions, "n_yes": int(np.sum(answers == "yes")), "eligible_pairs": len(pairs),
                         "target_images_mean": {k: float(np.mean(v)) for k, v in target_counts.items()}}
    return entries, summary


# --- writing -----------------------------------------------------------------------------------


def _relative(images: Path, image_root: Path) -> PurePosixPath:
    try:
        return PurePosixPath(images.resolve().relative_to(image_root.resolve()).as_posix())
    except ValueError:
        raise ValueError(f"the images folder {images} is not inside --image-root {image_root}; image paths are written "
                         f"relative to the image root, so pass a root that holds it") from None


def write_split(annotations: str | Path, images: str | Path, out: str | Path, cfg: CocoSplitConfig,
                image_root: str | Path | None = None, exclude: Sequence[str | Path] = (), overwrite: bool = False) -> dict:
    """Build the split and write it to `out` (atomically: an interrupted run leaves the old folder);
    returns the record also written to out/coco_split.json."""
    images, out = Path(images), Path(out)
    image_root = Path(image_root) if image_root is not None else images.parent
    if not images.is_dir():
        raise FileNotFoundError(f"images folder {images} not found; pass the folder holding the annotated images "
                                f"(e.g. /data/coco/train2017) with --images")
    prefix = _relative(images, image_root)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a folder")
    if out.exists() and any(out.iterdir()):
        if not (out / RECORD).is_file():
            raise ValueError(f"{out} exists and holds no {RECORD}; choose a new or empty --out (a folder that is not a "
                             f"COCO split is never replaced)")
        if not overwrite:
            raise ValueError(f"{out} already holds a COCO split; pass --overwrite to replace it, or choose another --out")
    index = load_coco(annotations, cfg.min_area)
    names = excluded_names(exclude)
    left = np.array([Path(f).name not in names for f in index.files], dtype=bool)
    index = index.keep(left)
    entries, summary = build_split(index, cfg)
    used = sorted({p for rows in entries.values() for e in rows for p in e["pos_image"] + e["neg_image"]})
    missing = [p for p in used if not (images / p).is_file()]
    if missing:
        raise FileNotFoundError(f"image {images / missing[0]} not found ({len(missing)} of the {len(used)} images the "
                                f"split uses are missing); download the images of {Path(annotations).name} into {images}")
    with atomic_dir(out) as tmp:
        for size, rows in entries.items():
            for e in rows:
                for field in ("pos_image", "neg_image"):
                    e[field] = [(prefix / p).as_posix() for p in e[field]]
            write_json(rows, tmp / vhs_rel_path("single_needle", size), indent=None)
        record = {
            "generator": GENERATOR, "generator_version": GENERATOR_VERSION, "config": json.loads(json.dumps(asdict(cfg))),
            "annotations": str(annotations), "images": str(images), "image_root": str(image_root),
            "excluded": {"sources": [str(s) for s in exclude], "file_names": len(names),
                         "in_annotations": int((~left).sum())},
            "images_left": int(left.sum()), "images_used": len(used), "categories": index.names,
            "files": {vhs_rel_path("single_needle", n): s for n, s in summary.items()},
        }
        write_json(record, tmp / RECORD)
    return record
