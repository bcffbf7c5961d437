"""Pairing checks and `laid plan` from config files: tiny zoo pairs, real Qwen2.5-VL shapes, failures."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch
from transformers import Qwen2_5_VLConfig

from trainers.pairing import PairingError, check_pair, parse_layer_pairs
from trainers.plan import plan, register_plan
from zoo_helpers import zoo_text

torch.set_num_threads(1)

# Published Qwen2.5-VL configs (platform-facts.md; vision tower shared by the family).
VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14, spatial_merge_size=2,
              temporal_patch_size=2, tokens_per_second=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31])
REAL = {
    "32b": dict(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40, num_key_value_heads=8, vocab_size=152064, tie=False),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, tie=False),
    "3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2, vocab_size=151936, tie=True),
}


def write_real_config(root, name, **override):
    text = dict(REAL[name])
    tie = text.pop("tie")
    text.update(max_position_embeddings=128000, rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]})
    text.update(override)
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=dict(VISION, out_hidden_size=text["hidden_size"]),
                           image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                           vision_end_token_id=151653, tie_word_embeddings=tie)
    out = root / f"qwen2.5-vl-{name}"
    cfg.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def real_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_configs")
    return {name: write_real_config(root, name) for name in REAL}


def edited_copy(src, dst, edit):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    edit(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_tiny_pairs_plan_and_param_counts_match_the_real_models(random_zoo):
    from laid.model.loading import load_model

    p7 = plan(random_zoo["tiny-32b"], random_zoo["tiny-7b"], seq_len=512)
    pr = p7.pairing
    assert pr.layer_pairs == [(2, 3)]  # last student layer <- last teacher layer
    t, s = zoo_text("tiny-32b"), zoo_text("tiny-7b")
    assert pr.q_mixer_shape == (s.num_attention_heads, t.num_attention_heads)
    assert pr.k_mixer_shape == (s.num_key_value_heads, t.num_key_value_heads)
    assert pr.shared_vocab == 128 and "same vocabulary" in pr.vocab_note
    assert any("tokenizers agree" in n for n in pr.notes)
    pairs = s.hidden_size // s.num_attention_heads // 2  # rotary pairs per head
    assert p7.gain_shapes == ((1, s.num_attention_heads, pairs), (1, s.num_key_value_heads, pairs))  # mapped layer only
    for shape, name in ((pr.teacher, "tiny-32b"), (pr.student, "tiny-7b")):
        assert shape.n_params == sum(x.numel() for x in load_model(random_zoo[name], device="cpu").parameters())

    p3 = plan(random_zoo["tiny-32b"], random_zoo["tiny-3b"], layer_pairs="0:1,-1:-1").pairing
    assert p3.layer_pairs == [(0, 1), (1, 3)]
    s3 = zoo_text("tiny-3b")
    assert p3.q_mixer_shape == (s3.num_attention_heads, t.num_attention_heads)
    assert p3.k_mixer_shape == (s3.num_key_value_heads, t.num_key_value_heads)
    assert p3.shared_vocab == 112 and "shared token ids [0, 112)" in p3.vocab_note


def test_layer_map_proportional_pairs_every_student_layer(random_zoo):
    from trainers.pairing import map_layers

    assert map_layers("last", 28, 64) == [(27, 63)]
    prop = map_layers("proportional", 28, 64)
    assert [s for s, _ in prop] == list(range(28)) and prop[0] == (0, 0) and prop[-1] == (27, 63)
    teacher = [t for _, t in prop]
    assert teacher == sorted(set(teacher))  # strictly increasing: depth order kept, no teacher layer twice
    p = check_pair(random_zoo["tiny-32b"], random_zoo["tiny-7b"], layer_map="proportional")
    assert p.layer_pairs == [(0, 0), (1, 2), (2, 3)] and p.layer_map == "proportional"
    assert check_pair(random_zoo["tiny-32b"], random_zoo["tiny-3b"], layer_map="proportional").layer_pairs == [(0, 0), (1, 3)]
    assert check_pair(random_zoo["tiny-32b"], random_zoo["tiny-7b"], "0:1").layer_map == "explicit"
    with pytest.raises(PairingError, match="choose one"):
        check_pair(random_zoo["tiny-32b"], random_zoo["tiny-7b"], "0:1", layer_map="proportional")
    out = plan(random_zoo["tiny-32b"], random_zoo["tiny-7b"], layer_map="proportional").format()
    assert "proportional): 0 <- 0, 1 <- 2, 2 <- 3" in out


def test_real_32b_to_7b_and_3b_shapes_and_memory(real_dirs):
    p7 = plan(real_dirs["32b"], real_dirs["7b"], n_gpus=4, seq_len=7401)  # paper: 4 GPUs, <= 20 images
    pr = p7.pairing
    assert pr.layer_pairs == [(27, 63)]  # the paper's 27 <-> 63
    assert pr.q_mixer_shape == (28, 40) and pr.k_mixer_shape == (4, 8)
    # Parameter counts of the published checkpoints: 32B 33.45B, 7B 8.29B, 3B 3.75B.
    assert pr.teacher.n_params / 1e9 == pytest.approx(33.45, rel=0.01)
    assert pr.student.n_params / 1e9 == pytest.approx(8.29, rel=0.01)
    # ZeRO-3 over the paper's 4 x 80 GB: sharded states dominate, and it fits.
    assert p7.memory["teacher weights"] == pytest.approx(2 * 33.45e9 / 4 / 2**30, rel=0.01)
    vision = pr.student.n_vision_params  # frozen (freeze_vision): fp32 weights only
    assert p7.memory["student states"] == pytest.approx((16 * (8.29e9 - vision) + 4 * vision) / 4 / 2**30, rel=0.01)
    # FSDP2 keeps the teacher's final norm + lm_head gathered (bf16, 152064 x 5120) and the student's root
    fsdp = plan(real_dirs["32b"], real_dirs["7b"], n_gpus=4, seq_len=7401, sharding="fsdp2")
    assert fsdp.memory["teacher tail (FSDP2)"] == pytest.approx(2 * 152064 * 5120 / 2**30, rel=1e-6)
    assert fsdp.total_gib > p7.total_gib + 3
    # host RAM while loading: FSDP2's rank-0 loading holds one copy of each model (bf16 teacher, fp32 student)
    assert fsdp.host_gib == pytest.approx((2 * 33.45e9 + 4 * 8.29e9) / 2**30, rel=0.01)
    assert plan(real_dirs["32b"], real_dirs["7b"], n_gpus=4, sharding="none").host_gib == pytest.approx(4 * fsdp.host_gib)
    assert 40 < p7.total_gib < 80
    one_gpu = plan(real_dirs["32b"], real_dirs["7b"], n_gpus=1, seq_len=7401)
    assert one_gpu.total_gib > 150  # the reason the recipe ships ZeRO-3 / FSDP configs
    longer = plan(real_dirs["32b"], real_dirs["7b"], n_gpus=4, seq_len=2 * 7401)
    assert longer.memory["student activations"] == pytest.approx(2 * p7.memory["student activations"], rel=1e-6)

    p3 = plan(real_dirs["32b"], real_dirs["3b"], n_gpus=4).pairing
    assert p3.layer_pairs == [(35, 63)]
    assert p3.q_mixer_shape == (16, 40) and p3.k_mixer_shape == (2, 8)
    assert p3.student.n_params / 1e9 == pytest.approx(3.75, rel=0.01)
    assert "151936" in p3.vocab_note and "152064" in p3.vocab_note
    assert any("tokenizers not compared" in n for n in p3.notes)


def test_incompatible_pairs_fail_with_reasons(random_zoo, tmp_path, real_dirs):
    def head_dim_24(cfg):
        cfg["text_config"].update(hidden_size=96, num_attention_heads=4)
        cfg["text_config"]["rope_parameters"]["mrope_section"] = [4, 4, 4]

    bad = edited_copy(random_zoo["tiny-7b"], tmp_path / "hd", head_dim_24)
    with pytest.raises(PairingError, match="head_dim differs .teacher 32, student 24"):
        check_pair(random_zoo["tiny-32b"], bad)
    bad = edited_copy(random_zoo["tiny-7b"], tmp_path / "rope", lambda c: c["text_config"]["rope_parameters"].update(rope_theta=1e4))
    with pytest.raises(PairingError, match="RoPE settings differ.*rope_theta"):
        check_pair(random_zoo["tiny-32b"], bad)
    bad = edited_copy(random_zoo["tiny-7b"], tmp_path / "patch", lambda c: c["vision_config"].update(spatial_merge_size=1))
    with pytest.raises(PairingError, match="vision patching differ.*spatial_merge_size"):
        check_pair(random_zoo["tiny-32b"], bad)
    with pytest.raises(PairingError, match="student layer 27 out of range"):
        check_pair(random_zoo["tiny-32b"], random_zoo["tiny-7b"], "27:63")
    with pytest.raises(PairingError, match="STUDENT:TEACHER"):
        parse_layer_pairs("27-63")
    # A real 32B teacher cannot teach a toy student: several reasons, all named. (Its head_dim 128 is not
    # one: the toy's 16 rotary pairs are every 4th of the real 64, so Q/K would align on those.)
    with pytest.raises(PairingError, match="vision patching differ.*vision token ids differ"):
        check_pair(real_dirs["32b"], random_zoo["tiny-7b"])


def test_plan_command_prints_the_plan(random_zoo, capsys):
    parser = argparse.ArgumentParser(prog="laid")
    register_plan(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["plan", "--teacher", str(random_zoo["tiny-32b"]), "--student", str(random_zoo["tiny-3b"]),
                              "--gpus", "2", "--seq-len", "600"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    t, s = zoo_text("tiny-32b"), zoo_text("tiny-3b")
    mixers = f"W_Q {s.num_attention_heads}x{t.num_attention_heads}, W_K {s.num_key_value_heads}x{t.num_key_value_heads}"
    assert "1 <- 3" in out and mixers in out and "shared token ids [0, 112)" in out and "total" in out
