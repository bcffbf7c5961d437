"""The one place results reach the disk: atomic writes that keep the user's umask, and netCDF I/O.

Every file the workbench writes (netCDF results, JSON, Markdown, figures, checkpoints' small files)
goes through `atomic_write`: the content is written to a temp file beside the target, flushed, given
the mode a plain `open()` would have given it (0666 minus the umask: `mkstemp` alone leaves 0600,
unreadable to colleagues on a shared machine), then renamed over the target. A crash, an error or a
full disk mid-write leaves the earlier file as it was, and the error says so in one line.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = [
    "atomic_write", "write_text", "write_bytes", "write_json", "write_netcdf", "read_netcdf",
    "save_figure", "atomic_dir", "file_mode",
]


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def file_mode() -> int:
    """The mode `open(path, "w")` would give a new file under the current umask."""
    return 0o666 & ~_umask()


def _no_space(path: Path) -> OSError:
    return OSError(errno.ENOSPC, f"no space left on device writing {path}; the earlier result (if any) was kept")


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` on a temp file in `path`'s folder, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.errno == errno.ENOSPC or "No space left" in str(e):
            raise _no_space(path) from None
        raise
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        # netCDF-C reports ENOSPC as "NetCDF: HDF error"; say what happened when the disk is the cause.
        if "HDF error" in str(e) and _disk_full(path.parent):
            raise _no_space(path) from None
        raise
    return path


def _disk_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def write_text(text: str, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_bytes(data: bytes, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_json(obj: Any, path: str | Path, indent: int | None = 2) -> Path:
    text = json.dumps(obj, indent=indent, sort_keys=False) + "\n"
    return write_text(text, path)


def write_netcdf(ds, path: str | Path) -> Path:
    """Write an xarray Dataset with the netCDF4 engine, atomically."""
    return atomic_write(path, lambda tmp: ds.to_netcdf(tmp, engine="netcdf4"))


def read_netcdf(path: str | Path, what: str = "result", hint: str = ""):
    """Open a netCDF file fully into memory and close it (so it can be replaced later)."""
    import xarray as xr

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found" + (f"; {hint}" if hint else ""))
    try:
        with xr.open_dataset(path) as ds:
            return ds.load()
    except (OSError, ValueError) as e:
        raise ValueError(f"{what} {path} is not a readable netCDF file ({e}); re-create it") from None


def save_figure(fig, path: str | Path, dpi: int = 110, close: bool = True) -> Path:
    """Save a matplotlib figure (format from the suffix) atomically; close it unless `close=False`."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight"))
    finally:
        if close:
            import matplotlib.pyplot as plt

            plt.close(fig)


def _apply_umask(folder: Path) -> None:
    """Give a finished folder the modes a plain mkdir/open would have (mkdtemp and some writers,
    e.g. safetensors, leave 0700 / 0600)."""
    dmode, fmode = 0o777 & ~_umask(), file_mode()
    os.chmod(folder, dmode)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), dmode)
        for f in files:
            os.chmod(os.path.join(root, f), fmode)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a folder in a sibling temp folder; on success swap it in for `path`, else discard it.

    The earlier folder is moved aside and removed only after the new one is in place, so at every
    moment `path` is either the complete old folder or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _apply_umask(tmp)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno == errno.ENOSPC:
            raise _no_space(path) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
