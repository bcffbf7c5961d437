"""The one registry of method and variant names used across the workbench.

Inference-time variants change how a checkpoint is evaluated (laid.eval.variants); trained methods
produce a new checkpoint (trainers/). Tables, configs, the comparison and the figures read their
names, labels and table membership from here, so a new method is added in one place.

`sft` is full fine-tuning on the labels alone (no teacher): beside KD it separates what the teacher
adds from what training on the task adds. `laid-no-laid` is the paper's Table 3 row "w/o L_LAid": Eq. 9 without the Eq. 7 Q/K alignment; the
attention matching and the RoPE gains stay (docs/HISTORY.md, "paper inconsistencies").
"""

from __future__ import annotations

INFERENCE_VARIANTS: tuple[str, ...] = ("base", "yarn", "selfextend")
TRAINED_METHODS: tuple[str, ...] = ("sft-lora", "sft", "kd", "laid", "laid-no-kl", "laid-no-laid")
# Comparison entries that train one of TRAINED_METHODS with other settings (the comparison config's
# method_overrides say which): the paper's literal Eq. 7 objective, and every student layer aligned.
DERIVED_METHODS: dict[str, str] = {"laid-paper": "laid", "laid-all-layers": "laid"}
ALL_METHODS: tuple[str, ...] = ("base", "yarn", "selfextend", "sft-lora", "sft", "kd", "laid", "laid-paper", "laid-all-layers",
                                "laid-no-kl", "laid-no-laid")

# Rows of the paper's tables (base first: the reference row of each student).
TABLE1_METHODS: tuple[str, ...] = ("base", "yarn", "selfextend", "sft-lora", "kd", "laid")
TABLE3_METHODS: tuple[str, ...] = ("base", "laid-paper", "laid-no-kl", "laid-no-laid", "laid")

LABELS: dict[str, str] = {
    "base": "/", "yarn": "YaRN", "selfextend": "SelfExtend", "sft-lora": "SFT(LoRA)", "sft": "SFT (full, labels only)",
    "kd": "KD",
    "laid": "LAid", "laid-paper": "LAid (paper Eq. 7)", "laid-all-layers": "LAid (all layers)",
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
