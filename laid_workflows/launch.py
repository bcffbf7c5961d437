"""How `laid compare` and `laid study` run their trainings: worker processes, or `accelerate launch`.

Without a launcher (the CPU default) the runs train side by side in worker processes
(laid_workflows/jobs.py). With `--gpus N`, or `--accelerate-config FILE [--num-processes N]`, every
run trains alone across all N processes, one run after another:

    <training run>/launch_config.yaml    the run's resolved distill config
    python -m accelerate.commands.launch --config_file FILE --num_processes N --main_process_port P \\
        -m laid_workflows.cli distill --config <training run>/launch_config.yaml --no-progress [--resume]
    <training run>/launch.log            what the processes print (appended per launch)

and the parent evaluates (and diagnoses) every export itself with `--device` / `--dtype`, which go
to laid.eval.run.evaluate and laid diagnose (with --gpus: device auto, the loader's placement across
the visible GPUs). `--gpus N` uses configs/accelerate/zero3.yaml unless `--accelerate-config` names
another (fsdp.yaml: FSDP2, no DeepSpeed needed); the launcher always passes --num_processes, so a
config's own count (zero3.yaml: 4) never decides it. A killed parent takes its launch with it (the
training's checkpoints stay); run again, the run resumes from its newest checkpoint. `--dry-run`
prints every command and what would be reused, and runs and writes nothing.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from laid.config import read_yaml
from laid.io import write_text
from laid.layout import launch_config, launch_log
from laid_workflows.jobs import DEVICES, cores

REPO = Path(__file__).resolve().parents[1]
GPU_CONFIG = REPO / "configs" / "accelerate" / "zero3.yaml"  # --gpus N without --accelerate-config
DTYPES = ("auto", "bfloat16", "float16", "float32")
SHARDED = ("FSDP", "DEEPSPEED")  # accelerate distributed types that shard the mixers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _death_signal():
    """A preexec_fn that makes the launch get SIGTERM when the process that started it dies (Linux:
    a killed `laid compare` leaves no training running); resolved before the fork, a no-op elsewhere."""
    try:
        import ctypes
        import signal

        prctl, sig = ctypes.CDLL("libc.so.6").prctl, int(signal.SIGTERM)
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, sig)  # PR_SET_PDEATHSIG


@dataclass(frozen=True)
class Launcher:
    """`accelerate launch` across `num_processes` processes with `config_file`, one run at a time."""

    config_file: str
    num_processes: int
    gpus: bool = False  # asked for with --gpus: that many CUDA devices must be visible

    def check(self, dry_run: bool = False) -> None:
        if self.num_processes < 1:
            raise ValueError(f"--num-processes / --gpus must be >= 1, got {self.num_processes}")
        if not Path(self.config_file).is_file():
            raise FileNotFoundError(f"--accelerate-config {self.config_file} not found (configs/accelerate/ has zero3.yaml, "
                                    "fsdp.yaml and multi_cpu.yaml)")
        if self.gpus and not dry_run:
            import torch

            seen = torch.cuda.device_count()
            if seen < self.num_processes:
                raise ValueError(f"--gpus {self.num_processes}: {seen} CUDA device(s) visible here; on a CPU use "
                                 "--accelerate-config configs/accelerate/multi_cpu.yaml --num-processes N")

    @property
    def sharded(self) -> bool:
        return str(read_yaml(self.config_file, "accelerate config").get("distributed_type", "")).upper() in SHARDED

    def check_run(self, cfg) -> None:
        """What the recipe would refuse under this launcher, refused before the launch."""
        if self.sharded and cfg.uses_mixers and cfg.mixer_init == "least_squares":
            raise ValueError(f"{cfg.output_dir}: mixer_init: least_squares needs unsharded mixers and {self.config_file} "
                             "shards them; set mixer_init: overlap (method_overrides or the distill config)")

    def command(self, config: Path, resume: bool, port: int | None = None) -> list[str]:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(self.config_file),
               "--num_processes", str(self.num_processes)]
        cmd += ["--main_process_port", str(port)] if port else []
        cmd += ["-m", "laid_workflows.cli", "distill", "--config", str(config), "--no-progress"]
        return cmd + (["--resume"] if resume else [])

    def describe(self, cfg, resume: bool) -> str:
        """The command a run would be launched with (a free --main_process_port is added at launch)."""
        return shlex.join(self.command(launch_config(cfg.output_dir), resume))

    def launch(self, cfg, resume: bool) -> None:
        """Train `cfg` across the processes; its output goes to launch.log; a failure is one line naming the log."""
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        config, log = launch_config(out), launch_log(out)
        write_text(cfg.to_yaml(), config)
        cmd = self.command(config, resume, _free_port())
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
        env.setdefault("OMP_NUM_THREADS", str(max(1, cores() // self.num_processes)))
        with open(log, "a") as f:
            f.write(f"== {time.strftime('%Y-%m-%dT%H:%M:%S')} {shlex.join(cmd)}\n")
            f.flush()
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, preexec_fn=_death_signal()).returncode
        if rc != 0:
            raise RuntimeError(f"`accelerate launch` failed (exit {rc}); its output: {log}")


def train(config: dict, launcher: Launcher | None = None) -> None:
    """Distil one run, resuming from its newest checkpoint: in this process, or launched."""
    from trainers.checkpoint import latest_checkpoint
    from trainers.config import DistillConfig, from_dict
    from trainers.recipe import distill

    cfg = from_dict(DistillConfig, config)
    resume = latest_checkpoint(cfg.output_dir) is not None
    if launcher is None:
        distill(cfg, resume=resume, progress=False)
    else:
        launcher.launch(cfg, resume)


def describe_training(cfg, launcher: Launcher | None, trained: bool) -> str:
    """How `train` would run one training (a dry run's line)."""
    from trainers.checkpoint import latest_checkpoint

    if trained:
        return "already trained (its exports exist)"
    ckpt = latest_checkpoint(cfg.output_dir)
    resume = f"resuming from {ckpt}" if ckpt else ""
    if launcher is None:
        return "in a worker process" + (f", {resume}" if resume else "")
    return launcher.describe(cfg, ckpt is not None) + (f"   ({resume})" if resume else "")


def dry_run_text(command: str, name: str, run_dir: Path, placement: dict, plan: list[str]) -> str:
    """What `--dry-run` prints: the experiment, where it would run, then one line per step."""
    head = (f"laid {command} --dry-run: {name} in {run_dir} (nothing was run or written; evaluations and diagnoses "
            f"on device {placement['device']}, dtype {placement['dtype'] or 'auto'})")
    return "\n".join([head, *plan])


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The options of how an experiment's runs are executed (`laid compare`, `laid study`)."""
    p.add_argument("--workers", type=int, default=None,
                   help="without a launcher: runs trained side by side in worker processes; one per core, 4 on cuda, if not given")
    p.add_argument("--device", choices=DEVICES, default=None,
                   help="where the workers train and every evaluation and diagnosis runs: cpu if not given; with --gpus (or a "
                   "launcher on a GPU machine), auto: the model placed across the visible GPUs")
    p.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="model dtype of evaluations and diagnoses; auto: bf16 on cuda, fp32 on cpu")
    p.add_argument("--gpus", type=int, default=None, metavar="N",
                   help="train each run with `accelerate launch` across N GPUs, one run after another, with "
                   "--accelerate-config or configs/accelerate/zero3.yaml")
    p.add_argument("--accelerate-config", default=None, metavar="FILE",
                   help="train each run with `accelerate launch --config_file FILE`, e.g. configs/accelerate/fsdp.yaml, "
                   "or multi_cpu.yaml on a CPU")
    p.add_argument("--num-processes", type=int, default=None, metavar="N",
                   help="processes per launch with --accelerate-config; if not given, --gpus, else the file's num_processes")
    p.add_argument("--dry-run", action="store_true", help="print every command and what would be reused; run and write nothing")


def run_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of Comparison / Study from the options of add_run_arguments."""
    launcher = None
    if args.num_processes is not None and args.accelerate_config is None and args.gpus is None:
        raise ValueError("--num-processes goes with --accelerate-config FILE (or use --gpus N)")
    if args.gpus is not None or args.accelerate_config is not None:
        config = str(Path(args.accelerate_config).expanduser().absolute()) if args.accelerate_config else str(GPU_CONFIG)
        n = args.num_processes or args.gpus
        if n is None and Path(config).is_file():
            n = int(read_yaml(config, "accelerate config").get("num_processes", 1))
        launcher = Launcher(config, int(n or 1), gpus=args.gpus is not None)
        launcher.check(args.dry_run)
        if args.workers is not None:
            raise ValueError("--workers runs trainings side by side; with a launcher each run uses every process, one run "
                             "after another: drop --workers")
    device = args.device
    if device is None:  # launched runs train on the GPUs: evaluate the exports there too
        import torch

        device = "auto" if args.gpus is not None or (launcher is not None and torch.cuda.is_available()) else "cpu"
    return dict(workers=args.workers, device=device, dtype=None if args.dtype == "auto" else args.dtype,
                launcher=launcher, dry_run=args.dry_run)
