"""Percentile bootstrap intervals over haystacks (the `sample` dim): what every figure's bars mean."""

from __future__ import annotations

import numpy as np
import xarray as xr

DEFAULT_N_BOOTSTRAP = 1000
DEFAULT_LEVEL = 0.95
INTERVAL_NAME = "95% percentile bootstrap interval over haystacks (1000 resamples)"


def bootstrap_mean(da: xr.DataArray, dim: str = "sample", n_boot: int = DEFAULT_N_BOOTSTRAP,
                   level: float = DEFAULT_LEVEL, seed: int = 0) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    """(mean, lower, upper) of da's NaN-aware mean over `dim`, with a percentile bootstrap interval
    (resampling along `dim`; NaN entries are missing samples, e.g. fewer haystacks at one size)."""
    x = da.transpose(..., dim).values
    rng = np.random.default_rng(seed)
    n = x.shape[-1]
    idx = rng.integers(0, n, size=(n_boot, n))
    with np.errstate(invalid="ignore"), _quiet():
        boots = np.nanmean(x[..., idx], axis=-1)  # (..., n_boot)
        lo, hi = np.nanquantile(boots, [(1 - level) / 2, (1 + level) / 2], axis=-1)
        mean = np.nanmean(x, axis=-1)
    dims = da.transpose(..., dim).dims[:-1]
    coords = {k: v for k, v in da.coords.items() if dim not in v.dims}
    attrs = dict(da.attrs, interval=f"{level:.0%} percentile bootstrap over {dim} ({n_boot} resamples)")
    make = lambda v: xr.DataArray(v, dims=dims, coords=coords, attrs=attrs)  # noqa: E731
    return make(mean), make(lo), make(hi)


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)
