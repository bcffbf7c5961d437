"""Safe defaults on real data: `laid eval` / `laid diagnose` run the paper's haystack sizes unless
asked for all, and place models by `--device` / `--dtype` (laid.model.loading.placement).

What a CPU can test: the size choice end to end, the placement rules for any GPU count, the
device_map="auto" load path (on a machine without GPUs accelerate maps every module to the CPU),
and the plan accelerate makes for a 32B model on the meta device with fake GPUs. What it cannot:
a sharded forward pass across real GPUs and bf16 numerics on them (the device script's job).
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from laid.data.synth import SynthConfig, generate
from laid.eval.results import load_result
from laid.eval.settings import PAPER_SIZES, choose_sizes, parse_sizes
from laid.model import loading
from laid.model.loading import Placement, offload_warning, placement
from laid_workflows.cli import main

GiB = 1 << 30


def _vhs_names(root, sizes) -> None:
    folder = root / "single_needle" / "VHs_large"
    folder.mkdir(parents=True)
    for n in sizes:
        (folder / f"visual_haystack_{n}.json").write_text("[]")


def test_paper_sizes_by_default_all_on_request(tmp_path):
    """The real benchmark's sizes (oracle, 2, 3, 5, ..., 10000): the paper's that it holds, the
    absent 150 and the skipped sizes named; `all` every one; an explicit list or one file: as named."""
    real = tmp_path / "VHs"
    _vhs_names(real, ["oracle", 2, 3, 5, 10, 20, 50, 100, 500, 1000, 10000])
    sizes, note = choose_sizes(real, None, parse_sizes(None))
    assert sizes == [1, 2, 5, 10, 20, 50, 100]
    assert "[150] not in" in note and "[3, 500, 1000, 10000]" in note and "--sizes all" in note
    assert choose_sizes(real, None, parse_sizes(["all"])) == (None, "")
    assert choose_sizes(real, None, parse_sizes(["3", "500"])) == ([3, 500], "")
    one = real / "single_needle" / "VHs_large" / "visual_haystack_1000.json"
    assert choose_sizes(one, None, "paper") == (None, "")  # one file named: that file
    odd = tmp_path / "odd"
    _vhs_names(odd, [3, 7])
    with pytest.raises(ValueError, match=r"holds none of the paper's haystack sizes .*\[3, 7\].*--sizes all"):
        choose_sizes(odd, None, "paper")
    for bad in (["all", "5"], ["five"]):
        with pytest.raises(ValueError, match="--sizes takes"):
            parse_sizes(bad)
    assert parse_sizes(["PAPER"]) == "paper" and tuple(PAPER_SIZES) == (1, 2, 5, 10, 20, 50, 100, 150)


@pytest.fixture(scope="module")
def odd_sizes(tmp_path_factory):
    """Synthetic data with sizes the paper uses (1, 5) and one it does not (3)."""
    cfg = SynthConfig(seed=0, test_sizes=(1, 3, 5), test_questions_per_size=4, train_sizes=(2,), train_questions=4,
                      multi_needle_counts=(), test_pool_size=60, train_pool_size=20)
    return generate(cfg, tmp_path_factory.mktemp("odd") / "data", progress=False)


def test_eval_cli_runs_the_paper_sizes_unless_all(random_zoo, odd_sizes, tmp_path, capsys):
    torch.set_num_threads(1)
    base = ["eval", "--model", str(random_zoo["tiny-7b"]), "--data", str(odd_sizes / "test"), "--image-root",
            str(odd_sizes), "--max-samples", "2", "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "paper.nc")]) == 0
    assert "not run: [3]" in capsys.readouterr().out
    assert load_result(tmp_path / "paper.nc")["haystack_size"].values.tolist() == [1, 5]
    assert main(base + ["--out", str(tmp_path / "all.nc"), "--sizes", "all"]) == 0
    everything = load_result(tmp_path / "all.nc")
    assert everything["haystack_size"].values.tolist() == [1, 3, 5]
    assert everything.attrs["config"] and '"dtype": "torch.float32"' in everything.attrs["config"]  # auto on the CPU


def test_diagnose_cli_runs_the_paper_sizes(random_zoo, odd_sizes, tmp_path):
    from laid.io import read_netcdf

    out = tmp_path / "diag"
    assert main(["diagnose", str(random_zoo["tiny-3b"]), "--data", str(odd_sizes / "test"), "--image-root",
                 str(odd_sizes), "--max-samples", "1", "--profile-max-samples", "1", "--out", str(out),
                 "--no-progress", "--dtype", "float32", "--device", "auto"]) == 0
    assert read_netcdf(out / "diagnostics.nc")["haystack_size"].values.tolist() == [1, 5]


@pytest.mark.parametrize("device, n_gpus, want", [
    ("auto", 0, Placement(torch.device("cpu"))),
    ("auto", 1, Placement(torch.device("cuda"))),
    ("auto", 4, Placement(torch.device("cuda"), sharded=True)),
    (None, 4, Placement(torch.device("cuda"))),  # library callers (worker processes): never sharded
    (None, 0, Placement(torch.device("cpu"))),
    ("cpu", 4, Placement(torch.device("cpu"))),
    ("cuda", 2, Placement(torch.device("cuda"))),
    ("cuda:1", 2, Placement(torch.device("cuda:1"))),
])
def test_placement_rules(device, n_gpus, want):
    assert placement(device, n_gpus) == want


def test_placement_refuses_what_is_not_there_and_picks_the_dtype():
    for device, n_gpus in (("cuda", 0), ("cuda:2", 2)):
        with pytest.raises(ValueError, match=f"{n_gpus} CUDA device"):
            placement(device, n_gpus)
    with pytest.raises(ValueError, match="unknown device 'tpu0'"):
        placement("tpu0", 0)
    assert placement("auto", 0).dtype("auto") == torch.float32
    assert placement("auto", 1).dtype("auto") == torch.bfloat16 and placement("auto", 4).dtype(None) == torch.bfloat16
    assert placement("cpu", 4).dtype("bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        placement("cpu", 0).dtype("fp8")


def test_the_sharded_load_path_evaluates_like_the_plain_one(random_zoo, odd_sizes, tmp_path, monkeypatch):
    """With 'several GPUs' the model loads through from_pretrained(device_map="auto") (accelerate's
    hooks, no .to()); without real GPUs accelerate maps it to the CPU, so the scores must equal the
    plain CPU load's, sample for sample."""
    from laid.eval.run import evaluate

    torch.set_num_threads(1)
    kw = dict(sizes=[1, 5], max_samples_per_size=2, progress=False, dtype=torch.float32)
    plain = evaluate(random_zoo["tiny-7b"], odd_sizes / "test", odd_sizes, tmp_path / "plain.nc", device="cpu", **kw)
    monkeypatch.setattr(loading, "visible_gpus", lambda: 2)
    seen = {}
    real_from_pretrained = loading.AutoModelForImageTextToText.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_from_pretrained(*args, **kwargs)

    monkeypatch.setattr(loading.AutoModelForImageTextToText, "from_pretrained", spy)
    sharded = evaluate(random_zoo["tiny-7b"], odd_sizes / "test", odd_sizes, tmp_path / "sharded.nc", device="auto", **kw)
    assert seen.get("device_map") == "auto"
    np.testing.assert_array_equal(sharded["correct"].values, plain["correct"].values)
    np.testing.assert_allclose(sharded["margin"].values, plain["margin"].values, rtol=1e-5, atol=1e-6)


