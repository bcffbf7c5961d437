"""What the diagnosis notebooks (Figure 4, spectra, head weights) share: `laid diagnose` outputs
read from any folders, each under the label the titles show, and the layer each figure draws.

A diagnosis figure is drawn from folders, not from a run folder's naming scheme: `analyses` maps a
label (what the titles say: "before", "7B after LAid", "tiny-7b__laid") to a folder written by
`laid diagnose --out` (diagnostics.nc; with --reference also reference.nc and comparison.nc; with
--head-weights also head_weights.nc). `laid figures --analysis LABEL=DIR` fills it in for any
checkpoint, `laid figures --run-dir` from a run's analysis/<model>__<method>/ folders.

The layer drawn for a checkpoint is, unless the user names one, the layer its own diagnosis finds
reading the needle: the pick of trainers.layer_choice.choose_layers (the layer whose best head puts
the most attention on the needle image from the question rows, averaged over the long haystacks),
the rule `layer_map: diagnosed` pairs layers by. The last layer is no default: on the toy its
needle mass is about 0, while the teacher reads the needle at layer 0 (docs/diagnose.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import xarray as xr

from laid.io import read_netcdf
from laid_workflows.figures_support import MissingResultsError

DIAGNOSIS, REFERENCE, COMPARISON, HEAD_WEIGHTS = "diagnostics.nc", "reference.nc", "comparison.nc", "head_weights.nc"
HINTS = {
    DIAGNOSIS: "run `laid diagnose MODEL_DIR --data ... --image-root ... --out {folder}` first",
    REFERENCE: "run `laid diagnose` with --reference TEACHER_DIR, or give the teacher's own diagnosis as `reference`",
    COMPARISON: "run `laid diagnose` with --reference TEACHER_DIR",
    HEAD_WEIGHTS: "give the head_weights.nc of a LAid run (`laid distill` writes it beside export/)",
}


def check_folders(param: str, folders) -> dict[str, Path]:
    """label -> folder from a {label: folder} mapping (papermill passes it through YAML/JSON); a
    list of folders is labelled by the folders' names."""
    if isinstance(folders, (list, tuple)):
        folders = {Path(str(f)).name: f for f in folders}
    if not isinstance(folders, Mapping) or not folders:
        raise ValueError(f"parameter {param}: {folders!r} must map labels to folders written by `laid diagnose`, "
                         f"e.g. {{'base': 'runs/x/analysis/tiny-7b__base'}}")
    return {str(label): Path(str(folder)).expanduser() for label, folder in folders.items()}


def load_diagnosis(folder: str | Path, label: str, variables: Sequence[str], param: str, file: str = DIAGNOSIS) -> xr.Dataset:
    """`variables` of <folder>/<file> as `laid diagnose` wrote it, with attrs label and file.

    diagnostics.nc holds the checkpoint's own statistics, reference.nc its teacher's (at the paired
    layers), comparison.nc each head against its virtual teacher head."""
    folder = Path(folder)
    path = folder / file
    if not path.is_file():
        raise MissingResultsError(f"parameter {param}: {label}: {path} not found; {HINTS[file].format(folder=folder)}")
    ds = read_netcdf(path, "diagnosis")
    missing = [v for v in variables if v not in ds]
    if missing:
        raise ValueError(f"parameter {param}: {label}: {path} lacks {missing}; is it a `laid diagnose` output of "
                         f"this version? run `laid diagnose` again")
    return ds[list(variables)].assign_attrs(ds.attrs, label=label, file=str(path))


def load_reference(analyses: Mapping[str, Path], reference, variables: Sequence[str], param: str = "reference") -> xr.Dataset | None:
    """The teacher's diagnosis: `reference` ({label: folder} of its own `laid diagnose`), else the
    reference.nc beside the first analysis that has one (labelled by the name `laid diagnose
    --reference` gave it); None when there is neither (the figures then draw no teacher, and say so)."""
    if reference:
        folders = check_folders(param, reference)
        if len(folders) != 1:
            raise ValueError(f"parameter {param}: one teacher, as {{label: folder}}; got {list(folders)}")
        (label, folder), = folders.items()
        return load_diagnosis(folder, label, variables, param)
    for label, folder in analyses.items():
        if (Path(folder) / REFERENCE).is_file():
            ds = load_diagnosis(folder, label, variables, param, file=REFERENCE)
            return ds.assign_attrs(label=str(ds.attrs.get("model_name", f"teacher of {label}")))
    return None


