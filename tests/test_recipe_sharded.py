"""The real recipe under DeepSpeed ZeRO-3 and FSDP2: 2 CPU processes (gloo) train like 1 process.

Each engine is started with the shipped accelerate config (configs/accelerate/{zero3,fsdp}.yaml,
only the process count and precision overridden for CPU): 3 steps with a checkpoint after step 2,
an export; then the step-3 checkpoint is deleted and a second launch resumes from step 2, redoes
step 3, checkpoints and exports again. The 1-process run with
the same global batch (1 process x 2 accumulation = 2 processes x 1) is the reference:

- every logged loss term of the 3 steps equals the reference's (rel 1e-5: fp32, only the order
  of the gradient reductions differs; measured ~1e-7),
- the exported weights equal the reference export's within 0.1 x lr (atol 1e-4; measured 3e-8 to
  1.5e-5: AdamW's normalised step amplifies reduction-order noise where a gradient is ~0),
- the export loads with from_pretrained and gives the logits of the trained module as the
  engine saved it in its own checkpoint format (gains as hooks, not folded) within 1e-4,
- the checkpoints hold one model (the student side), never the teacher.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from recipe_helpers import quick_vhs, tiny_config
from safetensors.torch import load_file

from trainers.trainlog import read_log

REPO = Path(__file__).resolve().parents[1]
ENGINE_CONFIGS = {"zero3": REPO / "configs/accelerate/zero3.yaml", "fsdp2": REPO / "configs/accelerate/fsdp.yaml"}
TERMS = ("total", "laid", "attn", "kl", "sft")
pytestmark = pytest.mark.slow


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1",
                DS_ACCELERATOR="cpu")  # fmt: skip


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def deepspeed_cpu_ops():
    """Compile DeepSpeed's shared-memory comm op once, alone (two ranks compiling it at the same
    time can abort); a first compile that aborts is retried once."""
    code = "from deepspeed.comm.torch import build_shm_op; build_shm_op()"
    for attempt in range(2):
        proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=600)
        if proc.returncode == 0:
            return
    pytest.fail(f"DeepSpeed's CPU comm op does not build: {proc.stderr[-2000:]}")


def _launch(engine: str, config_file: Path, *extra: str) -> None:
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ENGINE_CONFIGS[engine]),
        "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(_free_port()),
        "-m", "laid_workflows.cli", "distill", "--config", str(config_file), "--no-progress", *extra,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"{engine} launch failed:\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def reference(random_zoo, tmp_path_factory):
    """The 1-process run: 3 steps, global batch 2 (2 accumulation steps), checkpoint at step 2."""
    from trainers.recipe import distill

    torch.set_num_threads(1)
    vhs = quick_vhs(tmp_path_factory)
    out = tmp_path_factory.mktemp("sharded_reference")
    cfg = tiny_config(random_zoo, vhs, out, max_steps=3, grad_accum=2, save_every=2, lr_schedule="constant")
    distill(cfg, progress=False)
    return cfg


def _trained_state(step_dir: Path, engine: str, tmp: Path) -> dict:
    """The DistillModule state (student + mixers + gains) as the engine saved it in a checkpoint."""
    if engine == "zero3":
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(step_dir), tag="pytorch_model")
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(step_dir / "pytorch_model_fsdp_0", tmp / "state.pt")
    state = torch.load(tmp / "state.pt", weights_only=False)
    return state.get("model", state)


def _module_logits(state: dict, cfg, batch) -> torch.Tensor:
    """Logits of the saved module: a fresh student with its weights, the RoPE gains as hooks."""
    from laid.model.loading import load_model
    from trainers.rope_gain import RopeGain

    student = load_model(cfg.student_dir, device="cpu", dtype=torch.float32)
    sub = {k[len("student."):]: v.float() for k, v in state.items() if k.startswith("student.")}
    missing, unexpected = student.load_state_dict(sub, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    student.tie_weights()
    gain = RopeGain.for_model(student, [student.config.get_text_config().num_hidden_layers - 1])
    gain.load_state_dict({"q": state["gain.q"].float(), "k": state["gain.k"].float()})
    with torch.no_grad(), gain.applied(student):
        return student(**batch).logits


def _batch(processor):
    import numpy as np

    from laid.data.render import sample_image
    from laid.model.prompting import Example, encode_batch

    rng = np.random.default_rng(0)
    examples = [Example([sample_image(rng)[0] for _ in range(n)], "For the image with a red circle, is there a blue square?") for n in (3, 5)]
    return encode_batch(processor, examples)


@pytest.mark.parametrize("engine", ["zero3", "fsdp2"])
def test_sharded_engine_matches_one_process(engine, reference, deepspeed_cpu_ops, tmp_path):
    from laid.model.loading import load_model, load_processor

    torch.set_num_threads(1)
    out = tmp_path / engine
    data = reference.to_dict()
    data.update(output_dir=str(out), grad_accum=1)
    config_file = tmp_path / "two.yaml"
    config_file.write_text(yaml.safe_dump(data))
    _launch(engine, config_file)  # steps 1-3, checkpoints step-2 and step-3, export
    first = load_file(str(out / "export/model.safetensors"))
    shutil.rmtree(out / "checkpoints" / "step-00000003")  # as if it had stopped after step 2
    _launch(engine, config_file, "--resume")  # step 3 again, from the step-2 checkpoint

    ref_out = Path(reference.output_dir)
    steps = lambda path: [r for r in read_log(path) if "note" not in r]
    log_ref, log = steps(ref_out / "train_log.jsonl"), steps(out / "train_log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3]
    for a, b in zip(log_ref, log):
        for term in TERMS:
            assert b[f"{term}_loss"] == pytest.approx(a[f"{term}_loss"], rel=1e-5, abs=1e-7), (engine, a["step"], term)
        # Health telemetry under sharding: the activation part (rank 0's last micro-batch, another example
        # than one process's last, so close but not equal); no parameter part.
        for name in ("q_norm_ratio", "k_norm_ratio", "attn_entropy"):
            assert b[name].keys() == a[name].keys(), (engine, name)
            assert all(b[name][k] == pytest.approx(a[name][k], rel=0.25) for k in a[name]), (engine, name, a[name], b[name])
        assert "mixer_row_norm" in a and "mixer_row_norm" not in b and "laid_grad_norm" not in b
    notes = [r["note"] for r in read_log(out / "train_log.jsonl") if "note" in r]
    assert any("activations only" in n for n in notes)

    w_ref, w = load_file(str(ref_out / "export/model.safetensors")), load_file(str(out / "export/model.safetensors"))
    assert w.keys() == w_ref.keys()
    for k in w_ref:
        # AdamW's normalised step turns reduction-order noise into up to ~lr-sized moves where a gradient
        # is ~0 (one bias element: 1.5e-5); a wrong gradient moves weights by ~lr = 1e-3 per step.
        torch.testing.assert_close(w[k], w_ref[k], rtol=0, atol=1e-4, msg=lambda m: f"{engine} {k}: {m}")
        torch.testing.assert_close(w[k], first[k], rtol=0, atol=1e-6)  # the resumed step 3 is the same step 3

    step3 = out / "checkpoints" / "step-00000003"
    saved_models = [p.name for p in step3.iterdir() if p.name.startswith("pytorch_model")]
    assert saved_models == ["pytorch_model" if engine == "zero3" else "pytorch_model_fsdp_0"], saved_models  # no teacher

    processor = load_processor(out / "export")
    batch = _batch(processor)
    with torch.no_grad():
        exported = load_model(out / "export", device="cpu", dtype=torch.float32)(**batch).logits
        untrained = load_model(reference.student_dir, device="cpu", dtype=torch.float32)(**batch).logits
    trained = _module_logits(_trained_state(step3, engine, tmp_path), reference, batch)
    assert not torch.allclose(trained, untrained, atol=1e-3)  # training changed the logits ...
    torch.testing.assert_close(exported, trained, rtol=1e-4, atol=1e-4)  # ... and the export keeps them


def test_fsdp_rank0_loading_reads_no_weights_on_other_ranks(random_zoo, monkeypatch):
    """With FSDP's rank-0 loading, local ranks != 0 never read the checkpoint (host RAM ~ one copy per
    node): the model is built from config.json, buffers real, tied like rank 0's; rank 0 loads."""
    import trainers.students as students

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    reads = []
    monkeypatch.setattr(students, "load_model", lambda path, **kw: reads.append(path) or "loaded")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert students._load(random_zoo["tiny-7b"], torch.float32) == "loaded" and len(reads) == 1
    monkeypatch.setenv("LOCAL_RANK", "1")
    model = students._load(random_zoo["tiny-7b"], torch.float32)
    assert len(reads) == 1  # rank 1 read nothing
    assert not any(p.is_meta for p in model.parameters())
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight  # tied as in the folder
    rotary = model.model.language_model.rotary_emb.inv_freq
    assert torch.isfinite(rotary).all() and rotary[0] == 1.0  # computed buffers, not uninitialised memory
