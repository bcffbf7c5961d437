"""Load and save model folders of any supported family: one code path for toy and real checkpoints.

Everything in the workbench loads models through `load_model` / `load_processor`, which call
`AutoModelForImageTextToText.from_pretrained` and `AutoProcessor.from_pretrained` on a local
folder. A user with real weights on disk changes only the path. The folder's config.json
`model_type` must belong to a supported family (`laid.model.families`); any other is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from laid.io import atomic_dir
from laid.model import processor as _processor  # registers the torchvision-free processors
from laid.model.families import UnknownFamilyError, family_for_type

_processor.register()


class ModelFolderError(ValueError):
    """A model folder is missing or holds a model type no family adapter supports."""


def check_model_dir(path: str | Path) -> Path:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelFolderError(f"model folder {path} has no config.json: pass a Hugging Face model folder (see `laid zoo`)")
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    try:
        family_for_type(model_type, f"model folder {path}")
    except UnknownFamilyError as e:
        raise ModelFolderError(str(e)) from None
    return path


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    # bf16 on GPU (as the paper's A800 runs), fp32 on CPU where bf16 matmuls are slow.
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_model(
    path: str | Path,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    attn_implementation: str = "sdpa",
    **kwargs,
):
    path = check_model_dir(path)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=dtype, attn_implementation=attn_implementation, **kwargs
    )
    return model.to(device).eval()


def load_processor(path: str | Path):
    path = check_model_dir(path)
    return AutoProcessor.from_pretrained(path)


def save_folder_atomically(model, processor, out_dir: str | Path, extra_files: dict[str, str] | None = None) -> Path:
    """Save model + processor (+ small text files) as a folder that appears complete or not at all.

    A crash mid-save leaves the previous folder intact (laid.io.atomic_dir).
    """
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        if processor is not None:
            processor.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return Path(out_dir)
