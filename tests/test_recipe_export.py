"""Export: a plain HF folder that reproduces the in-memory student (gains folded, LoRA merged)."""

from __future__ import annotations

import pytest
import torch
import xarray as xr
from accelerate import Accelerator
from recipe_helpers import quick_vhs, tiny_config, trained_looking

from laid.model.loading import load_model, load_processor
from laid.model.prompting import Example, encode_batch
from trainers.distill_module import DistillModule
from trainers.export import export_run
from trainers.rope_gain import RopeGain
from trainers.students import build_student


@pytest.fixture(scope="module")
def vhs(tmp_path_factory):
    return quick_vhs(tmp_path_factory)


def _batch(processor):
    from laid.data.render import sample_image

    rng = __import__("numpy").random.default_rng(0)
    examples = [Example([sample_image(rng)[0] for _ in range(n)], "For the image with a red circle, is there a blue square?") for n in (3, 5)]
    return encode_batch(processor, examples)


def _module(cfg, teacher_dir):
    from transformers import AutoConfig

    student = build_student(cfg)
    gain = RopeGain.for_model(student, [2]) if cfg.uses_gain else None
    return trained_looking(DistillModule(student, cfg, [(2, 3)] if cfg.uses_mixers else [], AutoConfig.from_pretrained(teacher_dir), gain))


@pytest.mark.parametrize("method", ["laid", "sft-lora"])
def test_export_reproduces_the_in_memory_student(method, random_zoo, vhs, tmp_path):
    torch.set_num_threads(1)
    cfg = tiny_config(random_zoo, vhs, tmp_path / method, method=method)
    module = _module(cfg, random_zoo["tiny-32b"])
    acc = Accelerator(cpu=True)
    prepared = acc.prepare(module)
    processor = load_processor(cfg.student_dir)
    export = export_run(acc, prepared, cfg, processor, [(2, 3)] if cfg.uses_mixers else [], tmp_path / method)

    batch = _batch(processor)
    with torch.no_grad():
        live = module.student(**batch).logits  # gain hooks attached / LoRA adapters active
        plain = load_model(cfg.student_dir, device="cpu", dtype=torch.float32)(**batch).logits
        exported = load_model(export, device="cpu", dtype=torch.float32)(**batch).logits
    assert not torch.allclose(live, plain, atol=1e-3)  # the trained parts matter ...
    torch.testing.assert_close(exported, live, rtol=1e-4, atol=1e-4)  # ... and the export keeps them

    if method == "laid":
        ds = xr.load_dataset(export / "head_weights.nc")
        torch.testing.assert_close(torch.from_numpy(ds["w_q"].values[0]), module.align[0].mixer.q.effective().detach())  # unit rows
        torch.testing.assert_close(torch.from_numpy(ds["w_k"].values[0]), module.align[0].mixer.k.effective().detach())
        torch.testing.assert_close(torch.from_numpy(ds["gain_q"].values), module.gain.q.detach())
        torch.testing.assert_close(torch.from_numpy(ds["gain_product"].values), module.gain.product())
        assert list(ds.attrs["student_layers"].reshape(-1)) == [2] and list(ds.attrs["teacher_layers"].reshape(-1)) == [3]
        assert (tmp_path / method / "head_weights.nc").is_file()
    assert "method: " + method in (export / "distill_config.yaml").read_text()
    assert load_processor(export).tokenizer.get_vocab() == processor.tokenizer.get_vocab()
