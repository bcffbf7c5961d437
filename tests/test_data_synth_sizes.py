"""`laid data synth --train-sizes / --test-sizes`: a benchmark whose splits hold only the sizes asked for.

The window-extension testbed distils on haystacks of at most 5 images (docs/zoo-and-testbeds.md):
its train split must hold no longer haystack, and its questions must come from the same writer
(same seed, same rule) as the default benchmark's.
"""

from __future__ import annotations

from laid.data.synth import read_manifest
from laid.data.vhs import find_vhs_files, load_vhs_file
from laid_workflows.cli import main as laid_main


def _sizes(root):
    return sorted({n for (_, n) in find_vhs_files(root)})


def test_train_and_test_sizes_are_the_ones_asked_for(tmp_path):
    out = tmp_path / "short"
    assert laid_main(["data", "synth", "--out", str(out), "--quick", "--train-sizes", "1", "2", "3", "4", "5",
                      "--test-sizes", "1", "3", "10"]) == 0
    assert _sizes(out / "train" / "single_needle") == [1, 2, 3, 4, 5]
    assert _sizes(out / "test" / "single_needle") == [1, 3, 10]
    for (setting, n), f in find_vhs_files(out / "train").items():
        assert all(e.haystack_size == n <= 5 for e in load_vhs_file(f, out)), f  # no haystack beyond 5 images
    cfg = read_manifest(out)["config"]
    assert cfg["train_sizes"] == [1, 2, 3, 4, 5] and cfg["test_sizes"] == [1, 3, 10]
    # The default sizes stay the default: without the options the quick benchmark is unchanged.
    plain = tmp_path / "plain"
    assert laid_main(["data", "synth", "--out", str(plain), "--quick"]) == 0
    assert _sizes(plain / "train" / "single_needle") == [2, 3, 5]


def test_a_bad_size_is_one_line(tmp_path, capsys):
    assert laid_main(["data", "synth", "--out", str(tmp_path / "x"), "--quick", "--train-sizes", "0", "2"]) != 0
    err = capsys.readouterr().err.strip()
    assert "haystack sizes must be >= 1" in err and "\n" not in err
    assert not (tmp_path / "x").exists()  # nothing half-written
