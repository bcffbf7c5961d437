"""Export a finished run as a plain Hugging Face folder of the student's family, plus its head weights.

    <output_dir>/export/            config.json, model.safetensors, processor + tokenizer files,
                                    README.md (model card, trainers/model_card.py),
                                    distill_config.yaml (the full run config), train_log.jsonl,
                                    head_weights.nc (LAid methods)
    <output_dir>/head_weights.nc    the same mixer weights (run-folder contract, docs/CONTRACTS.md)

The exported weights are the trained student with the RoPE gains folded into q_proj / k_proj, or
into the QK-norm weights in Qwen3-VL / Gemma 3 (`trainers.rope_gain.fold_into_state_dict`) and, for sft-lora, the LoRA adapters merged, so the
folder loads with `laid.model.loading.load_model` like any checkpoint and runs with zero overhead. The
weights are gathered with `accelerator.get_state_dict` (full state also under ZeRO-3 / FSDP),
loaded into a fresh CPU copy of the student on the main process and saved in the student folder's
original dtype. The folder is written atomically (`laid.model.loading.save_folder_atomically`).

head_weights.nc (xarray, named dims):
    w_q (layer_pair, student_head, teacher_head), w_k (layer_pair, student_kv_head, teacher_kv_head)
    coords student_layer(layer_pair), teacher_layer(layer_pair); attrs student_layers, teacher_layers
    gain_q (gain_layer, student_head, rotary_pair), gain_k (gain_layer, student_kv_head, rotary_pair)
    when RoPE gains were trained (their values before folding).
    attrs mixers_trained (1 when a term trains them, else they are their `mixer_init` values), mixer_init.
    w_q / w_k are the effective weights (unit rows under `alignment: cosine`); the health telemetry
    (`trainers.health.add_health`: mixer_row_norm, mixer_entropy, gain_product, and the logged
    series over `step`) is added to the same dataset.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from laid.eval.results import write_result
from laid.model.loading import load_model, save_folder_atomically
from trainers.config import DistillConfig
from trainers.engines import plain_model_loading
from trainers.students import apply_lora

EXPORT_DIR = "export"
BUDGETS_DIR = "budgets"
HEAD_WEIGHTS = "head_weights.nc"


def budget_export_dir(out: str | Path, step: int) -> Path:
    """<out>/budgets/step-XXXXXXXX: the export written after `step` optimizer steps (`export_steps`)."""
    return Path(out) / BUDGETS_DIR / f"step-{step:08d}"


def _subdict(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _folder_dtype(model_dir: str | Path) -> torch.dtype:
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    name = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    return getattr(torch, str(name).replace("torch.", ""), torch.float32)


def head_weights_dataset(state: dict, pairs: list[tuple[int, int]], gain_layers: list[int] | None, attrs: dict, rows: str = "free") -> xr.Dataset | None:
    """Mixer (and gain) weights of a DistillModule state dict as a labelled Dataset; None if none.

    rows: the mixers' parameterisation ("unit" / "free", trainers.head_mixer): w_q / w_k are the
    effective weights W, not the stored parameters.
    """
    from trainers.head_mixer import effective_weight

    if not pairs or f"align.0.mixer.q.weight" not in state:
        return None
    mixer = lambda i, which: effective_weight(state[f"align.{i}.mixer.{which}.weight"].float().cpu(), rows).numpy()
    w_q = np.stack([mixer(i, "q") for i in range(len(pairs))])
    w_k = np.stack([mixer(i, "k") for i in range(len(pairs))])
    ds = xr.Dataset(
        {
            "w_q": (("layer_pair", "student_head", "teacher_head"), w_q, {"long_name": "query head mixer W_Q (Eq. 3/7)"}),
            "w_k": (("layer_pair", "student_kv_head", "teacher_kv_head"), w_k, {"long_name": "key head mixer W_K (Eq. 3/7)"}),
        },
        coords={
            "layer_pair": np.arange(len(pairs)),
            "student_head": np.arange(w_q.shape[1]),
            "teacher_head": np.arange(w_q.shape[2]),
            "student_kv_head": np.arange(w_k.shape[1]),
            "teacher_kv_head": np.arange(w_k.shape[2]),
            "student_layer": ("layer_pair", np.array([s for s, _ in pairs])),
            "teacher_layer": ("layer_pair", np.array([t for _, t in pairs])),
        },
    )
    if gain_layers and "gain.q" in state:
        # A gain shared by all heads (QK-norm families, trainers.rope_gain) is shown at every head.
        g_q = state["gain.q"].float().cpu().expand(-1, w_q.shape[1], -1).numpy()
        g_k = state["gain.k"].float().cpu().expand(-1, w_k.shape[1], -1).numpy()
        ds["gain_q"] = (("gain_layer", "student_head", "rotary_pair"), g_q, {"long_name": "RoPE response gain, queries"})
        ds["gain_k"] = (("gain_layer", "student_kv_head", "rotary_pair"), g_k, {"long_name": "RoPE response gain, keys"})
        ds = ds.assign_coords(gain_layer=np.array(gain_layers), rotary_pair=np.arange(g_q.shape[-1]))
    ds.attrs.update(
        {"student_layers": np.array([s for s, _ in pairs]), "teacher_layers": np.array([t for _, t in pairs]), **attrs}
    )
    return ds


def build_export_model(state: dict, cfg: DistillConfig, gain_layers: list[int] | None):
    """A fresh CPU student carrying the trained weights, gains folded, LoRA merged (fp32).

    Built by one process alone, so never under ZeRO-3's collective loading (`plain_model_loading`).
    """
    with plain_model_loading():
        student = load_model(cfg.student_dir, device="cpu", dtype=torch.float32)
    if cfg.uses_lora:
        student = apply_lora(student, cfg)
    student.load_state_dict(_subdict(state, "student."), strict=True)
    if cfg.uses_lora:
        student = student.merge_and_unload()
    if gain_layers and "gain.q" in state:
        from trainers.rope_gain import RopeGain, fold_into_projections

        gains = RopeGain.for_model(student, gain_layers)
        gains.load_state_dict(_subdict(state, "gain."))
        fold_into_projections(student, gains)
    return student.eval()


def export_run(accelerator, module, cfg: DistillConfig, processor, pairs, out: str | Path,
               export_dir: str | Path | None = None) -> Path:
    """Write <out>/export and <out>/head_weights.nc from the prepared DistillModule (collective).

    With `export_dir` (a budget export, trainers.recipe.export_budget) the folder goes there and
    <out>/head_weights.nc is left to the final export."""
    out = Path(out)
    final = export_dir is None
    export_dir = out / EXPORT_DIR if final else Path(export_dir)
    state = accelerator.get_state_dict(module)  # full, unwrapped; gathered under sharding
    if accelerator.is_main_process:
        inner = accelerator.unwrap_model(module)
        gain_layers = list(inner.gain.layers) if inner.gain is not None else None
        student = build_export_model(state, cfg, gain_layers).to(_folder_dtype(cfg.student_dir))
        log_path = out / "train_log.jsonl"
        extra = {
            "distill_config.yaml": cfg.to_yaml(),
            "train_log.jsonl": log_path.read_text() if log_path.is_file() else "",
        }
        from trainers.model_card import CARD, model_card

        extra[CARD] = model_card(cfg, extra["train_log.jsonl"])  # rewritten with the eval table after evaluation
        save_folder_atomically(student, processor, export_dir, extra_files=extra)
        os.chmod(export_dir, 0o755)  # the atomic save's temp folder is owner-only
        attrs = {"method": cfg.method, "teacher_dir": str(cfg.teacher_dir), "student_dir": str(cfg.student_dir),
                 "mixers_trained": int(cfg.trains_mixers), "mixer_init": cfg.mixer_init}
        from trainers.health import add_health
        from trainers.losses.qk_alignment import ROWS_FOR_FORM
        from trainers.trainlog import read_log

        rows = ROWS_FOR_FORM[cfg.alignment]
        ds = head_weights_dataset(state, pairs, gain_layers, {**attrs, "alignment": cfg.alignment}, rows)
        if ds is not None:
            ds = add_health(ds, state, pairs, rows, gain_layers, read_log(log_path))
            write_result(ds, export_dir / HEAD_WEIGHTS)
            if final:
                write_result(ds, out / HEAD_WEIGHTS)
    accelerator.wait_for_everyone()
    return export_dir
