"""One loader for Visual Haystacks files, real (COCO) or synthetic (`laid data synth`).

Layout under a split root (the real download, or `<data>/test` / `<data>/train` / `<data>/val` of ours):
    single_needle/VHs_large/visual_haystack_{N}.json
    multi_needle/multi_needle_{2,3}/visual_haystack_{N}.json
A file is a JSON list of entries with exactly the real fields:
    {"conversations": [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": "yes"|"no"}],
     "pos_image": [paths of the images with the anchor], "neg_image": [distractor paths]}
Image paths are relative to an image root that the user names (--image-root). Haystack size
N = len(pos_image) + len(neg_image). Every entry is checked on load; a bad one raises
`VHsFormatError` with a one-line message naming the file, the entry and the field.

Where data is read (`laid eval`, `laid diagnose`, distillation data, `laid data validate`) the user
may name a split root, a setting folder (`single_needle/`, `single_needle/VHs_large/`,
`multi_needle/`, `multi_needle/multi_needle_2/`) or one `visual_haystack_{N}.json` file:
`find_vhs_files` resolves all of them, here and nowhere else.

Image paths are confined to the image root: an absolute path or one whose `..` steps leave the
root is refused with one line (the reference code joins them blindly, so a crafted file could make
it open any file on the machine) unless the caller passes `allow_outside_root=True`
(`--allow-outside-image-root`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .images import (  # noqa: F401 (re-exported: the image half of the loader)
    VHsImageError, VHsImageMissing, check_images_readable, image_size, load_image, load_images,
)
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


def outside_root(rel: str) -> str | None:
    """Why an image path written in a VHs file would leave its image root (None: it stays inside)."""
    if os.path.isabs(rel) or Path(rel).is_absolute() or rel.startswith(("/", "\\")):
        return "is absolute"
    parts = Path(os.path.normpath(rel.replace("\\", "/"))).parts
    if parts and parts[0] == "..":
        return "climbs out of the image root with '..'"
    return None


def _entry_from_json(raw, path: Path, i: int, image_root: Path | None, allow_outside_root: bool = False) -> VHsEntry:
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
        for k, rel in enumerate(value):
            why = None if allow_outside_root else outside_root(rel)
            if why:
                raise VHsFormatError(
                    f"{where}: field '{field}[{k}]' = {rel!r} {why}; image paths must be relative to --image-root "
                    f"(if you trust this file: --allow-outside-image-root, or data.allow_outside_image_root in a distill config)")
    if not images["pos_image"]:
        raise bad("pos_image", "is empty; every question needs at least one needle image")
    return VHsEntry(conv[0]["value"], answer, images["pos_image"], images["neg_image"], path, i, image_root)


def load_vhs_file(
    path: str | Path, image_root: str | Path | None, check_images: bool = True, allow_outside_root: bool = False
) -> list[VHsEntry]:
    """Read and validate one visual_haystack_{N}.json file.

    Checks every entry's fields, that N matches the file name, that single-needle entries have
    exactly one needle, that image paths stay inside image_root (unless allow_outside_root), and
    (check_images) that every image exists under image_root. An empty list is refused: it would be
    "evaluated" with no sample at all.
    """
    path = Path(path)
    if path.is_dir():
        raise VHsFormatError(f"{path} is a folder, not a VHs file; pass the file itself or its folder as --data")
    if not path.is_file():
        raise FileNotFoundError(f"VHs file {path} not found; check the data path (or run `laid data synth`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise VHsFormatError(f"{path}: not UTF-8 text (byte {e.start}); VHs files are UTF-8 JSON, "
                             f"re-download or regenerate the file") from None
    except json.JSONDecodeError as e:
        raise VHsFormatError(f"{path}: not valid JSON ({e}); re-download or regenerate the file") from None
    except RecursionError:
        raise VHsFormatError(f"{path}: JSON nested too deeply to read; a VHs file is a flat list of entries, "
                             f"re-download or regenerate it") from None
    except OSError as e:
        raise VHsFormatError(f"{path}: cannot be read ({e.strerror or e}); check its permissions") from None
    if not isinstance(data, list):
        raise VHsFormatError(f"{path}: must hold a JSON list of entries, got {type(data).__name__}; "
                             f"re-download or regenerate the file")
    if not data:
        raise VHsFormatError(f"{path}: holds no entries (an empty list); nothing to evaluate or train on, "
                             f"re-download or regenerate the file")
    root = Path(image_root) if image_root is not None else None
    if check_images and root is None:
        raise ValueError(f"{path}: checking images needs an image root (--image-root)")
    if check_images and not root.is_dir():
        raise FileNotFoundError(f"image root {root} not found (or not a folder); pass the folder the image paths "
                                f"in {path.name} are relative to as --image-root")
    setting, size = _expected_from_path(path)
    entries = [_entry_from_json(raw, path, i, root, allow_outside_root) for i, raw in enumerate(data)]
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
                        what = "is a folder, not an image" if e.resolve(rel).is_dir() else "not found"
                        raise FileNotFoundError(
                            f"{path}: entry {e.index}: image {rel!r} {what} at {e.resolve(rel)}; "
                            f"check --image-root (now {root})")
                    seen.add(rel)
    return entries


def _setting_of_file(path: Path) -> str:
    """The needle setting of a VHs file: from its place in the layout, else from its first entry."""
    setting, _ = _expected_from_path(path)
    if setting is not None:
        return setting
    try:
        first = json.loads(path.read_text(encoding="utf-8"))[0]
        n_pos = len(first["pos_image"])
    except Exception:  # noqa: BLE001 - the full load reports what is wrong, with the entry
        return "single_needle"
    return "single_needle" if n_pos == 1 else f"multi_needle_{n_pos}" if f"multi_needle_{n_pos}" in SETTINGS else "single_needle"


def _size_of_file(path: Path) -> int:
    m = _FILE_RE.match(path.name)
    if not m:
        raise VHsFormatError(f"{path}: the file name must be visual_haystack_N.json (or visual_haystack_oracle.json); "
                             f"rename it, or pass its folder as --data")
    return 1 if m.group(1) == "oracle" else int(m.group(1))


def _files_in(folder: Path) -> list[Path]:
    return sorted(f for f in folder.glob("visual_haystack_*.json") if _FILE_RE.match(f.name))


def find_vhs_files(root: str | Path, variant: str = SINGLE_VARIANT) -> dict[tuple[str, int], Path]:
    """{(setting, N): file} for what the user named as data, sorted by setting then N.

    `root` may be a split root (holding single_needle/ and/or multi_needle/), a setting folder
    (single_needle/, single_needle/VHs_large/, multi_needle/, multi_needle/multi_needle_2/), or one
    visual_haystack_{N}.json file. The real benchmark's `visual_haystack_oracle.json` (the needle
    alone) counts as N = 1 unless a `visual_haystack_1.json` exists beside it.
    """
    root = Path(root)
    if root.is_file():
        return {(_setting_of_file(root), _size_of_file(root)): root}
    if not root.is_dir():
        raise FileNotFoundError(
            f"VHs data {root} not found; pass a VHs root, a setting folder or a visual_haystack_N.json file "
            f"(or run `laid data synth`)")
    if _FILE_RE.match(root.name) and not _files_in(root):
        raise VHsFormatError(f"{root} is a folder, not a VHs file; pass the file itself or the folder holding it")
    if root.name == "single_needle" and (root / variant).is_dir():
        folders = {"single_needle": root / variant}
    elif root.name == "multi_needle":
        folders = {s: root / s for s in SETTINGS[1:]}
    elif _files_in(root):  # a folder of files: VHs_large/, multi_needle_2/ or any folder of them
        setting = _setting_of_file(_files_in(root)[0])
        folders = {setting: root}
    else:
        folders = {"single_needle": root / "single_needle" / variant}
        folders.update({s: root / "multi_needle" / s for s in SETTINGS[1:]})
    found: dict[tuple[str, int], Path] = {}
    for setting, folder in folders.items():
        for f in _files_in(folder) if folder.is_dir() else []:
            size = _size_of_file(f)
            if f.name == "visual_haystack_oracle.json" and (folder / "visual_haystack_1.json").is_file():
                continue
            found[(setting, size)] = f
    if not found:
        hint = " (a synthetic data folder: pass <data>/test, <data>/val or <data>/train)" if (root / "test").is_dir() else ""
        raise FileNotFoundError(
            f"no visual_haystack_*.json under {root}; expected single_needle/{variant}/ or "
            f"multi_needle/multi_needle_{{2,3}}/ there, or pass a setting folder or one file{hint}")
    return dict(sorted(found.items(), key=lambda kv: (SETTINGS.index(kv[0][0]), kv[0][1])))


def data_setting(data_root: str | Path, setting: str | None) -> str:
    """The needle setting to read: `setting`, or (None) the only one the data holds, else single_needle."""
    if setting is not None:
        return setting
    found = sorted({s for s, _ in find_vhs_files(data_root)}, key=SETTINGS.index)
    return found[0] if len(found) == 1 else "single_needle"


def load_entries(
    data_root: str | Path,
    image_root: str | Path,
    setting: str | None = "single_needle",
    sizes: Sequence[int] | None = None,
    max_samples_per_size: int | None = None,
    check_images: bool = True,
    allow_outside_root: bool = False,
) -> dict[int, list[VHsEntry]]:
    """{haystack size: the first N entries} of one setting: the one haystack loader of evaluation,
    analysis and (through `load_size_range`) distillation data.

    data_root: a split root, a setting folder or one visual_haystack_{N}.json (`find_vhs_files`);
    setting None: the only setting the data holds (single_needle when it holds several).
    """
    setting = data_setting(data_root, setting)
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
    return {n: load_vhs_file(files[(setting, n)], image_root, check_images=check_images,
                             allow_outside_root=allow_outside_root)[:max_samples_per_size] for n in wanted}


def load_size_range(data_root: str | Path, image_root: str | Path, settings: Sequence[str], min_size: int,
                    max_size: int, check_images: bool = True, allow_outside_root: bool = False) -> list[VHsEntry]:
    """Every entry of `settings` with min_size <= N <= max_size, in (setting, size, file) order."""
    files = find_vhs_files(data_root)
    entries: list[VHsEntry] = []
    for setting in settings:
        sizes = sorted(n for s, n in files if s == setting and min_size <= n <= max_size)
        if sizes:
            entries += [e for n in sizes for e in load_entries(data_root, image_root, setting, [n], check_images=check_images,
                                                               allow_outside_root=allow_outside_root)[n]]
    return entries


def needle_positions(n: int) -> list[int]:
    """Needle positions of the reference "detailed" protocol: range(0, N, max(N // 10, 1))."""
    return list(range(0, n, max(n // 10, 1)))


def _entry_rng(entry: VHsEntry, seed: int) -> np.random.Generator:
    # Seeded by the entry's content (not its file or index), so the same entry is arranged the same
    # way wherever it is read from, and different entries get independent streams.
    digest = hashlib.sha256(json.dumps([entry.question, entry.pos_image, entry.neg_image]).encode()).digest()
    return np.random.default_rng([int(seed)] + [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)])


PLACEMENTS = ("shuffle", "shuffle_at", "file_order_at")


def arrange_images(
    entry: VHsEntry, seed: int, needle_position: int | None = None, placement: str | None = None
) -> tuple[list[str], list[int]]:
    """Order an entry's image paths (as written in the file). Returns (paths, needle_indices).

    needle_indices[i] is the position of entry.pos_image[i]. Placements:
    - "shuffle": pos + neg shuffled together, seeded by seed and the entry (the reference
      `run_fast`, vhs_benchmark solvers/base_solver.py, shuffles with an unseeded `random.shuffle`).
    - "shuffle_at": the first needle at `needle_position`, the other images shuffled around it.
    - "file_order_at": the reference `run_detailed` (solvers/base_solver.py): the needles at
      `needle_position`, distractors in file order, `neg[:p] + pos + neg[p:]`.
    Default: "shuffle" without a needle position, "shuffle_at" with one.
    """
    placement = placement or ("shuffle" if needle_position is None else "shuffle_at")
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; expected one of {PLACEMENTS}")
    n = entry.haystack_size
    images = list(entry.pos_image) + list(entry.neg_image)
    if placement == "shuffle":
        order = [int(i) for i in _entry_rng(entry, seed).permutation(n)]  # order[slot] = index into images
    else:
        if needle_position is None or not 0 <= needle_position < n:
            raise ValueError(f"needle_position {needle_position} outside the haystack of {n} images "
                             f"({entry.source} entry {entry.index}); use one of needle_positions({n})")
        p, k = needle_position, len(entry.pos_image)
        if placement == "file_order_at":
            neg = list(range(k, n))
            order = neg[:p] + list(range(k)) + neg[p:]
        else:
            rest = [int(i) + 1 for i in _entry_rng(entry, seed).permutation(n - 1)]
            order = rest[:p] + [0] + rest[p:]
    slot_of = {img: slot for slot, img in enumerate(order)}
    return [images[i] for i in order], [slot_of[i] for i in range(len(entry.pos_image))]


def arrange_haystack(entry: VHsEntry, seed: int, needle_position: int | None = None,
                     placement: str | None = None) -> tuple[list[Path], list[int]]:
    """`arrange_images` with the paths resolved against the entry's image root."""
    rel, needles = arrange_images(entry, seed, needle_position, placement)
    return [entry.resolve(r) for r in rel], needles
