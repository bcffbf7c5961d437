"""The one registry of method and variant names used across the workbench.

Inference-time variants change how a checkpoint is evaluated (laid.eval.variants); trained methods
produce a new checkpoint (trainers/). Tables, configs, the comparison and the figures read their
names, labels and table membership from here, so a new method is added in one place.

`sft` is full fine-tuning on the labels alone (no teacher): beside KD it separates what the teacher
adds from what training on the task adds. `laid-no-laid` is the paper's Table 3 row "w/o L_LAid": Eq. 9 without the Eq. 7 Q/K alignment; the
attention matching and the RoPE gains stay (docs/HISTORY.md, "paper inconsistencies").
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

INFERENCE_VARIANTS: tuple[str, ...] = ("base", "yarn", "selfextend")
TRAINED_METHODS: tuple[str, ...] = ("sft-lora", "sft", "kd", "laid", "laid-no-kl", "laid-no-laid")
# Comparison entries that train one of TRAINED_METHODS with other settings (the comparison config's
# method_overrides say which): the paper's literal Eq. 7 objective, every student layer aligned, and
# the toy's LAid variant (no Q/K alignment, attention matching at 0.1: docs/zoo-and-testbeds.md),
# shown beside the paper's LAid, never instead of it. Rows are labelled by what trained (label_for).
DERIVED_METHODS: dict[str, str] = {"laid-paper": "laid", "laid-all-layers": "laid", "laid-light": "laid"}
ALL_METHODS: tuple[str, ...] = ("base", "yarn", "selfextend", "sft-lora", "sft", "kd", "laid", "laid-light", "laid-paper",
                                "laid-all-layers", "laid-no-kl", "laid-no-laid")

# Rows of the paper's tables (base first: the reference row of each student).
TABLE1_METHODS: tuple[str, ...] = ("base", "yarn", "selfextend", "sft-lora", "kd", "laid")
TABLE3_METHODS: tuple[str, ...] = ("base", "laid-paper", "laid-no-kl", "laid-no-laid", "laid")

LABELS: dict[str, str] = {
    "base": "/", "yarn": "YaRN", "selfextend": "SelfExtend", "sft-lora": "SFT(LoRA)", "sft": "SFT (full, labels only)",
    "kd": "KD",
    "laid": "LAid", "laid-light": "LAid variant (toy)", "laid-paper": "LAid (paper Eq. 7)", "laid-all-layers": "LAid (all layers)",
    "laid-no-kl": "w/o L_KL", "laid-no-laid": "w/o L_LAid",
}  # fmt: skip


def trained_method(entry: str) -> str:
    """The trainer method behind a comparison entry (itself, or what a derived entry trains)."""
    return DERIVED_METHODS.get(entry, entry)


def check_method(name: str, allowed: tuple[str, ...] = ALL_METHODS, what: str = "method") -> str:
    """`name` if registered (and in `allowed`), else a one-line ValueError listing the choices."""
    if name not in allowed:
        raise ValueError(f"unknown {what} {name!r}; choose one of {', '.join(allowed)}")
    return name


# What a row label calls each loss term (the trainer's `lambdas.<term>`) and the RoPE gain.
TERM_NAMES: dict[str, str] = {"laid": "Q/K alignment", "attn": "attention matching", "kl": "KL", "sft": "SFT"}
GAIN_NAME = "RoPE gain"
# The terms each family of trained methods has in the paper (Eq. 9 for LAid; KD = KL + SFT).
FAMILY_TERMS: dict[str, tuple[str, ...]] = {"LAid": ("laid", "attn", "kl", "sft"), "KD": ("kl", "sft")}


def label_for(method: str, weights: Mapping[str, float], rope_gain: bool, paper_weights: Mapping[str, float],
              qualifiers: Sequence[str] = ()) -> str:
    """The row label of a trained run, from what trained (its training signature), not its method name.

    `method`: the trainer method (TRAINED_METHODS); `weights`: the loss weights as the run used them
    (a term the method does not have is 0: the trainer's `DistillConfig.weights()`); `rope_gain`:
    whether RoPE gains trained; `paper_weights`: each term's weight in the paper's method (the
    trainer's `Lambdas()` defaults); `qualifiers`: other settings worth naming ("all layers").
    "LAid" alone only when every term of the paper's LAid trains at its weight with the gain on;
    otherwise what it is: "LAid without Q/K alignment, attention matching x0.1". A label never
    claims a term that did not train, so a table cannot print an ablation as the method.
    """
    family = "LAid" if method.startswith("laid") else "KD" if method == "kd" else None
    if family is None:  # SFT on the labels, SFT-LoRA: one term, nothing to name
        label = LABELS.get(method, method)
        return f"{label} ({', '.join(qualifiers)})" if qualifiers else label
    terms = FAMILY_TERMS[family]
    off = [TERM_NAMES[t] for t in terms if not float(weights.get(t, 0.0)) > 0]
    if family == "LAid" and not rope_gain:
        off.append(GAIN_NAME)
    scaled = []
    for t in terms:
        w, ref = float(weights.get(t, 0.0)), float(paper_weights.get(t, 0.0))
        if w > 0 and ref > 0 and not math.isclose(w, ref, rel_tol=1e-6):
            scaled.append(f"{TERM_NAMES[t]} x{w / ref:.2g}")
    label = family + (" without " + " and ".join(off) if off else "")
    label += "".join(f", {s}" for s in scaled)
    return f"{label} ({', '.join(qualifiers)})" if qualifiers else label
