"""bench/gpu_check.sh's CPU dry run: every part of the GPU check runs and the report is written."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_script_parses():
    assert subprocess.run(["bash", "-n", str(REPO / "bench" / "gpu_check.sh")]).returncode == 0


def test_gpu_check_dry_run_writes_every_part(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    out = tmp_path / "gpu_check.md"
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 0
    text = out.read_text()
    for part in ("## 1. Step time", "LAid / KD =", "## 2. MFU", "## 3. Long sequences", "## 4. Peak memory vs `laid plan`", "DRY RUN"):
        assert part in text, part
    # both long-sequence lengths were measured, and the step ratio is a real measurement
    assert "| 256 |" in text and "| 512 |" in text
    ratio = float(text.split("LAid / KD = ")[1].split()[0])
    assert 0.8 < ratio < 5
