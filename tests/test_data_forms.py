"""Every reader of VHs data takes a split root, a setting folder or one visual_haystack_N.json file
(resolved once, in laid.data.vhs.find_vhs_files): validate, distillation data, diagnose, eval."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from laid.data.vhs import find_vhs_files, load_entries
from laid_workflows.cli import main
from trainers.data import load_train_entries

FIXTURE = Path(__file__).parent / "data" / "vhs_real"


@pytest.fixture()
def real(tmp_path):
    root = tmp_path / "vhs"
    shutil.copytree(FIXTURE, root)
    images = tmp_path / "coco"
    for f in root.rglob("*.json"):
        for entry in json.loads(f.read_text()):
            for rel in entry["pos_image"] + entry["neg_image"]:
                (images / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(images / rel, "JPEG")
    return root, images


FORMS = {
    "root": ("", {("single_needle", 1), ("single_needle", 3), ("multi_needle_2", 5)}),
    "single_needle": ("single_needle", {("single_needle", 1), ("single_needle", 3)}),
    "VHs_large": ("single_needle/VHs_large", {("single_needle", 1), ("single_needle", 3)}),
    "multi_needle": ("multi_needle", {("multi_needle_2", 5)}),
    "multi_needle_2": ("multi_needle/multi_needle_2", {("multi_needle_2", 5)}),
    "one file": ("single_needle/VHs_large/visual_haystack_3.json", {("single_needle", 3)}),
    "oracle file": ("single_needle/VHs_large/visual_haystack_oracle.json", {("single_needle", 1)}),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_find_vhs_files_resolves_every_form(real, form):
    rel, expected = FORMS[form]
    assert set(find_vhs_files(real[0] / rel)) == expected


def test_a_file_outside_the_layout_gets_its_setting_from_its_entries(real, tmp_path):
    loose = tmp_path / "mine" / "visual_haystack_5.json"
    loose.parent.mkdir()
    shutil.copy(real[0] / "multi_needle/multi_needle_2/visual_haystack_5.json", loose)
    assert find_vhs_files(loose) == {("multi_needle_2", 5): loose}


def test_every_reader_takes_one_file(real, capsys):
    root, images = real
    file = root / "single_needle/VHs_large/visual_haystack_3.json"
    n = len(json.loads(file.read_text()))
    assert main(["data", "validate", str(file), "--image-root", str(images)]) == 0
    assert "ok: 1 files" in capsys.readouterr().out
    assert len(load_train_entries(file, images, min_haystack=2, max_haystack=20)) == n
    assert [len(v) for v in load_entries(file, images, None).values()] == [n]  # eval and diagnose read through it
    multi = root / "multi_needle/multi_needle_2"
    assert list(load_entries(multi, images, None)) == [5]  # setting None: the only one there


def test_outside_image_paths_are_refused_by_every_reader_unless_allowed(real, tmp_path):
    root, images = real
    file = root / "single_needle/VHs_large/visual_haystack_3.json"
    entries = json.loads(file.read_text())
    outside = tmp_path / "elsewhere.jpg"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(outside, "JPEG")
    entries[0]["neg_image"][0] = str(outside)
    file.write_text(json.dumps(entries))
    readers = {
        "train": lambda allow: load_train_entries(file, images, allow_outside_root=allow),
        "eval and analysis": lambda allow: load_entries(file, images, None, allow_outside_root=allow),
    }
    for name, read in readers.items():
        with pytest.raises(ValueError, match="is absolute"):
            read(False)
        assert read(True), name
