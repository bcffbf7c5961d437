"""The layering of the packages (pyproject.toml [tool.importlinter]) holds, and a wrong-way import fails it.

The contract: laid (core) < trainers | laid_analysis (independent) < laid_workflows (roof). The second
test copies the packages, adds one import that climbs a layer, and checks that `lint-imports` fails
naming both modules: this is what shows the contract can fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("laid", "trainers", "laid_analysis", "laid_workflows")
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    if not LINT.exists():
        pytest.fail(f"{LINT} missing: run scripts/setup.sh (import-linter is a dev dependency)")
    # cwd first on sys.path: the packages under `root` shadow the editable install.
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"],
                          cwd=root, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_layers_contract_is_kept():
    res = _lint(REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "1 kept, 0 broken" in res.stdout


@pytest.mark.parametrize("victim, line, upper", [
    ("laid/data/render.py", "import trainers.recipe  # wrong way\n", "trainers.recipe"),
    ("trainers/optim.py", "import laid_analysis.spectra  # sideways\n", "laid_analysis.spectra"),
])
def test_wrong_way_import_breaks_the_contract(tmp_path, victim, line, upper):
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / victim
    path.write_text(line + path.read_text())
    res = _lint(tmp_path)
    assert res.returncode != 0
    assert "BROKEN" in res.stdout
    importer = victim.removesuffix(".py").replace("/", ".")
    assert importer in res.stdout and upper in res.stdout, res.stdout[-3000:]


def test_core_loads_no_upper_package_by_string():
    """import-linter cannot see importlib strings; the core must not hide an upward arrow in one."""
    pattern = re.compile(r"""(import_module|__import__)\(\s*['"](trainers|laid_analysis|laid_workflows)""")
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "laid").rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
    # and the check itself can fire
    assert pattern.search("importlib.import_module('trainers.recipe')")
