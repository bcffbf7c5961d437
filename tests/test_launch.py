"""The launcher (laid_workflows/launch.py): `--gpus N --dry-run` shows N-process launches with the
sharded config and runs nothing; `--accelerate-config FILE --num-processes 2` really trains each run
with 2 gloo processes; a failed launch is one line naming the run and its log; a comparison whose
parent is killed while a launched run trains resumes to the uninterrupted comparison's table."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import xarray as xr
import yaml
from recipe_helpers import quick_vhs
from safetensors.torch import load_file

from laid_workflows.cli import main

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
DISTILL = str(REPO / "configs" / "distill" / "tiny-32b_to_tiny-7b.yaml")
STEPS = 12  # long enough to kill a run between its first checkpoint (step 2) and its export


def write_spec(path: Path, zoo: dict, data: Path, **extra) -> Path:
    spec = {"name": "mine", "teacher": {"label": "big", "path": str(zoo["tiny-32b"])},
            "students": [{"label": "small", "path": str(zoo["tiny-7b"])}], "distill_configs": {"small": DISTILL},
            "variants": ["base"], "methods": ["kd"], "seeds": [0], "data": {"root": str(data)},
            "method_overrides": {"kd": {"max_steps": STEPS, "save_every": 2, "per_device_batch_size": 1, "grad_accum": 1}},
            "eval": {"sizes": [1, 2], "samples_per_size": 2}, **extra}
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def world(random_zoo, tmp_path_factory):
    """One comparison trained by the launcher, 2 processes per run, from an accelerate config that
    itself asks for 4 (as configs/accelerate/zero3.yaml does): --num-processes must win."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("launch")
    four = yaml.safe_load((REPO / "configs" / "accelerate" / "multi_cpu.yaml").read_text())
    (root / "four.yaml").write_text(yaml.safe_dump({**four, "num_processes": 4}))
    spec = write_spec(root / "spec.yaml", random_zoo, quick_vhs(tmp_path_factory))
    args = ["compare", "--config", str(spec), "--accelerate-config", str(root / "four.yaml"), "--num-processes", "2", "--no-progress"]
    assert main([*args, "--run-dir", str(root / "a")]) == 0
    return {"root": root, "spec": spec, "args": args, "zoo": random_zoo, "run": root / "a"}


def test_gpus_dry_run_shows_n_process_launches_and_writes_nothing(world, capsys):
    overrides = {"kd": {"max_steps": 2}, "laid": {"max_steps": 2, "mixer_init": "overlap"}}  # sharded mixers: overlap start
    spec = write_spec(world["root"] / "two.yaml", world["zoo"], quick_vhs_of(world), methods=["kd", "laid"], seeds=[0, 1],
                      method_overrides=overrides)
    run = world["root"] / "fresh"
    for config in ("zero3.yaml", "fsdp.yaml"):  # --gpus alone: DeepSpeed ZeRO-3; FSDP2 by name
        named = [] if config == "zero3.yaml" else ["--accelerate-config", str(REPO / "configs/accelerate" / config)]
        assert main(["compare", "--config", str(spec), "--run-dir", str(run), "--gpus", "8", *named, "--dry-run"]) == 0
        lines = capsys.readouterr().out.splitlines()
        launches = [line for line in lines if line.startswith("train ")]
        assert len(launches) == 4 and all("accelerate.commands.launch" in line and "--num_processes 8" in line
                                          and f"--config_file {REPO / 'configs/accelerate' / config}" in line for line in launches)
        assert any("small__laid__seed1/launch_config.yaml" in line for line in launches)
        assert "device auto" in lines[0] and sum(line.startswith("evaluate ") for line in lines) == 2 + 4
    assert not run.exists()
    # Sharded mixers cannot start at LAid's least-squares fit: refused before anything runs, in one line.
    with pytest.raises(ValueError, match="small__laid: mixer_init: least_squares needs unsharded mixers"):
        main(["compare", "--config", str(spec), "--run-dir", str(run), "--gpus", "8", "--dry-run", "--debug",
              "--override", "method_overrides.laid.mixer_init=least_squares"])
    assert not run.exists()


def quick_vhs_of(world) -> Path:
    return Path(yaml.safe_load(world["spec"].read_text())["data"]["root"])


