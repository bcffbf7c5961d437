"""Optimizer and learning-rate schedule of the recipe.

AdamW with two parameter groups, as the paper: the student's trainable parameters at lr_student
(1e-5) with weight decay, and the head mixers + RoPE gains ("weight coefficients") at lr_aux (1e-4)
without weight decay (decay would pull mixing weights and gains towards 0, which means nothing
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
    """[student group, aux group (if any)] of a DistillModule's trainable parameters."""
    aux = [p for name, p in module.named_parameters() if p.requires_grad and not name.startswith("student.")]
    student = [p for name, p in module.named_parameters() if p.requires_grad and name.startswith("student.")]
    if not student:
        raise ValueError("the student has no trainable parameters (check freeze_vision / LoRA settings)")
    groups = [{"params": student, "lr": cfg.lr_student, "weight_decay": cfg.weight_decay, "name": "student"}]
    if aux:
        groups.append({"params": aux, "lr": cfg.lr_aux, "weight_decay": 0.0, "name": "aux"})
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
