"""One loader for Visual Haystacks files, real (COCO) or synthetic (`laid data synth`).

Layout under a split root (the real download, or `<data>/test` / `<data>/train` of ours):
    single_needle/VHs_large/visual_haystack_{N}.json
    multi_needle/multi_needle_{2,3}/visual_haystack_{N}.json
A file is a JSON list of entries with exactly the real fields:
    {"conversations": [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": "yes"|"no"}],
     "pos_image": [paths of the images with the anchor], "neg_image": [distractor paths]}
Image paths are relative to an image root that the user names (--image-root). Haystack size
N = len(pos_image) + len(neg_image). Every entry is checked on load; a bad one raises
`VHsFormatError` with a one-line message naming the file, the entry and the field.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from .questions import MULTI, SINGLE

SETTINGS: tuple[str, ...] = ("single_needle", "multi_needle_2", "multi_needle_3")
SINGLE_VARIANT = "VHs_large"  # the real benchmark also has VHs_small; we read and write the large one
_FILE_RE = re.compile(r"^visual_haystack_(\d+|oracle)\.json$")


class VHsFormatError(ValueError):
    """A Visual Haystacks file or entry that does not follow the format."""


def vhs_rel_path(setting: str, size: int, variant: str = SINGLE_VARIANT) -> str:
    """Path of the file of one setting and haystack size, relative to a split root."""
    if setting == "single_needle":
        return f"single_needle/{variant}/visual_haystack_{size}.json"
    if setting in SETTINGS:
        return f"multi_needle/{setting}/visual_haystack_{size}.json"
    raise ValueError(f"unknown VHs setting {setting!r}; expected one of {SETTINGS}")


@dataclass(frozen=True)
class VHsEntry:
    """One question. Image paths are kept as written in the file (relative to image_root)."""

    question: str
    answer: str  # "yes" or "no" (normalised)
    pos_image: tuple[str, ...]  # images with the anchor (the needles)
    neg_image: tuple[str, ...]  # distractors
    source: Path  # the JSON file
    index: int  # position in that file
    image_root: Path | None = None

    @property
    def haystack_size(self) -> int:
        return len(self.pos_image) + len(self.neg_image)

    def resolve(self, rel: str) -> Path:
        """Filesystem path of an image path of this entry."""
        return Path(self.image_root) / rel if self.image_root is not None else Path(rel)


def normalize_answer(text: str) -> str:
    """'Yes', 'yes.', ' NO! ' -> 'yes' / 'no'; anything else raises ValueError."""
    word = str(text).strip().lower().strip(" .!,;:\"'")
    if word not in ("yes", "no"):
        raise ValueError(f"answer {text!r} is neither yes nor no")
    return word


_QUESTION_RES = [
    (mode, re.compile("^" + re.escape(tpl).replace(r"\{anchor\}", "(?P<anchor>.+?)")
                      .replace(r"\{target\}", "(?P<target>.+?)") + "$"))
    for mode, tpl in [("single", SINGLE)] + sorted(MULTI.items())
]


def parse_question(question: str) -> tuple[str, str, str] | None:
    """(mode, anchor, target) of a question in our templates ("single", "all", "any"), else None.

    Real COCO questions use other wording; callers that need ground truth must handle None.
    """
    for mode, pattern in _QUESTION_RES:
        m = pattern.match(question.strip())
        if m:
            return mode, m.group("anchor"), m.group("target")
    return None


def _expected_from_path(path: Path) -> tuple[str | None, int | None]:
    """(setting, N) implied by a file's place in the layout, None where it implies nothing."""
    m = _FILE_RE.match(path.name)
    size = int(m.group(1)) if m and m.group(1) != "oracle" else None
    setting = None
    if path.parent.parent.name == "single_needle":
        setting = "single_needle"
    elif path.parent.name in SETTINGS:
        setting = path.parent.name
    return setting, size


