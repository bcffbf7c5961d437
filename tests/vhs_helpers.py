"""A copy of the hand-written real-format VHs files (tests/data/vhs_real) with an image for every path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

FIXTURE = Path(__file__).parent / "data" / "vhs_real"


def copy_real_vhs(tmp_path: Path, image_shape: tuple[int, int] = (56, 56)) -> tuple[Path, Path]:
    """(VHs root copied under tmp_path, image root with a random JPEG for every referenced path)."""
    root = tmp_path / "vhs"
    shutil.copytree(FIXTURE, root)
    image_root = tmp_path / "coco"
    rng = np.random.default_rng(0)
    for f in root.rglob("*.json"):
        for entry in json.loads(f.read_text()):
            for rel in entry["pos_image"] + entry["neg_image"]:
                p = image_root / rel
                if not p.exists():
                    p.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(rng.integers(0, 255, (*image_shape, 3), dtype=np.uint8)).save(p, "JPEG")
    return root, image_root
