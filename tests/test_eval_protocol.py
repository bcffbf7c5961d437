"""The official Visual Haystacks protocol (github.com/visual-haystacks/vhs_benchmark) against
hand-computed cases: word rule, placement, prompt, per-question JSON that the official scorer reads.

Expected values are worked out by hand from the official code: utils.py scores a reply as
`gt in nltk.word_tokenize(pred.lower())`; solvers/base_solver.py `run_detailed` places the needle
with `neg[:p] + pos + neg[p:]` for p in range(0, N, max(N // 10, 1)).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from vhs_helpers import copy_real_vhs

from laid.data.vhs import VHsEntry, arrange_images, find_vhs_files, needle_positions
from laid.eval.metrics import WORD_RULES, is_compliant, reference_correct, reply_words
from laid.eval.protocol import official_dir, resolve_protocol
from laid.eval.results import accuracy_by_needle_position, load_result
from laid.model.prompting import VHS_INSTRUCTION, build_messages
from laid_workflows.cli import main


# (reply, word tokens by the official rule, correct if truth is yes, correct if truth is no).
# Hand-computed: word_tokenize = Punkt sentences, then the Treebank tokenizer per sentence, which
# detaches "," "!" "?" anywhere but "." only at the end of its input, and never splits on "/".
TRICKY = [
    ("Yes.", ["yes", "."], True, False),
    ("yes/no", ["yes/no"], False, False),  # one token: neither answer, not compliant
    ("No, there is", ["no", ",", "there", "is"], False, True),
    ("It is yes. No doubt.", ["it", "is", "yes", ".", "no", "doubt", "."], True, True),  # both words: both count
    ("No.Yes", ["no.yes"], False, False),  # no space: one sentence, one token
    ("yesterday", ["yesterday"], False, False),
    ("Yes! it is", ["yes", "!", "it", "is"], True, False),
    ("The answer is no", ["the", "answer", "is", "no"], False, True),
]


@pytest.mark.parametrize("reply, tokens, yes, no", TRICKY)
def test_official_word_rule_on_tricky_replies(reply, tokens, yes, no):
    assert reply_words(reply) == tokens
    assert reference_correct(reply, "yes") is yes and reference_correct(reply, "no") is no
    assert is_compliant(reply) is (yes or no)


@pytest.mark.parametrize("rule", [r for r in WORD_RULES if r != "official"])
def test_ablated_word_rules_disagree_with_the_official_one(rule):
    """The regex \\w+ (the old rule) and the Treebank tokenizer without the sentence split each get a
    tricky reply wrong: parity needs both halves of word_tokenize."""
    wrong = [r for r, _, yes, no in TRICKY
             if (reference_correct(r, "yes", rule), reference_correct(r, "no", rule)) != (yes, no)]
    assert wrong, f"rule {rule} agrees with the official one on every tricky reply"


def test_word_rule_matches_nltk_word_tokenize_when_punkt_data_exists():
    """Where nltk's punkt_tab data is installed, compare with nltk.word_tokenize itself."""
    nltk = pytest.importorskip("nltk")
    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        pytest.skip("nltk punkt_tab data not installed (cannot be downloaded here); hand-computed cases above")
    for reply, *_ in TRICKY:
        assert reply_words(reply) == nltk.word_tokenize(reply.lower())


def _entry(n_neg: int) -> VHsEntry:
    return VHsEntry("For the image with a cat, is there a dog?", "yes", ("P",),
                    tuple(f"n{i}" for i in range(n_neg)), Path("visual_haystack_x.json"), 0)


def test_official_placement_is_file_order_with_the_needle_at_each_decile():
    assert needle_positions(5) == [0, 1, 2, 3, 4]
    assert needle_positions(20) == list(range(0, 20, 2))
    assert needle_positions(1) == [0]
    e = _entry(4)  # N = 5
    for p in needle_positions(5):
        images, needles = arrange_images(e, seed=123, needle_position=p, placement="file_order_at")
        expected = ["n0", "n1", "n2", "n3"][:p] + ["P"] + ["n0", "n1", "n2", "n3"][p:]
        assert images == expected and needles == [p]
    # Our detailed mode shuffles the distractors: same needle slot, another order (an ablation).
    shuffled, needles = arrange_images(_entry(19), seed=0, needle_position=4, placement="shuffle_at")
    assert needles == [4] and shuffled[:4] != ["n0", "n1", "n2", "n3"]


