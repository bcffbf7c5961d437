"""`laid eval` end to end on the quick synthetic benchmark with a random tiny model.

A random model answers at about chance, so these tests check structure, counts, ranges,
determinism and errors, not accuracy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from laid_workflows.cli import main
from laid.eval.results import accuracy_by_needle_position, load_result
from laid.eval.run import evaluate_loaded, load_entries
from laid.eval.variants import VARIANTS, load_for_eval, parse_options


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from laid.data.synth import SynthConfig, generate

    torch.set_num_threads(1)
    return generate(SynthConfig.quick(seed=0), tmp_path_factory.mktemp("eval_synth") / "data", progress=False)


def eval_args(model, synth, out, *extra):
    return ["eval", "--model", str(model), "--data", str(synth / "test"), "--image-root", str(synth),
            "--out", str(out), "--device", "cpu", "--no-progress", *extra]  # fmt: skip


def test_cli_end_to_end(random_zoo, synth, tmp_path, capsys):
    out = tmp_path / "eval" / "tiny-7b__base.nc"
    assert main(eval_args(random_zoo["tiny-7b"], synth, out)) == 0
    printed = capsys.readouterr().out
    assert "effective window" in printed and str(out) in printed
    ds = load_result(out)
    assert list(ds["haystack_size"].values) == [1, 2, 5, 10]  # every single-needle size of the quick preset
    assert (ds["n_samples"] == 8).all() and ds.sizes["sample"] == 8
    for name in ("accuracy", "accuracy_ci_low", "accuracy_ci_high"):
        assert ((ds[name] >= 0) & (ds[name] <= 1)).all(), name
    assert (ds["compliance"] == 1).all()  # logit scoring always answers
    assert np.isfinite(ds["margin"].values).all() and set(np.unique(ds["correct"].values)) <= {0.0, 1.0}
    np.testing.assert_allclose(ds["accuracy"], ds["correct"].mean("sample"))
    assert (ds["avg_input_tokens"].diff("haystack_size") > 0).all()  # more images, more tokens
    assert ds.attrs["model_name"] == "tiny-7b" and ds.attrs["variant"] == "base"
    assert ds.attrs["scoring"] == "logits" and ds.attrs["needle_setting"] == "single_needle"
    # Half of each quick file is "yes": the stored ground truth says so.
    np.testing.assert_allclose(ds["answer_yes"].mean("sample"), 0.5)


def test_cli_generate_multi_needle_subset(random_zoo, synth, tmp_path):
    out = tmp_path / "g.nc"
    args = eval_args(random_zoo["tiny-3b"], synth, out, "--setting", "multi_needle_2", "--sizes", "5",
                     "--max-samples", "4", "--generate", "--dtype", "float32")  # fmt: skip
    assert main(args) == 0
    ds = load_result(out)
    assert list(ds["haystack_size"].values) == [5] and int(ds["n_samples"][0]) == 4
    assert ds.attrs["scoring"] == "generate" and ds["reply"].shape == (1, 4)
    assert 0 <= float(ds["compliance"][0]) <= 1


def test_cli_needle_positions(random_zoo, synth, tmp_path, capsys):
    out = tmp_path / "pos.nc"
    assert main(eval_args(random_zoo["tiny-7b"], synth, out, "--sizes", "10", "--max-samples", "2", "--needle-positions")) == 0
    ds = load_result(out)
    # Each of the 2 entries at every position of range(0, 10, 1).
    assert int(ds["n_samples"][0]) == 20
    np.testing.assert_array_equal(ds["needle_index"].values[0], list(range(10)) * 2)
    by_pos = accuracy_by_needle_position(ds)
    assert list(by_pos["needle_index"].values) == list(range(10))
    np.testing.assert_allclose(by_pos.values[0], ds["correct"].values[0].reshape(2, 10).mean(0))
    assert "accuracy by needle position:" in capsys.readouterr().out


def test_evaluation_is_deterministic_for_a_seed(random_zoo, synth):
    model, processor = load_for_eval(random_zoo["tiny-7b"], device="cpu")
    entries = load_entries(synth / "test", synth, sizes=[5, 10], max_samples_per_size=4)
    a = evaluate_loaded(model, processor, entries, seed=1, progress=False)
    b = evaluate_loaded(model, processor, entries, seed=1, progress=False, batch_tokens=64)  # other batching
    c = evaluate_loaded(model, processor, entries, seed=2, progress=False)
    np.testing.assert_array_equal(a["correct"], b["correct"])
    np.testing.assert_allclose(a["margin"], b["margin"], atol=1e-4)
    np.testing.assert_array_equal(a["accuracy_bootstrap"], b["accuracy_bootstrap"])
    assert not np.array_equal(a["needle_index"], c["needle_index"])  # the seed reshuffles haystacks
    assert a.attrs["model_name"] == "tiny-7b"  # defaults from the in-memory model


def test_missing_model_and_data_are_clear_errors(random_zoo, synth, tmp_path, capsys):
    assert main(eval_args(tmp_path / "no_model", synth, tmp_path / "x.nc")) == 1
    assert "no config.json" in capsys.readouterr().err
    bad_data = ["eval", "--model", str(random_zoo["tiny-7b"]), "--data", str(tmp_path / "no_data"),
                "--image-root", str(synth), "--out", str(tmp_path / "x.nc"), "--device", "cpu"]  # fmt: skip
    assert main(bad_data) == 1
    assert "not found" in capsys.readouterr().err
    assert main(eval_args(random_zoo["tiny-7b"], synth, tmp_path / "x.nc", "--sizes", "1", "7")) == 1
    assert "available sizes: [1, 2, 5, 10]" in capsys.readouterr().err
    assert not (tmp_path / "x.nc").exists()


def test_variant_errors_and_options(random_zoo, monkeypatch):
    with pytest.raises(ValueError, match="known variants: base, yarn, selfextend"):
        load_for_eval(random_zoo["tiny-7b"], "longrope")
    with pytest.raises(ValueError, match="takes no options"):
        load_for_eval(random_zoo["tiny-7b"], "base", {"factor": 2})
    assert parse_options(["factor=4", "scale=0.5", "flag=true", "name=x"]) == {"factor": 4, "scale": 0.5, "flag": True, "name": "x"}
    with pytest.raises(ValueError, match="key=value"):
        parse_options(["factor"])
    assert VARIANTS == ("base", "yarn", "selfextend")
