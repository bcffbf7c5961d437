"""The LAid training recipe on accelerate: `distill(cfg) -> export folder`.

One code path from a laptop toy (1 CPU process, fp32) to the paper's 32B -> 7B run
(`accelerate launch --config_file configs/accelerate/zero3.yaml -m trainers.cli distill ...`):

    load student (trainable; LoRA adapters for sft-lora) and teacher (frozen: eval(), no grad)
    wrap student + mixers + gains in DistillModule; AdamW (2 groups) + warmup/decay schedule
    accelerator.prepare(module, optimizer, scheduler); place or shard the teacher
    for each optimizer step: grad_accum micro-batches (trainers.data decides which examples)
        teacher_forward (no grad) -> DistillModule forward -> loss terms -> backward (accumulate)
        finite check of every term on every process -> clip -> step -> schedule
        log the terms and the health telemetry (trainers.health; jsonl + progress bar);
        checkpoint every `save_every` steps
    final checkpoint, then export (gains folded, LoRA merged) -> output_dir/export

`resume=True` continues from the newest checkpoint in output_dir exactly: weights, optimizer,
scheduler, RNG states and the data position are restored, and the training log is cut back to
the checkpoint's step.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from tqdm.auto import tqdm

from laid.io import write_text
from laid.model.loading import load_processor
from trainers.checkpoint import TrainerState, latest_checkpoint, load_checkpoint, save_checkpoint
from trainers.config import DistillConfig, resolve_folders
from trainers.data import DataPosition, TrainingExamples, collate, load_train_entries
from trainers.distill_module import DistillModule, tail_length, teacher_forward
from trainers.engines import fill_deepspeed_config, make_accelerator, plain_model_loading, prepare_teacher  # noqa: F401 (re-exported)
from trainers.optim import build_optimizer, build_scheduler
from trainers.pairing import Diagnosis, check_pair
from trainers.students import build_student, load_teacher
from trainers.trainlog import TrainLog, Tracking, eval_metrics

TERM_ORDER = ("total", "laid", "attn", "kl", "sft")


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN/inf; training stopped before the bad step was applied."""


