"""Row labels from what trained (laid.methods.label_for, laid_workflows.headline.run_label): a table
never prints an ablation as the paper's method. The ablation is the registry's name-based label,
which calls every `method: laid` run "LAid" whatever its loss weights."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from laid.eval.results import SampleResult, build_result
from laid.methods import LABELS, label_for
from laid_workflows.headline import add_labels, add_paired_statistics, headline_markdown, run_label
from laid_workflows.study_stats import build_study, study_markdown
from laid_workflows.tables import build_comparison, per_size_markdown
from trainers.config import DistillConfig, Lambdas, load_config

REPO = Path(__file__).resolve().parents[1]
PAPER = asdict(Lambdas())


@pytest.mark.parametrize("method,weights,gain,want", [
    ("laid", {"laid": 1, "attn": 1, "kl": 0.3, "sft": 0.7}, True, "LAid"),
    ("laid", {"laid": 0, "attn": 0.1, "kl": 0.3, "sft": 0.7}, True, "LAid without Q/K alignment, attention matching x0.1"),
    ("laid", {"laid": 1, "attn": 1, "kl": 0.3, "sft": 0.7}, False, "LAid without RoPE gain"),
    ("laid-no-kl", {"laid": 1, "attn": 1, "kl": 0, "sft": 0.7}, True, "LAid without KL"),
    ("laid", {"laid": 0.1, "attn": 0, "kl": 0.3, "sft": 0.7}, False,
     "LAid without attention matching and RoPE gain, Q/K alignment x0.1"),
    ("kd", {"laid": 0, "attn": 0, "kl": 0.3, "sft": 0.7}, False, "KD"),
    ("kd", {"laid": 0, "attn": 0, "kl": 0.5, "sft": 0.5}, False, "KD, KL x1.7, SFT x0.71"),
    ("sft", {"laid": 0, "attn": 0, "kl": 0, "sft": 1}, False, "SFT (full, labels only)"),
])
def test_label_names_the_terms_that_trained(method, weights, gain, want):
    assert label_for(method, weights, gain, PAPER) == want


def test_a_config_with_the_alignment_term_off_is_not_labelled_laid():
    cfg = load_config(REPO / "configs" / "distill" / "tiny-32b_testbed.yaml", ["lambdas.laid=0"])
    assert cfg.method == "laid" and LABELS[cfg.method] == "LAid"  # the ablation: the name alone says LAid
    label = run_label(cfg)
    assert label != "LAid" and label.startswith("LAid without Q/K alignment")
    assert run_label(DistillConfig()) == "LAid"  # every term at the paper's weight, gain on
    assert run_label(DistillConfig(alignment="paper")) == "LAid (literal Eq. 7 alignment)"
    assert run_label(DistillConfig(method="laid-no-laid", alignment="paper")) == "LAid without Q/K alignment"
    assert run_label(DistillConfig(layer_map="proportional")) == "LAid (all layers)"
    assert run_label(DistillConfig(method="kd", rope_gain=True)) == "KD"  # KD never trains a gain


def _ev(rights, n=20):
    sizes = [1, 2, 5, 10]
    return build_result({s: [SampleResult(i < r, 1.0, True, 10, 0, bool(i % 2)) for i in range(n)]
                         for s, r in zip(sizes, rights)}, threshold=0.6, seed=0, attrs={"model_name": "fake"})


def test_tables_print_the_labels_of_what_trained():
    toy = run_label(load_config(REPO / "configs" / "distill" / "tiny-32b_testbed.yaml"))
    evals = {("s", "base"): _ev([18, 15, 10, 10]), ("s", "kd"): [_ev([17, 15, 12, 11])] * 2,
             ("s", "laid"): [_ev([17, 15, 13, 12])] * 2}
    ds = build_comparison(evals, None, ["s"], ["base", "kd", "laid"], {"threshold": 0.6})
    ds = add_labels(add_paired_statistics(ds, evals, [1, 2], [5, 10]), {("s", "laid"): toy})
    text = "\n".join(headline_markdown(ds) + per_size_markdown(ds))
    assert f"| {toy} |" in text and "| LAid |" not in text and f"effective window {toy}" in text
    study = build_study({("s", "laid", 1): [_ev([17, 15, 13, 12])] * 2, ("s", "laid-full", 1): [_ev([17, 15, 13, 12])] * 2},
                        {"s": _ev([18, 15, 10, 10])}, _ev([19, 18, 16, 15]), ["s"], ["laid", "laid-full"], [1],
                        {"short": [1, 2], "long": [5, 10]}, global_batch=8,
                        labels={("s", "laid"): toy, ("s", "laid-full"): run_label(DistillConfig())})
    assert study["label"].sel(student="s", arm="laid").item() == toy
    md = study_markdown(study)
    assert f"| {toy} | 1 |" in md and "| LAid | 1 |" in md
    again = build_study({("s", "a", 1): [_ev([17, 15, 13, 12])] * 2, ("s", "b", 1): [_ev([17, 15, 13, 12])] * 2},
                        {"s": _ev([18, 15, 10, 10])}, _ev([19, 18, 16, 15]), ["s"], ["a", "b"], [1],
                        {"short": [1, 2], "long": [5, 10]}, global_batch=8, labels={("s", "a"): "LAid", ("s", "b"): "LAid"})
    md = study_markdown(again)
    assert "| LAid (`a`) | 1 |" in md and "| LAid (`b`) | 1 |" in md  # same terms, other settings: told apart
    assert np.isfinite(float(again["diff"].sel(student="s", arm="a", budget=1, group="long", ref="base")))
