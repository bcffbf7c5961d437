"""Load the two models of a run: the trainable student (full or LoRA) and the frozen teacher.

Both come from local Hugging Face folders through `laid.model.loading.load_model`, the same path as
real Qwen2.5-VL checkpoints. The student is kept in fp32 (master weights; on GPU the forward runs
under bf16 autocast), the teacher in bf16 on GPU and fp32 on CPU: it is never updated, so it
needs no fp32 copy.
"""

from __future__ import annotations

import torch
from torch import nn

from laid.model.loading import default_dtype, load_model
from trainers.config import DistillConfig


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_teacher(cfg: DistillConfig) -> nn.Module:
    """The frozen teacher on CPU (placed or sharded later by the recipe)."""
    dtype = default_dtype(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    return freeze(load_model(cfg.teacher_dir, device="cpu", dtype=dtype))


def apply_lora(student: nn.Module, cfg: DistillConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules, bias="none",
    )  # fmt: skip
    return get_peft_model(student, lora)


def build_student(cfg: DistillConfig) -> nn.Module:
    """Trainable student on CPU in fp32: vision tower frozen (option), LoRA for sft-lora."""
    student = load_model(cfg.student_dir, device="cpu", dtype=torch.float32)
    if cfg.freeze_vision:
        for name, p in student.named_parameters():
            if ".visual." in f".{name}":
                p.requires_grad_(False)
    if cfg.gradient_checkpointing:
        student.config.use_cache = False
        # Non-reentrant: the RoPE-gain hooks and record_qk must see the recomputed forward too.
        if hasattr(student, "activation_checkpointing_enable"):  # transformers >= 5.2x
            student.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.uses_lora:
        student = apply_lora(student, cfg)
    return student.train()