def test_a_study_dry_run_launches_every_run(world, capsys):
    spec = world["root"] / "study.yaml"
    spec.write_text(yaml.safe_dump({
        "teacher": {"label": "big", "path": str(world["zoo"]["tiny-32b"])}, "students": [{"label": "small", "path": str(world["zoo"]["tiny-7b"])}],
        "distill_configs": {"small": DISTILL}, "data": {"root": str(quick_vhs_of(world))}, "budgets": [1, 2],
        "arms": {"kd": {"method": "kd"}, "sft": {"method": "sft"}}, "diagnose": {"seeds": []}}))
    run = world["root"] / "study"
    assert main(["study", "--config", str(spec), "--run-dir", str(run), "--gpus", "2", "--dry-run", "--exploratory"]) == 0
    launches = [line for line in capsys.readouterr().out.splitlines() if line.startswith("train ")]
    assert len(launches) == 6 and all("--num_processes 2" in line for line in launches)  # 2 arms x 3 seeds
    assert not run.exists()


def test_gpus_without_gpus_is_one_line(world, capfd):
    rc = main(["compare", "--config", str(world["spec"]), "--run-dir", str(world["root"] / "x"), "--gpus", "8"])
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert rc == 1 and len(lines) == 1 and "--gpus 8: 0 CUDA device(s) visible" in lines[0]


def test_each_run_trains_in_two_processes(world, tmp_path):
    """Two processes (one random state each, not the file's four) trained what one process with the
    same global batch trains, and the parent evaluated the export."""
    from trainers.config import load_config
    from trainers.recipe import distill

    run = world["run"] / "distill" / "small__kd"
    ckpt = sorted((run / "checkpoints").iterdir())[-1]
    assert sorted(p.name for p in ckpt.glob("random_states_*.pkl")) == ["random_states_0.pkl", "random_states_1.pkl"]
    assert "--num_processes 2" in (run / "launch.log").read_text()
    launched = load_config(run / "launch_config.yaml")
    assert launched.training_signature() == load_config(run / "distill_config.yaml").training_signature()
    one = distill(load_config(run / "launch_config.yaml", {"output_dir": str(tmp_path / "one"), "grad_accum": 2}), progress=False)
    w1, w2 = load_file(str(one / "model.safetensors")), load_file(str(run / "export" / "model.safetensors"))
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-5, atol=1e-6)
    assert xr.load_dataset(run / "eval.nc").attrs["model_dir"] == str(run / "export")


def test_a_run_whose_mixers_no_term_trains_trains_in_two_processes(world, tmp_path):
    """The toy's LAid (the Q/K alignment term off: the head mixers only weight the teacher maps and get
    no gradient) under plain DDP in 2 gloo processes, as `laid compare --accelerate-config
    configs/accelerate/multi_cpu.yaml` launches it: it trains and equals the 1-process run. DDP not
    told that the mixers go unused fails the second step ("parameters that were not used in producing
    loss"), as it did before trainers/engines.py told it."""
    from laid_workflows.launch import Launcher
    from recipe_helpers import tiny_config
    from trainers.recipe import distill

    toy = {"lambdas.laid": 0.0, "lambdas.attn": 0.1, "mixer_init": "overlap", "grad_accum": 1, "max_steps": 2}
    cfg = tiny_config(world["zoo"], quick_vhs_of(world), tmp_path / "two", **toy)
    assert cfg.uses_mixers and not cfg.trains_mixers
    Launcher(str(REPO / "configs" / "accelerate" / "multi_cpu.yaml"), 2).launch(cfg, resume=False)
    one = distill(tiny_config(world["zoo"], quick_vhs_of(world), tmp_path / "one", **{**toy, "grad_accum": 2}), progress=False)
    w1, w2 = load_file(str(one / "model.safetensors")), load_file(str(tmp_path / "two" / "export" / "model.safetensors"))
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-5, atol=1e-6)


def test_a_finished_comparison_dry_run_reuses_everything(world, capsys):
    assert main([*world["args"], "--run-dir", str(world["run"]), "--dry-run"]) == 0
    steps = capsys.readouterr().out.splitlines()[1:]
    assert steps and all(line.startswith("reuse ") for line in steps), steps


