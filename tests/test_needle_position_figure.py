"""Accuracy by needle position: the table, the data behind the figure, and the notebook that draws it."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from laid.data.vhs import needle_positions
from laid.eval.results import SampleResult, build_result, summary_text
from laid.io import write_netcdf
from laid_workflows import figures_support as fs


def _planted(tmp_path, detailed: bool = True):
    """Two entries per size; the model finds the needle only in the first half of the haystack."""
    samples = {}
    for n in (5, 20):
        rows = []
        for _ in range(2):
            for p in needle_positions(n):
                rows.append(SampleResult(p < n / 2, 1.0 if p < n / 2 else -1.0, True, 10 * n, p, True))
        samples[n] = rows
    ds = build_result(samples, threshold=0.6, seed=0, n_bootstrap=10,
                      attrs={"model_name": "m", "variant": "base", "protocol": "official",
                             "needle_position_mode": detailed, "needle_setting": "single_needle", "scoring": "generate"})
    return write_netcdf(ds, tmp_path / "r.nc"), ds


def test_table_and_data_recover_the_planted_position_effect(tmp_path):
    path, ds = _planted(tmp_path)
    data = fs.needle_position_data(path)
    for n in (5, 20):
        row = data.accuracy.sel(haystack_size=n).dropna("needle_index")
        np.testing.assert_array_equal(row.needle_index, needle_positions(n))
        np.testing.assert_array_equal(row.values, [1.0 if p < n / 2 else 0.0 for p in needle_positions(n)])
        assert (data.n_samples.sel(haystack_size=n).sel(needle_index=needle_positions(n)) == 2).all()
    text = summary_text(ds)
    assert "accuracy by needle position:" in text and "    5 0:1.00 1:1.00 2:1.00 3:0.00 4:0.00" in text


def test_shuffled_result_is_refused_with_what_to_do(tmp_path):
    path, _ = _planted(tmp_path, detailed=False)
    with pytest.raises(ValueError, match="--protocol official"):
        fs.needle_position_data(path)
    with pytest.raises(fs.MissingResultsError, match="laid eval"):
        fs.needle_position_data(tmp_path / "none.nc")


@pytest.mark.slow
def test_notebook_draws_the_figure(tmp_path):
    from laid_workflows.figures import run_notebook

    path, _ = _planted(tmp_path)
    figs = tmp_path / "figs"
    run_notebook("needle_position", {"result": str(path), "figures_dir": str(figs), "quick": True}, tmp_path / "executed")
    for ext in ("png", "pdf", "html"):
        assert (figs / f"needle_position.{ext}").stat().st_size > 1000
    xr.testing.assert_identical(xr.load_dataset(figs / "data" / "needle_position.nc"), fs.needle_position_data(path))
    assert (figs / "plotly.min.js").is_file()
