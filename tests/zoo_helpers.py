"""Expected shapes in tests come from the zoo configs, not from numbers copied out of them."""

from __future__ import annotations

from pathlib import Path

ZOO_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "zoo"


def zoo_text(name: str):
    """The text architecture (laid.zoo.configs.TextArch) of configs/zoo/<name>.yaml."""
    from laid.zoo.configs import load_zoo_config

    return load_zoo_config(ZOO_CONFIGS / f"{name}.yaml").text