def _move(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def check_finite(accelerator: Accelerator, terms: dict[str, torch.Tensor], step: int, last_ckpt) -> torch.Tensor:
    """Gather the terms of all processes (P, T); raise NonFiniteLossError if any is not finite."""
    names = [n for n in TERM_ORDER if n in terms]
    local = torch.stack([terms[n].detach().float() for n in names])[None]  # (1, T)
    values = accelerator.gather(local)  # (P, T)
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        # Name a component term when one is bad (the total only inherits it).
        cols = [t for t in range(len(names)) if bool(bad[:, t].any())]
        t = next((c for c in cols if names[c] != "total"), cols[0])
        p = int(bad[:, t].nonzero()[0])
        where = f"the last good checkpoint {last_ckpt} is kept" if last_ckpt else "no checkpoint had been saved yet"
        raise NonFiniteLossError(
            f"step {step}: loss term '{names[t]}' is {values[p, t].item()} on process {p}; training stopped before "
            f"applying it ({where}); lower the learning rates or check the data, then rerun with --resume"
        )
    return values.mean(0)


def _check_resume_compatible(saved: dict, cfg: DistillConfig) -> None:
    keys = ("method", "teacher_dir", "student_dir", "per_device_batch_size", "grad_accum", "seed", "layer_pairs", "layer_map",
            "alignment", "attn_rows")
    old, new = (resolve_folders({k: d[k] for k in keys if k in saved}) for d in (saved, cfg.to_dict()))
    diff = [k for k in old if old[k] != new[k]]  # folders compared as folders: a relative and an absolute path may agree
    if diff:
        raise ValueError(f"cannot resume: the checkpoint was made with different {diff}; use the original config")


def distill(cfg: DistillConfig, resume: bool = False, progress: bool = True, accelerator: Accelerator | None = None) -> Path:
    """Run one distillation; returns the export folder (output_dir/export)."""
    out = Path(cfg.output_dir)
    if not cfg.output_dir:
        raise ValueError("output_dir is empty; set it in the config or with --override output_dir=...")
    ckpt = latest_checkpoint(out) if resume else None
    if not resume and latest_checkpoint(out) is not None:
        raise ValueError(f"{out} already holds checkpoints; pass --resume to continue or choose another output_dir")
    accelerator = accelerator or make_accelerator(cfg)
    set_seed(cfg.seed)
    main = accelerator.is_main_process

    processor = load_processor(cfg.student_dir)
    entries = load_train_entries(
        cfg.data.train_dir, cfg.data.image_root, cfg.data.settings, cfg.data.min_haystack, cfg.data.max_haystack,
        cfg.data.max_examples, cfg.seed, cfg.data.check_images, cfg.data.allow_outside_image_root,
    )  # fmt: skip
    examples = TrainingExamples(entries, cfg.seed)
    n_proc, rank = accelerator.num_processes, accelerator.process_index
    global_batch = cfg.per_device_batch_size * cfg.grad_accum * n_proc
    steps_per_epoch = examples.steps_per_epoch(global_batch)
    if steps_per_epoch < 1:
        raise ValueError(f"{len(examples)} training examples < one global batch of {global_batch}; lower the batch size")
    total_steps = run_steps(cfg, steps_per_epoch)
    late = [s for s in cfg.export_steps if s > total_steps]
    if late:
        raise ValueError(f"export_steps {late} lie beyond the run's {total_steps} optimizer steps; raise max_steps or drop them")

    # From config files, before any weight is loaded: a pair that cannot work fails here, clearly.
    # (config-only meta-device models: never under ZeRO-3's collective init)
    with plain_model_loading():
        pairing = check_pair(cfg.teacher_dir, cfg.student_dir, cfg.layer_pairs, cfg.layer_map, Diagnosis.of(cfg)) if cfg.uses_teacher else None
    pairs = pairing.layer_pairs if pairing is not None else []
    teacher = load_teacher(cfg) if cfg.uses_teacher else None
    # Read before prepare_teacher: a DeepSpeed engine's `.config` is the DeepSpeed dict.
    teacher_config = teacher.config if teacher is not None else None
    student = build_student(cfg)
    fill_deepspeed_config(accelerator, cfg, student.config.get_text_config().hidden_size)
    gain = None
    if cfg.uses_gain:
        from trainers.rope_gain import RopeGain

        gain = RopeGain.for_model(student, cfg.rope_gain_layers if cfg.rope_gain_layers is not None else [s for s, _ in pairs])
    module = DistillModule(student, cfg, pairs, teacher_config, gain, qk_dims=pairing.qk_dims if pairing is not None else None)
    module.train()
    optimizer = build_optimizer(module, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    module, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)
    teacher = prepare_teacher(accelerator, teacher)
    inner = accelerator.unwrap_model(module)

    state = TrainerState(0, DataPosition(), total_steps, cfg.to_dict())
    if ckpt is not None:
        _check_resume_compatible(json.loads((ckpt / "trainer_state.json").read_text()).get("config", {}), cfg)
        state = load_checkpoint(accelerator, ckpt)
        state.total_steps, state.config = total_steps, cfg.to_dict()
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_text(cfg.to_yaml(), out / "distill_config.yaml")
    tracking = Tracking(accelerator, cfg.report_to, f"{cfg.method}-{out.name}", cfg.to_dict())
    train_log = TrainLog(out / "train_log.jsonl", keep_until_step=state.global_step, enabled=main, tracking=tracking)
    from trainers.health import NormMonitor
    from trainers.trainlog import read_log

    monitor = NormMonitor.from_log(read_log(train_log.path) if main else [], cfg.norm_warn_fraction)
    if main and pairing is not None and pairing.choice is not None and state.global_step == 0:
        train_log.note(" | ".join(pairing.choice.describe()[:1] + [f"pairs {pairs}"]))
    if main and pairing is not None and state.global_step == 0:
        for warning in pairing.warnings:  # a pair on a sliding-window layer (laid plan says the same)
            train_log.note(f"warning: {warning}")
    if main and cfg.weights()["kl"] > 0:
        note = _vocab_note(inner.student.config, teacher_config)
        if note:  # the KL loss also logs it once through `logging`
            train_log.note(note)

    if ckpt is None and cfg.mixer_init == "least_squares" and len(inner.align) > 0:
        init_mixers(accelerator, inner, teacher, examples, processor, cfg)

    last_ckpt = ckpt
    bar = tqdm(total=total_steps, initial=state.global_step, desc=f"distill {cfg.method}", disable=not (progress and main))
    t0 = time.time()
    sharded = accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)
    inner.health_params = not sharded
    if sharded and main:
        train_log.note("under ZeRO-3 / FSDP the health telemetry logs activations only (Q/K norm ratios, attention "
                       "entropies): gradient norms, mixer rows and gains live in sharded parameters")
    while state.global_step < total_steps:
        if state.position.step >= steps_per_epoch:
            state.position = DataPosition(state.position.epoch + 1, 0)
        micro = examples.micro_batches(state.position, cfg.per_device_batch_size, cfg.grad_accum, rank, n_proc)
        ramp = cfg.attn_ramp_steps or total_steps
        frac = min(1.0, state.global_step / max(1, ramp - 1))  # training progress for the attention schedule
        sums = None
        log_now = (state.global_step + 1) % cfg.log_every == 0 or state.global_step + 1 == total_steps
        for n_micro, ids in enumerate(micro):
            # telemetry: last micro-batch, main process; under ZeRO-3 / FSDP activations only (health_params),
            # since its extra autograd.grad and parameter reads would run sharded collectives on one process (a hang)
            health = main and log_now and n_micro == len(micro) - 1
            batch = collate(processor, [examples.example(i, state.position.epoch) for i in ids], cfg.max_response_len)
            batch = _move(batch, accelerator.device)
            with accelerator.accumulate(module):
                t_out = None
                if teacher is not None:
                    with accelerator.autocast():
                        t_out = teacher_forward(teacher, batch, inner.teacher_layers, tail_length(batch["labels"]), inner.needs_teacher_qk(health))
                terms = module(batch, t_out, frac, health=health)
                mean = check_finite(accelerator, terms, state.global_step + 1, last_ckpt)
                accelerator.backward(terms["total"])
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(module.parameters(), cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            names = [n for n in TERM_ORDER if n in terms]
            sums = mean if sums is None else sums + mean
        lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)}  # used by this step
        scheduler.step()
        state.global_step += 1
        state.position = DataPosition(state.position.epoch, state.position.step + 1)
        values = {f"{n}_loss": float(v) / len(micro) for n, v in zip(names, sums)}
        if log_now:
            telemetry = inner.pop_health()
            warning = monitor.check(state.global_step, telemetry)
            train_log.write(step=state.global_step, epoch=state.position.epoch, **values, **telemetry,
                            **({"warning": warning} if warning else {}),
                            **{f"lr_{k}": v for k, v in lrs.items()}, elapsed_s=round(time.time() - t0, 3))
        bar.update(1)
        bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()})
        if state.global_step in cfg.export_steps and state.global_step < total_steps:
            export_budget(accelerator, module, cfg, processor, pairs, out, state.global_step)
        if cfg.save_every and state.global_step % cfg.save_every == 0 and state.global_step < total_steps:
            last_ckpt = save_checkpoint(accelerator, out, state, cfg.keep_last)
    bar.close()
    if last_ckpt is None or last_ckpt.name != f"step-{state.global_step:08d}":
        save_checkpoint(accelerator, out, state, cfg.keep_last)

    from trainers.export import export_run

    export = export_run(accelerator, module, cfg, processor, pairs, out)
    if total_steps in cfg.export_steps:
        export_budget(accelerator, module, cfg, processor, pairs, out, total_steps)
    if cfg.eval.enabled and main:
        from trainers.model_card import write_model_card

        ds = evaluate_export(cfg, export)
        tracking.log(eval_metrics(ds), state.global_step)
        write_model_card(export, cfg, ds)
    tracking.finish()
    if cfg.push_to_hub and main:
        from trainers.model_card import push_to_hub

        print(f"pushed {export} to {push_to_hub(export, cfg.push_to_hub)}")
    accelerator.wait_for_everyone()
    return export


