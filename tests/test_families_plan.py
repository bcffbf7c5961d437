"""`laid plan` on the published config.json of real checkpoints of every added family (no weights):
Gemma 3 27B -> 4B, Qwen3-VL 8B -> 4B and 8B -> 2B, Qwen2-VL 7B -> 2B, InternVL3 8B -> 2B (-hf); the
parameter counts against the published model sizes, the default pairing per family (Gemma 3: its
last global layers, a sliding-window pair warned about), the memory lines against the counts, and a
cross-family pair refused in one line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from laid.model.families import family_of
from laid_workflows.cli import main
from trainers.pairing import PairingError, check_pair, read_shape
from trainers.plan import GiB, plan

torch.set_num_threads(1)
CONFIGS = Path(__file__).parent / "data" / "family_configs"
# Published sizes (billions of parameters, as the checkpoints' model pages count their safetensors; see
# tests/data/family_configs/README.md). A config read wrong (a tied InternVL3 lm_head, a missing
# vision tower, Qwen2-VL's head_dim) moves a count by more than 2%.
PUBLISHED = {"gemma-3-27b-it": 27.4, "gemma-3-4b-it": 4.30, "qwen3-vl-8b-instruct": 8.77, "qwen3-vl-4b-instruct": 4.44,
             "qwen3-vl-2b-instruct": 2.13, "qwen2-vl-7b-instruct": 8.29, "qwen2-vl-2b-instruct": 2.21,
             "internvl3-8b-hf": 7.94, "internvl3-2b-hf": 2.09, "qwen2.5-vl-7b-instruct": 8.29, "qwen2.5-vl-3b-instruct": 3.75}
PAIRS = [("gemma-3-27b-it", "gemma-3-4b-it"), ("qwen3-vl-8b-instruct", "qwen3-vl-4b-instruct"),
         ("qwen3-vl-8b-instruct", "qwen3-vl-2b-instruct"), ("qwen2-vl-7b-instruct", "qwen2-vl-2b-instruct"),
         ("internvl3-8b-hf", "internvl3-2b-hf")]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_the_published_sizes(name):
    assert read_shape(CONFIGS / name).n_params / 1e9 == pytest.approx(PUBLISHED[name], rel=0.02)


@pytest.mark.parametrize("teacher, student", PAIRS)
def test_plan_of_published_configs_pairs_the_last_global_layers_and_counts_memory(teacher, student, capsys):
    assert main(["plan", "--teacher", str(CONFIGS / teacher), "--student", str(CONFIGS / student), "--gpus", "4"]) == 0
    out = capsys.readouterr().out
    p = plan(CONFIGS / teacher, CONFIGS / student, n_gpus=4)
    t, s = p.pairing.teacher, p.pairing.student
    full_s = [i for i, kind in enumerate(s.layer_types) if kind == "full_attention"]
    full_t = [i for i, kind in enumerate(t.layer_types) if kind == "full_attention"]
    assert p.pairing.layer_pairs == [(full_s[-1], full_t[-1])] and not p.pairing.warnings  # global to global
    assert f"layer pairs (student <- teacher; last): {full_s[-1]} <- {full_t[-1]}" in out and "warning" not in out
    # Sharded states from the counts (ZeRO-3 over 4 GPUs): bf16 teacher, AdamW student, frozen vision in fp32.
    assert p.memory["teacher weights"] * GiB == pytest.approx(2 * PUBLISHED[teacher] * 1e9 / 4, rel=0.02)
    trained = PUBLISHED[student] * 1e9 - s.n_vision_params
    assert p.memory["student states"] * GiB == pytest.approx((16 * trained + 4 * s.n_vision_params) / 4, rel=0.02)
    assert f"{'total':<22} {p.total_gib:8.2f} GiB" in out
    lines = [re.match(r"^  (\S.*?)\s+([\d.]+) GiB$", line) for line in out.splitlines()]
    printed = {m[1]: float(m[2]) for m in lines if m and m[1] != "total"}
    assert printed.keys() == p.memory.keys() and sum(printed.values()) == pytest.approx(p.total_gib, abs=0.01 * len(printed))
    assert [a for a, _ in plan(CONFIGS / teacher, CONFIGS / student, layer_map="proportional").pairing.layer_pairs] == \
        list(range(s.n_layers))  # every student layer, each with a teacher layer of its own type (Gemma)
    family = family_of(CONFIGS / student)
    if family.qk_norm:  # one RoPE gain for all heads, folded into the QK-norm
        assert p.gain_shapes[0][1] == 1 and "shared by all heads" in out
    if family.name == "gemma3":  # head_dim 128 -> 256: Q/K aligned on the 64 shared rotary pairs
        assert (t.head_dim, s.head_dim) == (128, 256) and all(len(sd) == len(td) == 128 for sd, td in p.pairing.qk_dims.values())
        assert "runs on the 64 rotary pairs both share" in out
    if family.name == "qwen3_vl":
        assert s.deepstack == [0, 1, 2] and "DeepStack" in out


def test_gemma_defaults_to_its_last_global_layers_and_warns_on_a_sliding_pair(capsys):
    teacher, student = CONFIGS / "gemma-3-27b-it", CONFIGS / "gemma-3-4b-it"
    assert check_pair(teacher, student).layer_pairs == [(29, 59)]  # not 33 <- 61, the last (sliding) layers
    assert main(["plan", "--teacher", str(teacher), "--student", str(student), "--layer-pairs", "33:61"]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "33 <- 61 is on sliding-window layers" in warnings[0]
    assert "student layer 33 sees the last 1024 tokens" in warnings[0] and "29 <- 59" in warnings[0]
    assert check_pair(teacher, student, "29:59").warnings == []


def test_gemma_shapes_come_from_the_published_layer_pattern():
    shape = read_shape(CONFIGS / "gemma-3-27b-it")
    full = [i for i, kind in enumerate(shape.layer_types) if kind == "full_attention"]
    assert full == list(range(5, 62, 6))  # 5 local : 1 global
    local, glob = shape.layouts["sliding_attention"], shape.layouts["full_attention"]
    # local: base 1e4 (rope_local_base_freq); global: base 1e6 with linear x8 (the published rope_scaling)
    assert float(local.inv_freq[1]) == pytest.approx(10_000 ** (-2 / 128)) and float(glob.inv_freq[1]) == pytest.approx(1e6 ** (-2 / 128) / 8)
    # explicit pairs: full with full aligns on the shared pairs; full with sliding is refused in one line
    assert check_pair(CONFIGS / "gemma-3-27b-it", CONFIGS / "gemma-3-4b-it", "29:59").layer_pairs == [(29, 59)]
    with pytest.raises(PairingError, match="student layer 29 .full_attention.*teacher layer 61 .sliding_attention.*one type"):
        check_pair(CONFIGS / "gemma-3-27b-it", CONFIGS / "gemma-3-4b-it", "29:61")


def test_a_cross_family_pair_is_refused_in_one_line(capsys):
    with pytest.raises(PairingError, match="teacher is Qwen3-VL and the student Gemma 3") as err:
        check_pair(CONFIGS / "qwen3-vl-8b-instruct", CONFIGS / "gemma-3-4b-it")
    assert "\n" not in str(err.value)
    assert main(["plan", "--teacher", str(CONFIGS / "qwen2-vl-7b-instruct"), "--student", str(CONFIGS / "qwen3-vl-4b-instruct")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "one family" in lines[0]


SHIPPED = {"qwen2.5-vl-7b_to_3b": ("qwen2.5-vl-7b-instruct", "qwen2.5-vl-3b-instruct"),
           "qwen3-vl-8b_to_2b": ("qwen3-vl-8b-instruct", "qwen3-vl-2b-instruct"),
           "gemma-3-27b_to_4b": ("gemma-3-27b-it", "gemma-3-4b-it")}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_distill_configs_plan_on_the_published_configs(name):
    """Each shipped real-scale config names its pair, pairs what the family's default gives (the last
    global layers), keeps the paper's weights and global batch, and fits the documented 4 x 80 GB."""
    from trainers.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs" / "distill"
    cfg, paper = load_config(root / f"{name}.yaml"), load_config(root / "qwen2.5-vl-32b_to_7b.yaml")
    teacher, student = SHIPPED[name]
    assert (Path(cfg.teacher_dir).name.lower(), Path(cfg.student_dir).name.lower()) == (teacher, student)
    assert cfg.method == "laid" and cfg.weights() == paper.weights() and cfg.tau == paper.tau
    assert cfg.per_device_batch_size * cfg.grad_accum * 4 == 8  # the paper's global batch on 4 GPUs
    p = plan(CONFIGS / teacher, CONFIGS / student, cfg.layer_pairs, n_gpus=4, batch_size=cfg.per_device_batch_size,
             max_response=cfg.max_response_len, chunk_size=cfg.attn_chunk_size)
    assert p.pairing.layer_pairs == check_pair(CONFIGS / teacher, CONFIGS / student).layer_pairs and not p.pairing.warnings
    assert p.total_gib < 80
