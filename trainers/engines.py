"""The distributed plumbing of the recipe: one Accelerator for 1 process, DDP, ZeRO-3 or FSDP2.

`accelerate launch --config_file configs/accelerate/{multi_cpu,zero3,fsdp}.yaml` chooses the engine;
the recipe code is the same for all. What differs is handled here:

- make_accelerator: the Accelerator, also for DeepSpeed ZeRO-3 and FSDP2 on CPU-only machines
  (gloo backend; accelerate itself only knows plain data parallelism on CPU). This is how the
  sharded engines are exercised in CI (tests/test_recipe_sharded.py) without a GPU.
- fill_deepspeed_config: our own micro-batch / accumulation / clipping into the DeepSpeed config
  (we feed batches ourselves) and the hidden-size-based buffer sizes accelerate would read from
  `model.config` (the prepared module is the DistillModule, which has none).
- prepare_teacher: the frozen teacher sharded like the student (a second ZeRO-3 engine without
  optimizer, or FSDP2 `fully_shard`), kept out of the checkpoints.
- plain_model_loading: build a plain (unsharded) model on one process while a ZeRO-3 plugin is
  active, where transformers would otherwise load under `zero.Init` (a collective) and deadlock.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, InitProcessGroupKwargs

from trainers.config import DistillConfig
from trainers.trainlog import tracking_kwargs


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def sharded_engine_requested() -> str | None:
    """'deepspeed' / 'fsdp' when `accelerate launch` asked for one, else None."""
    if _env_flag("ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed"
    if _env_flag("ACCELERATE_USE_FSDP"):
        return "fsdp"
    return None


def make_accelerator(cfg: DistillConfig) -> Accelerator:
    """The Accelerator for `cfg`: mixed precision, our accumulation, CPU + gloo without a GPU."""
    precision = cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "no"
    engine = sharded_engine_requested()
    multi = int(os.environ.get("WORLD_SIZE", "1")) > 1
    cpu, handlers = not torch.cuda.is_available(), []
    if cpu and engine and multi:
        # accelerate maps `cpu=True` to plain data parallelism (MULTI_CPU) and ignores the DeepSpeed /
        # FSDP request. Instead: no cpu flag and an explicit gloo backend. DeepSpeed then initialises
        # gloo through deepspeed.comm (DS_ACCELERATOR=cpu); for FSDP the process group is set up first
        # and accelerate is told it is a multi-device run, which is where it honours ACCELERATE_USE_FSDP.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        handlers = [InitProcessGroupKwargs(backend="gloo")]
        cpu = False
        if engine == "fsdp":
            state = PartialState(cpu=False, backend="gloo")
            if state.distributed_type == DistributedType.NO:
                PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU
    if cfg.uses_mixers and not cfg.trains_mixers:
        # The head mixers then only weight the teacher maps (detached) and get no gradient; DDP waits
        # for every parameter's gradient and fails the next step unless told (ZeRO-3 / FSDP2 need not be).
        handlers.append(DistributedDataParallelKwargs(find_unused_parameters=True))
    # The scheduler is stepped once per optimizer step by us: accelerate's default would step it
    # num_processes times per call (it assumes a per-process step count).
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.grad_accum, mixed_precision=precision, step_scheduler_with_optimizer=False,
        cpu=cpu, kwargs_handlers=handlers, **tracking_kwargs(cfg.report_to, cfg.output_dir),
    )  # fmt: skip
    if engine and multi and accelerator.distributed_type not in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        raise RuntimeError(f"accelerate launch asked for {engine} but the Accelerator is {accelerator.distributed_type}")
    return accelerator


def fill_deepspeed_config(accelerator: Accelerator, cfg: DistillConfig, hidden_size: int) -> None:
    """Write the run's batch geometry and the hidden-size buffer sizes into the DeepSpeed config."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    plugin = accelerator.state.deepspeed_plugin
    ds = plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = cfg.per_device_batch_size
    ds["gradient_accumulation_steps"] = cfg.grad_accum
    ds["train_batch_size"] = cfg.per_device_batch_size * cfg.grad_accum * accelerator.num_processes
    ds["gradient_clipping"] = cfg.max_grad_norm
    zero = ds.setdefault("zero_optimization", {})
    zero["stage3_gather_16bit_weights_on_model_save"] = True  # get_state_dict (the export) needs it
    # accelerate's own "auto" values (it reads them from model.config, which the DistillModule lacks).
    for key, value in (("reduce_bucket_size", hidden_size * hidden_size),
                       ("stage3_prefetch_bucket_size", int(0.9 * hidden_size * hidden_size)),
                       ("stage3_param_persistence_threshold", 10 * hidden_size)):  # fmt: skip
        if zero.get(key, "auto") == "auto":
            zero[key] = value


def is_zero3(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3


def prepare_teacher(accelerator: Accelerator, teacher):
    """Place the frozen teacher: sharded under ZeRO-3 / FSDP, replicated (no DDP) otherwise.

    Never part of the training state: it is removed from the accelerator's model list, so
    `save_state` (the checkpoints) does not write it.
    """
    if teacher is None:
        return None
    kind = accelerator.distributed_type
    n_models = len(accelerator._models)
    if kind == DistributedType.FSDP and accelerator.is_fsdp2:
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model

        teacher = fsdp2_prepare_model(accelerator, teacher)
    elif kind == DistributedType.FSDP:
        teacher = accelerator.prepare_model(teacher)
    elif is_zero3(accelerator):
        teacher = accelerator.prepare(teacher)  # a ZeRO-3 inference engine (no optimizer)
    else:
        teacher = teacher.to(accelerator.device)
    del accelerator._models[n_models:]
    teacher.eval()  # (a DeepSpeed engine's eval() returns None)
    return teacher


@contextmanager
def plain_model_loading():
    """Within: `from_pretrained` builds an ordinary full model even if a ZeRO-3 plugin is active.

    transformers loads under `deepspeed.zero.Init` and gathers with `GatheredParameters` whenever
    the global HF DeepSpeed config says ZeRO-3; both are collectives, so one process loading alone
    (the export on the main process) would wait forever for the others. FSDP's rank-0-only loading
    flag is switched off for the same reason (the export copy must hold real weights).
    """
    from transformers.integrations import deepspeed as hf_ds

    saved_ref = hf_ds._hf_deepspeed_config_weak_ref
    saved_env = os.environ.pop("FSDP_CPU_RAM_EFFICIENT_LOADING", None)
    hf_ds._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved_ref
        if saved_env is not None:
            os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = saved_env
