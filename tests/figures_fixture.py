"""TEST FIXTURE: a run folder holding contract-shaped result files (docs/CONTRACTS.md) with made-up
numbers, so the notebooks can be executed and checked without training or evaluating anything.

Evaluations and the comparison go through the real producers (laid.eval.results.build_result,
laid_workflows.tables.build_comparison); the analysis and head-weight files are written here with
the schemas of laid_analysis (diagnostics.nc, reference.nc, comparison.nc) and trainers.export.
Every number is a closed-form function of (model, size, head, ...) so tests can recompute it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from laid.eval.results import SampleResult, build_result, write_result
from laid.methods import ALL_METHODS, TRAINED_METHODS as TRAINED
from laid_workflows.tables import build_comparison

SIZES = [1, 2, 5, 10, 20]
N_SAMPLES = 10
TEACHER = "tiny-32b"
STUDENTS = ["tiny-7b", "tiny-3b"]
METHODS = list(ALL_METHODS)
# (layers, query heads, KV heads) as in configs/zoo.
SHAPES = {"tiny-32b": (4, 8, 4), "tiny-7b": (3, 4, 2), "tiny-3b": (2, 2, 1)}
# How many of N_SAMPLES each model gets right at each size of SIZES: the teacher holds, students decay.
N_CORRECT = {
    ("tiny-32b", "base"): [10, 10, 9, 9, 8],
    ("tiny-7b", "base"): [10, 9, 7, 6, 5],
    ("tiny-3b", "base"): [9, 8, 6, 5, 4],
    ("tiny-7b", "laid"): [10, 10, 9, 8, 7],
    ("tiny-7b", "kd"): [10, 9, 8, 7, 6],
}
FREQ_DISTANCE = np.linspace(0.0, 0.5, 9)  # cycles per position (ablation FFT view)
N_DISTANCE = 16
N_PAIRS = 8
ROPE_FREQ = 100.0 ** (-np.arange(N_PAIRS) / N_PAIRS) / (2 * np.pi)  # cycles per position
RANK = {"base": 0, "kd": 1, "laid": 2}


def eval_dataset(model: str, variant: str, n_correct=None, n_samples: int = N_SAMPLES) -> xr.Dataset:
    """An evaluation file as `laid eval` writes it: `n_correct[i]` of `n_samples` right at SIZES[i]."""
    n_correct = N_CORRECT[(model, variant)] if n_correct is None else n_correct
    samples = {
        size: [
            SampleResult(correct=j < k, margin=1.0 if j < k else -1.0, compliant=True, input_tokens=6 * size + 20, needle_index=0, answer_yes=j % 2 == 0)
            for j in range(n_samples)
        ]
        for size, k in zip(SIZES, n_correct)
    }
    attrs = {"model_name": model, "model_dir": f"zoo/{model}", "variant": variant, "variant_options": {}, "scoring": "logits",
             "data_path": "data/test", "needle_setting": "single_needle", "config": {}}  # fmt: skip
    return build_result(samples, threshold=0.6, seed=0, n_bootstrap=20, attrs=attrs)


def comparison_correct(s: int, m: int, size: int) -> int:
    """Made-up number right out of 20 for student index s, method index m: decays with size, rises with m."""
    return int(round(20 * (0.55 + 0.04 * m - 0.02 * s - 0.01 * np.log(size))))


def comparison_evals() -> dict[tuple[str, str], xr.Dataset]:
    """The evaluations the comparison is built from: comparison_correct(s, m, size) right of 20."""
    return {
        (student, method): eval_dataset(student, method, [comparison_correct(s, m, n) for n in SIZES], 20)
        for s, student in enumerate(STUDENTS)
        for m, method in enumerate(METHODS)
    }


# What the toy's `laid` entry trains (laid_workflows.headline.run_label of configs/distill/tiny-32b_testbed.yaml)
LAID_LABEL = "LAid without Q/K alignment, attention matching x0.1"


def comparison_dataset() -> xr.Dataset:
    """compare/comparison.nc through the real producers (laid_workflows.tables.build_comparison, the
    labels of what trained as laid_workflows.compare adds them)."""
    from laid_workflows.headline import add_labels

    ds = build_comparison(comparison_evals(), eval_dataset(TEACHER, "base"), STUDENTS, METHODS, {"teacher": TEACHER, "threshold": 0.6})
    return add_labels(ds, {(st, "laid"): LAID_LABEL for st in STUDENTS})


STUDY_GROUPS = {"short": [1, 2], "long": [5, 10, 20]}
STUDY_BUDGETS = [10, 40]


def study_dataset() -> xr.Dataset:
    """study/testbed.nc through the real producer (laid_workflows.study_stats.build_study): per arm
    and budget the comparison's evaluations of that method, with more right at the larger budget."""
    from laid_workflows.study_stats import build_study

    evals = {}
    for s, student in enumerate(STUDENTS):
        for m, method in enumerate(("sft", "kd", "laid")):
            for k, budget in enumerate(STUDY_BUDGETS):
                right = [min(20, comparison_correct(s, m, n) + 2 * k) for n in SIZES]
                evals[(student, method, budget)] = [eval_dataset(student, method, right, 20)]
    base = {st: eval_dataset(st, "base", [comparison_correct(s, 0, n) for n in SIZES], 20) for s, st in enumerate(STUDENTS)}
    return build_study(evals, base, eval_dataset(TEACHER, "base", [20, 20, 19, 18, 18], 20), STUDENTS, ["sft", "kd", "laid"],
                       STUDY_BUDGETS, STUDY_GROUPS, global_batch=8, n_boot=50, labels={(st, "laid"): LAID_LABEL for st in STUDENTS})