def _entry_from_json(raw, path: Path, i: int, image_root: Path | None) -> VHsEntry:
    where = f"{path}: entry {i}"
    fix = "fix the file or regenerate it with `laid data synth`"

    def bad(field: str, what: str) -> VHsFormatError:
        return VHsFormatError(f"{where}: field {field!r} {what}; {fix}")

    if not isinstance(raw, dict):
        raise VHsFormatError(f"{where}: must be a JSON object, got {type(raw).__name__}; {fix}")
    for field in ("conversations", "pos_image", "neg_image"):
        if field not in raw:
            raise bad(field, "is missing")
    conv = raw["conversations"]
    if not isinstance(conv, list) or len(conv) < 2:
        raise bad("conversations", "must be a list of [question turn, answer turn]")
    for t, turn in enumerate(conv[:2]):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise bad(f"conversations[{t}].value", "must be a string")
    try:
        answer = normalize_answer(conv[1]["value"])
    except ValueError as e:
        raise bad("conversations[1].value", f"must be yes or no ({e})") from None
    images = {}
    for field in ("pos_image", "neg_image"):
        value = raw[field]
        if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
            raise bad(field, f"must be a list of image path strings, got {json.dumps(value)[:60]}")
        images[field] = tuple(value)
    if not images["pos_image"]:
        raise bad("pos_image", "is empty; every question needs at least one needle image")
    return VHsEntry(conv[0]["value"], answer, images["pos_image"], images["neg_image"], path, i, image_root)


def load_vhs_file(path: str | Path, image_root: str | Path | None, check_images: bool = True) -> list[VHsEntry]:
    """Read and validate one visual_haystack_{N}.json file.

    Checks every entry's fields, that N matches the file name, that single-needle entries have
    exactly one needle, and (check_images) that every image exists under image_root.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VHs file {path} not found; check the data path (or run `laid data synth`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VHsFormatError(f"{path}: not valid JSON ({e}); re-download or regenerate the file") from None
    if not isinstance(data, list):
        raise VHsFormatError(f"{path}: must hold a JSON list of entries, got {type(data).__name__}")
    root = Path(image_root) if image_root is not None else None
    if check_images and root is None:
        raise ValueError(f"{path}: checking images needs an image root (--image-root)")
    setting, size = _expected_from_path(path)
    entries = [_entry_from_json(raw, path, i, root) for i, raw in enumerate(data)]
    seen: set[str] = set()
    for e in entries:
        if size is not None and e.haystack_size != size:
            raise VHsFormatError(
                f"{path}: entry {e.index}: fields 'pos_image'+'neg_image' hold {e.haystack_size} images but "
                f"the file name says N={size}; fix the entry or rename the file")
        if setting == "single_needle" and len(e.pos_image) != 1:
            raise VHsFormatError(
                f"{path}: entry {e.index}: field 'pos_image' holds {len(e.pos_image)} images; a single-needle "
                f"entry has exactly one (multi-needle entries belong under multi_needle/)")
        if check_images:
            for rel in e.pos_image + e.neg_image:
                if rel not in seen:
                    if not e.resolve(rel).is_file():
                        raise FileNotFoundError(
                            f"{path}: entry {e.index}: image {rel!r} not found at {e.resolve(rel)}; "
                            f"check --image-root (now {root})")
                    seen.add(rel)
    return entries


def find_vhs_files(root: str | Path, variant: str = SINGLE_VARIANT) -> dict[tuple[str, int], Path]:
    """{(setting, N): file} for the VHs files under a split root, sorted by setting then N.

    The real benchmark's `visual_haystack_oracle.json` (the needle alone) counts as N = 1 unless a
    `visual_haystack_1.json` exists beside it.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"VHs folder {root} not found; check the data path (or run `laid data synth`)")
    found: dict[tuple[str, int], Path] = {}
    folders = {"single_needle": root / "single_needle" / variant}
    folders.update({s: root / "multi_needle" / s for s in SETTINGS[1:]})
    for setting in SETTINGS:
        files = sorted(folders[setting].glob("visual_haystack_*.json")) if folders[setting].is_dir() else []
        for f in files:
            m = _FILE_RE.match(f.name)
            if not m:
                continue
            size = 1 if m.group(1) == "oracle" else int(m.group(1))
            if m.group(1) == "oracle" and (setting, 1) in found:
                continue
            found[(setting, size)] = f
    if not found:
        raise FileNotFoundError(
            f"no visual_haystack_*.json under {root}; expected single_needle/{variant}/ or "
            f"multi_needle/multi_needle_{{2,3}}/ there (for synthetic data pass <data>/test or <data>/train)")
    return dict(sorted(found.items(), key=lambda kv: (SETTINGS.index(kv[0][0]), kv[0][1])))


