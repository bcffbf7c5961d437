"""Real-width, layer-truncated Qwen2.5-VL models run a full distillation step of every method, and
`laid plan`'s estimate matches the memory measured per component.

Teacher: Qwen2.5-VL-32B width (hidden 5120, 40 heads, 8 KV heads, head_dim 128), students 7B
(3584, 28, 4) and 3B (2048, 16, 2) width; 1 decoder layer each, a 1-block vision tower of width
64, vocabulary 1,024 and MLP width 1,024 (no attention shape depends on it; it keeps the test at
~1 GB of RAM). The plan is computed from the truncated folders' config.json, so it is scaled to
the truncation by construction; fp32 (precision "fp32") because bf16 matmuls are ~20x slower on
this CPU. One bf16 step per method runs on the 3B-width student (finite terms, weights move).
"""

from __future__ import annotations

import math

import pytest
import torch

from trainers.config import METHODS
from trainers.plan import plan
from trainers.realwidth import (build_model, distill_step, plan_against_measured, synthetic_batch, truncated_config,
                                write_config_folder)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("realwidth")
    cfgs = {n: truncated_config(n, 1, intermediate_size=1024) for n in ("32b", "7b", "3b")}
    dirs = {n: write_config_folder(c, root / n) for n, c in cfgs.items()}
    return cfgs, dirs, build_model(cfgs["32b"])


@pytest.mark.parametrize("method", METHODS)
def test_fp32_step_of_every_method_at_7b_width(method, models):
    cfgs, _, teacher = models
    student = build_model(cfgs["7b"])
    before = {n: p.detach().clone() for n, p in student.named_parameters() if p.requires_grad}
    out = distill_step(teacher, student, method, synthetic_batch(cfgs["7b"], 4, 40, 4), bf16=False, measure=False)
    assert all(math.isfinite(v) for v in out["terms"].values()), out["terms"]
    if method != "sft-lora":  # (LoRA trains adapters on a copy)
        assert any(not torch.equal(before[n], p) for n, p in student.named_parameters() if n in before)


@pytest.mark.parametrize("method", METHODS)
def test_bf16_step_of_every_method_at_3b_width(method, models):
    cfgs, _, teacher = models
    teacher_bf16 = teacher.to(torch.bfloat16)  # the GPU setting: bf16 teacher, fp32 student under bf16 autocast
    try:
        out = distill_step(teacher_bf16, build_model(cfgs["3b"]), method, synthetic_batch(cfgs["3b"], 2, 8, 2), bf16=True, measure=False)
    finally:
        teacher.float()
    assert all(math.isfinite(v) for v in out["terms"].values()), out["terms"]


def test_plan_matches_measured_memory_per_component(models):
    """Within 25% for every component the plan lists and the step holds at once; LAid's extra
    activations (laid minus kd) are the plan's 'LAid loss' line."""
    cfgs, dirs, teacher = models
    student = build_model(cfgs["7b"])
    batch = synthetic_batch(cfgs["7b"], 16, 100, 8)
    seq, keep = batch["input_ids"].shape[1], 9
    est = plan(dirs["32b"], dirs["7b"], seq_len=seq, max_response=keep, sharding="none",
               gradient_checkpointing=False, precision="fp32").memory  # fmt: skip
    laid = distill_step(teacher, student, "laid", batch, bf16=False)["bytes"]
    pairs = plan_against_measured(est, laid, distill_step(teacher, student, "kd", batch, bf16=False)["bytes"])
    for name, (measured, estimate) in pairs.items():
        assert estimate == pytest.approx(measured, rel=0.25), f"{name}: plan {estimate:.1f} MiB, measured {measured:.1f} MiB"