def test_accelerate_shards_a_32b_model_by_whole_layers_and_says_when_it_does_not_fit():
    """The plan device_map="auto" makes (transformers' own helper, on the meta device): a bf16
    Qwen2.5-VL-32B-shaped model (65 GB) on 4 fake 40 GiB GPUs puts every decoder layer whole on one
    GPU, uses all four and nothing else; on 2 x 24 GiB it must spill, which load_model names."""
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.integrations.accelerate import _get_device_map

    from trainers.realwidth import truncated_config

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(truncated_config("32b", n_layers=64, vocab_size=152064)).to(torch.bfloat16)
    fits = _get_device_map(model, "auto", {0: 40 * GiB, 1: 40 * GiB, 2: 40 * GiB, 3: 40 * GiB, "cpu": GiB}, None)
    assert set(fits.values()) == {0, 1, 2, 3} and offload_warning(fits) is None
    layers = [f"model.language_model.layers.{i}" for i in range(64)]
    assert all(name in fits for name in layers)  # each decoder layer placed as one block, never split
    per_gpu = collections.Counter()
    for name, p in model.named_parameters():
        owner = max((k for k in fits if name == k or name.startswith(k + ".")), key=len)
        per_gpu[fits[owner]] += p.numel() * p.element_size()
    assert all(b <= 40 * GiB for b in per_gpu.values()) and sum(per_gpu.values()) > 60e9
    spills = _get_device_map(model, "auto", {0: 24 * GiB, 1: 24 * GiB, "cpu": 200 * GiB}, None)
    assert "cpu" in spills.values() and "run from the CPU or disk" in offload_warning(spills)