def check_labels(analyses: Mapping, teacher: xr.Dataset | None) -> list[str]:
    """Every label of the figure (the analyses', then the teacher's); a label used twice is refused."""
    labels = [*analyses, *([teacher.attrs["label"]] if teacher is not None else [])]
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise ValueError(f"parameter reference: label {twice[0]!r} names an analysis and the teacher; give the teacher another label")
    return labels


def labelled(items: Sequence[str] | None, what: str) -> dict[str, str]:
    """{label: path} from LABEL=PATH arguments (a bare PATH is labelled by its last name)."""
    out: dict[str, str] = {}
    for item in items or []:
        label, sep, path = item.partition("=")
        label, path = (label, path) if sep else (Path(item).name, item)
        if not label or not path:
            raise ValueError(f"{what} {item!r}: write it as LABEL=PATH, e.g. after=runs/x/analysis/tiny-7b__laid")
        if label in out:
            raise ValueError(f"{what} label {label!r} given twice; give each a label of its own (LABEL=PATH)")
        out[label] = path
    return out


def parse_layers(items: Sequence[str] | None) -> int | dict[str, int] | None:
    """--layers: nothing (each diagnosis' needle-reading layer), one LAYER for all, or LABEL=LAYER each."""
    if not items:
        return None
    try:
        if len(items) == 1 and "=" not in items[0]:
            return int(items[0])
        return {label: int(layer) for label, layer in labelled(items, "--layers").items()}
    except ValueError:
        raise ValueError(f"--layers {' '.join(items)}: give one layer (e.g. 0, or -1 for the last) or LABEL=LAYER for each") from None


# ---------------------------------------------------------------- layers


def layer_label(stored: xr.Dataset | xr.DataArray, which: int, param: str) -> int:
    """The label of one layer stored in `stored`: a negative `which` counts from the end of those
    stored (-1: the last one); a non-negative one is the layer's own label (analyses may store a subset)."""
    which, labels = int(which), [int(v) for v in stored["layer"].values]
    if which < 0:
        if -which > len(labels):
            raise ValueError(f"parameter {param}: layer {which} out of range; {len(labels)} layers stored: {labels}")
        return labels[which]
    if which not in labels:
        raise ValueError(f"parameter {param}: layer {which} not stored; choose one of {labels} or -1 for the last")
    return which


def pick_layer(da: xr.DataArray, which: int, param: str) -> xr.DataArray:
    """da at one layer (layer_label's rule)."""
    return da.sel(layer=layer_label(da, which, param))


def needle_layer(ds: xr.Dataset, param: str = "layers") -> tuple[int, str]:
    """(layer, why): the layer the diagnosis in ds.attrs["file"] finds reading the needle
    (trainers.layer_choice.choose_layers, question rows, haystacks of 5 images and more)."""
    from trainers.layer_choice import choose_layers

    try:
        choice = choose_layers(ds.attrs["file"])
    except ValueError as e:
        raise ValueError(f"parameter {param}: {ds.attrs['label']}: {e}; or name its layer in `{param}`") from None
    best = choice.evidence[0]
    sizes = f"{choice.sizes[0]}-{choice.sizes[-1]}" if len(choice.sizes) > 1 else str(choice.sizes[0])
    return best.layer, f"reads the needle: mass {best.score:.2f} [{best.lo:.2f}, {best.hi:.2f}], head {best.head}, question rows, {sizes} images"


def check_layers(layers, labels: Sequence[str], param: str = "layers"):
    """`layers` as given: None, one int for every checkpoint, or {label: int}; unknown labels refused."""
    if isinstance(layers, Mapping):
        unknown = [k for k in layers if k not in labels]
        if unknown:
            raise ValueError(f"parameter {param}: unknown label {unknown[0]!r}; the figure's labels are {list(labels)}")
    elif layers is not None and not isinstance(layers, (int, np.integer)):
        raise ValueError(f"parameter {param}: {layers!r} must be None (each diagnosis' needle-reading layer), a layer, "
                         f"or {{label: layer}}")
    return layers