def key_activation(label: str, layer: int, head: int, size: int) -> float:
    """Students' heads decay with size before LAid, hold after; teacher heads: even local, odd global."""
    model, method = label.split("__")
    if model == TEACHER:
        return 0.7 - 0.02 * size / 5 - 0.01 * head if head % 2 == 0 else 0.5 + 0.01 * size / 5 + 0.01 * head + 0.01 * layer
    slope = 0.03 if method == "base" else 0.005
    return 0.8 - slope * size - 0.01 * head + 0.001 * layer


def needle_mass(label: str, layer: int, head: int, size: int) -> float:
    """Attention mass on the needle: the teacher holds, base students lose it, LAid less so."""
    model, method = label.split("__")
    rate = 0.01 if model == TEACHER else {"base": 0.1, "kd": 0.05, "laid": 0.02}[method]
    return 0.5 / (1 + rate * size) + 0.01 * head + 0.001 * layer


# The layer each diagnosis reads the needle at (planted): not the last layer, and not the same for all.
NEEDLE_LAYER = {f"{TEACHER}__base": 1, "tiny-7b__base": 0, "tiny-7b__kd": 2, "tiny-7b__laid": 1}


def needle_mass_question(label: str, layer: int, head: int, size: int) -> float:
    """Largest needle mass over the question rows: high at the label's NEEDLE_LAYER (best head 1), low elsewhere."""
    reads = layer == NEEDLE_LAYER[label]
    return (0.85 if reads else 0.3) + (0.05 if head == 1 else 0.0) - 0.002 * size


def needle_margin(label: str, layer: int, head: int, size: int) -> float:
    model, method = label.split("__")
    slope = 0.05 if model == TEACHER else {"base": 0.5, "kd": 0.3, "laid": 0.1}[method]
    return float("nan") if size == 1 else 2.0 - slope * np.log(size) + 0.01 * head


def locality(label: str, layer: int, head: int) -> float:
    """Position-head score (logit drop per 100 positions): teacher even heads local, odd global,
    except at its needle-reading layer, which has no local head (a Figure 4 panel without data)."""
    if label.split("__")[0] == TEACHER:
        local = head % 2 == 0 and layer != NEEDLE_LAYER[label]
        return 2.0 + 0.1 * layer if local else 0.2 + 0.01 * head
    return 0.5 + 0.3 * head


def pair_coef(label: str, layer: int, head: int, pair: int) -> complex:
    rank = 3 if label.split("__")[0] == TEACHER else RANK[label.split("__")[1]]
    return complex((1 + rank) * 0.1 * np.exp(-pair / 4) * (1 + 0.1 * head), 0.05 * np.sin(pair + layer))


