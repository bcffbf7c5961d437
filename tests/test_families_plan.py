"""`laid plan` on the published config.json of real checkpoints of the added families (no weights):
Gemma 3 27B -> 4B, Qwen3-VL 8B -> 4B, Qwen2-VL 7B -> 2B; a cross-family pair is refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from laid.model.families import family_of
from laid_workflows.cli import main
from trainers.pairing import PairingError, check_pair, read_shape
from trainers.plan import plan

torch.set_num_threads(1)
CONFIGS = Path(__file__).parent / "data" / "family_configs"
PAIRS = [("gemma-3-27b-it", "gemma-3-4b-it"), ("qwen3-vl-8b-instruct", "qwen3-vl-4b-instruct"),
         ("qwen2-vl-7b-instruct", "qwen2-vl-2b-instruct")]


@pytest.mark.parametrize("teacher, student", PAIRS)
def test_plan_prints_pairs_and_memory_for_published_configs(teacher, student, capsys):
    assert main(["plan", "--teacher", str(CONFIGS / teacher), "--student", str(CONFIGS / student), "--gpus", "4"]) == 0
    out = capsys.readouterr().out
    p = plan(CONFIGS / teacher, CONFIGS / student, n_gpus=4, layer_map="proportional")
    t, s = p.pairing.teacher, p.pairing.student
    assert f"layer pairs (student <- teacher; last): {s.n_layers - 1} <- {t.n_layers - 1}" in out
    assert "total" in out and 1 < p.total_gib < 1000
    assert [a for a, _ in p.pairing.layer_pairs] == list(range(s.n_layers))
    assert all(s.layer_types[a] == t.layer_types[b] for a, b in p.pairing.layer_pairs)  # Gemma: sliding with sliding
    family = family_of(CONFIGS / student)
    if family.qk_norm:  # one RoPE gain for all heads, folded into the QK-norm
        assert p.gain_shapes[0][1] == 1 and "shared by all heads" in out
    if family.name == "gemma3":  # head_dim 128 -> 256: Q/K aligned on the 64 shared rotary pairs
        assert (t.head_dim, s.head_dim) == (128, 256) and all(len(sd) == len(td) == 128 for sd, td in p.pairing.qk_dims.values())
        assert "runs on the 64 rotary pairs both share" in out
    if family.name == "qwen3_vl":
        assert s.deepstack == [0, 1, 2] and "DeepStack" in out


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
