"""Load a model for evaluation as one of the inference-time variants of the paper's Table 1.

base        the checkpoint as is (`laid.model.loading.load_model`)
yarn        YaRN RoPE scaling, `laid/eval/variants/yarn.py`
selfextend  SelfExtend grouped attention, `laid/eval/variants/selfextend.py`

The two context-extension methods are evaluation options (no training); each module exposes
`load_model(model_dir, device=None, dtype=None, **options) -> model`.
"""

from __future__ import annotations

from pathlib import Path

from laid.eval.variants import selfextend, yarn
from laid.methods import INFERENCE_VARIANTS
from laid.model.loading import load_model, load_processor

EXTENSION_MODULES = {"yarn": yarn, "selfextend": selfextend}
VARIANTS = INFERENCE_VARIANTS  # base + the keys of EXTENSION_MODULES


def parse_options(pairs: list[str] | None) -> dict:
    """["factor=4", "name=x", "flag=true"] -> {"factor": 4, "name": "x", "flag": True}.

    Values are read as int, then float, then true/false, else kept as strings.
    """
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"variant option {pair!r} must look like key=value")
        options[key.strip()] = _parse_value(value.strip())
    return options


def _parse_value(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def load_for_eval(model_dir: str | Path, variant: str = "base", options: dict | None = None, device=None, dtype=None):
    """(model in eval mode, processor) for `variant` of the checkpoint in `model_dir`."""
    options = dict(options or {})
    if variant not in VARIANTS:
        raise ValueError(f"unknown evaluation variant {variant!r}; known variants: {', '.join(VARIANTS)}")
    processor = load_processor(model_dir)  # also checks that the folder is a Qwen2.5-VL checkpoint
    if variant == "base":
        if options:
            raise ValueError(f"the base variant takes no options, got {sorted(options)}")
        return load_model(model_dir, device=device, dtype=dtype), processor
    model = EXTENSION_MODULES[variant].load_model(model_dir, device=device, dtype=dtype, **options)
    return model.eval(), processor