def load_entries(
    data_root: str | Path,
    image_root: str | Path,
    setting: str = "single_needle",
    sizes: Sequence[int] | None = None,
    max_samples_per_size: int | None = None,
    check_images: bool = True,
) -> dict[int, list[VHsEntry]]:
    """{haystack size: the first N entries} of one setting under a VHs root: the one haystack loader
    of evaluation, analysis and (through `load_size_range`) distillation data."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown needle setting {setting!r}; expected one of {', '.join(SETTINGS)}")
    if max_samples_per_size is not None and max_samples_per_size < 1:
        raise ValueError(f"max_samples_per_size must be >= 1, got {max_samples_per_size}")
    files = find_vhs_files(data_root)
    available = sorted(n for s, n in files if s == setting)
    if not available:
        found = sorted({s for s, _ in files})
        raise FileNotFoundError(f"no {setting} files under {data_root} (found settings: {', '.join(found)})")
    wanted = available if sizes is None else sorted({int(n) for n in sizes})
    missing = [n for n in wanted if n not in available]
    if missing:
        raise FileNotFoundError(f"{data_root} has no {setting} file for haystack sizes {missing}; available sizes: {available}")
    out = {}
    for n in wanted:
        entries = load_vhs_file(files[(setting, n)], image_root, check_images=check_images)
        if not entries:
            raise VHsFormatError(f"{files[(setting, n)]} holds no entries; remove it or regenerate the data")
        out[n] = entries[:max_samples_per_size]
    return out


def load_size_range(data_root: str | Path, image_root: str | Path, settings: Sequence[str], min_size: int,
                    max_size: int, check_images: bool = True) -> list[VHsEntry]:
    """Every entry of `settings` with min_size <= N <= max_size, in (setting, size, file) order."""
    files = find_vhs_files(data_root)
    entries: list[VHsEntry] = []
    for setting in settings:
        sizes = sorted(n for s, n in files if s == setting and min_size <= n <= max_size)
        if sizes:
            entries += [e for n in sizes for e in load_entries(data_root, image_root, setting, [n], check_images=check_images)[n]]
    return entries


def needle_positions(n: int) -> list[int]:
    """Needle positions of the reference "detailed" protocol: range(0, N, max(N // 10, 1))."""
    return list(range(0, n, max(n // 10, 1)))


def _entry_rng(entry: VHsEntry, seed: int) -> np.random.Generator:
    # Seeded by the entry's content (not its file or index), so the same entry is arranged the same
    # way wherever it is read from, and different entries get independent streams.
    digest = hashlib.sha256(json.dumps([entry.question, entry.pos_image, entry.neg_image]).encode()).digest()
    return np.random.default_rng([int(seed)] + [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)])


def arrange_haystack(entry: VHsEntry, seed: int, needle_position: int | None = None) -> tuple[list[Path], list[int]]:
    """Order an entry's images for the prompt. Returns (image paths, needle_indices).

    needle_indices[i] is the position of entry.pos_image[i]. Default: shuffle pos + neg together
    (seeded by seed and the entry). With needle_position=p (the "detailed" mode) the first needle
    goes to index p and the other images are shuffled into the remaining slots.
    """
    n = entry.haystack_size
    rng = _entry_rng(entry, seed)
    images = list(entry.pos_image) + list(entry.neg_image)
    if needle_position is None:
        order = [int(i) for i in rng.permutation(n)]  # order[slot] = index into images
    else:
        if not 0 <= needle_position < n:
            raise ValueError(f"needle_position {needle_position} outside the haystack of {n} images "
                             f"({entry.source} entry {entry.index}); use one of needle_positions({n})")
        rest = [int(i) + 1 for i in rng.permutation(n - 1)]
        order = rest[:needle_position] + [0] + rest[needle_position:]
    slot_of = {img: slot for slot, img in enumerate(order)}
    return [entry.resolve(images[i]) for i in order], [slot_of[i] for i in range(len(entry.pos_image))]


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB, with a clear error when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} not found; check --image-root")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"image {path} cannot be read ({e}); replace it or regenerate the data") from None


def load_images(paths) -> list[Image.Image]:
    return [load_image(p) for p in paths]
