"""The VHs loader on hand-written real-format files: parsing, validation errors, arrangement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from vhs_helpers import copy_real_vhs

from laid_workflows.cli import main as laid_main
from laid.data.questions import multi_needle_question, single_needle_question
from laid.data.vhs import (
    VHsEntry,
    VHsFormatError,
    arrange_haystack,
    find_vhs_files,
    load_image,
    load_vhs_file,
    needle_positions,
    normalize_answer,
    parse_question,
    vhs_rel_path,
)

SINGLE3 = "single_needle/VHs_large/visual_haystack_3.json"


@pytest.fixture()
def real(tmp_path) -> tuple[Path, Path]:
    """(split root with the fixture files, image root with a tiny JPEG for every referenced path)."""
    root, image_root = copy_real_vhs(tmp_path, (20, 30))
    return root, image_root


def test_find_files_on_real_layout(real):
    root, _ = real
    files = find_vhs_files(root)
    assert list(files) == [("single_needle", 1), ("single_needle", 3), ("multi_needle_2", 5)]
    assert files[("single_needle", 1)].name == "visual_haystack_oracle.json"
    assert files[("multi_needle_2", 5)] == root / vhs_rel_path("multi_needle_2", 5)


def test_load_real_format_file(real):
    root, image_root = real
    entries = load_vhs_file(root / SINGLE3, image_root)
    assert [e.answer for e in entries] == ["yes", "no", "yes", "no"]  # "No" and "Yes." normalised
    assert all(e.haystack_size == 3 for e in entries)
    e = entries[1]
    assert e.question == "For the image with a bus, is there a person?"
    assert e.pos_image == ("val2017/000000000285.jpg",)
    assert e.neg_image == ("val2017/000000000724.jpg", "val2017/000000000776.jpg")
    assert (e.index, e.source) == (1, root / SINGLE3)
    assert e.resolve(e.pos_image[0]) == image_root / "val2017/000000000285.jpg"
    multi = load_vhs_file(root / vhs_rel_path("multi_needle_2", 5), image_root)
    assert [len(m.pos_image) for m in multi] == [2, 2] and [m.haystack_size for m in multi] == [5, 5]
    oracle = load_vhs_file(root / "single_needle/VHs_large/visual_haystack_oracle.json", image_root)
    assert [o.haystack_size for o in oracle] == [1, 1]


def _write(tmp_path: Path, name: str, entries) -> Path:
    path = tmp_path / "single_needle" / "VHs_large" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries))
    return path


def _good(n_neg: int = 2) -> dict:
    return {"conversations": [{"from": "human", "value": "For the image with a dog, is there a cat?"},
                              {"from": "gpt", "value": "yes"}],
            "pos_image": ["a.png"], "neg_image": [f"n{i}.png" for i in range(n_neg)]}


def _broken(change):
    entry = _good()
    change(entry)
    return entry


@pytest.mark.parametrize("change, field", [
    (lambda e: e.pop("pos_image"), "pos_image"),
    (lambda e: e.pop("conversations"), "conversations"),
    (lambda e: e.update(pos_image="a.png"), "pos_image"),
    (lambda e: e.update(neg_image=[1, 2]), "neg_image"),
    (lambda e: e.update(pos_image=[]), "pos_image"),
    (lambda e: e["conversations"][1].update(value="maybe"), "conversations[1].value"),
    (lambda e: e["conversations"][0].update(value=None), "conversations[0].value"),
    (lambda e: e.update(conversations=[{"from": "human", "value": "q"}]), "conversations"),
])
def test_malformed_entry_names_file_entry_and_field(tmp_path, change, field):
    path = _write(tmp_path, "visual_haystack_3.json", [_good(), _broken(change)])
    with pytest.raises(VHsFormatError) as info:
        load_vhs_file(path, None, check_images=False)
    msg = str(info.value)
    assert str(path) in msg and "entry 1" in msg and repr(field) in msg and "\n" not in msg
    assert isinstance(info.value, ValueError)


def test_size_mismatch_and_needle_count(tmp_path):
    path = _write(tmp_path, "visual_haystack_4.json", [_good(n_neg=3), _good(n_neg=2)])
    with pytest.raises(VHsFormatError, match=r"entry 1: .*3 images but the file name says N=4"):
        load_vhs_file(path, None, check_images=False)
    two_needles = _good(n_neg=1)
    two_needles["pos_image"].append("b.png")
    path = _write(tmp_path, "visual_haystack_3.json", [two_needles])
    with pytest.raises(VHsFormatError, match="exactly one"):
        load_vhs_file(path, None, check_images=False)


def test_file_level_errors(tmp_path):
    path = _write(tmp_path, "visual_haystack_3.json", {"not": "a list"})
    with pytest.raises(VHsFormatError, match="JSON list"):
        load_vhs_file(path, None, check_images=False)
    path.write_text("[{")
    with pytest.raises(VHsFormatError, match="not valid JSON"):
        load_vhs_file(path, None, check_images=False)
    with pytest.raises(FileNotFoundError, match="laid data synth"):
        load_vhs_file(tmp_path / "nope.json", None)
    # A setting folder is data too (the file above is found through it); an empty folder is not.
    assert find_vhs_files(tmp_path / "single_needle") == {("single_needle", 3): path}
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no visual_haystack"):
        find_vhs_files(tmp_path / "empty")


def test_missing_image_names_entry_path_and_image_root(real):
    root, image_root = real
    (image_root / "val2017/000000000776.jpg").unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_vhs_file(root / SINGLE3, image_root)
    msg = str(info.value)
    assert "entry 1" in msg and "000000000776.jpg" in msg and "--image-root" in msg and str(image_root) in msg
    assert len(load_vhs_file(root / SINGLE3, image_root, check_images=False)) == 4


def test_normalize_answer():
    for text, want in [("yes", "yes"), ("Yes", "yes"), ("yes.", "yes"), (" NO! ", "no"), ("No", "no")]:
        assert normalize_answer(text) == want
    for text in ("", "maybe", "yes no", "yess"):
        with pytest.raises(ValueError):
            normalize_answer(text)


def test_parse_question_inverts_templates():
    assert parse_question(single_needle_question("red circle", "blue square")) == ("single", "red circle", "blue square")
    assert parse_question(multi_needle_question("all", "a b", "c d")) == ("all", "a b", "c d")
    assert parse_question(multi_needle_question("any", "x", "y")) == ("any", "x", "y")
    assert parse_question("How many dogs are there?") is None


def _entry(n_pos: int, n_neg: int, tag: str = "") -> VHsEntry:
    return VHsEntry(f"q{tag}", "yes", tuple(f"p{tag}{i}.png" for i in range(n_pos)),
                    tuple(f"n{tag}{i}.png" for i in range(n_neg)), Path("f.json"), 0, Path("/root"))


def test_arrange_haystack_is_a_seeded_permutation():
    e = _entry(2, 18)
    paths, needles = arrange_haystack(e, seed=0)
    assert sorted(paths) == sorted(Path("/root") / p for p in e.pos_image + e.neg_image)
    assert [paths[i] for i in needles] == [Path("/root") / p for p in e.pos_image]
    assert arrange_haystack(e, seed=0) == (paths, needles)  # reproducible
    assert arrange_haystack(e, seed=1)[0] != paths  # another seed, another order
    # independent per entry: another entry of the same size is arranged differently
    other = _entry(2, 18, tag="b")
    other_order = [p.name.replace("b", "") for p in arrange_haystack(other, seed=0)[0]]
    assert other_order != [p.name for p in paths]


def test_arrange_haystack_places_the_needle():
    e = _entry(3, 47)
    for pos in needle_positions(50):
        paths, needles = arrange_haystack(e, seed=3, needle_position=pos)
        assert needles[0] == pos and paths[pos] == Path("/root") / e.pos_image[0]
        assert [paths[i] for i in needles] == [Path("/root") / p for p in e.pos_image]
        assert sorted(paths) == sorted(Path("/root") / p for p in e.pos_image + e.neg_image)
    with pytest.raises(ValueError, match="needle_position 50"):
        arrange_haystack(e, seed=3, needle_position=50)


def test_needle_positions_follow_reference():
    assert needle_positions(1) == [0]
    assert needle_positions(5) == [0, 1, 2, 3, 4]
    assert needle_positions(20) == list(range(0, 20, 2))
    assert needle_positions(150) == list(range(0, 150, 15))


def test_load_image_rgb_and_errors(tmp_path):
    Image.new("L", (8, 6), 128).save(tmp_path / "grey.png")
    Image.new("RGBA", (8, 6), (1, 2, 3, 4)).save(tmp_path / "alpha.png")
    for name in ("grey.png", "alpha.png"):
        im = load_image(tmp_path / name)
        assert im.mode == "RGB" and im.size == (8, 6)
    with pytest.raises(FileNotFoundError, match="--image-root"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png"):
        load_image(tmp_path / "broken.png")


def test_cli_validate_real_format(real, capsys):
    root, image_root = real
    assert laid_main(["data", "validate", str(root), "--image-root", str(image_root)]) == 0
    out = capsys.readouterr().out
    assert "single_needle N=3" in out and "ok: 3 files, 8 questions valid" in out
    (image_root / "val2017/000000000802.jpg").unlink()
    assert laid_main(["data", "validate", str(root), "--image-root", str(image_root)]) == 1
    err = capsys.readouterr().err.strip()
    assert "000000000802.jpg" in err and "\n" not in err
