"""One report comparing several analysed checkpoints side by side (teacher, base, KD, LAid).

Reads the folders `laid diagnose` wrote (diagnostics.nc, and where present reference.nc,
comparison.nc, ablation.nc) and writes into out_dir:
    models.nc    per-head statistics of every checkpoint along a `model` dim (outer join: each
                 model keeps its own layer/head indices, NaN where it has fewer)
    summary.nc   one number per model: fidelity to the virtual teacher heads, the ablation
                 preservation score, intact and pair accuracy on minimal pairs, needle/sink mass
    answer_stats.png, health.png, report.html
Answer statistics share one y axis per row across models: masses and margins are absolute
(attention mass, logits), so the checkpoints are compared on one scale, not each normalised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from laid_analysis import report
from laid.io import read_netcdf, write_netcdf
from laid_analysis.key_activation import stack_models

STACKED = ("needle_mass_mean", "needle_mass_lo", "needle_mass_hi", "image_mass_mean", "needle_margin_mean",
           "head_locality", "head_locality_lo", "head_locality_hi", "attn_entropy", "sink_mass", "logit_scale",
           "q_norm", "pair_coef_abs")


def load_checkpoints(folders: dict[str, Path], teacher: str | None = None) -> tuple[dict[str, xr.Dataset], dict[str, dict]]:
    """({label: diagnostics}, {label: {"comparison": ds|None, "ablation": ds|None}}); the teacher
    comes from its own folder if given, else from the first student folder's reference.nc."""
    models, extras = {}, {}
    for label, folder in folders.items():
        folder = Path(folder)
        models[label] = read_netcdf(folder / "diagnostics.nc")
        extras[label] = {name: read_netcdf(folder / f"{name}.nc") if (folder / f"{name}.nc").is_file() else None
                         for name in ("comparison", "ablation")}
        if teacher and teacher not in folders and teacher not in models and (folder / "reference.nc").is_file():
            models = {teacher: read_netcdf(folder / "reference.nc"), **models}
            extras[teacher] = {"comparison": None, "ablation": None}
    return models, extras


def _last(ds: xr.Dataset, var: str):
    return ds[var].isel(layer=-1)


def summary(models: dict[str, xr.Dataset], extras: dict[str, dict]) -> xr.Dataset:
    rows = {k: [] for k in ("fidelity_score", "profile_score", "preservation_score", "intact_accuracy", "pair_accuracy",
                            "needle_mass_largest", "sink_mass_largest")}
    for label, ds in models.items():
        cmp, abl = extras[label]["comparison"], extras[label]["ablation"]
        for k in ("fidelity_score", "profile_score", "preservation_score"):
            rows[k].append(float(cmp[k]) if cmp is not None and k in cmp else np.nan)
        intact = abl.sel(ablation="none").isel(layer=0) if abl is not None else None
        rows["intact_accuracy"].append(float(intact["accuracy"]) if intact is not None else np.nan)
        rows["pair_accuracy"].append(float(intact["pair_accuracy"]) if intact is not None else np.nan)
        rows["needle_mass_largest"].append(float(_last(ds, "needle_mass_mean").isel(haystack_size=-1).max()))
        rows["sink_mass_largest"].append(float(_last(ds, "sink_mass").isel(haystack_size=-1).mean()))
    attrs = {"fidelity_score": "mean spectral fidelity to the virtual teacher heads",
             "profile_score": "mean profile fidelity to the virtual teacher heads",
             "preservation_score": "ABLATION: low-frequency preservation (fails planted checks)",
             "intact_accuracy": "accuracy on the minimal pairs, no ablation",
             "pair_accuracy": "minimal pairs with both answers right",
             "needle_mass_largest": "last layer, largest size: best head's mean attention mass on the needle",
             "sink_mass_largest": "last layer, largest size: mean attention-sink mass over heads"}
    return xr.Dataset({k: (("model",), np.array(v), {"long_name": attrs[k], "units": "1"}) for k, v in rows.items()},
                      coords={"model": list(models)})


def compare_checkpoints(folders: dict[str, str | Path], out_dir: str | Path, teacher: str | None = None) -> dict[str, Path]:
    """Write models.nc, summary.nc, figures and report.html for the analysed folders (module docstring)."""
    out_dir = Path(out_dir)
    missing = [str(Path(f) / "diagnostics.nc") for f in folders.values() if not (Path(f) / "diagnostics.nc").is_file()]
    if missing:
        raise FileNotFoundError(f"no diagnostics in {missing}; run `laid diagnose` on those checkpoints first")
    models, extras = load_checkpoints({k: Path(v) for k, v in folders.items()}, teacher)
    written = {"models": write_netcdf(stack_models(models, STACKED), out_dir / "models.nc")}
    summ = summary(models, extras)
    written["summary"] = write_netcdf(summ, out_dir / "summary.nc")
    figures = [report.plot_key_activation(models, out_dir / "answer_stats.png"), report.plot_health(models, out_dir / "health.png")]
    rows = [[m] + [f"{float(summ[v].sel(model=m)):.3f}" for v in summ.data_vars] for m in summ["model"].values]
    sections = [("Checkpoints side by side", report.table(rows, ["model"] + list(summ.data_vars)))]
    for fig in figures:
        written[fig.name] = fig
    written["report"] = report.write_report(out_dir, "laid diagnose: checkpoints compared", figures, sections)
    return written
