"""Time and memory of `laid data coco-split`'s build at COCO train2017's size (CPU, no images needed).

    PYTHONPATH=. .venv/bin/python bench/coco_split_speed.py

Writes a generated COCO-format annotation file of train2017's size under --work (118,287 images,
80 categories; category prevalences falling off like COCO's, person in 54% of the images; 1-3
annotations per present category with areas of 0.07%, 1.6% or 13% of a 640x480 image; no
segmentation polygons, so the file is ~60 MB where the real one is 448 MB), then times reading it
(`load_coco`) and drawing the paper's split (`build_split`: 5,000 questions, sizes 2-20).
Writes bench/results/coco_split_speed.md (atomically).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from laid.data.coco import CocoSplitConfig, build_split, load_coco
from laid.io import write_text

OUT = Path(__file__).parent / "results" / "coco_split_speed.md"


def coco_sized_file(path: Path, n_images: int = 118287, n_categories: int = 80, seed: int = 0) -> int:
    """Write the annotation file; returns the number of annotations."""
    rng = np.random.default_rng(seed)
    prevalence = np.clip(0.3 / np.arange(1, n_categories + 1) ** 0.9, 0.002, 0.55)
    prevalence[0] = 0.54
    anns = []
    for c in range(n_categories):
        for i in np.flatnonzero(rng.random(n_images) < prevalence[c]):
            for _ in range(int(rng.integers(1, 4))):
                anns.append({"id": len(anns) + 1, "image_id": int(i) + 1, "category_id": c + 1,
                             "area": float(rng.choice([200.0, 5000.0, 40000.0])), "bbox": [0, 0, 10, 10], "iscrowd": 0})
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 640, "height": 480} for i in range(1, n_images + 1)]
    cats = [{"id": c + 1, "name": f"category {c}"} for c in range(n_categories)]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return len(anns)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="folder for the generated file (default: a temp folder)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="coco_split_speed_"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / "instances_train2017.json"
    n_ann = coco_sized_file(path)
    t0 = time.perf_counter()
    index = load_coco(path, 0.01)
    t1 = time.perf_counter()
    entries, summary = build_split(index, CocoSplitConfig())
    t2 = time.perf_counter()
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux
    pairs = sorted({s["eligible_pairs"] for s in summary.values()})
    text = "\n".join([
        "# `laid data coco-split` at COCO train2017's size (CPU)", "",
        f"`PYTHONPATH=. .venv/bin/python bench/coco_split_speed.py`; {datetime.now():%Y-%m-%d %H:%M}, {platform.machine()}, "
        "shared 2-core machine (wall times are upper bounds).", "",
        f"Generated annotation file: {len(index.files)} images, {len(index.names)} categories, {n_ann} annotations, "
        f"{path.stat().st_size / 1e6:.0f} MB (no segmentation polygons; the real file is 448 MB and parses more slowly).", "",
        "| step | wall s |", "|---|---|",
        f"| read the annotations (`load_coco`) | {t1 - t0:.1f} |",
        f"| draw 5,000 questions, sizes 2-20 (`build_split`) | {t2 - t1:.1f} |", "",
        f"Peak resident memory of the process (file generation included): {peak_gb:.2f} GB. Questions written: "
        f"{sum(len(v) for v in entries.values())}; anchor/target pairs eligible per size: {pairs[0]}-{pairs[-1]}.", "",
    ])
    write_text(text, OUT)
    print(text)


if __name__ == "__main__":
    main()
