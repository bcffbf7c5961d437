"""Training budgets mean what they say: max_steps over epochs, warmup steps, budget exports, query rows."""

from __future__ import annotations

import pytest
import torch
from recipe_helpers import quick_vhs, tiny_config
from safetensors.torch import load_file

from trainers.export import budget_export_dir
from trainers.recipe import distill
from trainers.trainlog import read_log


@pytest.fixture(scope="module")
def vhs(tmp_path_factory):
    return quick_vhs(tmp_path_factory)


def _steps(out):
    return [r for r in read_log(out / "train_log.jsonl") if "note" not in r]


def test_max_steps_overrides_epochs_and_warmup_steps_set_the_ramp(random_zoo, vhs, tmp_path):
    # The quick split has 24 single-needle examples: 12 steps of global batch 2 per epoch. A
    # max_steps beyond one epoch (epochs: 1) must train that many steps, reshuffled into epoch 2
    # (transformers' convention), not stop silently after the first epoch.
    torch.set_num_threads(1)
    cfg = tiny_config(random_zoo, vhs, tmp_path / "kd", method="kd", max_steps=14, epochs=1, warmup_steps=4,
                      lr_schedule="constant", log_every=1)
    distill(cfg, progress=False)
    rows = _steps(tmp_path / "kd")
    assert [r["step"] for r in rows] == list(range(1, 15))
    assert rows[-1]["epoch"] == 1 and rows[11]["epoch"] == 0  # step 13 starts the second epoch
    lr = [r["lr_student"] for r in rows]
    assert lr[:5] == pytest.approx([cfg.lr_student * f for f in (0.25, 0.5, 0.75, 1.0, 1.0)])
    assert lr[-1] == pytest.approx(cfg.lr_student)


def test_budget_exports_equal_runs_of_that_budget(random_zoo, vhs, tmp_path):
    # One 3-step run with export_steps [2, 3] under a constant schedule: its step-2 export is the
    # model a 2-step run makes (same seed, same examples), and its step-3 export is its final one.
    torch.set_num_threads(1)
    # The distance-weight ramp is fixed in steps (attn_ramp_steps), so it does not depend on the run's length.
    kw = dict(method="laid", lr_schedule="constant", warmup_steps=0, grad_accum=1, attn_ramp_steps=2)
    distill(tiny_config(random_zoo, vhs, tmp_path / "long", max_steps=3, export_steps=[2, 3], **kw), progress=False)
    distill(tiny_config(random_zoo, vhs, tmp_path / "short", max_steps=2, **kw), progress=False)
    step2, step3 = (load_file(str(budget_export_dir(tmp_path / "long", s) / "model.safetensors")) for s in (2, 3))
    final = load_file(str(tmp_path / "long" / "export" / "model.safetensors"))
    short = load_file(str(tmp_path / "short" / "export" / "model.safetensors"))
    assert all(torch.equal(step2[k], short[k]) for k in short)  # gains folded the same way
    assert all(torch.equal(step3[k], final[k]) for k in final)
    assert any(not torch.equal(step2[k], step3[k]) for k in final)
    assert (budget_export_dir(tmp_path / "long", 2) / "head_weights.nc").is_file()
    with pytest.raises(ValueError, match=r"export_steps \[5\] lie beyond the run's 3"):
        distill(tiny_config(random_zoo, vhs, tmp_path / "bad", max_steps=3, export_steps=[5], **kw), progress=False)


@pytest.mark.parametrize("rows", ["text", "question"])
def test_attention_matching_on_selected_rows_trains(rows, random_zoo, vhs, tmp_path):
    torch.set_num_threads(1)
    distill(tiny_config(random_zoo, vhs, tmp_path / rows, attn_rows=rows, max_steps=1, grad_accum=1), progress=False)
    row = _steps(tmp_path / rows)[0]
    assert row["attn_loss"] > 0 and row["attn_grad_norm"] > 0


def test_rope_gains_train_at_their_own_rate(random_zoo, vhs, tmp_path):
    # Adam moves every parameter by ~its rate per step whatever the loss weights: with lr_gain the
    # gains move by ~lr_gain, not by the mixers' lr_aux (which they follow when lr_gain is null).
    import xarray as xr

    torch.set_num_threads(1)
    moved = {}
    for name, lr_gain in (("aux", None), ("own", 1e-5)):
        distill(tiny_config(random_zoo, vhs, tmp_path / name, max_steps=1, grad_accum=1, lr_aux=1e-2, lr_gain=lr_gain),
                progress=False)
        ds = xr.load_dataset(tmp_path / name / "head_weights.nc")
        moved[name] = float(abs(ds["gain_q"] - 1).max())
        row = _steps(tmp_path / name)[0]
        assert row["lr_gain"] == pytest.approx(lr_gain or 1e-2) and row["lr_aux"] == pytest.approx(1e-2)
    assert 5e-3 < moved["aux"] < 2e-2 and moved["own"] < 2e-5


def test_matched_heads_target_trains(random_zoo, vhs, tmp_path):
    torch.set_num_threads(1)
    distill(tiny_config(random_zoo, vhs, tmp_path / "m", attention_target="matched_heads", attn_rows="question",
                        max_steps=1, grad_accum=1), progress=False)
    row = _steps(tmp_path / "m")[0]
    assert row["attn_loss"] > 0 and row["attn_grad_norm"] > 0
