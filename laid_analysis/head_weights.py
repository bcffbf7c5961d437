"""LAid head-mixing weights (paper Eq. 3): which teacher heads each student head is built from.

A LAid export writes `distill/<student>__<method>/head_weights.nc` with
    w_q(layer_pair, student_head, teacher_head)        query mixer of each paired layer
    w_k(layer_pair, student_kv_head, teacher_kv_head)  key mixer (GQA: KV heads)
and, when known, coordinates student_layer(layer_pair) and teacher_layer(layer_pair).
Weights are free reals (no softmax), so summaries use their magnitudes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from laid.io import read_netcdf

DIMS = {"w_q": ("layer_pair", "student_head", "teacher_head"),
        "w_k": ("layer_pair", "student_kv_head", "teacher_kv_head")}


def load_head_weights(path: str | Path) -> xr.Dataset:
    """Read and validate a head_weights.nc; returns it in memory (file closed) with index coords."""
    path = Path(path)
    ds = read_netcdf(path, "head weights file", "pass the head_weights.nc of a LAid export")
    return validate_head_weights(ds, str(path))


def validate_head_weights(ds: xr.Dataset, name: str = "head weights") -> xr.Dataset:
    for var, dims in DIMS.items():
        if var not in ds:
            raise ValueError(f"{name}: variable {var!r} missing; expected {var}{dims} from a LAid export")
        if ds[var].dims != dims:
            raise ValueError(f"{name}: {var} has dims {ds[var].dims}, expected {dims}")
        if not np.all(np.isfinite(ds[var].values)):
            raise ValueError(f"{name}: {var} holds NaN or inf; the export is broken, re-run the distillation")
    for dim in ("student_head", "teacher_head", "student_kv_head", "teacher_kv_head", "layer_pair"):
        if dim not in ds.coords:
            ds = ds.assign_coords({dim: np.arange(ds.sizes[dim])})
    return ds


def with_absolute_layers(ds: xr.Dataset, n_student_layers: int, n_teacher_layers: int) -> xr.Dataset:
    """student_layer / teacher_layer coordinates as 0-based indices (exports may count from the end)."""
    if "student_layer" not in ds.coords:
        return ds
    return ds.assign_coords(student_layer=ds["student_layer"] % n_student_layers,
                            teacher_layer=ds["teacher_layer"] % n_teacher_layers)


def head_weight_summary(ds: xr.Dataset) -> xr.Dataset:
    """Per student head: its largest-|w| teacher head, that weight and its share of sum |w|; per
    teacher head: how much of all student heads' |w| it receives (importance, sums to #student heads)."""
    out = {}
    for var, (_, s_dim, t_dim) in DIMS.items():
        w = ds[var]
        mag = np.abs(w)
        share = mag / mag.sum(t_dim).where(mag.sum(t_dim) > 0)
        top = mag.argmax(t_dim)
        out[f"{var}_share"] = share.assign_attrs(units="1", long_name=f"|{var}| / row sum")
        out[f"{var}_top_teacher"] = top.assign_attrs(long_name="teacher head with the largest |weight|")
        out[f"{var}_top_weight"] = w.isel({t_dim: top}).assign_attrs(units="1", long_name="that weight (signed)")
        out[f"{var}_top_share"] = share.max(t_dim).assign_attrs(units="1", long_name="its share of the row's |w|")
        out[f"{var}_teacher_importance"] = share.sum(s_dim).assign_attrs(
            units="1", long_name="sum over student heads of the share drawn from this teacher head")
    return xr.Dataset(out)
