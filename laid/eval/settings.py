"""How a model is evaluated on Visual Haystacks: one settings object for every caller.

`laid eval`, the evaluation after distillation (trainers' `eval:` section), the method comparison
and the main job all hold an `EvalSettings`; the main job hands its own to the comparison, so the
base evaluations and the comparison's agree by construction, not by comments in two YAML files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from pathlib import Path
from typing import Sequence

from laid.data.vhs import SETTINGS, data_setting, find_vhs_files, needle_positions
from laid.eval.metrics import DEFAULT_THRESHOLD
from laid.eval.protocol import PROTOCOLS, resolve_protocol

SCORINGS = ("logits", "generate")
# The LAid paper's evaluation sizes (Table 2: 100 questions at each of 1-150 images). The real
# benchmark's files go to 10,000 images; an evaluation of every size found would run for days.
PAPER_SIZES: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100, 150)
SIZE_WORDS = ("paper", "all")  # --sizes paper (the default of `laid eval` / `laid diagnose`) | all (every size found)


def parse_sizes(tokens: Sequence[str] | None) -> list[int] | str:
    """`--sizes` tokens: haystack sizes, or one word: "paper" (PAPER_SIZES) or "all"; None = "paper"."""
    if not tokens:
        return "paper"
    words = [t for t in tokens if str(t).lower() in SIZE_WORDS]
    if words:
        if len(tokens) > 1:
            raise ValueError(f"--sizes takes haystack sizes or one word ({' or '.join(SIZE_WORDS)}), got {list(tokens)}")
        return str(words[0]).lower()
    try:
        return sorted({int(t) for t in tokens})
    except ValueError:
        raise ValueError(f"--sizes takes haystack sizes (numbers) or one word ({' or '.join(SIZE_WORDS)}), "
                         f"got {list(tokens)}") from None


def choose_sizes(data: str | Path, setting: str | None, sizes: list[int] | str) -> tuple[list[int] | None, str]:
    """(sizes to run, a note for the user) for what `--sizes` asked on `data`.

    "paper": the paper's sizes that the data holds (the real benchmark has no 150-image file; the
    note says which are absent), refused in one line when it holds none; "all", or `data` naming
    one visual_haystack_N.json (the user chose its size): None (every size found); a list: itself
    (the loader refuses sizes the data lacks).
    """
    if not isinstance(sizes, str):
        return list(sizes), ""
    if sizes == "all" or Path(data).is_file():
        return None, ""
    setting = data_setting(data, setting)
    found = sorted(n for s, n in find_vhs_files(data) if s == setting)
    chosen = [n for n in PAPER_SIZES if n in found]
    if not chosen:
        raise ValueError(f"{data} holds none of the paper's haystack sizes {list(PAPER_SIZES)} ({setting}: {found}); "
                         f"pass --sizes N [N ...] or --sizes all")
    absent = [n for n in PAPER_SIZES if n not in found]
    note = (f"haystack sizes: the paper's {chosen}" + (f" ({absent} not in {data})" if absent else "")
            + (f"; not run: {[n for n in found if n not in chosen]} (--sizes all runs every size found)"
               if set(found) - set(chosen) else ""))
    return chosen, note


def questions_evaluated(ds, size: int, n_samples: int) -> float:
    """Questions behind a result's `n_samples` at `size`: with the needle at every position (the official
    single-needle protocol, `--needle-positions`) each question is scored once per position."""
    at_positions = ds.attrs.get("placement") in ("file_order_at", "shuffle_at") or bool(ds.attrs.get("needle_position_mode", 0))
    return n_samples / len(needle_positions(size)) if at_positions else n_samples


@dataclass
class EvalSettings:
    """What to evaluate and how (the result's attrs record all of it)."""

    sizes: list[int] | None = field(default_factory=lambda: list(PAPER_SIZES))  # None = every size in the data
    samples_per_size: int | None = 100  # questions per size (the paper: 100); None = every entry of each file
    setting: str | None = "single_needle"  # single_needle | multi_needle_2 | multi_needle_3; None = the only one in the data
    threshold: float = DEFAULT_THRESHOLD  # effective window: largest size with accuracy >= this (chance 0.5)
    seed: int = 0  # which questions are drawn when samples_per_size caps a file
    batch_tokens: int = 8192  # input tokens per forward batch (memory, not results)
    # official: the vhs_benchmark placement and scoring; ours: shuffled, logits; auto: official for real
    # VHs data, ours for `laid data synth` data (laid/eval/protocol.py)
    protocol: str = "auto"
    scoring: str | None = None  # None = the protocol's; logits: yes vs no answer logit; generate: greedy reply, official rule
    max_new_tokens: int | None = None  # reply length under generation; None = the protocol's (128 official, 8 ours)

    def __post_init__(self):
        if self.setting is not None and self.setting not in SETTINGS:
            raise ValueError(f"eval setting {self.setting!r} is not one of {SETTINGS}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"eval protocol {self.protocol!r} is not one of {PROTOCOLS}")
        if self.scoring is not None and self.scoring not in SCORINGS:
            raise ValueError(f"eval scoring {self.scoring!r} is not one of {SCORINGS} (or null: the protocol's)")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"eval max_new_tokens must be >= 1 or null, got {self.max_new_tokens}")
        if self.samples_per_size is not None and self.samples_per_size < 1:
            raise ValueError(f"eval samples_per_size must be >= 1 or null, got {self.samples_per_size}")
        if not 0 < self.threshold < 1:
            raise ValueError(f"eval threshold must be in (0, 1), got {self.threshold}")
        if self.sizes is not None and any(s < 1 for s in self.sizes):
            raise ValueError(f"eval sizes must be >= 1, got {self.sizes}")
        if self.batch_tokens < 1:
            raise ValueError(f"eval batch_tokens must be >= 1, got {self.batch_tokens}")

    def evaluate_kwargs(self) -> dict:
        """Keyword arguments of `laid.eval.run.evaluate` for these settings."""
        return dict(sizes=self.sizes, setting=self.setting, max_samples_per_size=self.samples_per_size,
                    threshold=self.threshold, seed=self.seed, batch_tokens=self.batch_tokens, scoring=self.scoring,
                    protocol=self.protocol, max_new_tokens=self.max_new_tokens)

    def matches(self, ds) -> bool:
        """Was the evaluation result `ds` made with these settings (so it can be reused)?"""
        try:
            n = {int(s): int(v) for s, v in zip(ds["haystack_size"].values, ds["n_samples"].values)}
            cfg = json.loads(ds.attrs.get("config", "{}"))
        except (KeyError, ValueError):
            return False
        wanted = set(self.sizes) if self.sizes is not None else set(n)
        setting = self.setting or ds.attrs.get("needle_setting")
        try:  # what these settings would run on the result's data (results before protocols: ours)
            proto = resolve_protocol(self.protocol, setting, ds.attrs.get("data_path") or None, self.scoring,
                                     max_new_tokens=self.max_new_tokens)
        except ValueError:
            return False
        if self.samples_per_size is None:
            samples_ok = cfg.get("max_samples_per_size") is None
        else:  # the same cap, or as many questions as it asks for, whatever cap produced them
            samples_ok = cfg.get("max_samples_per_size") == self.samples_per_size or all(
                questions_evaluated(ds, s, n.get(s, 0)) == self.samples_per_size for s in wanted)
        return (
            wanted <= set(n)
            and samples_ok
            and ds.attrs.get("needle_setting") == setting
            and ds.attrs.get("protocol", "ours") == proto.name
            and ds.attrs.get("scoring", "logits") == proto.scoring
            and int(ds.attrs.get("seed", -1)) == self.seed
            and float(ds.attrs.get("threshold", -1)) == self.threshold
        )
