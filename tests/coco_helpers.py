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