def test_protocol_resolution(tmp_path):
    synthetic = tmp_path / "synth" / "test"
    synthetic.mkdir(parents=True)
    (tmp_path / "synth" / "manifest.json").write_text("{}")
    real = tmp_path / "vhs"
    real.mkdir()
    assert resolve_protocol("auto", "single_needle", synthetic).name == "ours"
    official = resolve_protocol("auto", "single_needle", real)
    assert (official.name, official.placement, official.scoring, official.max_new_tokens) == (
        "official", "file_order_at", "generate", 128)
    assert resolve_protocol("official", "multi_needle_2", real).placement == "shuffle"  # run_fast: one shuffle
    ours = resolve_protocol("ours", "single_needle", real)
    assert (ours.placement, ours.scoring) == ("shuffle", "logits")
    assert resolve_protocol("official", "single_needle", real, scoring="logits").scoring == "logits"
    with pytest.raises(ValueError, match="unknown protocol"):
        resolve_protocol("paper", "single_needle", real)


def test_prompt_is_the_official_one():
    # base_solver.py: prompt = "You are given a set of images. Please answer the following question in
    # Yes or No: " + question; qwenvl_solver.py: every image, then the text, in one user turn.
    q = "For the image with a cat, is there a dog?"
    assert VHS_INSTRUCTION == "You are given a set of images. Please answer the following question in Yes or No: "
    content = build_messages(3, q)[0]["content"]
    assert [c["type"] for c in content] == ["image"] * 3 + ["text"]
    assert content[-1]["text"] == VHS_INSTRUCTION + q


@pytest.fixture()
def real(tmp_path) -> tuple[Path, Path]:
    """(real-format VHs root, image root with a small image for every referenced path)."""
    root, image_root = copy_real_vhs(tmp_path)
    return root, image_root


def _official_rescore(folder: Path) -> list[list[bool]]:
    """utils.py `run_detailed_eval`'s test without the bootstrap: per file, per needle position."""
    out = []
    for f in sorted(folder.glob("*.json")):
        data = json.loads(f.read_text())
        gt = data["conversations"][1]["value"]
        out.append([len(pred) > 0 and gt in reply_words(pred) for pred in data["response"]])
    return out


