"""laid.eval.results: the contract's Dataset from known samples, netCDF round trip, atomic writes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import xarray as xr

from laid.eval.results import (
    REQUIRED_ATTRS,
    REQUIRED_VARIABLES,
    SampleResult,
    build_result,
    load_result,
    summary_text,
    write_result,
)


def rows(correct, tokens, reply=None):
    return [SampleResult(bool(c), 0.5 if c else -0.5, True, t, j, j % 2 == 0, reply) for j, (c, t) in enumerate(zip(correct, tokens))]


CONTRACT_ATTRS = {
    "model_name": "tiny-7b", "model_dir": "/m", "variant": "yarn", "variant_options": {"factor": 4},
    "scoring": "logits", "data_path": "/d/test", "needle_setting": "single_needle",
    "config": {"sizes": [1, 5, 10], "seed": 3},
}  # fmt: skip


@pytest.fixture
def ds():
    samples = {
        10: rows([0, 0, 1, 0], [100, 100, 102, 98]),  # 0.25
        1: rows([1, 1, 1, 0], [40, 40, 40, 40]),  # 0.75
        5: rows([1, 0], [70, 72]),  # 0.5, only two samples
    }
    return build_result(samples, threshold=0.6, seed=3, attrs=CONTRACT_ATTRS)


def test_contract_variables_dims_and_values(ds):
    assert set(REQUIRED_VARIABLES) <= set(ds.variables)
    assert list(ds["haystack_size"].values) == [1, 5, 10]  # sorted
    assert ds.sizes["sample"] == 4 and ds.sizes["bootstrap"] == 100
    for name in ("accuracy", "accuracy_std", "accuracy_ci_low", "accuracy_ci_high", "compliance", "n_samples", "avg_input_tokens"):
        assert ds[name].dims == ("haystack_size",), name
    assert ds["correct"].dims == ds["margin"].dims == ("haystack_size", "sample")
    assert ds["effective_window"].dims == ()
    np.testing.assert_allclose(ds["accuracy"].values, [0.75, 0.5, 0.25])
    np.testing.assert_array_equal(ds["n_samples"].values, [4, 2, 4])
    np.testing.assert_allclose(ds["avg_input_tokens"].values, [40, 71, 100])
    assert np.isnan(ds["correct"].sel(haystack_size=5).values[2:]).all()  # fewer samples: NaN
    np.testing.assert_array_equal(ds["correct"].sel(haystack_size=5).values[:2], [1, 0])
    # Window: 0.75 at 1, 0.5 at 5 -> crossing at t = 0.15 / 0.25 = 0.6 in log size -> 5 ** 0.6.
    assert float(ds["effective_window"]) == pytest.approx(5**0.6)
    assert ds["effective_window"].attrs["censored"] == 0 and ds["effective_window"].attrs["units"] == "images"
    assert (ds["accuracy_ci_low"] <= ds["accuracy"]).all() and (ds["accuracy"] <= ds["accuracy_ci_high"]).all()
    for name in ds.data_vars:
        assert "long_name" in ds[name].attrs, name
    assert "reply" not in ds  # logit scoring has no replies


def test_attrs_carry_provenance(ds):
    assert set(REQUIRED_ATTRS) <= set(ds.attrs)
    assert json.loads(ds.attrs["variant_options"]) == {"factor": 4}
    assert json.loads(ds.attrs["config"])["seed"] == 3
    assert ds.attrs["seed"] == 3 and ds.attrs["threshold"] == 0.6
    assert len(ds.attrs["git_commit"]) == 40 or ds.attrs["git_commit"] == "unknown"
    assert ds.attrs["created"].startswith("20")


def test_bootstrap_is_reproducible_per_seed():
    s = {1: rows([1, 0, 1, 1, 0, 1], [5] * 6)}
    a, b = build_result(s, threshold=0.6, seed=1), build_result(s, threshold=0.6, seed=1)
    c = build_result(s, threshold=0.6, seed=2)
    xr.testing.assert_identical(a["accuracy_bootstrap"], b["accuracy_bootstrap"])
    assert not np.array_equal(a["accuracy_bootstrap"].values, c["accuracy_bootstrap"].values)


def test_netcdf_round_trip_and_no_temp_files(ds, tmp_path):
    path = write_result(ds, tmp_path / "sub" / "r.nc")
    back = load_result(path)
    xr.testing.assert_allclose(back, ds)
    assert back.attrs == ds.attrs
    assert back["effective_window"].attrs == ds["effective_window"].attrs
    assert [p.name for p in path.parent.iterdir()] == ["r.nc"]


def test_replies_round_trip(tmp_path):
    s = {2: rows([1, 0], [9, 9], reply="Yes, there is")}
    back = load_result(write_result(build_result(s, threshold=0.6, seed=0), tmp_path / "g.nc"))
    assert list(back["reply"].values[0]) == ["Yes, there is", "Yes, there is"]


def test_failed_write_keeps_the_previous_result(ds, tmp_path, monkeypatch):
    path = write_result(ds, tmp_path / "r.nc")
    before = path.read_bytes()

    def boom(self, *a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_result(ds, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.nc"]


def test_load_result_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="laid eval"):
        load_result(tmp_path / "none.nc")
    xr.Dataset({"x": ("a", [1.0])}).to_netcdf(tmp_path / "other.nc", engine="netcdf4")
    with pytest.raises(ValueError, match="lacks evaluation variables"):
        load_result(tmp_path / "other.nc")
    (tmp_path / "junk.nc").write_text("not netcdf")
    with pytest.raises(ValueError, match="not a readable"):
        load_result(tmp_path / "junk.nc")


def test_summary_text_lines(ds):
    text = summary_text(ds)
    lines = text.splitlines()
    assert lines[0].startswith("tiny-7b [yarn] single_needle")
    assert len(lines) == 2 + 3 + 1
    assert lines[2].split()[:3] == ["1", "4", "0.750"]
    assert f"{5**0.6:.2f} images" in lines[-1]


def test_censored_and_below_range_windows_are_flagged():
    high = build_result({1: rows([1, 1], [5, 5]), 2: rows([1, 1], [6, 6])}, threshold=0.6, seed=0)
    assert float(high["effective_window"]) == 2 and high["effective_window"].attrs["censored"] == 1
    assert ">= 2 images" in summary_text(high)
    low = build_result({1: rows([0, 0], [5, 5])}, threshold=0.6, seed=0)
    assert math.isnan(float(low["effective_window"])) and low["effective_window"].attrs["below_range"] == 1
    assert "none" in summary_text(low)


def test_window_bootstrap_interval_from_resampled_curves(ds):
    from laid.eval.metrics import effective_window

    boot = ds["effective_window_bootstrap"]
    assert boot.dims == ("bootstrap",) and boot.attrs["units"] == "images"
    # Each resample's window is the window of that resample's accuracy curve; below range -> 0.
    for b in (0, 17, 99):
        w = effective_window(ds["haystack_size"].values, ds["accuracy_bootstrap"].values[:, b], 0.6)
        assert float(boot[b]) == (0.0 if w.below_range else pytest.approx(w.value))
    attrs = ds["effective_window"].attrs
    assert attrs["ci_low"] == pytest.approx(np.percentile(boot, 2.5)) and attrs["ci_high"] == pytest.approx(np.percentile(boot, 97.5))
    # 3 of 4 right at one image can resample to 2 of 4 (below 0.6): the interval reaches down to 0.
    assert attrs["ci_low"] == 0.0 < float(ds["effective_window"]) < attrs["ci_high"]
    assert f"(95% bootstrap interval {attrs['ci_low']:.2f}-{attrs['ci_high']:.2f})" in summary_text(ds)
    # No noise, no spread: every resample of an all-correct grid is censored at its largest size.
    high = build_result({1: rows([1, 1], [5, 5]), 2: rows([1, 1], [6, 6])}, threshold=0.6, seed=0)
    assert set(high["effective_window_bootstrap"].values) == {2.0}
    assert high["effective_window"].attrs["ci_low"] == high["effective_window"].attrs["ci_high"] == 2.0


def test_summary_of_a_result_without_window_interval_still_reads(ds):
    old = ds.drop_vars("effective_window_bootstrap")
    for key in ("ci_low", "ci_high"):
        del old["effective_window"].attrs[key]
    assert summary_text(old).splitlines()[-1].endswith(f"{5**0.6:.2f} images")