def analysis_dataset(label: str, layers=None) -> xr.Dataset:
    """diagnostics.nc of `laid diagnose` (laid_analysis.analyse): per (layer, head) statistics."""
    model = label.split("__")[0]
    n_layers, heads, _ = SHAPES[model]
    L, H = list(range(n_layers)) if layers is None else list(layers), range(heads)
    dist = np.arange(N_DISTANCE)
    rank = {"base": 0, "kd": 1, "laid": 2}[label.split("__")[1]]
    low_freq = np.array([[0.3 + 0.1 * rank + 0.01 * h + 0.02 * l for h in H] for l in L])
    power = np.exp(-FREQ_DISTANCE[None, None, :] * (10.0 - 2 * rank)) * (1 + 0.1 * np.arange(heads))[None, :, None]
    power = np.broadcast_to(power, (len(L), heads, FREQ_DISTANCE.size)).copy()
    attention = np.array([[1.0 / (1 + dist * (0.5 + 0.1 * h + 0.05 * l)) for h in H] for l in L])
    mass = np.array([[[needle_mass(label, l, h, n) for n in SIZES] for h in H] for l in L])
    question = np.array([[[needle_mass_question(label, l, h, n) for n in SIZES] for h in H] for l in L])
    margin = np.array([[[needle_margin(label, l, h, n) for n in SIZES] for h in H] for l in L])
    loc = np.array([[locality(label, l, h) for h in H] for l in L])
    coef = np.array([[[pair_coef(label, l, h, p) for p in range(N_PAIRS)] for h in H] for l in L])
    theta = 2 * np.pi * ROPE_FREQ
    rope_profile = np.real(coef[..., None] * np.exp(1j * theta[:, None] * dist[None, :])).sum(-2)
    s3 = ("layer", "head", "haystack_size")
    return xr.Dataset(
        {
            "needle_mass_mean": (s3, mass), "needle_mass_lo": (s3, mass - 0.05), "needle_mass_hi": (s3, mass + 0.05),
            "image_mass_mean": (s3, np.minimum(mass + 0.3, 1.0)), "image_mass_lo": (s3, np.minimum(mass + 0.25, 1.0)),
            "image_mass_hi": (s3, np.minimum(mass + 0.35, 1.0)),
            "needle_mass_question_mean": (s3, question), "needle_mass_question_lo": (s3, question - 0.05),
            "needle_mass_question_hi": (s3, question + 0.05),
            "needle_margin_mean": (s3, margin), "needle_margin_lo": (s3, margin - 0.2), "needle_margin_hi": (s3, margin + 0.2),
            "head_locality": (("layer", "head"), loc), "head_locality_lo": (("layer", "head"), loc - 0.3),
            "head_locality_hi": (("layer", "head"), loc + 0.3),
            "head_class": (("layer", "head"), np.where(loc >= 1.0, "local", "global"),
                           {"rule": "local if mean locality at the largest size (20 images) >= 1.0 logit/100 positions", "threshold": 1.0}),
            "pair_coef_re": (("layer", "head", "rotary_pair"), coef.real), "pair_coef_im": (("layer", "head", "rotary_pair"), coef.imag),
            "pair_coef_abs": (("layer", "head", "rotary_pair"), np.abs(coef)),
            "rope_profile": (("layer", "head", "distance"), rope_profile),
            "key_activation": (("layer", "head", "haystack_size"),
                               np.array([[[key_activation(label, l, h, n) for n in SIZES] for h in H] for l in L])),
            "attention": (("layer", "head", "distance"), attention),
            "logit": (("layer", "head", "distance"), np.log(attention)),
            "power": (("layer", "head", "freq_distance"), power),
            "low_freq_fraction": (("layer", "head"), low_freq),
            "rope_usage": (("layer", "head", "rotary_pair"), np.ones((len(L), heads, N_PAIRS)) / N_PAIRS),
        },  # fmt: skip
        coords={"layer": L, "head": list(H), "haystack_size": SIZES, "freq_distance": FREQ_DISTANCE,
                "distance": ("distance", dist, {"units": "positions"}), "rotary_pair": range(N_PAIRS),
                "rope_freq": ("rotary_pair", ROPE_FREQ, {"units": "cycles/position"})},
        attrs={"model_name": label, "low_freq_cutoff": 0.25, "n_layers_total": n_layers},
    )


def preservation(label: str, layer: int, head: int) -> float:
    return 0.5 + 0.1 * {"base": 0, "kd": 1, "laid": 2}[label.split("__")[1]] + 0.01 * head + 0.001 * layer


def fidelity(label: str, layer: int, head: int) -> float:
    return 0.2 + 0.3 * RANK[label.split("__")[1]] - 0.02 * head + 0.001 * layer


def virtual_coef(label: str, layer: int, head: int, pair: int) -> complex:
    return complex(0.4 * np.exp(-pair / 4) * (1 + 0.1 * head), -0.03 * pair)


