"""Load the two models of a run: the trainable student (full or LoRA) and the frozen teacher.

Both come from local Hugging Face folders through `laid.model.loading.load_model`, the same path as
real checkpoints of every supported family. The student is kept in fp32 (master weights; on GPU the forward runs
under bf16 autocast), the teacher in bf16 on GPU and fp32 on CPU: it is never updated, so it
needs no fp32 copy.

Under FSDP2 with `fsdp_cpu_ram_efficient_loading` (configs/accelerate/fsdp.yaml) only local rank 0
reads the weights; the other processes build the models with uninitialised parameters (never
touched, so not resident) and real buffers, and accelerate's `fully_shard` preparation broadcasts
rank 0's weights. Host RAM then holds
one copy of each model per node instead of one per process.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from laid.model.families import family_of
from laid.model.loading import default_dtype, load_model
from trainers.config import DistillConfig


def rank0_only_loading() -> bool:
    """True on the processes that must not read weights (FSDP rank-0 loading, local rank != 0)."""
    flag = lambda name: os.environ.get(name, "false").lower() == "true"
    return (
        flag("ACCELERATE_USE_FSDP") and flag("FSDP_CPU_RAM_EFFICIENT_LOADING")
        and torch.distributed.is_available() and torch.distributed.is_initialized()
        and int(os.environ.get("LOCAL_RANK", "0")) != 0
    )  # fmt: skip


def _load(path: str | Path, dtype: torch.dtype) -> nn.Module:
    if not rank0_only_loading():
        return load_model(path, device="cpu", dtype=dtype)
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForImageTextToText

    from laid.model.loading import check_model_dir

    config = AutoConfig.from_pretrained(check_model_dir(path))
    with init_empty_weights(include_buffers=False):  # parameters on meta, rotary buffers computed
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype, attn_implementation="sdpa")
    # Uninitialised CPU storage instead of meta: accelerate re-points the optimizer to the sharded
    # parameters by storage address, which meta tensors lack (all 0). Untouched pages of a large
    # torch.empty are not resident, so this costs address space, not RAM; fully_shard then fills
    # the shards from rank 0. The buffers (rotary frequencies) are kept.
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    model.to_empty(device="cpu")
    for name, b in buffers.items():
        owner, _, leaf = name.rpartition(".")
        model.get_submodule(owner)._buffers[leaf] = b
    model.tie_weights()  # as loaded on rank 0 (tied embeddings / lm_head where the config says so)
    return model.eval()


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_teacher(cfg: DistillConfig) -> nn.Module:
    """The frozen teacher on CPU (placed or sharded later by the recipe)."""
    dtype = default_dtype(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    return freeze(_load(cfg.teacher_dir, dtype))


def apply_lora(student: nn.Module, cfg: DistillConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules, bias="none",
    )  # fmt: skip
    return get_peft_model(student, lora)


def build_student(cfg: DistillConfig) -> nn.Module:
    """Trainable student on CPU in fp32: vision tower frozen (option), LoRA for sft-lora."""
    student = _load(cfg.student_dir, torch.float32)
    if cfg.freeze_vision:  # the vision tower and its projector / merger, wherever the family keeps them
        vision = family_of(student).vision_prefixes
        for name, p in student.named_parameters():
            if name.startswith(vision):
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
