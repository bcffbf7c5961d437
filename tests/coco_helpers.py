"""A tiny COCO-format annotation file and its images, written by the tests (no download).

Categories co-occur as in COCO, on purpose: `person` is in most images, a `tie` almost only with a
person, a `frisbee` mostly with a dog. A construction that picks the target from what the needle
shows therefore leaks the answer through the question text, which the tests check ours does not.
Some annotations are tiny (0.5% of the image), so an image can hold a category only ambiguously.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = {1: "person", 2: "dog", 3: "frisbee", 4: "cat", 5: "tie", 6: "car"}
SIDE = 56  # pixels; the annotation areas below are fractions of SIDE * SIDE


def _present(rng) -> set[str]:
    names = set()
    if rng.random() < 0.7:
        names.add("person")
    if rng.random() < 0.3:
        names.add("dog")
    if rng.random() < (0.6 if "dog" in names else 0.05):
        names.add("frisbee")
    if rng.random() < 0.25:
        names.add("cat")
    if rng.random() < (0.4 if "person" in names else 0.02):
        names.add("tie")
    if rng.random() < 0.3:
        names.add("car")
    return names


def coco_dict(n_images: int = 240, seed: int = 0, small_share: float = 0.15) -> dict:
    """The annotation file's content: ids from 1, file names like COCO's (the image id, 12 digits)."""
    rng = np.random.default_rng(seed)
    ids = {name: cid for cid, name in CATEGORIES.items()}
    images, annotations = [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "file_name": f"{i:012d}.jpg", "width": SIDE, "height": SIDE})
        for name in sorted(_present(rng)):
            frac = 0.005 if rng.random() < small_share else 0.1
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": ids[name],
                                "area": frac * SIDE * SIDE, "bbox": [0, 0, 10, 10], "iscrowd": 0})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": cid, "name": name, "supercategory": "thing"} for cid, name in CATEGORIES.items()]}


def write_tiny_coco(root: Path, n_images: int = 240, seed: int = 0) -> tuple[Path, Path]:
    """(annotations file, images folder) under root: root/annotations/instances_train2017.json and
    root/train2017/<file>.jpg, a random JPEG per image."""
    data = coco_dict(n_images, seed)
    ann = root / "annotations" / "instances_train2017.json"
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text(json.dumps(data))
    images = root / "train2017"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    for im in data["images"]:
        Image.fromarray(rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8)).save(images / im["file_name"], "JPEG")
    return ann, images


def ground_truth(data: dict, min_area: float) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """({file name: categories it holds (>= min_area)}, {file name: categories annotated at all})."""
    names = {im["id"]: im["file_name"] for im in data["images"]}
    holds = {f: set() for f in names.values()}
    touched = {f: set() for f in names.values()}
    for a in data["annotations"]:
        f, c = names[a["image_id"]], CATEGORIES[a["category_id"]]
        touched[f].add(c)
        if a["area"] / (SIDE * SIDE) >= min_area:
            holds[f].add(c)
    return holds, touched



def write_tiny_vhs_test(root: Path, out: Path, sizes=(1, 2, 5), n_images: int = 120, seed: int = 7,
                        id_offset: int = 500_000, train: dict | None = None, one_question_from: int | None = None) -> Path:
    """A Visual Haystacks test split in the benchmark's own layout: images in root/coco/val2017/ (COCO
    file names, ids from `id_offset` so they never collide with write_tiny_coco's) and
    out/visual_haystack_{oracle,N}.json whose paths read `coco/val2017/<file>`, relative to `root` (the
    official image root holds coco/). `train`: the content of write_tiny_coco's annotation file, whose
    root/coco/train2017 images may then be distractors too (the benchmark uses train2017 images as well).
    One yes and one no question per size (only a yes question from size `one_question_from` on), from
    the annotations: the needle holds the anchor, no distractor shows any of it, yes iff the needle
    holds the target."""
    data = coco_dict(n_images, seed)
    for im in data["images"]:
        im["file_name"] = f"{im['id'] + id_offset:012d}.jpg"
    holds, touched = ground_truth(data, 0.01)
    images = root / "coco" / "val2017"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in holds:
        Image.fromarray(rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8)).save(images / name, "JPEG")
    pool = {f"coco/val2017/{f}": (holds[f], touched[f]) for f in holds}
    if train is not None:
        t_holds, t_touched = ground_truth(train, 0.01)
        pool.update({f"coco/train2017/{f}": (t_holds[f], t_touched[f]) for f in t_holds})
    val = sorted(f"coco/val2017/{f}" for f in holds)
    pairs = [(a, t) for a in CATEGORIES.values() for t in CATEGORIES.values() if a != t]
    out.mkdir(parents=True, exist_ok=True)
    for n in sizes:
        entries = []
        for answer in ("yes", "no") if one_question_from is None or n < one_question_from else ("yes",):
            for k in rng.permutation(len(pairs)):
                a, t = pairs[k]
                needles = [f for f in val if a in pool[f][0] and (t in pool[f][0] if answer == "yes" else t not in pool[f][1])]
                free = sorted(f for f, (_, seen) in pool.items() if a not in seen)
                if needles and len(free) >= n - 1:
                    break
            else:
                raise ValueError(f"no {answer} question of size {n} in these images")
            entries.append({"conversations": [{"from": "human", "value": f"For the image with a {a}, is there a {t}?"},
                                              {"from": "gpt", "value": answer.capitalize()}],
                            "pos_image": [str(rng.choice(needles))], "neg_image": [str(f) for f in rng.choice(free, n - 1, replace=False)]})
        (out / f"visual_haystack_{'oracle' if n == 1 else n}.json").write_text(json.dumps(entries))
    return out