def preservation_dataset(label: str) -> xr.Dataset:
    """comparison.nc of `laid diagnose --reference` (pair_spectrum.compare_spectra, with the ablation
    spectra.low_freq_preservation beside it)."""
    n_layers, heads, _ = SHAPES[label.split("__")[0]]
    pres = np.array([[preservation(label, l, h) for h in range(heads)] for l in range(n_layers)])
    fid = np.array([[fidelity(label, l, h) for h in range(heads)] for l in range(n_layers)])
    vc = np.array([[[virtual_coef(label, l, h, p) for p in range(N_PAIRS)] for h in range(heads)] for l in range(n_layers)])
    return xr.Dataset(
        {
            "preservation": (("layer", "head"), pres),
            "layer_preservation": ("layer", pres.mean(1)),
            "low_freq_ratio": ("layer", pres.mean(1) * 0.9),
            "preservation_score": ((), pres.mean()),
            "spectral_fidelity": (("layer", "head"), fid), "profile_fidelity": (("layer", "head"), fid - 0.1),
            "fidelity_score": ((), fid.mean()), "profile_score": ((), fid.mean() - 0.1),
            "virtual_coef_re": (("layer", "head", "rotary_pair"), vc.real),
            "virtual_coef_im": (("layer", "head", "rotary_pair"), vc.imag),
        },
        coords={"layer": range(n_layers), "head": range(heads), "teacher_layer": ("layer", [1, 2, 3][-n_layers:]),
                "rotary_pair": range(N_PAIRS)},
        attrs={"student": label, "teacher": f"{TEACHER}__base"},
    )


def head_weights_dataset(student: str) -> xr.Dataset:
    """distill/<student>__laid/head_weights.nc (trainers.export): one mixer per aligned layer pair."""
    _, heads, kv = SHAPES[student]
    _, t_heads, t_kv = SHAPES[TEACHER]
    w_q = np.array([[[0.1 * i + 0.01 * j - 0.5 * p for j in range(t_heads)] for i in range(heads)] for p in range(2)])
    w_k = np.array([[[0.2 * i - 0.05 * j + 0.5 * p for j in range(t_kv)] for i in range(kv)] for p in range(2)])
    return xr.Dataset(
        {"w_q": (("layer_pair", "student_head", "teacher_head"), w_q), "w_k": (("layer_pair", "student_kv_head", "teacher_kv_head"), w_k)},
        coords={"layer_pair": [0, 1], "student_layer": ("layer_pair", [1, 2]), "teacher_layer": ("layer_pair", [2, 3]),
                "student_head": range(heads), "teacher_head": range(t_heads), "student_kv_head": range(kv), "teacher_kv_head": range(t_kv)},
        attrs={"mixers_trained": 0, "mixer_init": "least_squares"},  # the testbed default: no alignment term
    )  # fmt: skip


STUDENT_LABELS = ["tiny-7b__base", "tiny-7b__kd", "tiny-7b__laid"]


def build_run(root: Path) -> Path:
    """runs/<name>/ with eval/, compare/, analysis/, distill/ results; returns the run folder."""
    run = Path(root)
    for (model, variant) in N_CORRECT:
        write_result(eval_dataset(model, variant), run / "eval" / f"{model}__{variant}.nc")
    for model in SHAPES:
        (run / "zoo" / model).mkdir(parents=True, exist_ok=True)
    (run / "compare").mkdir(parents=True, exist_ok=True)
    comparison_dataset().to_netcdf(run / "compare" / "comparison.nc")
    # Per-question results behind the comparison, where `laid compare` keeps them (Figure 3's paired differences).
    for (student, method), ds in comparison_evals().items():
        if method in TRAINED:
            write_result(ds, run / "distill" / f"{student}__{method}" / "eval.nc")
        else:
            write_result(ds, run / "compare" / "eval" / f"{student}__{method}.nc")
    # As `laid diagnose <student> --reference <teacher>` writes them: the teacher's analysis (at the
    # paired layers only) is each student folder's reference.nc; the teacher has no folder of its own.
    for label in STUDENT_LABELS:
        folder = run / "analysis" / label
        folder.mkdir(parents=True, exist_ok=True)
        analysis_dataset(label).to_netcdf(folder / "diagnostics.nc")
        analysis_dataset(f"{TEACHER}__base", layers=[1, 2, 3]).to_netcdf(folder / "reference.nc")
        preservation_dataset(label).to_netcdf(folder / "comparison.nc")
    (run / "study").mkdir(parents=True, exist_ok=True)
    study_dataset().to_netcdf(run / "study" / "testbed.nc")  # `laid study`: the learning-curve notebook
    (run / "distill" / "tiny-7b__laid").mkdir(parents=True, exist_ok=True)
    head_weights_dataset("tiny-7b").to_netcdf(run / "distill" / "tiny-7b__laid" / "head_weights.nc")
    return run