@pytest.mark.parametrize("form", ["file", "setting_folder", "root"])
def test_eval_one_file_official_protocol_writes_json_the_official_scorer_reads(random_zoo, real, tmp_path, capsys, form):
    root, image_root = real
    file = root / "single_needle" / "VHs_large" / "visual_haystack_3.json"
    data = {"file": file, "setting_folder": root / "single_needle", "root": root}[form]
    out = tmp_path / "res" / "official.nc"
    args = ["eval", "--model", str(random_zoo["tiny-7b"]), "--data", str(data), "--image-root", str(image_root),
            "--out", str(out), "--device", "cpu", "--no-progress", "--max-new-tokens", "3"]
    if form != "file":
        args += ["--sizes", "3"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "official protocol" in printed and "accuracy by needle position:" in printed
    ds = load_result(out)
    n_entries = len(json.loads(file.read_text()))
    assert ds.attrs["protocol"] == "official" and ds.attrs["scoring"] == "generate"
    assert list(ds["haystack_size"].values) == [3] and int(ds["n_samples"][0]) == 3 * n_entries
    np.testing.assert_array_equal(ds["needle_index"].values[0], [0, 1, 2] * n_entries)  # entry-major
    # The official scorer's rule on our JSON gives our per-sample outcome, position by position.
    rescored = _official_rescore(official_dir(out) / "3_images")
    assert len(rescored) == n_entries
    np.testing.assert_array_equal(np.array(rescored, dtype=float).ravel(), ds["correct"].values[0])
    record = json.loads((official_dir(out) / "3_images" / "000.json").read_text())
    assert set(record) == {"conversations", "pos_image", "neg_image", "response"} and len(record["response"]) == 3
    by_pos = accuracy_by_needle_position(ds)
    np.testing.assert_allclose(by_pos.values[0], np.array(rescored, dtype=float).mean(0))
    # The table is stored in the result itself, labelled by position.
    np.testing.assert_allclose(ds["accuracy_by_position"].sel(haystack_size=3).values, by_pos.values[0])
    assert list(ds["n_by_position"].sel(haystack_size=3).values) == [n_entries] * 3


def test_multi_needle_file_official_json_has_the_run_fast_result(random_zoo, real, tmp_path):
    root, image_root = real
    file = root / "multi_needle" / "multi_needle_2" / "visual_haystack_5.json"
    assert find_vhs_files(file) == {("multi_needle_2", 5): file}  # setting read from the layout
    out = tmp_path / "multi.nc"
    assert main(["eval", "--model", str(random_zoo["tiny-7b"]), "--data", str(file), "--image-root", str(image_root),
                 "--out", str(out), "--device", "cpu", "--no-progress", "--max-new-tokens", "2"]) == 0
    ds = load_result(out)
    assert ds.attrs["needle_setting"] == "multi_needle_2" and ds.attrs["protocol"] == "official"
    for f in sorted((official_dir(out) / "5_images").glob("*.json")):
        rec = json.loads(f.read_text())
        assert sorted(rec["result"]["image_paths"]) == sorted(rec["pos_image"] + rec["neg_image"])  # shuffled once
        assert isinstance(rec["result"]["response"], str)


def test_settings_reuse_only_results_of_the_same_protocol(tmp_path):
    from laid.eval.results import SampleResult, build_result
    from laid.eval.settings import EvalSettings

    synthetic = tmp_path / "synth" / "test"
    synthetic.mkdir(parents=True)
    (tmp_path / "synth" / "manifest.json").write_text("{}")
    rows = {1: [SampleResult(True, 1.0, True, 10, 0, True)] * 4}
    attrs = {"data_path": str(synthetic), "needle_setting": "single_needle", "scoring": "logits",
             "config": json.dumps({"max_samples_per_size": None})}
    old = build_result(rows, threshold=0.6, seed=0, n_bootstrap=5, attrs=attrs)  # written before protocols existed
    ours = old.assign_attrs(protocol="ours")
    official = old.assign_attrs(protocol="official", scoring="generate")
    auto = EvalSettings(sizes=None, samples_per_size=None)  # auto on synthetic data: ours, logits
    assert auto.matches(old) and auto.matches(ours) and not auto.matches(official)
    assert EvalSettings(sizes=None, samples_per_size=None, protocol="official").matches(official)
    assert not EvalSettings(sizes=None, samples_per_size=None, scoring="generate").matches(ours)


def test_a_result_scored_at_every_needle_position_is_reused_for_its_questions(tmp_path):
    """The official single-needle protocol scores each question once per needle position, so a result
    of 2 questions at 5 images holds 10 samples: it is the evaluation of a cap of 100 questions on a
    file of 2 (the cap it was made with), and of 2 questions, not of 10 or 3. Comparing the samples
    with the cap (the rule before) never reused an official result: a resumed comparison evaluated
    everything again."""
    from laid.eval.results import SampleResult, build_result
    from laid.eval.settings import EvalSettings

    real = tmp_path / "vhs"  # no manifest.json: real data, auto = official
    real.mkdir()
    rows = {5: [SampleResult(p % 2 == 0, 1.0, True, 10, p, True) for q in range(2) for p in range(5)]}
    attrs = {"data_path": str(real), "needle_setting": "single_needle", "scoring": "generate", "protocol": "official",
             "placement": "file_order_at", "config": json.dumps({"max_samples_per_size": 100})}
    ds = build_result(rows, threshold=0.6, seed=0, n_bootstrap=5, attrs=attrs)
    assert int(ds["n_samples"].sel(haystack_size=5)) == 10
    assert EvalSettings(sizes=[5], samples_per_size=100).matches(ds)  # the cap it was made with
    assert EvalSettings(sizes=[5], samples_per_size=2).matches(ds)  # as many questions as asked
    assert not EvalSettings(sizes=[5], samples_per_size=10).matches(ds) and not EvalSettings(sizes=[5], samples_per_size=3).matches(ds)
    shuffled = ds.assign_attrs(placement="shuffle", config=json.dumps({"max_samples_per_size": 50}))  # one sample per question
    assert EvalSettings(sizes=[5], samples_per_size=10, protocol="official").matches(shuffled)
    assert not EvalSettings(sizes=[5], samples_per_size=2, protocol="official").matches(shuffled)
