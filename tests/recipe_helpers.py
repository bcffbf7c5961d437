"""Shared helpers of the recipe tests: quick synthetic VHs data and tiny distill configs."""

from __future__ import annotations

from pathlib import Path

from trainers.config import DistillConfig, load_config


def quick_vhs(tmp_path_factory) -> Path:
    """SynthConfig.quick() data, generated once per test session (image root; train/ and test/ inside)."""
    from laid.data.synth import SynthConfig, generate

    root = tmp_path_factory.getbasetemp() / "recipe_quick_vhs"
    if not (root / "manifest.json").is_file():
        generate(SynthConfig.quick(), root, progress=False)
    return root


def trained_looking(module):
    """`module` (a DistillModule) in eval mode with trained-looking values: RoPE gains away from 1,
    mixers and LoRA B away from 0, so an export that drops any of them shows in the logits."""
    import torch

    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("gain.") or ".mixer." in name:
                p.copy_(torch.rand_like(p) + 0.5)
            elif "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.05)
    return module.eval()


def mini_run(zoo: dict, tmp_path_factory, root: Path) -> Path:
    """A run folder at `root` whose zoo/ links the random zoo and whose data/ is the quick VHs."""
    (root / "zoo").mkdir(parents=True)
    for name, path in zoo.items():
        (root / "zoo" / name).symlink_to(path)
    (root / "data").symlink_to(quick_vhs(tmp_path_factory))
    return root


def tiny_config(zoo: dict, data: Path, out: Path, method: str = "laid", student: str = "tiny-7b", **overrides) -> DistillConfig:
    """A few-step distill config on the random zoo (large learning rates so one step shows)."""
    base = {
        "teacher_dir": str(zoo["tiny-32b"]),
        "student_dir": str(zoo[student]),
        "output_dir": str(out),
        "method": method,
        "data.train_dir": str(data / "train"),
        "data.image_root": str(data),
        "max_steps": 2,
        "per_device_batch_size": 1,
        "grad_accum": 2,
        "lr_student": 1e-3,
        "lr_aux": 1e-2,
        "warmup_ratio": 0.0,
    }
    base.update(overrides)
    return load_config(None, base)
