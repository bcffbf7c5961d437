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
# The shipped zoo (checkpoints/zoo): the main job's models, then the window-extension testbed's (issue 26).
DEFAULT_MODELS = ("tiny-32b", "tiny-7b", "tiny-3b", "tiny-32b-short", "tiny-7b-ret",
                  "tiny-32b-long", "tiny-32b-w5-s3", "tiny-32b-w5-s4", "tiny-7b-w5-s1", "tiny-7b-w5-s2")
# Quick mode (tests, smoke runs): a fixed handful of steps on short haystacks, to exercise the
# code path in seconds; quick models are untrained (accuracy at chance) by design.
QUICK_STEPS, QUICK_VISION_STEPS, QUICK_MAX_HAYSTACK, QUICK_IMAGE_BANK = 12, 6, 5, 300


def zoo_configs(config_dir: str | Path = DEFAULT_CONFIG_DIR, models=DEFAULT_MODELS) -> list[ZooModelConfig]:
    """The configs of `models`, each preceded by the models it continues from (`pretrain.init_from`)."""
    config_dir = Path(config_dir)
    out: dict[str, ZooModelConfig] = {}

    def add(name: str, chain: tuple[str, ...] = ()) -> None:
        if name in chain:
            raise ValueError(f"zoo configs continue from each other in a loop: {' -> '.join((*chain, name))}")
        if name in out:
            return
        path = config_dir / f"{name}.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"zoo config {path} not found; known: {sorted(p.stem for p in config_dir.glob('*.yaml'))}")
        cfg = load_zoo_config(path)
        if cfg.pretrain.init_from:
            add(cfg.pretrain.init_from, (*chain, name))
        out[name] = cfg

    for name in models:
        add(name)
    return list(out.values())


def _quick(cfg: ZooModelConfig) -> ZooModelConfig:
    cfg = copy.deepcopy(cfg)
    cfg.pretrain.steps, cfg.pretrain.vision_steps = QUICK_STEPS, QUICK_VISION_STEPS
    cfg.pretrain.max_haystack = min(cfg.pretrain.max_haystack, QUICK_MAX_HAYSTACK)
    cfg.pretrain.image_bank_size = QUICK_IMAGE_BANK  # missing images are rendered on demand
    return cfg


def _is_complete(folder: Path, cfg: ZooModelConfig, family: str = DEFAULT_FAMILY,
                 parent: ZooModelConfig | None = None) -> bool:
    """Whether `folder` holds `cfg` trained to the end; a model continued from another (init_from)
    also needs that parent to have been trained from `parent`, today's config of it."""
    done = folder / "laid_zoo.json"
    if not done.is_file() or json.loads((folder / "config.json").read_text()).get("model_type") != family:
        return False
    meta = json.loads(done.read_text())
    if cfg.pretrain.init_from and (parent is None or meta.get("parent_zoo_config") != parent.to_dict()):
        return False
    return meta.get("pretrain_log", {}).get("steps") == cfg.pretrain.steps and meta.get("zoo_config") == cfg.to_dict()


def _start_from(cfg: ZooModelConfig, parent_folder: Path | None, family: str):
    """The model pretraining starts from: a random init, or the parent's weights (init_from)."""
    import torch

    from laid.model.loading import load_model
    from laid.zoo.build import build_model

    if not cfg.pretrain.init_from:
        return build_model(cfg, family=family)
    torch.manual_seed(cfg.pretrain.seed)
    return load_model(parent_folder, device="cpu", dtype=torch.float32)


def build_one(cfg: ZooModelConfig, folder: Path, threads: int | None = None, progress: bool = True, position: int = 0,
              family: str = DEFAULT_FAMILY, parent: ZooModelConfig | None = None) -> Path:
    """Build, pretrain (vision stage, then multitask) and save one model folder of `family`.

    A model with `pretrain.init_from` starts from its parent's folder beside `folder`, trained from `parent`."""
    import torch

    from laid.zoo.build import build_processor, save_zoo_folder
    from laid.zoo.pretrain import pretrain, pretrain_vision

    if threads:
        torch.set_num_threads(threads)
    model = _start_from(cfg, folder.parent / cfg.pretrain.init_from if cfg.pretrain.init_from else None, family)
    processor = build_processor(cfg.image_size, family, cfg)
    p = cfg.pretrain
    vlog = pretrain_vision(model, processor, p, p.vision_steps, progress=progress, desc=f"vision {cfg.name}", position=position)
    log = pretrain(model, processor, p, steps=p.steps, progress=progress, desc=f"pretrain {cfg.name}", position=position,
                   image_size=cfg.image_size)
    log.update(vlog, steps=p.steps, vision_steps=p.vision_steps)
    log["torch_threads"] = torch.get_num_threads()
    return save_zoo_folder(model, processor, cfg, folder, log, parent=parent)


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
    by_name = {c.name: c for c in configs}
    for c in configs:
        if c.pretrain.init_from and c.pretrain.init_from not in by_name:
            raise ValueError(f"zoo model {c.name} continues from {c.pretrain.init_from}: build them together "
                             f"(laid zoo --models {c.pretrain.init_from} {c.name}, or zoo_configs adds it)")
        arch = ("text", "vision", "image_size")  # checked before any training: the child loads the parent's weights
        if c.pretrain.init_from and any(c.to_dict()[k] != by_name[c.pretrain.init_from].to_dict()[k] for k in arch):
            raise ValueError(f"zoo model {c.name} continues from {c.pretrain.init_from} but their text/vision/"
                             f"image_size sections differ; copy them from configs/zoo/{c.pretrain.init_from}.yaml")
    parent_of = {c.name: by_name.get(c.pretrain.init_from) for c in configs}
    todo = [c for c in configs if force or not _is_complete(out_dir / c.name, c, family, parent_of[c.name])]
    if checkpoints is not None and not force and not quick:
        shipped = [c for c in todo if _is_complete(Path(checkpoints) / c.name, c, family, parent_of[c.name])]
        for c in shipped:
            with atomic_dir(out_dir / c.name) as tmp:
                shutil.copytree(Path(checkpoints) / c.name, tmp, dirs_exist_ok=True)
        todo = [c for c in todo if c not in shipped]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, min(workers or cores, len(todo) or 1))
    todo.sort(key=lambda c: -(c.text.hidden_size**2 * c.text.num_hidden_layers * c.pretrain.max_haystack))
    while todo:  # in waves: a model continued from another (init_from) waits for it
        wave = [c for c in todo if parent_of[c.name] not in todo]
        todo = [c for c in todo if c not in wave]
        _train_wave(wave, out_dir, min(workers, len(wave)), cores, progress, family, parent_of)
    return {c.name: out_dir / c.name for c in configs}


def _train_wave(wave, out_dir: Path, workers: int, cores: int, progress: bool, family: str, parent_of) -> None:
    if workers == 1:
        for c in wave:
            build_one(c, out_dir / c.name, progress=progress, family=family, parent=parent_of[c.name])
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, cores // workers)
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        jobs = [pool.submit(build_one, c, out_dir / c.name, threads, progress, i, family, parent_of[c.name])
                for i, c in enumerate(wave)]
        for job in jobs:
            job.result()  # re-raises a worker's error here


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
