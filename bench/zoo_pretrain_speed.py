"""Seconds per zoo pretraining step: images from the bank (frozen tower, cached features) vs fresh renders.

    .venv/bin/python bench/zoo_pretrain_speed.py [--models tiny-32b tiny-7b] [--steps 40]

One torch thread, the model's own pretraining config (batch, task mix, haystack sizes), random
init (step time does not depend on what the model knows). "bank" is the shipped path
(`freeze_vision: true`: laid/zoo/image_bank.py); "fresh" renders, preprocesses and runs the
vision tower at every step (`freeze_vision: false`, the tower then also trains). The bank's own
build time (render + features of `image_bank_size` images, once per model) is reported apart.
Results go to bench/results/zoo_pretrain_speed.md.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from laid.zoo.build import build_model, build_processor
from laid.zoo.cli import zoo_configs
from laid.zoo.pretrain import pretrain

OUT = Path(__file__).resolve().parent / "results" / "zoo_pretrain_speed.md"


def seconds_per_step(cfg, freeze_vision: bool, steps: int) -> tuple[float, float]:
    cfg = copy.deepcopy(cfg)
    p = cfg.pretrain
    p.freeze_vision, p.steps = freeze_vision, steps
    model, processor = build_model(cfg), build_processor(cfg.image_size)
    t0 = time.time()
    log = pretrain(model, processor, p, progress=False, image_size=cfg.image_size)
    total = time.time() - t0
    return log["seconds"] / steps, total - log["seconds"]  # (s / step, bank build + final position probe)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["tiny-32b", "tiny-7b", "tiny-3b"])
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for cfg in zoo_configs(models=args.models):
        bank, build = seconds_per_step(cfg, True, args.steps)
        fresh, _ = seconds_per_step(cfg, False, args.steps)
        rows.append(f"| {cfg.name} | {cfg.pretrain.batch_size} | 1-{cfg.pretrain.max_haystack} | "
                    f"{fresh:.3f} | {bank:.3f} | {fresh / bank:.2f}x | {build:.1f} |")
        print(rows[-1], flush=True)
    text = (
        "# Zoo pretraining step time: image bank vs fresh renders\n\n"
        f"`.venv/bin/python bench/zoo_pretrain_speed.py --steps {args.steps}`, one torch thread, nothing else running.\n"
        "First steps of each config (haystacks capped by `short_haystack_steps` where set).\n\n"
        "| model | batch | haystacks | fresh s/step | bank s/step | speed-up | bank build s |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
