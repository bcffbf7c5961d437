"""`laid data coco-split`: a VHs-format training split from a COCO-format file the tests write.

Checked: every question against the annotations (needle holds the anchor, distractors never show
it, yes iff the needle holds the target), balance, sizes, disjointness from a test split,
determinism, the shortcut guards against their degenerate versions, one-line errors on bad input,
and that `laid distill` trains on the output.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from cli_helpers import one_line_error
from coco_helpers import coco_dict, ground_truth, write_tiny_coco

from laid.data import coco
from laid.data.coco import CocoSplitConfig, build_split, load_coco
from laid.data.vhs import find_vhs_files, load_entries, parse_question
from laid_workflows.cli import main as laid_main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    ann, images = write_tiny_coco(root / "coco")
    data = json.loads(ann.read_text())
    # A "test split" naming 40 of the images under another root: excluded by file name.
    test_names = [im["file_name"] for im in data["images"][:40]]
    test = root / "vhs_test" / "single_needle" / "VHs_large" / "visual_haystack_5.json"
    test.parent.mkdir(parents=True)
    test.write_text(json.dumps([{"conversations": [{"from": "human", "value": "For the image with a dog, is there a cat?"},
                                                   {"from": "gpt", "value": "no"}],
                                 "pos_image": [f"coco/val2017/{test_names[i]}"],
                                 "neg_image": [f"coco/val2017/{n}" for n in test_names[i + 1:i + 5]]}
                                for i in range(0, 40, 5)]))
    listed = root / "more_test_images.txt"
    listed.write_text("\n".join(f"/elsewhere/{im['file_name']}" for im in data["images"][40:50]) + "\n")
    return {"root": root, "ann": ann, "images": images, "data": data, "test": root / "vhs_test",
            "listed": listed, "excluded": set(test_names) | {im["file_name"] for im in data["images"][40:50]}}


def _split(world, out: Path, *extra: str) -> int:
    return laid_main(["data", "coco-split", "--annotations", str(world["ann"]), "--images", str(world["images"]),
                      "--out", str(out), "--sizes", "2-6", "--questions", "200", "--exclude", str(world["test"]),
                      str(world["listed"]), *extra])


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("visual_haystack_*.json"))}


@pytest.fixture(scope="module")
def split(world):
    out = world["root"] / "train"
    assert _split(world, out) == 0
    return out


def test_every_question_follows_the_construction(world, split):
    image_root = world["images"].parent  # default: the parent of --images
    entries = load_entries(split, image_root, "single_needle")  # the one reader, images checked
    assert sorted(entries) == [2, 3, 4, 5, 6]
    holds, touched = ground_truth(world["data"], min_area=0.01)
    for size, rows in entries.items():
        assert len(rows) == 40 and sum(e.answer == "yes" for e in rows) == 20  # 200 spread evenly, half yes
        for e in rows:
            mode, anchor, target = parse_question(e.question)
            assert mode == "single" and anchor != target
            paths = e.pos_image + e.neg_image
            assert len(set(paths)) == size and all(p.startswith("train2017/") for p in paths)
            names = [PurePosixPath(p).name for p in paths]
            assert not set(names) & world["excluded"]  # disjoint from the test split
            needle, distractors = names[0], names[1:]
            assert anchor in holds[needle] and all(anchor not in touched[d] for d in distractors)
            if e.answer == "yes":
                assert target in holds[needle]
            else:
                assert target not in touched[needle]
    record = json.loads((split / coco.RECORD).read_text())
    assert record["excluded"]["in_annotations"] == 50 and record["images_left"] == 190
    assert record["config"]["sizes"] == [2, 3, 4, 5, 6] and record["config"]["questions"] == 200


def test_deterministic_for_a_seed(world, split, tmp_path):
    assert _split(world, tmp_path / "again") == 0
    assert _digest(tmp_path / "again") == _digest(split)
    assert _split(world, tmp_path / "seed1", "--seed", "1") == 0
    assert _digest(tmp_path / "seed1").keys() == _digest(split).keys() and _digest(tmp_path / "seed1") != _digest(split)


# --- the shortcut guards, each against its degenerate version ----------------------------------


def _questions(entries: dict) -> list[tuple[str, str, int, list[str]]]:
    """(answer, target, size, file names) of every question."""
    out = []
    for size, rows in entries.items():
        for e in rows:
            _, _, target = parse_question(e["conversations"][0]["value"])
            out.append((e["conversations"][1]["value"], target, size, [PurePosixPath(p).name for p in e["pos_image"] + e["neg_image"]]))
    return out


def _held_out_accuracy(features: list, answers: list[str]) -> tuple[float, int]:
    """(accuracy, questions scored) on a random half of the questions, predicting each one's answer
    as the majority answer of the other half's questions with the same feature value: the best a
    reader of that feature alone can do."""
    order = np.random.default_rng(0).permutation(len(answers))
    train, test = order[: len(order) // 2], order[len(order) // 2:]
    votes: dict = {}
    for i in train:
        votes.setdefault(features[i], []).append(answers[i] == "yes")
    right = [(np.mean(votes.get(features[i], [0.5])) >= 0.5) == (answers[i] == "yes") for i in test]
    return float(np.mean(right)), len(right)


def _above_chance(accuracy: float, n: int) -> bool:
    """The 95% normal interval of a held-out accuracy lies above 0.5 (the feature gives answers away)."""
    return accuracy - 1.96 * np.sqrt(0.25 / n) > 0.5


def _naive_split(index, sizes, n_per_size, seed=0) -> dict:
    """The degenerate construction (ablation): take a needle with an anchor, then a target it shows
    (yes) or does not (no), distractors at random among the images without the anchor."""
    rng = np.random.default_rng(seed)
    out = {}
    for size in sizes:
        rows = []
        for answer in rng.permutation(["yes", "no"] * (n_per_size // 2)):
            while True:
                n = int(rng.integers(len(index.files)))
                a_opts = np.flatnonzero(index.holds[n])
                t_opts = np.flatnonzero(index.holds[n] if answer == "yes" else ~index.touched[n])
                if len(a_opts) and len(t_opts):
                    a = int(rng.choice(a_opts))
                    t_opts = t_opts[t_opts != a]
                    if len(t_opts):
                        break
            t = int(rng.choice(t_opts))
            neg = rng.choice(np.flatnonzero(~index.touched[:, a]), size=size - 1, replace=False)
            q = f"For the image with a {index.names[a]}, is there a {index.names[t]}?"
            rows.append({"conversations": [{"value": q}, {"value": str(answer)}], "pos_image": [index.files[n]],
                         "neg_image": [index.files[i] for i in neg]})
        out[size] = rows
    return out


@pytest.fixture(scope="module")
def index(world):
    return load_coco(world["ann"], 0.01)


def test_the_question_alone_does_not_give_the_answer(index):
    """Ours: pairs drawn independently of the answer, so neither the target nor the whole question
    predicts held-out answers above chance. The naive construction (the target read off the needle):
    significantly above chance on the same annotations."""
    cfg = CocoSplitConfig(sizes=(3, 4, 5, 6), questions=800, seed=0)
    ours, _ = build_split(index, cfg)
    naive = _naive_split(index, cfg.sizes, 200)
    leaks = {}
    for name, entries in (("ours", ours), ("naive", naive)):
        q = _questions(entries)
        answers = [a for a, *_ in q]
        questions = [e["conversations"][0]["value"] for rows in entries.values() for e in rows]
        leaks[name] = [_held_out_accuracy([t for _, t, _, _ in q], answers), _held_out_accuracy(questions, answers)]
    assert not any(_above_chance(*r) for r in leaks["ours"]), leaks
    assert any(_above_chance(*r) for r in leaks["naive"]), leaks


def test_the_target_count_does_not_give_the_answer(index, monkeypatch):
    """Ours: the number of images holding the target in the haystack has one distribution for yes and
    no (sizes >= 3), so a threshold on it predicts held-out answers at chance. Without the guard
    (distractors holding the target at their natural rate), the count gives the answer away."""
    holds, _ = ground_truth(coco_dict(), 0.01)
    cfg = CocoSplitConfig(sizes=(3, 4, 5, 6), questions=800, seed=0)

    def count_accuracy(entries) -> tuple[float, int]:
        q = _questions(entries)
        counts = [(size, sum(t in holds[f] for f in files)) for _, t, size, files in q]
        return _held_out_accuracy(counts, [a for a, *_ in q])

    ours, summary = build_split(index, cfg)
    assert not _above_chance(*count_accuracy(ours)), count_accuracy(ours)
    for s in summary.values():  # the record states it: equal mean counts for yes and no
        assert s["target_images_mean"]["yes"] == pytest.approx(s["target_images_mean"]["no"], abs=0.3)
    monkeypatch.setattr(coco, "targets_in_distractors", lambda rng, size, n, j, p: int(rng.binomial(size - n, p)))
    unguarded, _ = build_split(index, cfg)
    assert _above_chance(*count_accuracy(unguarded)), count_accuracy(unguarded)


# --- bad input: one line each ------------------------------------------------------------------


def test_bad_inputs_one_line(world, tmp_path, capsys):
    base = ["data", "coco-split", "--images", str(world["images"]), "--sizes", "2-4", "--questions", "12"]

    def ann(content) -> str:
        p = tmp_path / f"ann{len(list(tmp_path.glob('ann*')))}.json"
        p.write_text(content if isinstance(content, str) else json.dumps(content))
        return str(p)

    out = str(tmp_path / "out")
    one_line_error(capsys, base + ["--annotations", ann("{not json"), "--out", out], "not valid JSON")
    one_line_error(capsys, base + ["--annotations", ann({"images": []}), "--out", out], "'images', 'annotations'")
    broken = coco_dict()
    broken["annotations"][3]["image_id"] = 99999
    one_line_error(capsys, base + ["--annotations", ann(broken), "--out", out], "annotations[3]", "image_id 99999")
    broken = coco_dict()
    broken["images"][5]["file_name"] = 7
    one_line_error(capsys, base + ["--annotations", ann(broken), "--out", out], "images[5]", "file_name")
    with_zebra = coco_dict()
    with_zebra["categories"].append({"id": 7, "name": "zebra"})
    one_line_error(capsys, base + ["--annotations", ann(with_zebra), "--out", out, "--categories", "zebra", "person"],
                    "['zebra'] never occur")
    one_line_error(capsys, base + ["--annotations", str(world["ann"]), "--out", out, "--categories", "unicorn"],
                    "['unicorn'] not in the annotation file")
    one_line_error(capsys, base + ["--annotations", str(world["ann"]), "--out", out, "--sizes", "300"],
                    "too few images for haystacks of 300")
    one_line_error(capsys, base + ["--annotations", str(tmp_path / "nope.json"), "--out", out], "nope.json not found")
    bad_test = tmp_path / "visual_haystack_5.json"
    bad_test.write_text('[{"conversations": []}]')
    one_line_error(capsys, base + ["--annotations", str(world["ann"]), "--out", out, "--exclude", str(bad_test)],
                    "--exclude", "not a VHs file")
    # paths given as strings, not lists: refused, never read as their letters (which would exclude nothing)
    bad_test.write_text('[{"pos_image": "a/1.jpg", "neg_image": "a/2.jpg"}]')
    one_line_error(capsys, base + ["--annotations", str(world["ann"]), "--out", out, "--exclude", str(bad_test)],
                    "--exclude", "must be lists of paths")
    assert not (tmp_path / "out").exists()  # nothing half-written

    # A missing image file: named, with how many are missing; nothing written.
    partial = tmp_path / "partial" / "train2017"
    partial.mkdir(parents=True)
    for f in sorted(world["images"].iterdir())[::2]:
        (partial / f.name).write_bytes(f.read_bytes())
    err = one_line_error(capsys, ["data", "coco-split", "--annotations", str(world["ann"]), "--images", str(partial),
                                   "--out", out, "--sizes", "2-4", "--questions", "12"], "not found (", "are missing")
    assert str(partial) in err and not (tmp_path / "out").exists()

    # An existing split is kept unless --overwrite; a folder that is not a split is never replaced.
    assert laid_main(base + ["--annotations", str(world["ann"]), "--out", out]) == 0
    before = _digest(tmp_path / "out")
    one_line_error(capsys, base + ["--annotations", str(world["ann"]), "--out", out, "--seed", "3"], "--overwrite")
    assert _digest(tmp_path / "out") == before
    assert laid_main(base + ["--annotations", str(world["ann"]), "--out", out, "--seed", "3", "--overwrite"]) == 0
    assert _digest(tmp_path / "out") != before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    one_line_error(capsys, base + ["--annotations", str(world["ann"]), "--out", str(tmp_path / "mine"), "--overwrite"],
                    "holds no coco_split.json")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    one_line_error(capsys, base + ["--annotations", str(world["ann"]), "--out", out, "--sizes", "1-3"], "must be >= 2")
    one_line_error(capsys, base + ["--annotations", str(world["ann"]), "--out", out, "--sizes", "2-x"], "'2-x'")


def test_distill_trains_on_the_split(world, split, random_zoo, tmp_path):
    """The split is what `laid distill` reads as data.train_dir (2 optimizer steps of LAid)."""
    assert find_vhs_files(split)  # a split root
    out = tmp_path / "run"
    rc = laid_main(["distill", "--config", str(REPO / "configs/distill/tiny-32b_to_tiny-7b.yaml"), "--no-progress",
                    "--override", f"teacher_dir={random_zoo['tiny-32b']}", "--override", f"student_dir={random_zoo['tiny-7b']}",
                    "--override", f"output_dir={out}", "--override", f"data.train_dir={split}",
                    "--override", f"data.image_root={world['images'].parent}", "--override", "data.check_images=true",
                    "--override", "max_steps=2", "--override", "per_device_batch_size=1", "--override", "grad_accum=2"])
    assert rc == 0 and (out / "export" / "config.json").is_file()
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines() if '"step"' in line]
    assert max(steps) == 2
