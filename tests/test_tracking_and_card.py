"""Experiment tracking (TensorBoard, offline) and the export's model card, on a 2-step tiny distillation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from recipe_helpers import quick_vhs, tiny_config

from trainers.model_card import CARD, model_card
from trainers.recipe import distill
from trainers.trainlog import Tracking, numeric_items, read_log


@pytest.fixture(scope="module")
def vhs(tmp_path_factory):
    return quick_vhs(tmp_path_factory)


@pytest.fixture(scope="module")
def tracked_run(random_zoo, vhs, tmp_path_factory):
    out = tmp_path_factory.mktemp("tracked") / "run"
    cfg = tiny_config(random_zoo, vhs, out, "laid", report_to="tensorboard", **{
        "eval.enabled": True, "eval.test_dir": str(vhs / "test"), "eval.sizes": [1, 2], "eval.samples_per_size": 2})
    export = distill(cfg, progress=False)
    return cfg, out, export


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted(folder.rglob("events.out.tfevents.*"))
    assert events, f"no TensorBoard event file under {folder}"
    out: dict[str, list[tuple[int, float]]] = {}
    for f in events:
        acc = EventAccumulator(str(f))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def test_tensorboard_gets_loss_terms_learning_rates_and_eval(tracked_run):
    cfg, out, _ = tracked_run
    scalars = _scalars(out / "tracking")
    log = [r for r in read_log(out / "train_log.jsonl") if "note" not in r]
    assert [r["step"] for r in log] == [1, 2]  # the JSONL log is still written
    for key, value in numeric_items(log[-1]).items():  # per-layer telemetry as "q_norm_ratio/2"
        assert key in scalars, f"{key} logged to JSONL but not to TensorBoard ({sorted(scalars)})"
        step, logged = scalars[key][-1]
        assert step == 2 and logged == pytest.approx(value, rel=1e-6)
    assert any(k.startswith("lr_") for k in scalars) and "total_loss" in scalars and "q_norm_ratio/2" in scalars
    assert {"eval/accuracy_1", "eval/accuracy_2"} <= set(scalars)


def test_export_carries_a_model_card_with_the_eval_table(tracked_run):
    cfg, out, export = tracked_run
    card = (export / CARD).read_text()
    assert card.startswith("---\nlibrary_name: transformers")
    for needle in (cfg.student_dir, cfg.teacher_dir, "`laid`", str(Path(cfg.data.train_dir)), "| optimizer steps | 2 ",
                   "| haystack size (images) |", "Effective window", "```yaml"):
        assert needle in card, needle
    import xarray as xr

    ds = xr.load_dataset(out / "eval.nc")
    acc1 = float(ds["accuracy"].sel(haystack_size=1))
    assert f"| 1 | {int(ds['n_samples'].sel(haystack_size=1))} | {acc1:.3f} |" in card


def test_card_without_evaluation_says_so(random_zoo, vhs, tmp_path):
    cfg = tiny_config(random_zoo, vhs, tmp_path / "r", "sft-lora")
    log = json.dumps({"step": 7, "epoch": 0, "sft": 0.5, "lr_student": 1e-3}) + "\n"
    card = model_card(cfg, log)
    assert "Not evaluated" in card and "| optimizer steps | 7 " in card and '"sft": 0.5' in card
    assert "(not used by this method)" in card  # sft-lora has no teacher


def test_tracker_needs_an_accelerator_made_with_log_with():
    from accelerate import Accelerator

    with pytest.raises(ValueError, match="log_with"):
        Tracking(Accelerator(cpu=True), "tensorboard", "run", {})
    Tracking(Accelerator(cpu=True), "none", "run", {}).log({"x": 1.0}, 1)  # none: a no-op


def test_report_to_is_checked_on_load(random_zoo, vhs, tmp_path):
    with pytest.raises(ValueError, match="report_to"):
        tiny_config(random_zoo, vhs, tmp_path / "r", report_to="tensorbored")
    with pytest.raises(ValueError, match="push_to_hub"):
        tiny_config(random_zoo, vhs, tmp_path / "r", push_to_hub="no-slash")
