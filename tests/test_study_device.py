"""The prepared GPU script (scripts/study_device.sh) runs every step on the CPU (--dry-run): data, the
shipped testbed zoo, the launcher check as `--gpus 8 --dry-run`, `laid study`, and the archive it hands back."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_device_script_dry_run_writes_the_study_archive(tmp_path):
    env = {**os.environ, "RUN_DIR": str(tmp_path / "run"), "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO / "scripts" / "study_device.sh"), "--dry-run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    with tarfile.open(tmp_path / "out" / "study.tgz") as tar:
        names = tar.getnames()
    assert "study/window.nc" in names and any(n.endswith("evals/step-00000002.nc") for n in names)
    assert not any("/budgets/" in n or "/checkpoints/" in n for n in names)  # models stay on the device
    assert (tmp_path / "out" / "window.md").is_file()
    # the GPU path: every run of the launcher check launched with accelerate across 8 processes (FSDP2), nothing run
    launches = [line for line in (tmp_path / "out" / "launcher.txt").read_text().splitlines() if line.startswith("train ")]
    assert len(launches) == 3 and all("fsdp.yaml --num_processes 8" in line for line in launches)
    assert not (tmp_path / "run" / "launcher").exists()