def test_a_failed_launch_is_one_line_naming_the_run_and_its_log(world, capfd):
    bad = world["root"] / "bad.yaml"
    bad.write_text(yaml.safe_dump({"distributed_type": "NO_SUCH_TYPE", "num_processes": 2}))
    run = world["root"] / "failing"
    rc = main(["compare", "--config", str(world["spec"]), "--run-dir", str(run), "--accelerate-config", str(bad), "--no-progress"])
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip() and not line.startswith(("[", "Loading"))]
    log = run / "distill" / "small__kd" / "launch.log"
    assert rc == 1 and len(lines) == 1, lines
    assert lines[0].startswith("laid compare: error: small kd seed 0: `accelerate launch` failed") and str(log) in lines[0]
    assert "NO_SUCH_TYPE" in log.read_text()


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_a_comparison_killed_while_a_launched_run_trains_resumes_to_the_same_table(world):
    """SIGTERM to `laid compare` while its launched 2-process run trains: the launch dies with it (no
    orphan keeps training), and a rerun resumes the run from its checkpoint to the uninterrupted
    comparison's table, every variable equal."""
    run = world["root"] / "b"
    cmd = [sys.executable, "-m", "laid_workflows.cli", *world["args"], "--run-dir", str(run)]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    trained = run / "distill" / "small__kd"
    try:
        wait_for_checkpoint(proc, trained)
        launched = _descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        _, alive = psutil.wait_procs(launched, timeout=60)
        for p in alive:  # (only when the test fails: they were started here)
            p.kill()
        assert not alive, f"the launch outlived its parent: {alive}"
    finally:
        for p in _descendants(proc.pid) if proc.poll() is None else []:
            p.kill()
        proc.kill()
    assert not (trained / "export").exists()  # killed mid-run
    assert main([*world["args"], "--run-dir", str(run)]) == 0
    assert "--resume" in (trained / "launch.log").read_text()
    same_table(world["run"], run)


def wait_for_checkpoint(proc: subprocess.Popen, run: Path, timeout: float = 300) -> None:
    end = time.time() + timeout
    while not list((run / "checkpoints").glob("step-*/trainer_state.json")):
        if proc.poll() is not None:
            raise AssertionError(f"the comparison ended before its run checkpointed: {proc.stderr.read()[-2000:]}")
        if time.time() > end:
            raise AssertionError("no checkpoint in time")
        time.sleep(0.05)


def same_table(a: Path, b: Path) -> None:
    """Every variable of the comparison, the run's evaluation and its exported weights are equal."""
    xr.testing.assert_equal(xr.load_dataset(a / "compare" / "mine.nc"), xr.load_dataset(b / "compare" / "mine.nc"))
    run = Path("distill") / "small__kd"
    xr.testing.assert_equal(xr.load_dataset(a / run / "eval.nc"), xr.load_dataset(b / run / "eval.nc"))
    wa, wb = load_file(str(a / run / "export" / "model.safetensors")), load_file(str(b / run / "export" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_comparison_killed_while_a_worker_run_trains_resumes_to_the_same_table(world, monkeypatch):
    """The CPU path: SIGKILL to `laid compare` while it trains a run in-process, then a rerun, which
    resumes the run from its checkpoint (not from scratch)."""
    import trainers.recipe

    calls, distill = [], trainers.recipe.distill
    monkeypatch.setattr(trainers.recipe, "distill", lambda cfg, resume=False, **kw: calls.append(resume) or distill(cfg, resume, **kw))
    spec = world["spec"]
    reference, run = world["root"] / "c-ref", world["root"] / "c"
    assert main(["compare", "--config", str(spec), "--run-dir", str(reference), "--workers", "1", "--no-progress"]) == 0
    cmd = [sys.executable, "-m", "laid_workflows.cli", "compare", "--config", str(spec), "--run-dir", str(run),
           "--workers", "1", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_checkpoint(proc, run / "distill" / "small__kd")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert not (run / "distill" / "small__kd" / "export").exists()
    calls.clear()
    assert main(["compare", "--config", str(spec), "--run-dir", str(run), "--workers", "1", "--no-progress"]) == 0
    assert calls == [True]
    same_table(reference, run)
