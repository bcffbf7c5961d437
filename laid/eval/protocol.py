"""Evaluation protocols: the official Visual Haystacks one, and ours; the official per-question JSON.

The official evaluation (github.com/visual-haystacks/vhs_benchmark) is what published VHs numbers
come from. Its pieces, with the files they are read from:
- prompt (solvers/base_solver.py `run_fast` / `run_detailed`): all images first in one user turn,
  then "You are given a set of images. Please answer the following question in Yes or No: " +
  question (laid.model.prompting.VHS_INSTRUCTION; both protocols use it);
- placement: single-needle in the "detailed" mode (`run_detailed`, conf/config.yaml
  `position_exp`): the needle at each p in range(0, N, max(N // 10, 1)), distractors in file order
  (`neg[:p] + pos + neg[p:]`); multi-needle (`run_fast`): pos + neg shuffled once;
- scoring (utils.py `run_eval` / `run_detailed_eval`): a greedy reply (solvers/qwenvl_solver.py:
  max_new_tokens=128) is correct iff the ground-truth word is in `nltk.word_tokenize(reply.lower())`
  (laid.eval.metrics.official_word_tokens), compliant iff "yes" or "no" is;
- output (`run_detailed` / `run_fast`): one JSON per question, `{idx:03d}.json` in `{N}_images/`:
  the entry plus `"response": [reply per needle position]` (detailed) or `"result": {"image_paths":
  [...], "response": reply, "log": ...}` (fast). `write_official_json` writes the same files, so the
  official scorer re-scores our replies unchanged.

"ours" (the default for `laid data synth` data): every haystack shuffled (seeded per entry), the
answer read from the yes/no logits (one forward pass, a margin per sample). The official rule's
`--protocol official` is the default for real VHs data, i.e. anything without a synthetic
manifest.json at or above it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from laid.data.vhs import SETTINGS, VHsEntry
from laid.io import atomic_dir, write_json

PROTOCOLS = ("auto", "official", "ours")
OFFICIAL_MAX_NEW_TOKENS = 128  # solvers/qwenvl_solver.py
OURS_MAX_NEW_TOKENS = 8


@dataclass(frozen=True)
class Protocol:
    """How haystacks are arranged and scored. `placement` is a laid.data.vhs placement."""

    name: str  # "official" or "ours"
    placement: str  # "shuffle", "shuffle_at" (every needle position, others shuffled), "file_order_at"
    scoring: str  # "generate" or "logits"
    max_new_tokens: int
    word_rule: str = "official"  # laid.eval.metrics.WORD_RULES

    @property
    def needle_positions(self) -> bool:
        return self.placement != "shuffle"


def is_synthetic(data_path: str | Path) -> bool:
    """True when `data_path` lies in a `laid data synth` folder (a manifest.json at or above it)."""
    path = Path(data_path).resolve()
    return any((folder / "manifest.json").is_file() for folder in [path, *path.parents])


def resolve_protocol(
    name: str,
    setting: str,
    data_path: str | Path | None = None,
    scoring: str | None = None,
    needle_positions: bool = False,
    max_new_tokens: int | None = None,
) -> Protocol:
    """The protocol a run uses. name "auto": official for real VHs data, ours for synthetic data.

    `scoring` / `max_new_tokens` override the protocol's own; `needle_positions` asks ours for the
    detailed mode (the needle at every position, the other images shuffled).
    """
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; expected one of {', '.join(PROTOCOLS)}")
    if setting not in SETTINGS:
        raise ValueError(f"unknown needle setting {setting!r}; expected one of {', '.join(SETTINGS)}")
    if name == "auto":
        name = "ours" if data_path is None or is_synthetic(data_path) else "official"
    if name == "official":
        placement = "file_order_at" if setting == "single_needle" else "shuffle"
        own_scoring, own_tokens = "generate", OFFICIAL_MAX_NEW_TOKENS
    else:
        placement = "shuffle_at" if needle_positions else "shuffle"
        own_scoring, own_tokens = "logits", OURS_MAX_NEW_TOKENS
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    return Protocol(name, placement, scoring or own_scoring, max_new_tokens or own_tokens)


def size_label(entry: VHsEntry) -> str:
    """The `{N}` of the official output folder `{N}_images`: the file's N ("oracle" for the oracle file)."""
    stem = entry.source.stem
    return stem.removeprefix("visual_haystack_") if stem.startswith("visual_haystack_") else str(entry.haystack_size)


def entry_json(entry: VHsEntry) -> dict:
    """The entry as the VHs file holds it (answer normalised to lower case, as the scorer compares)."""
    return {
        "conversations": [{"from": "human", "value": entry.question}, {"from": "gpt", "value": entry.answer}],
        "pos_image": list(entry.pos_image),
        "neg_image": list(entry.neg_image),
    }


@dataclass
class Answered:
    """One scored haystack for the official JSON: the entry, its image order (as written) and reply."""

    entry: VHsEntry
    image_paths: Sequence[str]
    reply: str


def official_records(answered: Sequence[Answered], detailed: bool) -> dict[str, list[dict]]:
    """{`{N}_images`: [question JSON in entry order]} as the official solvers write them.

    detailed: one record per entry with `response` = replies in needle-position order (the
    haystacks of an entry must come in that order); else one record per haystack with `result`.
    """
    out: dict[str, dict[tuple[str, int], dict]] = {}
    for a in answered:
        folder = out.setdefault(f"{size_label(a.entry)}_images", {})
        key = (str(a.entry.source), a.entry.index)
        if detailed:
            folder.setdefault(key, entry_json(a.entry)).setdefault("response", []).append(a.reply)
        else:
            if key in folder:
                raise ValueError(f"{a.entry.source} entry {a.entry.index} answered twice outside the detailed mode")
            record = entry_json(a.entry)
            record["result"] = {"image_paths": list(a.image_paths), "response": a.reply, "log": None}
            folder[key] = record
    return {name: [rows[k] for k in sorted(rows, key=lambda k: k[1])] for name, rows in out.items()}


def official_dir(out_path: str | Path) -> Path:
    """Folder of the per-question JSON beside a result file: results/base.nc -> results/base_official/."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.stem + "_official")


class _ThenFailed(Exception):
    """Carries the error of `then()` through atomic_dir, which would otherwise rename it after the folder."""


def write_official_json(records: Mapping[str, Sequence[dict]], folder: str | Path, then=None) -> Path:
    """Write `{folder}/{N}_images/{idx:03d}.json` atomically (the whole folder is swapped in at once).

    `then()` runs before the swap (the netCDF write): if it raises, the earlier folder is kept and
    its error (e.g. "no space left on device writing <the .nc>") reaches the caller unchanged.
    """
    try:
        with atomic_dir(folder) as tmp:
            for name, rows in records.items():
                for idx, record in enumerate(rows):
                    write_json(record, tmp / name / f"{idx:03d}.json")
            if then is not None:
                try:
                    then()
                except Exception as e:  # noqa: BLE001 - re-raised unchanged below
                    raise _ThenFailed(e) from None
    except _ThenFailed as wrapped:
        raise wrapped.args[0] from None
    return Path(folder)
