"""`laid zoo`: build and pretrain the tiny teacher and students on the CPU.

The zoo is Qwen2.5-VL (shipped in checkpoints/zoo/, the main job's models); `--family` builds the same
toy models in another supported family (laid/zoo/toys.py), e.g. `laid zoo --family gemma3 --quick`
as a smoke run. Shipped checkpoints are only reused for the Qwen2.5-VL zoo.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
from pathlib import Path

from laid.io import atomic_dir
from laid.model.families import FAMILIES, family_named
from laid.zoo.configs import ZooModelConfig, load_zoo_config

DEFAULT_FAMILY = "qwen2_5_vl"
FAMILY_NAMES = tuple(FAMILIES)

DEFAULT_CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "zoo"
DEFAULT_MODELS = ("tiny-32b", "tiny-7b", "tiny-3b", "tiny-32b-short", "tiny-7b-ret")  # the shipped zoo (checkpoints/zoo)
# Quick mode (tests, smoke runs): a fixed handful of steps on short haystacks, to exercise the
# code path in seconds; quick models are untrained (accuracy at chance) by design.
QUICK_STEPS, QUICK_VISION_STEPS, QUICK_MAX_HAYSTACK, QUICK_IMAGE_BANK = 12, 6, 5, 300


def zoo_configs(config_dir: str | Path = DEFAULT_CONFIG_DIR, models=DEFAULT_MODELS) -> list[ZooModelConfig]:
    config_dir = Path(config_dir)
    out = []
    for name in models:
        path = config_dir / f"{name}.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"zoo config {path} not found; known: {sorted(p.stem for p in config_dir.glob('*.yaml'))}")
        out.append(load_zoo_config(path))
    return out


def _quick(cfg: ZooModelConfig) -> ZooModelConfig:
    cfg = copy.deepcopy(cfg)
    cfg.pretrain.steps, cfg.pretrain.vision_steps = QUICK_STEPS, QUICK_VISION_STEPS
    cfg.pretrain.max_haystack = min(cfg.pretrain.max_haystack, QUICK_MAX_HAYSTACK)
    cfg.pretrain.image_bank_size = QUICK_IMAGE_BANK  # missing images are rendered on demand
    return cfg


def _is_complete(folder: Path, cfg: ZooModelConfig, family: str = DEFAULT_FAMILY) -> bool:
    done = folder / "laid_zoo.json"
    if not done.is_file() or json.loads((folder / "config.json").read_text()).get("model_type") != family:
        return False
    meta = json.loads(done.read_text())
    return meta.get("pretrain_log", {}).get("steps") == cfg.pretrain.steps and meta.get("zoo_config") == cfg.to_dict()


def build_one(cfg: ZooModelConfig, folder: Path, threads: int | None = None, progress: bool = True, position: int = 0,
              family: str = DEFAULT_FAMILY) -> Path:
    """Build, pretrain (vision stage, then multitask) and save one model folder of `family`."""
    import torch

    from laid.zoo.build import build_model, build_processor, save_zoo_folder
    from laid.zoo.pretrain import pretrain, pretrain_vision

    if threads:
        torch.set_num_threads(threads)
    model = build_model(cfg, family=family)
    processor = build_processor(cfg.image_size, family, cfg)
    p = cfg.pretrain
    vlog = pretrain_vision(model, processor, p, p.vision_steps, progress=progress, desc=f"vision {cfg.name}", position=position)
    log = pretrain(model, processor, p, steps=p.steps, progress=progress, desc=f"pretrain {cfg.name}", position=position,
                   image_size=cfg.image_size)
    log.update(vlog, steps=p.steps, vision_steps=p.vision_steps)
    log["torch_threads"] = torch.get_num_threads()
    return save_zoo_folder(model, processor, cfg, folder, log)


def build_zoo(
    out_dir: str | Path,
    configs: list[ZooModelConfig],
    quick: bool = False,
    force: bool = False,
    progress: bool = True,
    workers: int | None = None,
    checkpoints: str | Path | None = None,
    family: str = DEFAULT_FAMILY,
) -> dict[str, Path]:
    """Pretrain each model and save it as `out_dir/<name>/` (skipped if already complete).

    `checkpoints`: a folder of shipped zoo models (the repository's checkpoints/zoo/). A model
    whose shipped folder was trained from exactly this config (same laid_zoo.json config and
    steps) is copied instead of retrained; any other is trained.

    Models train in parallel worker processes, one per core by default (`workers`), each with
    cores // workers torch threads: these tiny models use a core far better one per process than
    several threads in one. The biggest model (most parameters x longest haystacks) starts first.
    Pass workers=1 to train in this process. `family`: build the toys in this supported family.
    """
    import os

    family = family_named(family).name  # one line naming the choices if unknown
    out_dir = Path(out_dir)
    configs = [_quick(c) if quick else c for c in configs]
    todo = [c for c in configs if force or not _is_complete(out_dir / c.name, c, family)]
    if checkpoints is not None and not force and not quick:
        shipped = [c for c in todo if _is_complete(Path(checkpoints) / c.name, c, family)]
        for c in shipped:
            with atomic_dir(out_dir / c.name) as tmp:
                shutil.copytree(Path(checkpoints) / c.name, tmp, dirs_exist_ok=True)
        todo = [c for c in todo if c not in shipped]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, min(workers or cores, len(todo) or 1))
    todo.sort(key=lambda c: -(c.text.hidden_size**2 * c.text.num_hidden_layers * c.pretrain.max_haystack))
    if workers == 1:
        for c in todo:
            build_one(c, out_dir / c.name, progress=progress, family=family)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        threads = max(1, cores // workers)
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            jobs = [pool.submit(build_one, c, out_dir / c.name, threads, progress, i, family) for i, c in enumerate(todo)]
            for job in jobs:
                job.result()  # re-raises a worker's error here
    return {c.name: out_dir / c.name for c in configs}


def _run(args: argparse.Namespace) -> int:
    cfgs = zoo_configs(args.config_dir, args.models)
    folders = build_zoo(args.out, cfgs, quick=args.quick, force=args.force, workers=args.workers, family=args.family)
    for name, path in folders.items():
        print(f"{name}: {path}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("zoo", help="build and pretrain the tiny teacher and students (Qwen2.5-VL, or --family)")
    p.add_argument("--out", required=True, help="folder for the model folders (one per model)")
    p.add_argument("--config-dir", default=str(DEFAULT_CONFIG_DIR), help="folder of zoo YAML configs")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="config names to build")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} steps on haystacks <= {QUICK_MAX_HAYSTACK} (smoke runs)")
    p.add_argument("--force", action="store_true", help="rebuild even if a complete folder exists")
    p.add_argument("--workers", type=int, default=None, help="models trained in parallel (default: one per core)")
    p.add_argument("--family", choices=FAMILY_NAMES, default=DEFAULT_FAMILY,
                   help="model family of the toys (default qwen2_5_vl, the shipped zoo; others: laid/zoo/toys.py)")
    p.set_defaults(func=_run)