def init_mixers(accelerator: Accelerator, inner: DistillModule, teacher, examples, processor, cfg: DistillConfig) -> None:
    """Least-squares mixer start on the first micro-batch of process 0 (the same on every process)."""
    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP or kind == DistributedType.DEEPSPEED:
        raise ValueError("mixer_init: least_squares needs unsharded mixers; use mixer_init: overlap with FSDP / DeepSpeed")
    ids = examples.micro_batches(DataPosition(0, 0), cfg.per_device_batch_size, cfg.grad_accum, 0, accelerator.num_processes)[0]
    batch = _move(collate(processor, [examples.example(i, 0) for i in ids], cfg.max_response_len), accelerator.device)
    with accelerator.autocast():
        t_out = teacher_forward(teacher, batch, inner.teacher_layers, 1, True)
        inner.init_mixers_least_squares(batch, t_out)
    if accelerator.num_processes > 1:  # identical in exact arithmetic; make it bit-identical
        for p in inner.align.parameters():
            torch.distributed.broadcast(p.data, src=0)


def evaluate_export(cfg: DistillConfig, export: Path):
    """Evaluate the export per cfg.eval into output_dir/eval.nc (laid.eval)."""
    from laid.eval.run import evaluate

    ev = cfg.eval
    return evaluate(
        export, ev.test_dir, ev.image_root or cfg.data.image_root, Path(cfg.output_dir) / "eval.nc",
        model_name=f"{Path(cfg.student_dir).name}-{cfg.method}", **ev.evaluate_kwargs(),
    )


def _vocab_note(student_config, teacher_config) -> str | None:
    from trainers.losses import shared_vocab_note

    return shared_vocab_note(student_config.get_text_config().vocab_size, teacher_config.get_text_config().vocab_size)


def run_steps(cfg: DistillConfig, steps_per_epoch: int) -> int:
    """Optimizer steps of a run: `max_steps` when set (it overrides `epochs`, as in transformers'
    Trainer; the data then loops over more epochs), else epochs x steps per epoch."""
    return cfg.max_steps if cfg.max_steps is not None else steps_per_epoch * cfg.epochs


def steps_per_run(cfg: DistillConfig, n_examples: int, num_processes: int = 1) -> int:
    """Optimizer steps a run of `cfg` makes on `n_examples` (for planning toy budgets)."""
    return run_steps(cfg, n_examples // (cfg.per_device_batch_size * cfg.grad_accum * num_processes))


def export_budget(accelerator, module, cfg: DistillConfig, processor, pairs, out: Path, step: int) -> Path:
    """The model as it stands after `step` optimizer steps, exported like the final one to
    <out>/budgets/step-XXXXXXXX/ (atomically; an existing one is kept, e.g. after a resume)."""
    from trainers.export import budget_export_dir, export_run

    target = budget_export_dir(out, step)
    if (target / "config.json").is_file():
        return target
    return export_run(accelerator, module, cfg, processor, pairs, out, export_dir=target)


