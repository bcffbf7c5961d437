"""Deterministic synthetic Visual Haystacks benchmark writer (`laid data synth`).

Writes, for one seed, the same files as the real benchmark (see `laid.data.vhs`), for a test split
(haystack sizes 1..150, 100 questions each, as in the LAid paper), a train split (5,000
single-needle questions with sizes 2..20, as in the paper, plus multi-needle ones) and a validation
split (by default the test split's sizes, counts and pool size, with its own questions and images):

    <out>/manifest.json                              settings, seed, counts per file, version
    <out>/images/{train,val,test}/{i:06d}.png        separate pools: no image is in two splits
    <out>/images/{train,val,test}/objects.json       ground-truth categories of every pool image
    <out>/{test,train,val}/single_needle/VHs_large/visual_haystack_{N}.json
    <out>/{test,train,val}/multi_needle/multi_needle_{2,3}/visual_haystack_{N}.json

Why a validation split: whatever chooses (a variant screen, a default, a training budget) reads
val/; a claim reads test/ once, after the choice is frozen, so the numbers that decide a choice
are not the numbers that report it. Each split draws from its own seed stream, so adding val/ left
the test/ and train/ files of a seed byte-identical to those written before it existed.

Image paths in the JSON are relative to <out>, the image root.

How a haystack is drawn (anchor a, target t, N images, n needles):
- the n needles hold a; the N - n distractors never hold a; images are distinct within a haystack.
- single needle: yes iff the needle holds t. Multi needle: "all" -> yes iff every needle holds t,
  "any" -> yes iff some needle does. Each file has exactly half yes (and, for multi needle, half
  "all" / half "any" questions, each half yes).
- Against shortcuts: the number k of images holding t in the whole haystack is drawn from the
  same distribution whatever the answer (Binomial(N, prevalence of t), clipped to n+1..N-n), so
  for N >= 2 the target is in at least one distractor in yes and no cases alike, and neither
  "is t anywhere" nor "how many images show t" tells the answer. Only where N < 2n + 1 (e.g.
  N = 2 single needle, where yes means both images show t) is k forced to differ.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from laid.config import from_dict
from laid.io import atomic_dir, write_json

from .pool import ImagePool
from .questions import multi_needle_question, single_needle_question
from .render import CATEGORIES
from .vhs import SETTINGS, vhs_rel_path

GENERATOR = "laid.data.synth"
GENERATOR_VERSION = 2  # bump when the same config would write different files (2: adds val/)
SPLIT_IDS = {"test": 1, "train": 2, "val": 3}  # seed streams: pool image i uses (seed, split, 0, i)
SPLITS = ("test", "train", "val")  # in writing order
SETTING_IDS = {"single_needle": 1, "multi_needle_2": 2, "multi_needle_3": 3}  # file: (seed, split, setting, N)


@dataclass(frozen=True)
class SynthConfig:
    """Everything that decides the benchmark's content (stored in manifest.json)."""

    seed: int = 0
    image_size: int = 56
    n_objects: tuple[int, int] = (1, 3)  # objects per pool image, inclusive
    test_sizes: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100, 150)
    test_questions_per_size: int = 100  # per size and per setting (single, multi 2, multi 3)
    train_sizes: tuple[int, ...] = tuple(range(2, 21))
    train_questions: int = 5000  # single needle, spread evenly over train_sizes
    multi_needle_counts: tuple[int, ...] = (2, 3)
    multi_needle_min_size: int = 5  # the real benchmark's multi-needle sizes start at 5
    train_multi_questions: int = 1000  # per needle count, spread over train sizes >= min size
    test_pool_size: int = 3000
    train_pool_size: int = 3000
    # Validation split (screens, defaults, budgets read it; claims read test): null = as the test split.
    val_sizes: tuple[int, ...] | None = None
    val_questions_per_size: int | None = None
    val_pool_size: int | None = None

    def __post_init__(self):
        for name in ("test_sizes", "train_sizes", "n_objects", "multi_needle_counts"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if self.val_sizes is not None:
            object.__setattr__(self, "val_sizes", tuple(int(v) for v in self.val_sizes))
        if any(n < 1 for n in self.test_sizes + self.train_sizes + self.split_sizes("val")):
            raise ValueError(f"haystack sizes must be >= 1, got test {self.test_sizes} train {self.train_sizes} "
                             f"val {self.split_sizes('val')}")
        if self.test_questions_per_size % 2 or self.train_questions % 2 or self.questions_per_size("val") % 2:
            raise ValueError("test_questions_per_size, val_questions_per_size and train_questions must be even "
                             "(half yes, half no)")
        if self.multi_needle_counts and (self.test_questions_per_size % 4 or self.questions_per_size("val") % 4
                                         or self.train_multi_questions % 4):
            raise ValueError("with multi-needle files, test_questions_per_size, val_questions_per_size and "
                             "train_multi_questions must be multiples of 4 (all/any x yes/no)")
        if self.val_pool_size is not None and self.val_pool_size < 1:
            raise ValueError(f"val_pool_size must be >= 1 or null (= test_pool_size), got {self.val_pool_size}")
        if any(n not in (2, 3) for n in self.multi_needle_counts):
            raise ValueError(f"multi_needle_counts must be a subset of (2, 3), got {self.multi_needle_counts}")
        if self.multi_needle_min_size <= max(self.multi_needle_counts, default=0):
            raise ValueError("multi_needle_min_size must exceed the needle count (a haystack needs distractors)")
        lo, hi = self.n_objects
        if not 1 <= lo <= hi <= 4:
            raise ValueError(f"n_objects must satisfy 1 <= lo <= hi <= 4, got {self.n_objects}")

    @classmethod
    def quick(cls, seed: int = 0) -> "SynthConfig":
        """A tiny benchmark for tests and smoke runs (a few seconds)."""
        return cls(seed=seed, test_sizes=(1, 2, 5, 10), test_questions_per_size=8, train_sizes=(2, 3, 5),
                   train_questions=24, train_multi_questions=8, test_pool_size=200, train_pool_size=200)

    @classmethod
    def from_dict(cls, d: dict) -> "SynthConfig":
        try:
            return from_dict(cls, d)
        except ValueError as e:
            raise ValueError(f"synthetic data settings: {e}") from None

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))  # tuples -> lists, as stored in the manifest

    def split_sizes(self, split: str) -> tuple[int, ...]:
        """Haystack sizes of an evaluation split (val: its own, or the test split's)."""
        if split == "val" and self.val_sizes is not None:
            return self.val_sizes
        return self.test_sizes

    def questions_per_size(self, split: str) -> int:
        """Questions per size and setting of an evaluation split (val: its own, or the test split's)."""
        if split == "val" and self.val_questions_per_size is not None:
            return self.val_questions_per_size
        return self.test_questions_per_size

    def pool_size(self, split: str) -> int:
        if split == "train":
            return self.train_pool_size
        return self.val_pool_size if split == "val" and self.val_pool_size is not None else self.test_pool_size

    def files(self, split: str) -> list[tuple[str, int, int]]:
        """(setting, N, number of questions) of every file of a split, in writing order."""
        if split in ("test", "val"):
            sizes, count = self.split_sizes(split), self.questions_per_size(split)
            out = [("single_needle", n, count) for n in sizes]
            for k in self.multi_needle_counts:
                out += [(f"multi_needle_{k}", n, count) for n in sizes if n >= self.multi_needle_min_size]
            return out
        out = [("single_needle", n, c) for n, c in spread(self.train_questions, self.train_sizes, 2).items()]
        multi_sizes = [n for n in self.train_sizes if n >= self.multi_needle_min_size]
        for k in self.multi_needle_counts:
            out += [(f"multi_needle_{k}", n, c) for n, c in spread(self.train_multi_questions, multi_sizes, 4).items()]
        return [f for f in out if f[2] > 0]


