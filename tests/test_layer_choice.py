"""`layer_map: diagnosed` on a planted model: it must find the layer where the retrieval head sits.

The plant: the shipped toy teacher (its supervised retrieval head is head 0 of layer 0, reading the
needle from the anchor word) with `k` no-op decoder layers put in front of it (o_proj and
down_proj zero: the layer adds nothing to the residual stream, so the model computes exactly the
teacher's function; checked). The retrieval head therefore sits at layer k by construction.
`laid diagnose` + trainers.layer_choice must pick layer k; the paper's `last` map picks the last
layer, and ranking by the answer row alone (the `rows="answer"` ablation) does not see the
retrieval head at all (its answer row puts ~no mass on the needle).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TEACHER = REPO / "checkpoints" / "zoo" / "tiny-32b"


def plant_noop_layers(src: Path, out: Path, k: int) -> Path:
    """`src` with k identity decoder layers in front (random Q/K, zero outputs)."""
    from transformers import AutoConfig

    from laid.model.loading import load_model

    model = load_model(src, device="cpu", dtype=torch.float32)
    cfg = AutoConfig.from_pretrained(src)
    cfg.text_config.num_hidden_layers += k
    cfg.text_config.layer_types = [cfg.text_config.layer_types[0]] * k + list(cfg.text_config.layer_types)
    torch.manual_seed(0)
    planted = type(model)(cfg).eval()
    state = {}
    for name, value in model.state_dict().items():
        parts = name.split(".")
        if "layers" in parts:  # ...language_model.layers.<i>.... -> layer i + k
            i = parts.index("layers") + 1
            parts[i] = str(int(parts[i]) + k)
        state[".".join(parts)] = value
    missing, unexpected = planted.load_state_dict(state, strict=False)
    new = tuple(f"layers.{j}." for j in range(k))
    assert not unexpected and all(any(n in m for n in new) for m in missing)  # only the new layers start fresh
    for layer in planted.model.language_model.layers[:k]:
        torch.nn.init.zeros_(layer.self_attn.o_proj.weight)
        torch.nn.init.zeros_(layer.mlp.down_proj.weight)
    planted.save_pretrained(out)
    for f in src.iterdir():  # tokenizer, processor, chat template
        if f.is_file() and not (out / f.name).exists():
            shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="module")
def diagnosed(tmp_path_factory):
    """Diagnoses of the teacher and of the teacher with one no-op layer in front, on the same haystacks."""
    from laid.data.synth import SynthConfig, generate
    from laid_analysis.analyse import AnalysisSettings
    from laid_analysis.diagnose import diagnose

    root = tmp_path_factory.mktemp("layer_choice")
    data = generate(SynthConfig(seed=11, test_sizes=(5, 10), test_questions_per_size=8, train_sizes=(2,), train_questions=2,
                                multi_needle_counts=(), test_pool_size=200, train_pool_size=10), root / "data", progress=False)
    planted = plant_noop_layers(TEACHER, root / "planted", k=1)
    out = {}
    for name, model in (("teacher", TEACHER), ("planted", planted)):
        settings = AnalysisSettings(profile_sizes=[5], profile_max_samples=1, batch_size=4)
        diagnose(model, data / "test", data, None, root / name, max_samples=8, settings=settings, progress=False)
        out[name] = root / name
    return {"data": data, "planted": planted, **out}


def test_plant_computes_the_teachers_function(diagnosed):
    from laid.eval.run import evaluate

    kw = dict(max_samples_per_size=8, progress=False, device="cpu")
    a = evaluate(TEACHER, diagnosed["data"] / "test", diagnosed["data"], **kw)
    b = evaluate(diagnosed["planted"], diagnosed["data"] / "test", diagnosed["data"], **kw)
    assert torch.allclose(torch.tensor(a["margin"].values), torch.tensor(b["margin"].values), atol=1e-4)


def test_diagnosed_finds_the_retrieval_layer_and_the_ablations_do_not(diagnosed):
    from trainers.layer_choice import choose_layers

    teacher = choose_layers(diagnosed["teacher"], rows="question")
    planted = choose_layers(diagnosed["planted"], rows="question")
    assert teacher.teacher_layers == [0] and teacher.evidence[0].head == 0
    assert planted.teacher_layers == [1] and planted.evidence[0].head == 0  # moved with the plant
    best = planted.evidence[0]
    assert best.score > 0.5 and best.lo > max(e.hi for e in planted.evidence[1:] if e.layer == 0)  # the no-op layer: chance
    # The answer row does not see the retrieval head (it reads from a question word).
    assert best.answer_score < 0.1
    answer = choose_layers(diagnosed["planted"], rows="answer")
    assert (answer.teacher_layers[0], answer.evidence[0].head) != (1, 0)


def test_pairs_follow_depth_and_plan_prints_the_evidence(diagnosed):
    from trainers.layer_choice import choose_layers
    from trainers.pairing import Diagnosis, PairingError, check_pair
    from trainers.plan import plan

    planted = choose_layers(diagnosed["planted"], n_layers=2)
    assert planted.pairs(5, 5)[0] == (1, 1) and planted.pairs(3, 5)[0] == (1, 1)
    assert choose_layers(diagnosed["teacher"]).pairs(3, 4) == [(0, 0)]
    # the recipe's path: same teacher as the diagnosis, pairs from the evidence
    p = check_pair(TEACHER, REPO / "checkpoints" / "zoo" / "tiny-7b", layer_map="diagnosed",
                   diagnosis=Diagnosis(str(diagnosed["teacher"])))
    assert p.layer_pairs == [(0, 0)] and p.layer_map == "diagnosed"
    text = plan(TEACHER, REPO / "checkpoints" / "zoo" / "tiny-7b", layer_map="diagnosed", precision="fp32",
                diagnosis=Diagnosis(str(diagnosed["teacher"]))).format()
    assert "layer pairs (student <- teacher; diagnosed): 0 <- 0" in text and "* layer   0 head   0" in text
    with pytest.raises(PairingError, match="needs teacher_diagnosis"):
        check_pair(TEACHER, REPO / "checkpoints" / "zoo" / "tiny-7b", layer_map="diagnosed")
    with pytest.raises(ValueError, match="diagnoses a model with 5 layers, the teacher has 4"):
        check_pair(TEACHER, REPO / "checkpoints" / "zoo" / "tiny-7b", layer_map="diagnosed",
                   diagnosis=Diagnosis(str(diagnosed["planted"])))


def test_results_page_reports_the_teachers_pick(diagnosed, tmp_path):
    """The results page's section is the diagnosis's own pick and evidence (laid_workflows.results_page)."""
    from laid.layout import RunLayout
    from laid_workflows.results_page import PageContext, diagnosed_pairing

    run = RunLayout(tmp_path / "run")
    run.teacher_diagnosis("tiny-32b").parent.mkdir(parents=True)
    shutil.copy(diagnosed["teacher"] / "diagnostics.nc", run.teacher_diagnosis("tiny-32b"))
    assert diagnosed_pairing(PageContext(run, tmp_path / "results.md")) is None  # no config naming the teacher
    run.config.write_text("teacher: tiny-32b\n")
    text = diagnosed_pairing(PageContext(run, tmp_path / "results.md"))
    assert "rows=question" in text and "teacher layers [0]" in text and "* layer   0 head   0" in text
    assert "rows=answer" in text
