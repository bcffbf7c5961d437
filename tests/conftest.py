"""Shared fixtures: tiny random-init zoo folders built from the real zoo configs (fast)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ZOO_CONFIGS = REPO / "configs" / "zoo"


@pytest.fixture(scope="session")
def random_zoo(tmp_path_factory) -> dict[str, Path]:
    """{'tiny-32b': dir, 'tiny-7b': dir, 'tiny-3b': dir}: random-init Hugging Face folders."""
    from laid.zoo.build import build_random_folder
    from laid.zoo.configs import load_zoo_config

    root = tmp_path_factory.mktemp("random_zoo")
    return {
        name: build_random_folder(load_zoo_config(ZOO_CONFIGS / f"{name}.yaml"), root / name)
        for name in ("tiny-32b", "tiny-7b", "tiny-3b")
    }


@pytest.fixture(scope="session")
def family_pairs(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """{family: {"teacher": dir, "student": dir}} for the added families (tests/family_helpers.py)."""
    from family_helpers import FAMILIES, build_pair

    root = tmp_path_factory.mktemp("family_zoo")
    return {family: build_pair(family, root) for family in FAMILIES}