def choose_layer(ds: xr.Dataset, layers, param: str = "layers") -> tuple[int, str]:
    """(layer, why) for the diagnosis `ds`: the one `layers` names for its label (or for every
    checkpoint), else the layer it finds reading the needle (needle_layer)."""
    named = layers.get(ds.attrs["label"]) if isinstance(layers, Mapping) else layers
    if named is None:
        return needle_layer(ds, param)
    return layer_label(ds, named, param), "named"


def describe_layers(picks: Mapping[str, tuple[int, str]]) -> str:
    """One caption sentence per checkpoint: its layer and why."""
    return "; ".join(f"{label} at layer {layer} ({why})" for label, (layer, why) in picks.items())


def head_class_names(head_class: xr.DataArray) -> np.ndarray:
    """Head classes as strings, whether stored as text or as CF flags (flag_values/flag_meanings)."""
    values = np.asarray(head_class.values)
    if values.dtype.kind in "US" or values.dtype == object:
        return values.astype(str)
    meanings = str(head_class.attrs.get("flag_meanings", "")).split()
    flags = list(np.atleast_1d(head_class.attrs.get("flag_values", range(len(meanings)))))
    lookup = {int(f): m for f, m in zip(flags, meanings)}
    return np.vectorize(lambda v: lookup.get(int(v), str(int(v))))(values)


# ---------------------------------------------------------------- panels


def heads_of(data: xr.Dataset, checkpoint: str, head_class: str = "") -> list[int]:
    """Heads of `checkpoint` in a figure's data (one layer, heads outer-joined across checkpoints)
    that exist there (a finite locality score) and are of `head_class` ("": any)."""
    d = data.sel(checkpoint=checkpoint)
    return [int(h) for h, c, loc in zip(d["head"].values, d["head_class"].values, d["head_locality"].values)
            if np.isfinite(loc) and (not head_class or str(c) == head_class)]


def keep_panels(data: xr.Dataset, candidates: Sequence[dict], rule: str) -> tuple[list[dict], list[str]]:
    """(the candidate panels that have heads to draw, a sentence for each one dropped): a panel
    ({"checkpoint", "head_class", "title"}) is never drawn empty; the caption names what was left out."""
    kept, dropped = [], []
    for panel in candidates:
        if heads_of(data, panel["checkpoint"], panel["head_class"]):
            kept.append(dict(panel))
        else:
            layer = int(data["layer_index"].sel(checkpoint=panel["checkpoint"]))
            what = f"{panel['head_class']} heads" if panel["head_class"] else "heads"
            dropped.append(f"{panel['checkpoint']} has no {what} at layer {layer} ({rule})")
    return kept, dropped


def to_attr(value) -> str:
    """A list or mapping as one netCDF attribute (JSON text)."""
    return json.dumps(value)


# ---------------------------------------------------------------- head weights


def load_head_weights(source: str | Path, label: str, param: str = "head_weights") -> xr.Dataset:
    """A LAid run's head mixers, validated by laid_analysis.head_weights: `source` is a
    head_weights.nc or a folder holding one (`laid distill`'s output_dir, `laid diagnose
    --head-weights`'s --out): w_q(layer_pair, student_head, teacher_head), w_k(...kv heads)."""
    from laid_analysis.head_weights import load_head_weights as load

    path = Path(source).expanduser()
    path = path / HEAD_WEIGHTS if path.is_dir() or not path.suffix else path
    if not path.is_file():
        raise MissingResultsError(f"parameter {param}: {label}: {path} not found; {HINTS[HEAD_WEIGHTS]}")
    return load(path).assign_attrs(label=label, file=str(path))


def row_shares(w: xr.DataArray) -> xr.DataArray:
    """|w| / sum over the last dim (the teacher heads) of |w|: each teacher head's share of a row."""
    mag = np.abs(w)
    total = mag.sum(w.dims[-1])
    return (mag / total.where(total > 0)).assign_attrs(units="1", long_name="share of the row's sum |w|")
