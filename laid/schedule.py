"""The one learning-rate schedule of the project (zoo pretraining and distillation).

Linear warmup to the base rate over `warmup` steps, then cosine or linear decay to `floor` x the
base rate, or constant. The factor is never 0, so the first optimizer step already moves.
"""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "linear", "constant")


def learning_rate(base: float, step: int, total_steps: int, warmup: int, schedule: str = "cosine",
                  floor: float = 0.0) -> float:
    """The learning rate at optimizer step `step` (0-based) for peak rate `base`."""
    if schedule not in SCHEDULES:
        raise ValueError(f"lr schedule {schedule!r} is not one of {SCHEDULES}")
    if step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant":
        return base
    t = min(max((step - warmup) / max(1, total_steps - warmup), 0.0), 1.0)  # 0 -> 1 over the decay phase
    if schedule == "cosine":
        return base * (floor + (1.0 - floor) * 0.5 * (1 + math.cos(math.pi * t)))
    return base * (floor + (1.0 - floor) * (1.0 - t))


def lr_factor(step: int, total_steps: int, warmup: int, schedule: str = "cosine", floor: float = 0.0) -> float:
    """Multiplier of the base learning rate (what torch's LambdaLR wants)."""
    return learning_rate(1.0, step, total_steps, warmup, schedule, floor)
