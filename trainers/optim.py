"""Optimizer and learning-rate schedule of the recipe.

AdamW with the paper's two rates: the student's trainable parameters at lr_student (1e-5) with
weight decay, and the head mixers + RoPE gains ("weight coefficients") at lr_aux (1e-4; the gains
in their own group, at `lr_gain` when set) without weight decay (decay would pull mixing weights and gains towards 0, which means nothing
for them). Both groups share one schedule: linear warmup over ceil(warmup_ratio * total) steps
(paper: 0.05; or `warmup_steps`), then cosine or linear decay to 0, or constant (laid.schedule.lr_factor).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from laid.schedule import lr_factor
from trainers.config import DistillConfig


def param_groups(module: nn.Module, cfg: DistillConfig) -> list[dict]:
    """[student group, aux group (mixers), gain group (RoPE gains)] of a DistillModule's trainable
    parameters, the empty ones left out. The gains get `lr_gain` (default lr_aux)."""
    named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    student = [p for name, p in named if name.startswith("student.")]
    gain = [p for name, p in named if name.startswith("gain.")]
    aux = [p for name, p in named if not name.startswith(("student.", "gain."))]
    if not student:
        raise ValueError("the student has no trainable parameters (check freeze_vision / LoRA settings)")
    groups = [{"params": student, "lr": cfg.lr_student, "weight_decay": cfg.weight_decay, "name": "student"}]
    if aux:
        groups.append({"params": aux, "lr": cfg.lr_aux, "weight_decay": 0.0, "name": "aux"})
    if gain:
        groups.append({"params": gain, "lr": cfg.lr_gain if cfg.lr_gain is not None else cfg.lr_aux, "weight_decay": 0.0,
                       "name": "gain"})
    return groups


def build_optimizer(module: nn.Module, cfg: DistillConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(module, cfg), betas=(0.9, 0.999), eps=1e-8)


def warmup_steps(cfg: DistillConfig, total_steps: int) -> int:
    """`cfg.warmup_steps` when set (capped at the run), else ceil(warmup_ratio x total_steps)."""
    if cfg.warmup_steps is not None:
        return min(cfg.warmup_steps, total_steps)
    return math.ceil(cfg.warmup_ratio * total_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: DistillConfig, total_steps: int):
    warmup = warmup_steps(cfg, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, cfg.lr_schedule)
    )
