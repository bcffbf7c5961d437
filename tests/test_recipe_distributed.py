"""Two CPU processes (accelerate launch, gloo) train like one process with the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from recipe_helpers import quick_vhs, tiny_config
from safetensors.torch import load_file

from trainers.recipe import distill
from trainers.trainlog import read_log

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(random_zoo, tmp_path_factory, tmp_path):
    torch.set_num_threads(1)
    vhs = quick_vhs(tmp_path_factory)
    # global batch 2 = 1 process x 2 accumulation steps = 2 processes x 1 step
    cfg = tiny_config(random_zoo, vhs, tmp_path / "one", max_steps=3, grad_accum=2, per_device_batch_size=1)
    one = distill(cfg, progress=False)

    config_file = tmp_path / "two.yaml"
    data = cfg.to_dict()
    data.update(output_dir=str(tmp_path / "two"), grad_accum=1)
    config_file.write_text(yaml.safe_dump(data))
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs/accelerate/multi_cpu.yaml"),
        "--num_processes", "2", "--main_process_port", str(_free_port()),
        "-m", "laid_workflows.cli", "distill", "--config", str(config_file), "--no-progress",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = tmp_path / "two" / "export"

    log_one, log_two = read_log(tmp_path / "one" / "train_log.jsonl"), read_log(tmp_path / "two" / "train_log.jsonl")
    assert len(log_one) == len(log_two) == 3
    for a, b in zip(log_one, log_two):
        for term in ("total", "laid", "attn", "kl", "sft"):
            assert b[f"{term}_loss"] == pytest.approx(a[f"{term}_loss"], rel=1e-5, abs=1e-7)
    w1, w2 = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-5, atol=1e-6)
