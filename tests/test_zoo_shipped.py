"""The pretrained zoo shipped in checkpoints/zoo/: what the main job starts from.

A shipped model must have been trained from today's config (else the main job would silently use
a stale model), load through the same `from_pretrained(local_dir)` path as real checkpoints, and be
what `laid zoo` rebuilds: the slow test retrains the smallest student from its config and compares
its accuracy with the shipped one's on the same questions (paired interval), since CPU kernels on
another machine may change trained weights but must not change what the model learned.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from laid.zoo.cli import DEFAULT_MODELS, _is_complete
from laid.zoo.configs import load_zoo_config

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "checkpoints" / "zoo"
CONFIGS = REPO / "configs" / "zoo"


@pytest.mark.parametrize("name", DEFAULT_MODELS)
def test_shipped_model_matches_its_config_and_loads(name):
    from laid.model.loading import load_model, load_processor

    cfg = load_zoo_config(CONFIGS / f"{name}.yaml")
    parent = load_zoo_config(CONFIGS / f"{cfg.pretrain.init_from}.yaml") if cfg.pretrain.init_from else None
    folder = SHIPPED / name
    meta = json.loads((folder / "laid_zoo.json").read_text())
    assert _is_complete(folder, cfg, parent=parent), (
        f"{folder} was trained from another config than configs/zoo/{name}.yaml; rebuild it: "
        f"laid zoo --out checkpoints/zoo --models {name} --force")
    assert meta["pretrain_log"]["steps"] == cfg.pretrain.steps
    model, processor = load_model(folder, device="cpu"), load_processor(folder)
    text = model.config.get_text_config()
    assert (text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (
        cfg.text.num_hidden_layers, cfg.text.num_attention_heads, cfg.text.num_key_value_heads)
    assert processor.tokenizer is not None


def test_main_job_copies_a_matching_shipped_model_and_trains_a_changed_one(tmp_path, monkeypatch):
    from laid.zoo import cli

    cfgs = [load_zoo_config(CONFIGS / f"{n}.yaml") for n in ("tiny-3b", "tiny-7b")]
    cfgs[1].pretrain.steps += 1  # a config the shipped tiny-7b was not trained from
    trained = []
    monkeypatch.setattr(cli, "build_one", lambda c, folder, *a, **k: trained.append(c.name))
    cli.build_zoo(tmp_path / "zoo", cfgs, checkpoints=SHIPPED, workers=1)
    assert trained == ["tiny-7b"]
    assert _is_complete(tmp_path / "zoo" / "tiny-3b", cfgs[0])
    assert (tmp_path / "zoo" / "tiny-3b" / "model.safetensors").read_bytes() == (SHIPPED / "tiny-3b" / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_rebuilding_a_student_reaches_the_shipped_accuracy(tmp_path):
    """`laid zoo` rebuilds tiny-3b (the cheapest model, ~3 min on 2 cores); its accuracy on 1-5
    images equals the shipped model's within a paired 95% interval (same questions)."""
    from laid.data.synth import SynthConfig, generate
    from laid.eval.paired import paired_difference, stack_seeds
    from laid.eval.run import evaluate
    from laid.zoo.cli import build_zoo

    name = "tiny-3b"
    cfg = load_zoo_config(CONFIGS / f"{name}.yaml")
    rebuilt = build_zoo(tmp_path / "zoo", [cfg], workers=1, progress=False)[name]
    data = generate(SynthConfig(seed=5, test_sizes=(1, 2, 5), test_questions_per_size=96, train_sizes=(2,),
                                train_questions=2, multi_needle_counts=(), test_pool_size=600, train_pool_size=10),
                    tmp_path / "data", progress=False)
    kw = dict(max_samples_per_size=None, progress=False, device="cpu")
    shipped = evaluate(SHIPPED / name, data / "test", data, **kw)
    ours = evaluate(rebuilt, data / "test", data, **kw)
    assert float(shipped.accuracy.sel(haystack_size=1)) > 0.75  # the shipped model learned the task
    d = paired_difference(stack_seeds([ours]), stack_seeds([shipped]), [1, 2, 5])
    assert d.ci_low <= 0 <= d.ci_high or abs(d.value) < 0.04, f"rebuilt - shipped accuracy {d}"


@pytest.mark.slow
def test_a_testbed_student_rebuilt_on_a_short_schedule_has_a_shorter_window_than_the_teacher(tmp_path):
    """The testbed premise by construction: tiny-7b-ret (retrieval head, 1-3 images) rebuilt with a
    compressed schedule (600 steps, the category curriculum compressed alike; ~2 min on 2 cores)
    learns the task on one image yet trails the shipped teacher beyond its window, paired on the
    same questions."""
    from laid.data.synth import SynthConfig, generate
    from laid.eval.paired import paired_difference, stack_seeds
    from laid.eval.run import evaluate
    from laid.zoo.cli import build_zoo

    cfg = load_zoo_config(CONFIGS / "tiny-7b-ret.yaml")
    cfg.pretrain.steps, cfg.pretrain.vision_steps = 600, 100
    cfg.pretrain.category_schedule = [[0, 4], [200, 8], [400, 12]]
    rebuilt = build_zoo(tmp_path / "zoo", [cfg], workers=1, progress=False)[cfg.name]
    data = generate(SynthConfig(seed=9, test_sizes=(1, 5, 10, 20), test_questions_per_size=64, train_sizes=(2,),
                                train_questions=2, multi_needle_counts=(), test_pool_size=600, train_pool_size=10),
                    tmp_path / "data", progress=False)
    kw = dict(max_samples_per_size=None, progress=False, device="cpu")
    student = evaluate(rebuilt, data / "test", data, **kw)
    teacher = evaluate(SHIPPED / "tiny-32b", data / "test", data, **kw)
    assert float(student.accuracy.sel(haystack_size=1)) > 0.75  # it learned the task inside its window
    lead = paired_difference(stack_seeds([teacher]), stack_seeds([student]), [5, 10, 20])
    assert lead.ci_low > 0, f"teacher - rebuilt student at 5-20 images: {lead}"
