"""Layer pairing from diagnosis (`layer_map: diagnosed`): align where the teacher retrieves.

The paper aligns the last layers (27 <-> 63). Whether that is where a teacher reads the haystack
is a property of the teacher, and `laid diagnose` measures it: per layer and head, the attention
mass the question rows put on the needle image (`needle_mass_question`, laid_analysis/
key_activation.py). This module reads that file and picks the teacher layers whose best head puts
the most mass on the needle at long haystacks; each is paired with the student layer at the same
depth fraction, round(t (L_s - 1) / (L_t - 1)).

    score(layer) = max over heads of mean over long sizes of needle_mass_question_mean(layer, head, size)

"Long" = analysed sizes >= `min_size` images (default 5: beyond the 1-3 image window of the toy
students; on real models, beyond the student's training length). `rows="answer"` ranks by the
answer row's needle mass instead (`needle_mass`): the ablation. A head that reads the haystack
from a question word and hands the result on to the answer row through later layers is invisible
to it (the toy teacher's retrieval head, layer 0, reads from the anchor word).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

DIAGNOSIS_FILE = "diagnostics.nc"
DIAGNOSIS_ROWS = {"question": "needle_mass_question", "answer": "needle_mass"}
DEFAULT_MIN_SIZE = 5


@dataclass(frozen=True)
class LayerEvidence:
    """One teacher layer's score: its best head's mean needle mass at the long sizes (+ interval)."""

    layer: int
    head: int
    score: float
    lo: float  # mean over the long sizes of the per-size 95% bootstrap bounds (over haystacks)
    hi: float
    answer_score: float  # the same head's mean answer-row needle mass (what `rows="answer"` sees)
    row_offset: float  # median question row of the best mass, tokens before the answer position


@dataclass(frozen=True)
class LayerChoice:
    """The chosen teacher layers (best first) and the evidence for every layer."""

    teacher_layers: list[int]
    evidence: list[LayerEvidence]  # every analysed layer, best first
    sizes: list[int]  # the long sizes the scores average over
    rows: str
    path: str

    def pairs(self, n_student: int, n_teacher: int) -> list[tuple[int, int]]:
        """(student layer, teacher layer) at matched depth fractions; a student layer is used once
        (a lower-ranked teacher layer that lands on a taken student layer is dropped)."""
        out, taken = [], set()
        for t in self.teacher_layers:
            s = 0 if n_teacher == 1 else int(t * (n_student - 1) / (n_teacher - 1) + 0.5)
            if s not in taken:
                out.append((s, t))
                taken.add(s)
        return out

    def describe(self) -> list[str]:
        """Lines for `laid plan`: the evidence table and the pick."""
        lines = [f"layer_map diagnosed: {self.path}, rows={self.rows}, sizes {self.sizes}: teacher layers "
                 f"{self.teacher_layers} (best head's mean needle mass from the {self.rows} rows)"]
        for e in self.evidence:
            mark = "*" if e.layer in self.teacher_layers else " "
            lines.append(f"  {mark} layer {e.layer:3d} head {e.head:3d}: needle mass {e.score:.3f} [{e.lo:.3f}, {e.hi:.3f}]"
                         f"  answer row {e.answer_score:.3f}  best row {e.row_offset:.0f} tokens before the answer")
        return lines


def diagnosis_path(path: str | Path) -> Path:
    """The diagnostics.nc of a `laid diagnose` output (the file or its folder)."""
    p = Path(path)
    p = p / DIAGNOSIS_FILE if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"teacher diagnosis {p} not found: run `laid diagnose --model TEACHER_DIR --data TEST_DIR "
                                f"--out DIR` and set teacher_diagnosis to DIR/{DIAGNOSIS_FILE}")
    return p


def choose_layers(path: str | Path, n_layers: int = 1, rows: str = "question", min_size: int = DEFAULT_MIN_SIZE,
                  expect_layers: int | None = None) -> LayerChoice:
    """Rank the teacher's layers by its diagnosis (module doc) and keep the best `n_layers`.

    expect_layers: the teacher's layer count, checked against the diagnosis (a diagnosis of another
    model is refused). Needs every layer analysed (`laid diagnose` without --layers)."""
    if rows not in DIAGNOSIS_ROWS:
        raise ValueError(f"diagnosis rows {rows!r} is not one of {list(DIAGNOSIS_ROWS)}")
    p = diagnosis_path(path)
    ds = xr.load_dataset(p)
    var = DIAGNOSIS_ROWS[rows]
    if f"{var}_mean" not in ds:
        raise ValueError(f"{p} has no {var}: it was written by an older `laid diagnose`; run it again")
    total = int(ds.attrs.get("n_layers_total", ds.sizes["layer"]))
    if expect_layers is not None and total != expect_layers:
        raise ValueError(f"{p} diagnoses a model with {total} layers, the teacher has {expect_layers}: diagnose the teacher")
    sizes = [int(s) for s in ds["haystack_size"].values if s >= min_size]
    if not sizes:
        raise ValueError(f"{p} has no haystack size >= {min_size} images: diagnose the teacher at long haystacks")
    at = ds.sel(haystack_size=sizes)
    score = at[f"{var}_mean"].mean("haystack_size")  # (layer, head)
    lo, hi = at[f"{var}_lo"].mean("haystack_size"), at[f"{var}_hi"].mean("haystack_size")
    answer = at["needle_mass_mean"].mean("haystack_size")
    offset = at["needle_row_offset"].median(("haystack_size", "sample")) if "needle_row_offset" in at else None
    evidence = []
    for layer in ds["layer"].values:
        s = score.sel(layer=layer)
        if bool(s.isnull().all()):
            continue
        h = int(s.fillna(-np.inf).argmax("head"))
        evidence.append(LayerEvidence(
            int(layer), h, float(s[h]), float(lo.sel(layer=layer)[h]), float(hi.sel(layer=layer)[h]),
            float(answer.sel(layer=layer)[h]), float(offset.sel(layer=layer)[h]) if offset is not None else float("nan")))
    if not evidence:
        raise ValueError(f"{p} has no needle statistics (no haystack with a known needle)")
    evidence.sort(key=lambda e: -e.score)
    return LayerChoice([e.layer for e in evidence[:n_layers]], evidence, sizes, rows, str(p))
