"""Read the official protocol's per-question output back into an evaluation result.

The official vhs_benchmark solvers (and `laid eval`, laid/eval/protocol.py `write_official_json`)
write one JSON per question, `{N}_images/{idx:03d}.json`: the entry (`conversations`, `pos_image`,
`neg_image`) plus `response` (a list, one reply per needle position in range(0, N, max(N // 10, 1)):
the detailed mode) or `result` = {`image_paths` (the order shown), `response`}. `read_official`
scores every reply with the official rule (the ground-truth word among the reply's nltk word
tokens, laid.eval.metrics) and returns the Dataset `laid eval` writes (docs/CONTRACTS.md), so the
outputs of another evaluation harness enter the paired tables like our own files. What the
folder does not hold is NaN: the yes/no margin (replies only) and the input tokens.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import xarray as xr

from laid.data.vhs import SETTINGS, needle_positions, normalize_answer
from laid.eval.metrics import DEFAULT_THRESHOLD, is_compliant, reference_correct
from laid.eval.results import SampleResult, build_result

_SIZE_DIR = re.compile(r"^(\d+|oracle)_images$")


def _bad(path: Path, what: str) -> ValueError:
    return ValueError(f"{path}: {what}; an official per-question file holds the VHs entry plus 'response' or 'result'")


def _samples(path: Path, record) -> list[SampleResult]:
    """The scored haystacks of one question file (one per needle position in the detailed mode)."""
    if not isinstance(record, dict) or not all(isinstance(record.get(k), list) for k in ("pos_image", "neg_image")):
        raise _bad(path, "no 'pos_image' / 'neg_image' lists")
    try:
        truth = normalize_answer(record["conversations"][1]["value"])
    except (KeyError, IndexError, TypeError, ValueError):
        raise _bad(path, "no yes/no ground truth in conversations[1].value") from None
    pos, n = record["pos_image"], len(record["pos_image"]) + len(record["neg_image"])
    if isinstance(record.get("response"), list):  # detailed: the needle at each position, in order
        replies, needles = record["response"], needle_positions(n)
        if len(replies) != len(needles):
            raise _bad(path, f"{len(replies)} responses for the {len(needles)} needle positions of {n} images")
    elif isinstance(record.get("result"), dict) and isinstance(record["result"].get("image_paths"), list):
        shown = record["result"]["image_paths"]
        if sorted(shown) != sorted(pos + record["neg_image"]):
            raise _bad(path, "result.image_paths are not the entry's images")
        replies, needles = [record["result"].get("response")], [min(shown.index(p) for p in pos)]
    else:
        raise _bad(path, "neither a 'response' list nor a 'result' with 'image_paths'")
    out = []
    for reply, needle in zip(replies, needles):
        reply = "" if reply is None else str(reply)
        out.append(SampleResult(reference_correct(reply, truth), float("nan"), is_compliant(reply), float("nan"),
                                int(needle), truth == "yes", reply))
    return out


def read_official(folder: str | Path, threshold: float = DEFAULT_THRESHOLD, seed: int = 0,
                  model_name: str | None = None) -> xr.Dataset:
    """The evaluation result of an official per-question folder (`X_official/` or the solvers'
    `output/<name>/result/`): `{N}_images/{idx:03d}.json` for every size N ("oracle" = 1)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"official output folder {folder} not found; pass the folder holding {{N}}_images/")
    size_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and _SIZE_DIR.match(d.name))
    if not size_dirs:
        raise FileNotFoundError(f"{folder} holds no {{N}}_images/ folders; is it an official per-question output?")
    samples: dict[int, list[SampleResult]] = {}
    settings, firsts = set(), []  # needle settings seen; the first record of each size folder
    for d in size_dirs:
        size = 1 if d.name.startswith("oracle") else int(d.name.split("_")[0])
        if size in samples:
            raise ValueError(f"{folder}: two folders for {size} image(s) (oracle_images and 1_images); keep one")
        files = sorted(d.glob("*.json"), key=lambda f: (len(f.stem), f.stem))
        if not files:
            raise FileNotFoundError(f"{d} holds no per-question JSON files")
        rows, first = [], None
        for f in files:
            try:
                record = json.loads(f.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{f}: not valid JSON ({e}); re-run the evaluation of this question") from None
            first = record if first is None else first
            rows += _samples(f, record)
            n_pos = len(record["pos_image"])
            settings.add("single_needle" if n_pos == 1 else f"multi_needle_{n_pos}")
        samples[size] = rows
        firsts.append(first)
    if len(settings) != 1 or next(iter(settings)) not in SETTINGS:
        raise ValueError(f"{folder}: questions of needle settings {sorted(settings)}; one folder holds one setting")
    detailed = any(record.get("response") is not None for record in firsts)  # the harness's detailed output
    attrs = {"model_name": model_name or folder.name.removesuffix("_official"), "model_dir": "", "variant": "",
             "variant_options": "{}", "scoring": "generate", "protocol": "official",
             "placement": "file_order_at" if detailed else "shuffle", "needle_position_mode": int(detailed),
             "data_path": str(folder), "needle_setting": settings.pop(),
             "config": json.dumps({"source": "official per-question JSON", "folder": str(folder)})}
    return build_result(samples, threshold=threshold, seed=seed, attrs=attrs)
