"""Every bad input of `laid eval` gets one line on stderr, exit code 1, no traceback, and the earlier
result stays as it was. Each case breaks a copy of a real-format VHs folder one way (the corpus a
new user produced, plus cases of ours); the line must name the offending thing.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from vhs_helpers import copy_real_vhs

from laid.eval.protocol import official_dir
from laid_workflows.cli import main

SINGLE3 = Path("single_needle/VHs_large/visual_haystack_3.json")
EARLIER = b"the earlier result, which a failed run must leave alone\n"


@pytest.fixture()
def world(tmp_path):
    root, images = copy_real_vhs(tmp_path)
    out = tmp_path / "results" / "run.nc"
    out.parent.mkdir()
    out.write_bytes(EARLIER)
    return {"root": root, "images": images, "out": out, "tmp": tmp_path, "file": root / SINGLE3}


def _entries(w) -> list:
    return json.loads(w["file"].read_text())


def _put(w, entries) -> None:
    w["file"].write_text(json.dumps(entries))


def _edit(w, fn) -> None:
    entries = _entries(w)
    fn(entries)
    _put(w, entries)


def _png_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.zeros((56, 56, 3), dtype=np.uint8) + 128).save(buf, "PNG")
    return buf.getvalue()


def _first_image(w) -> Path:
    return w["images"] / _entries(w)[0]["neg_image"][0]


def _outside(w) -> Path:
    secret = w["tmp"] / "secret.jpg"
    shutil.copy(_first_image(w), secret)
    return secret


# name -> (break the world; return extra CLI args or None, substring the line must hold)
CASES = {
    "data missing": (lambda w: ["--data", str(w["tmp"] / "nowhere")], "nowhere"),
    "data folder without VHs files": (lambda w: (w["tmp"] / "empty").mkdir() or ["--data", str(w["tmp"] / "empty")],
                                      "no visual_haystack"),
    "file name not visual_haystack_N": (lambda w: shutil.copy(w["file"], w["tmp"] / "haystack.json") and
                                        ["--data", str(w["tmp"] / "haystack.json")], "haystack.json"),
    "not JSON": (lambda w: w["file"].write_text("[{"), "not valid JSON"),
    "not UTF-8": (lambda w: w["file"].write_bytes(b'[{"conversations": "\xff\xfe"}]'), "not UTF-8"),
    "JSON object instead of list": (lambda w: w["file"].write_text('{"entries": []}'), "JSON list"),
    "empty JSON list": (lambda w: w["file"].write_text("[]"), "no entries"),
    "deeply nested JSON": (lambda w: w["file"].write_text("[" * 100_000 + "]" * 100_000), "nested too deeply"),
    "entry not an object": (lambda w: _put(w, [1, 2]), "entry 0"),
    "entry without neg_image": (lambda w: _edit(w, lambda e: e[0].pop("neg_image")), "'neg_image' is missing"),
    "answer neither yes nor no": (lambda w: _edit(w, lambda e: e[1]["conversations"][1].update(value="maybe")),
                                  "entry 1"),
    "question not a string": (lambda w: _edit(w, lambda e: e[0]["conversations"][0].update(value=7)),
                              "conversations[0].value"),
    "empty pos_image": (lambda w: _edit(w, lambda e: e[0].update(pos_image=[])), "'pos_image' is empty"),
    "image path not a string": (lambda w: _edit(w, lambda e: e[0]["neg_image"].__setitem__(0, 5)), "neg_image"),
    "size differs from the file name": (lambda w: _edit(w, lambda e: e[2]["neg_image"].append(e[0]["neg_image"][0])),
                                        "N=3"),
    "two needles in a single-needle file": (lambda w: _edit(w, lambda e: e[0]["pos_image"].append(e[0]["neg_image"].pop())),
                                            "exactly one"),
    "file is a folder": (lambda w: (w["file"].unlink(), w["file"].mkdir()) and None, "is a folder"),
    "image missing": (lambda w: _first_image(w).unlink(), "not found"),
    "image is a folder": (lambda w: (_first_image(w).unlink(), _first_image(w).mkdir()) and None, "is a folder"),
    "truncated PNG": (lambda w: _first_image(w).write_bytes(_png_bytes()[:60]), "cannot be read"),
    "text file as image": (lambda w: _first_image(w).write_text("not an image"), "cannot be read"),
    "absolute image path": (lambda w: _edit(w, lambda e: e[0]["neg_image"].__setitem__(0, str(_outside(w)))),
                            "is absolute"),
    "'..' leaves the image root": (lambda w: _outside(w) and _edit(w, lambda e: e[0]["neg_image"].__setitem__(
        0, "../secret.jpg")), "climbs out"),
    "image root missing": (lambda w: ["--image-root", str(w["tmp"] / "no_images")], "no_images"),
    "size not in the data": (lambda w: ["--sizes", "7"], "[7]"),
    "setting not in the file": (lambda w: ["--setting", "multi_needle_3"], "multi_needle_3"),
    "--out is a folder": (lambda w: ["--out", str(w["out"].parent)], "is a folder"),
    "--max-samples 0": (lambda w: ["--max-samples", "0"], "--max-samples"),
}


def _run(w, extra, capfd) -> tuple[int, list[str]]:
    args = ["eval", "--model", str(w["model"]), "--data", str(w["file"]), "--image-root", str(w["images"]),
            "--out", str(w["out"]), "--device", "cpu", "--no-progress", "--max-new-tokens", "2"]
    rc = main(args + list(extra or []))
    err = capfd.readouterr().err
    return rc, [line for line in err.splitlines() if line.strip()]


def _check(w, rc, lines, needle):
    assert rc == 1, lines
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0] and lines[0].startswith("laid eval: error: ")
    assert needle in lines[0], lines[0]
    assert w["out"].read_bytes() == EARLIER  # the earlier result is untouched
    assert not official_dir(w["out"]).exists()


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_one_line(case, world, random_zoo, capfd):
    world["model"] = random_zoo["tiny-7b"]
    breaker, needle = CASES[case]
    extra = breaker(world)
    rc, lines = _run(world, extra if isinstance(extra, list) else None, capfd)
    _check(world, rc, lines, needle)


def test_entry_level_lines_name_file_and_entry(world, random_zoo, capfd):
    world["model"] = random_zoo["tiny-7b"]
    _first_image(world).write_bytes(_png_bytes()[:60])
    rc, lines = _run(world, None, capfd)
    assert rc == 1 and str(world["file"]) in lines[0] and "entry 0" in lines[0]


def test_outside_paths_are_read_when_allowed(world, random_zoo, capfd):
    world["model"] = random_zoo["tiny-7b"]
    secret = _outside(world)
    _edit(world, lambda e: e[0]["neg_image"].__setitem__(0, str(secret)))
    rc, lines = _run(world, ["--allow-outside-image-root"], capfd)
    assert rc == 0 and lines == []


def test_full_disk_is_named_and_keeps_the_earlier_result(world, random_zoo, capfd, monkeypatch):
    import xarray as xr

    world["model"] = random_zoo["tiny-7b"]

    def no_space(self, path, *a, **k):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", no_space)
    rc, lines = _run(world, None, capfd)
    _check(world, rc, lines, f"no space left on device writing {world['out']}")
    assert "earlier result" in lines[0]
    assert not list(world["out"].parent.glob(".*tmp*"))  # no temp file left behind


@pytest.fixture()
def tiny_disk(tmp_path):
    """A 256 kB tmpfs (needs root and mount rights; skipped elsewhere, the monkeypatched case above stays)."""
    import os
    import subprocess

    mnt = tmp_path / "tinyfs"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_real_full_disk_keeps_the_earlier_result(world, random_zoo, capfd, tiny_disk):
    import os

    world["model"] = random_zoo["tiny-7b"]
    world["out"] = tiny_disk / "run.nc"
    world["out"].write_bytes(EARLIER)
    st = os.statvfs(tiny_disk)
    (tiny_disk / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 8192))  # 8 kB left
    rc, lines = _run(world, None, capfd)
    _check(world, rc, lines, "no space left on device writing")
    assert "earlier result" in lines[0]
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["filler", "run.nc"]  # no temp file or folder left


# The other readers of VHs data answer the data-level cases the same way (no model is loaded for them).
DATA_CASES = [c for c in CASES if c not in ("size not in the data", "setting not in the file", "--out is a folder",
                                            "--max-samples 0")]


def _reader_args(w, extra, command: str) -> list[str]:
    opts = dict(zip(extra[::2], extra[1::2])) if extra else {}
    data, images = opts.get("--data", str(w["file"])), opts.get("--image-root", str(w["images"]))
    if command == "validate":
        return ["data", "validate", data, "--image-root", images, "--decode"]
    return ["diagnose", str(w["model"]), "--data", data, "--image-root", images, "--sizes", "3",
            "--out", str(w["tmp"] / "analysis"), "--device", "cpu", "--no-progress"]


@pytest.mark.parametrize("command", ["validate", "diagnose"])
@pytest.mark.parametrize("case", DATA_CASES)
def test_other_readers_answer_bad_data_in_one_line(case, command, world, random_zoo, capfd):
    world["model"] = random_zoo["tiny-7b"]
    breaker, needle = CASES[case]
    extra = breaker(world)
    if command == "diagnose" and case in ("truncated PNG", "text file as image"):
        pytest.skip("diagnose decodes images only while analysing (covered by eval's run-time naming)")
    rc = main(_reader_args(world, extra if isinstance(extra, list) else None, command))
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert rc == 1 and len(lines) == 1, lines
    assert "Traceback" not in lines[0] and needle in lines[0], lines[0]
