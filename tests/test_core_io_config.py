"""The core's single definitions: atomic writer, typed config loader, run layout, method registry."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import xarray as xr

from laid import io
from laid.config import load_config
from laid.layout import RunLayout
from laid.methods import ALL_METHODS, INFERENCE_VARIANTS, LABELS, TABLE1_METHODS, TABLE3_METHODS, TRAINED_METHODS, check_method

REPO = Path(__file__).resolve().parents[1]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_keep_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        text = io.write_text("x", tmp_path / "a.md")
        nc = io.write_netcdf(xr.Dataset({"v": ("d", [1.0, 2.0])}), tmp_path / "r.nc")
        with io.atomic_dir(tmp_path / "folder") as d:
            (d / "f").write_text("y")
            (d / "private").write_text("z")
            os.chmod(d / "private", 0o600)  # as safetensors leaves its files
    finally:
        os.umask(old)
    assert _mode(text) == _mode(nc) == 0o666 & ~umask  # mkstemp alone would leave 0600
    assert _mode(tmp_path / "folder") == 0o777 & ~umask
    assert _mode(tmp_path / "folder" / "private") == _mode(tmp_path / "folder" / "f") == 0o666 & ~umask
    assert io.read_netcdf(nc)["v"].values.tolist() == [1.0, 2.0]


def test_a_failed_write_keeps_the_earlier_file_and_names_a_full_disk(tmp_path):
    target = io.write_text("earlier", tmp_path / "result.md")

    def full(tmp):
        Path(tmp).write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=r"no space left on device writing .*result.md; the earlier result .* kept"):
        io.atomic_write(target, full)
    with pytest.raises(ZeroDivisionError):
        io.atomic_write(target, lambda tmp: 1 / 0)
    assert target.read_text() == "earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.md"]  # no temp files left


def test_atomic_dir_swaps_whole_folders_or_nothing(tmp_path):
    out = tmp_path / "export"
    with io.atomic_dir(out) as d:
        (d / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with io.atomic_dir(out) as d:
            (d / "a").write_text("2")
            raise RuntimeError("crash mid-save")
    assert (out / "a").read_text() == "1"
    with io.atomic_dir(out) as d:
        (d / "b").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


@dataclass
class _Inner:
    k: float = 1.0


@dataclass
class _Cfg:
    name: str = "x"
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    pair: tuple[int, int] = (1, 3)
    inner: _Inner = field(default_factory=_Inner)
    maybe: int | None = None

    def __post_init__(self):
        if self.inner.k < 0:
            raise ValueError("inner.k must be >= 0")


def test_config_loader_types_overrides_and_one_line_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: y\nsizes: [5]\npair: [2, 4]\ninner: {k: 1e-3}\n")
    cfg = load_config(_Cfg, path, ["inner.k=2", "maybe=7"])
    assert (cfg.name, cfg.sizes, cfg.pair, cfg.inner.k, cfg.maybe) == ("y", [5], (2, 4), 2.0, 7)
    cases = {
        "nme: y\n": "unknown config key.*'nme'",
        "inner: {kk: 1}\n": r"unknown config key.*'inner\.kk'",
        "sizes: 3\n": "sizes: expected a list",
        "pair: [1, 2, 3]\n": "pair: expected 2 values",
        "maybe: yes\n": "maybe: expected an integer",
        "inner: {k: -1}\n": "inner.k must be >= 0",
        "name: [unclosed\n": "not valid YAML",
        "- a list\n": "must be a mapping",
    }
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(ValueError, match=message) as e:
            load_config(_Cfg, path, what="test config")
        assert str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="test config .* not found"):
        load_config(_Cfg, tmp_path / "missing.yaml", what="test config")


def test_every_shipped_config_loads_through_the_one_loader():
    from laid.zoo.configs import load_zoo_config
    from laid_workflows.compare import load_compare_config
    from laid_workflows.main_job import MainConfig
    from trainers.config import load_config as load_distill

    for p in sorted((REPO / "configs" / "zoo").glob("*.yaml")):
        load_zoo_config(p)
    for p in sorted((REPO / "configs" / "distill").glob("*.yaml")):
        load_distill(p)
    main = MainConfig.load(REPO / "configs" / "experiments" / "main.yaml")
    comp = load_compare_config(REPO / "configs" / "experiments" / "compare.yaml")
    assert main.eval.samples_per_size >= 1 and comp.eval.sizes


def test_run_layout_matches_the_contract():
    run = RunLayout("runs/x")
    contract = (REPO / "docs" / "CONTRACTS.md").read_text()
    paths = {
        run.config: "config.yaml", run.test_data: "data/", run.zoo_model("tiny-7b"): "zoo/",
        run.eval_result("tiny-7b", "yarn"): "eval/<label>__<variant>.nc",
        run.export("tiny-7b", "laid"): "distill/<student>__<method>/export/",
        run.head_weights("tiny-7b", "laid"): "distill/<student>__<method>/head_weights.nc",
        run.trained_eval("tiny-7b", "kd"): "distill/<student>__<method>/eval.nc",
        run.comparison: "compare/comparison.nc", run.summary: "summary.md",
    }
    for path, documented in paths.items():
        assert documented in contract
        assert str(path).startswith("runs/x/")
    assert run.eval_result("tiny-7b", "yarn") == Path("runs/x/eval/tiny-7b__yarn.nc")
    assert run.export("tiny-3b", "kd") == Path("runs/x/distill/tiny-3b__kd/export")


def test_method_registry_is_the_one_source():
    from laid.eval.variants import EXTENSION_MODULES, VARIANTS
    from trainers.config import METHOD_TERMS, METHODS

    assert set(METHODS) == set(TRAINED_METHODS) == set(METHOD_TERMS)
    assert VARIANTS == INFERENCE_VARIANTS == ("base", *EXTENSION_MODULES)
    assert set(LABELS) == set(ALL_METHODS) and set(TABLE1_METHODS + TABLE3_METHODS) <= set(ALL_METHODS)
    assert check_method("kd") == "kd"
    with pytest.raises(ValueError, match="unknown method 'kdd'; choose one of base, yarn"):
        check_method("kdd")