def spread(total: int, sizes, unit: int) -> dict[int, int]:
    """Split `total` questions over sizes as evenly as possible in multiples of `unit`."""
    sizes = list(sizes)
    if not sizes:
        return {}
    units, extra = divmod(total // unit, len(sizes))
    return {n: unit * (units + (i < extra)) for i, n in enumerate(sizes)}


def targets_in_distractors(rng, size: int, n_needles: int, needles_with_t: int, p: float) -> int:
    """How many distractors hold the target; the haystack total k does not depend on the answer."""
    n_neg = size - n_needles
    if n_neg == 0:
        return 0
    k = int(rng.binomial(size, p))
    lo, hi = n_needles + 1, size - n_needles
    if lo <= hi:  # k in [n+1, N-n] leaves 1..N-n distractors with t for any needles_with_t in 0..n
        return int(np.clip(k, lo, hi)) - needles_with_t
    # Small N (< 2n + 1): no k range fits every answer; keep k near n (so the yes and no totals
    # stay close) and at least one distractor with t.
    return int(np.clip(max(k, n_needles) - needles_with_t, 1, n_neg))


def make_entry(pool: ImagePool, rng, prevalence: np.ndarray, size: int, setting: str, mode: str, answer: str) -> dict:
    """Draw one question of a setting ("single_needle" / "multi_needle_k") with a given answer."""
    n = 1 if setting == "single_needle" else int(setting.rsplit("_", 1)[1])
    ai, ti = (int(i) for i in rng.choice(len(CATEGORIES), size=2, replace=False))
    a, t = CATEGORIES[ai], CATEGORIES[ti]
    yes = answer == "yes"
    if mode == "single":
        j = int(yes)  # needles holding the target
        question = single_needle_question(a, t)
    elif mode == "all":
        j = n if yes else int(rng.integers(0, n))
        question = multi_needle_question("all", a, t)
    else:
        j = int(rng.integers(1, n + 1)) if yes else 0
        question = multi_needle_question("any", a, t)
    m = targets_in_distractors(rng, size, n, j, prevalence[ai, ti])
    pos = pool.sample(rng, j, has=(a, t)) + pool.sample(rng, n - j, has=(a,), has_not=(t,))
    neg = pool.sample(rng, m, has=(t,), has_not=(a,)) + pool.sample(rng, size - n - m, has_not=(a, t))
    pos = [pos[i] for i in rng.permutation(len(pos))]
    neg = [neg[i] for i in rng.permutation(len(neg))]
    return {
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
        "pos_image": [pool.rel_path(i) for i in pos],
        "neg_image": [pool.rel_path(i) for i in neg],
    }


def _cells(setting: str, count: int, rng) -> list[tuple[str, str]]:
    """(mode, answer) of every question of a file: balanced, in random order."""
    modes = ("single",) if setting == "single_needle" else ("all", "any")
    per = count // (2 * len(modes))
    cells = [(m, a) for m in modes for a in ("yes", "no") for _ in range(per)]
    return [cells[i] for i in rng.permutation(len(cells))]


def _write_split(cfg: SynthConfig, root: Path, split: str, progress: bool) -> dict:
    sid = SPLIT_IDS[split]
    pool = ImagePool(root, split, sid, cfg.seed, cfg.image_size, cfg.n_objects)
    pool.fill(cfg.pool_size(split), progress=progress)
    # prevalence[a, t]: share of images holding t among those without a (drawn before any on-demand image)
    prevalence = np.array([[pool.prevalence(t, among_without=a) for t in CATEGORIES] for a in CATEGORIES])
    specs = cfg.files(split)
    files = {}
    with tqdm(total=sum(c for _, _, c in specs), desc=f"write {split} questions", disable=not progress,
              unit="q", leave=False) as bar:
        for setting, size, count in specs:
            rng = np.random.default_rng([cfg.seed, sid, SETTING_IDS[setting], size])
            entries = []
            for mode, answer in _cells(setting, count, rng):
                entries.append(make_entry(pool, rng, prevalence, size, setting, mode, answer))
                bar.update()
            rel = f"{split}/{vhs_rel_path(setting, size)}"
            write_json(entries, root / rel, indent=None)
            files[rel] = {"split": split, "setting": setting, "haystack_size": size, "n_questions": len(entries),
                          "n_yes": sum(e["conversations"][1]["value"] == "yes" for e in entries)}
    objects = pool.write_objects()
    return {"files": files, "pool": {"n_images": len(pool), "objects": objects.relative_to(root).as_posix()}}


def split_settings(cfg: SynthConfig) -> dict:
    """What each evaluation split holds, resolved (manifest.json `splits`): sizes, questions per size, pool."""
    return {split: {"sizes": list(cfg.split_sizes(split)), "questions_per_size": cfg.questions_per_size(split),
                    "pool_size": cfg.pool_size(split)} for split in ("test", "val")}


def _manifest(cfg: SynthConfig, files: dict, pools: dict) -> dict:
    from laid import __version__

    return {"generator": GENERATOR, "generator_version": GENERATOR_VERSION, "package_version": __version__,
            "seed": cfg.seed, "config": cfg.to_dict(), "categories": list(CATEGORIES), "settings": list(SETTINGS),
            "image_root": ".", "splits": split_settings(cfg), "pools": pools, "files": files}


def read_manifest(out_dir: str | Path) -> dict:
    path = Path(out_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; {out_dir} is not a synthetic VHs folder (run `laid data synth`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); regenerate with `laid data synth --overwrite`") from None
    if not isinstance(manifest, dict) or manifest.get("generator") != GENERATOR:
        raise ValueError(f"{path} was not written by {GENERATOR}; choose another folder")
    return manifest


def load_objects(out_dir: str | Path, split: str) -> dict[str, list[str]]:
    """Ground truth of a split's pool: {image path relative to out_dir: sorted categories}."""
    path = Path(out_dir) / "images" / split / "objects.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; regenerate the data with `laid data synth`")
    return json.loads(path.read_text(encoding="utf-8"))


def _existing(out: Path, cfg: SynthConfig, overwrite: bool) -> str:
    """'new' (absent or empty), 'done' (same config, complete) or 'replace'; raises otherwise.

    A folder written before the validation split existed (generator version 1, same config) is
    replaced without --overwrite: the rewrite adds val/ and keeps test/ and train/ byte-identical."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return "new"
    if not (out / "manifest.json").is_file():
        raise ValueError(f"{out} exists and is not a synthetic VHs folder (no manifest.json); choose a new or "
                         f"empty --out (it is never deleted, even with --overwrite)")
    manifest = read_manifest(out)
    old = manifest.get("config", {})
    new = cfg.to_dict()
    differs = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if manifest.get("generator_version") == 1 and not differs and "val" not in manifest.get("pools", {}):
        return "replace"  # adds the validation split; test/ and train/ come out byte-identical
    if manifest.get("generator_version") != GENERATOR_VERSION:
        differs.append("generator_version")
    wanted = list(manifest.get("files", {})) + [p["objects"] for p in manifest.get("pools", {}).values()]
    missing = [f for f in wanted if not (out / f).is_file()]
    if not differs and not missing:
        return "done"
    if not overwrite:
        why = f"a different config (differs in: {', '.join(differs)})" if differs else f"missing files ({missing[0]}, ...)"
        raise ValueError(f"{out} holds a synthetic VHs benchmark with {why}; pass --overwrite (overwrite=True) "
                         f"to replace it, or choose another --out")
    return "replace"


def generate(cfg: SynthConfig, out_dir: str | Path, overwrite: bool = False, progress: bool = True) -> Path:
    """Write the benchmark of `cfg` to out_dir and return it.

    Same config on a complete folder: returns at once. Everything is written into a hidden
    staging folder beside out_dir and renamed into place at the end, so an interrupted run never
    leaves a half-written benchmark (or destroys the previous one).
    """
    out = Path(out_dir)
    state = _existing(out, cfg, overwrite)
    if state == "done":
        return out
    with atomic_dir(out) as staging:  # an interrupted run never leaves half a benchmark
        files, pools = {}, {}
        for split in SPLITS:
            written = _write_split(cfg, staging, split, progress)
            files.update(written["files"])
            pools[split] = written["pool"]
        write_json(_manifest(cfg, files, pools), staging / "manifest.json", indent=2)
    return out
