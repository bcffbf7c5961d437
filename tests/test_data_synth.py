"""The synthetic VHs writer: determinism, ground truth of every question, balance, layout, re-runs."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from laid_workflows.cli import main as laid_main
from laid.data.synth import SPLITS, SynthConfig, generate, load_objects, read_manifest, targets_in_distractors
from laid.data.vhs import find_vhs_files, load_vhs_file, parse_question


def _tree_digest(root: Path, suffix: str) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob(f"*{suffix}"))}


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Path:
    """The quick benchmark, written through the CLI (`laid data synth --quick`)."""
    out = tmp_path_factory.mktemp("synth") / "data"
    assert laid_main(["data", "synth", "--out", str(out), "--quick"]) == 0
    return out


def _entries(out: Path):
    """(split, (setting, N), entries) of every file of a synthetic benchmark."""
    for split in SPLITS:
        for key, f in find_vhs_files(out / split).items():
            yield split, key, load_vhs_file(f, out)


def test_layout_and_manifest(quick):
    manifest = read_manifest(quick)
    cfg = SynthConfig.quick()
    assert manifest["config"] == cfg.to_dict() and manifest["seed"] == 0
    assert len(manifest["categories"]) == 12
    want = {f"{split}/{'single_needle/VHs_large' if s == 'single_needle' else 'multi_needle/' + s}/visual_haystack_{n}.json"
            for split in ("test", "val") for s, n, _ in cfg.files(split)}
    assert want <= set(manifest["files"])
    assert manifest["splits"]["val"] == manifest["splits"]["test"] == {"sizes": [1, 2, 5, 10], "questions_per_size": 8,
                                                                         "pool_size": 200}  # val = test's settings
    assert set(manifest["pools"]) == {"test", "train", "val"}
    assert {("multi_needle_3", 5), ("multi_needle_3", 10), ("single_needle", 1)} <= set(find_vhs_files(quick / "test"))
    for rel, info in manifest["files"].items():
        entries = load_vhs_file(quick / rel, quick)
        assert info["n_questions"] == len(entries) and info["n_yes"] == sum(e.answer == "yes" for e in entries)
        raw = json.loads((quick / rel).read_text())
        assert all(set(r) == {"conversations", "pos_image", "neg_image"} for r in raw)  # only the real fields
        assert all([t["from"] for t in r["conversations"]] == ["human", "gpt"] for r in raw)
    for split, pool in manifest["pools"].items():
        objects = load_objects(quick, split)
        assert len(objects) == pool["n_images"] >= 200
        assert len(list((quick / "images" / split).glob("*.png"))) == pool["n_images"]


def test_every_question_matches_ground_truth(quick):
    checked = 0
    for split, (setting, size), entries in _entries(quick):
        objects = load_objects(quick, split)
        for e in entries:
            mode, anchor, target = parse_question(e.question)
            assert mode == ("single" if setting == "single_needle" else mode) and anchor != target
            assert e.haystack_size == size
            assert len(e.pos_image) == (1 if setting == "single_needle" else int(setting[-1]))
            images = e.pos_image + e.neg_image
            assert len(set(images)) == len(images)  # no image twice in a haystack
            assert all(p.startswith(f"images/{split}/") for p in images)  # splits share no image
            assert all(anchor in objects[p] for p in e.pos_image)
            assert not any(anchor in objects[p] for p in e.neg_image)
            has_t = [target in objects[p] for p in e.pos_image]
            truth = any(has_t) if mode == "any" else all(has_t)
            assert e.answer == ("yes" if truth else "no")
            if size >= 2:  # the target also sits in a distractor, in yes and no cases alike
                assert any(target in objects[p] for p in e.neg_image)
            checked += 1
    assert checked == sum(info["n_questions"] for info in read_manifest(quick)["files"].values())


def test_answers_and_modes_are_balanced(quick):
    for _, (setting, _), entries in _entries(quick):
        cells = Counter((parse_question(e.question)[0], e.answer) for e in entries)
        per_cell = len(entries) // len(cells)
        assert len(cells) == (2 if setting == "single_needle" else 4)
        assert all(c == per_cell for c in cells.values()), cells


def test_target_count_does_not_depend_on_the_answer():
    # For N >= 2n + 1 the total number of images with the target is drawn before the answer is
    # known: whatever the needles hold, needles_with_t + distractors_with_t is the same.
    for size, n in [(5, 1), (10, 1), (150, 1), (5, 2), (20, 3), (7, 3)]:
        for seed in range(20):
            totals = {j + targets_in_distractors(np.random.default_rng(seed), size, n, j, 0.2) for j in range(n + 1)}
            assert len(totals) == 1
            m = targets_in_distractors(np.random.default_rng(seed), size, n, 0, 0.2)
            assert 1 <= m <= size - n
    assert targets_in_distractors(np.random.default_rng(0), 2, 1, 1, 0.9) == 1  # N = 2: the other image
    assert targets_in_distractors(np.random.default_rng(0), 1, 1, 1, 0.9) == 0  # N = 1: no distractor


def test_same_seed_same_bytes_other_seed_differs(quick, tmp_path):
    again = generate(SynthConfig.quick(), tmp_path / "again", progress=False)
    assert _tree_digest(again, ".json") == _tree_digest(quick, ".json")
    assert _tree_digest(again, ".png") == _tree_digest(quick, ".png")
    other = generate(SynthConfig.quick(seed=1), tmp_path / "other", progress=False)
    assert json.loads((other / "test/single_needle/VHs_large/visual_haystack_5.json").read_text()) != json.loads(
        (quick / "test/single_needle/VHs_large/visual_haystack_5.json").read_text())
    assert _tree_digest(other, ".png")["images/test/000000.png"] != _tree_digest(quick, ".png")["images/test/000000.png"]


def _small(seed: int = 0, pool: int = 40) -> SynthConfig:
    return SynthConfig(seed=seed, test_sizes=(1, 10), test_questions_per_size=4, train_sizes=(2, 5),
                       train_questions=4, train_multi_questions=4, test_pool_size=pool, train_pool_size=pool)


def test_rerun_is_a_noop_other_config_needs_overwrite(tmp_path):
    out = generate(_small(), tmp_path / "data", progress=False)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert generate(_small(), out, progress=False) == out
    assert (out / "manifest.json").stat().st_mtime_ns == stamp  # nothing rewritten
    with pytest.raises(ValueError, match=r"differs in: seed.*--overwrite"):
        generate(_small(seed=5), out, progress=False)
    assert read_manifest(out)["seed"] == 0  # the old benchmark is intact
    generate(_small(seed=5), out, overwrite=True, progress=False)
    assert read_manifest(out)["seed"] == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging or trash left
    (out / "test/single_needle/VHs_large/visual_haystack_10.json").unlink()
    with pytest.raises(ValueError, match="missing files"):
        generate(_small(seed=5), out, progress=False)


def test_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a synthetic VHs folder"):
        generate(_small(), tmp_path, overwrite=True, progress=False)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_small_pool_renders_constrained_images_on_demand(tmp_path):
    out = generate(_small(pool=6), tmp_path / "data", progress=False)
    manifest = read_manifest(out)
    assert manifest["pools"]["test"]["n_images"] > 6  # a 10-image haystack needs more than 6 images
    for split, _, entries in _entries(out):
        objects = load_objects(out, split)
        for e in entries:
            _, anchor, _ = parse_question(e.question)
            assert len(set(e.pos_image + e.neg_image)) == e.haystack_size
            assert all(anchor in objects[p] for p in e.pos_image)
            assert not any(anchor in objects[p] for p in e.neg_image)


def test_default_config_follows_the_paper():
    cfg = SynthConfig()
    test = cfg.files("test")
    assert [n for s, n, _ in test if s == "single_needle"] == [1, 2, 5, 10, 20, 50, 100, 150]
    assert [n for s, n, _ in test if s == "multi_needle_3"] == [5, 10, 20, 50, 100, 150]
    assert {c for _, _, c in test} == {100}
    train = cfg.files("train")
    single = {n: c for s, n, c in train if s == "single_needle"}
    assert sorted(single) == list(range(2, 21)) and sum(single.values()) == 5000
    assert all(c % 2 == 0 for c in single.values()) and max(single.values()) - min(single.values()) <= 2
    assert sum(c for s, _, c in train if s == "multi_needle_2") == 1000


def test_config_validation_and_from_dict():
    with pytest.raises(ValueError, match="even"):
        SynthConfig(train_questions=5001)
    with pytest.raises(ValueError, match="multiples of 4"):
        SynthConfig(test_questions_per_size=10)
    with pytest.raises(ValueError, match=r"synthetic data settings: unknown config key.*n_images"):
        SynthConfig.from_dict({"seed": 1, "n_images": 3})
    cfg = SynthConfig.from_dict(SynthConfig.quick(seed=3).to_dict())
    assert cfg == SynthConfig.quick(seed=3)


# sha256 over (path, file sha256) of every test/ and train/ file (JSON, PNG, objects.json) of
# `SynthConfig.quick()`, written by the generator before the validation split existed (8c44a21):
# adding val/ must leave existing benchmarks, and every result evaluated on them, valid.
QUICK_TEST_TRAIN_DIGEST = "c01a5f6815978552c041c782def91f6d89f9664b505812f479752a4109aa53ab"


def _split_digest(out: Path, splits=("test", "train")) -> str:
    h = hashlib.sha256()
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out).as_posix()
        if p.is_file() and rel.split("/")[0 if rel.split("/")[0] != "images" else 1] in splits:
            h.update(rel.encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def test_validation_split_leaves_test_and_train_byte_identical(quick):
    assert _split_digest(quick) == QUICK_TEST_TRAIN_DIGEST
    assert _split_digest(quick, ("val",)) != _split_digest(quick, ("test",))


def test_three_splits_share_no_image_and_no_question(quick):
    """Disjoint pools by path and by content (no picture drawn twice), and no question repeated."""
    pixels: dict[str, set[str]] = {}
    for split in SPLITS:
        paths = sorted((quick / "images" / split).glob("*.png"))
        pixels[split] = {hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
        assert len(pixels[split]) == len(paths) >= 200
    for a, b in (("test", "train"), ("test", "val"), ("train", "val")):
        assert not pixels[a] & pixels[b], (a, b)
    haystacks = {split: {(e.question, tuple(e.pos_image), tuple(e.neg_image)) for sp, _, entries in _entries(quick)
                         if sp == split for e in entries} for split in SPLITS}
    assert haystacks["val"] and not haystacks["val"] & haystacks["test"]
    for split in SPLITS:  # every image of a split's haystacks is in its own pool
        assert all(p.startswith(f"images/{split}/") for h in haystacks[split] for p in h[1] + h[2])


def test_validation_split_is_deterministic_and_configurable(quick, tmp_path):
    out = generate(SynthConfig.quick(), tmp_path / "again", progress=False)
    assert _split_digest(out, ("val",)) == _split_digest(quick, ("val",))
    own = generate(SynthConfig(**{**SynthConfig.quick().__dict__, "val_sizes": (1, 5), "val_questions_per_size": 4,
                                   "val_pool_size": 50}), tmp_path / "own", progress=False)
    assert sorted(n for s, n in find_vhs_files(own / "val") if s == "single_needle") == [1, 5]
    assert _split_digest(own) == QUICK_TEST_TRAIN_DIGEST  # test and train do not depend on val's settings
    assert read_manifest(own)["splits"]["val"] == {"sizes": [1, 5], "questions_per_size": 4, "pool_size": 50}
    with pytest.raises(ValueError, match="val_questions_per_size"):
        SynthConfig(val_questions_per_size=6)


def test_a_folder_from_before_the_validation_split_gains_it(tmp_path):
    """A version-1 folder of the same config is rewritten with val/ (no --overwrite needed: its test
    and train files come out byte-identical); the CLI's validate then counts three splits."""
    out = generate(_small(), tmp_path / "data", progress=False)
    before = _split_digest(out)
    manifest = read_manifest(out)
    shutil.rmtree(out / "val")
    shutil.rmtree(out / "images" / "val")
    manifest["generator_version"] = 1
    del manifest["pools"]["val"], manifest["splits"]
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith("val/")}
    (out / "manifest.json").write_text(json.dumps(manifest))
    generate(_small(), out, progress=False)
    assert (out / "val").is_dir() and read_manifest(out)["generator_version"] == 2 and _split_digest(out) == before


def test_validate_reads_all_three_splits(quick, capsys):
    assert laid_main(["data", "validate", str(quick)]) == 0
    out = capsys.readouterr().out
    assert "val single_needle N=10" in out and "test single_needle N=10" in out and "train single_needle N=5" in out
    n_files = len(read_manifest(quick)["files"])
    assert f"ok: {n_files} files" in out
