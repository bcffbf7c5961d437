"""Load and save model folders of any supported family: one code path for toy and real checkpoints.

Everything in the workbench loads models through `load_model` / `load_processor`, which call
`AutoModelForImageTextToText.from_pretrained` and `AutoProcessor.from_pretrained` on a local
folder. A user with real weights on disk changes only the path. The folder's config.json
`model_type` must belong to a supported family (`laid.model.families`); any other is refused.

Where a model goes (`placement`): `device="auto"` (the default of `laid eval` / `laid diagnose`)
is the CPU without a GPU, the GPU with one, and with several visible GPUs the model sharded across
them by accelerate (`device_map="auto"`: whole decoder layers per GPU, run one after another), so
a 32B teacher that fits no single GPU evaluates on 4; "cpu", "cuda", "cuda:1" put it on that
device. dtype "auto": bf16 wherever a GPU holds weights, fp32 on the CPU.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
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


DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def visible_gpus() -> int:
    """CUDA devices this process may use (CUDA_VISIBLE_DEVICES applies)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def default_dtype(device: torch.device) -> torch.dtype:
    # bf16 on GPU (as the paper's A800 runs), fp32 on CPU where bf16 matmuls are slow.
    return torch.bfloat16 if device.type == "cuda" else torch.float32


@dataclass(frozen=True)
class Placement:
    """Where load_model puts a model: on one `device`, or sharded (`device_map="auto"`) across GPUs."""

    device: torch.device
    sharded: bool = False  # True: accelerate spreads the layers over every visible GPU

    def dtype(self, dtype: torch.dtype | str | None = None) -> torch.dtype:
        """`dtype` (a torch dtype or a DTYPES name); "auto" / None: bf16 on GPUs, fp32 on the CPU."""
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
            dtype = DTYPES[dtype]
        return dtype or default_dtype(self.device)  # a sharded placement's device is cuda


def placement(device: torch.device | str | None = "auto", n_gpus: int | None = None) -> Placement:
    """Where `device` puts a model when `n_gpus` GPUs are visible (default: counted): "auto" shards
    across several GPUs, else the one GPU or the CPU; None (library callers that train or evaluate
    small models in worker processes): the first GPU or the CPU, never sharded; "cpu", "cuda",
    "cuda:<i>", a torch.device: that device. A GPU asked for but not there is a one-line error."""
    n_gpus = visible_gpus() if n_gpus is None else n_gpus
    if device is None or str(device) == "auto":
        if n_gpus > 1 and device is not None:
            return Placement(torch.device("cuda"), sharded=True)
        return Placement(torch.device("cuda" if n_gpus else "cpu"))
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; choose auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda" and (device.index or 0) >= n_gpus:
        raise ValueError(f"device {device} asked for but {n_gpus} CUDA device(s) visible; use --device cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device} is not supported here; choose auto, cpu, cuda or cuda:<index>")
    return Placement(device)


def offload_warning(device_map: dict | None) -> str | None:
    """One line when a sharded model did not fit the visible GPUs and accelerate put modules on the
    CPU or disk (it runs, slowly); None when every module is on a GPU."""
    away = [name for name, where in (device_map or {}).items() if where in ("cpu", "disk")]
    if not away:
        return None
    return (f"the model does not fit the visible GPUs: {len(away)} module(s) ({away[0]}, ...) run from the CPU or disk, "
            f"slowly; use more GPUs or --dtype bfloat16")


def load_model(
    path: str | Path,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str = "sdpa",
    **kwargs,
):
    """The model of a folder in eval mode, placed by `placement(device)` (None: the first GPU or the
    CPU) in `dtype` (None / "auto": bf16 on GPUs, fp32 on the CPU)."""
    path = check_model_dir(path)
    where = placement(device)
    dtype = where.dtype(dtype)
    if where.sharded:  # accelerate places whole decoder layers per GPU and moves activations between them
        kwargs = {"device_map": "auto", **kwargs}
    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=dtype, attn_implementation=attn_implementation, **kwargs
    )
    if where.sharded:
        warning = offload_warning(getattr(model, "hf_device_map", None))
        if warning:
            logging.getLogger(__name__).warning(f"{path}: {warning}")
        return model.eval()
    return model.to(where.device).eval()


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
