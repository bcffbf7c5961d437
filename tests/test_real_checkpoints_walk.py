"""docs/real-checkpoints.md, the walk from download to the paired table, runs as written on two families.

Every command block of the page runs, in page order, in the repository checkout (where a user runs
it), with the variables of its "Set the paths once" section set to tiny stand-ins outside the
repository, under other names than the zoo's:

- models: the Qwen2.5-VL toy pair (checkpoints/zoo/tiny-32b, tiny-7b) copied to Teacher-A / Student-A,
  and a random Qwen3-VL pair (tests/family_helpers.py) in Teacher-B / Student-B;
- `$ROOT` holds `coco/` (a COCO-format train2017 annotation file and images, tests/coco_helpers.py,
  and val2017 images) and `$VHS` a test split in the benchmark's layout whose haystacks also use
  train2017 images, as the benchmark's do; sizes 1, 2 and 50, so both headline groups are evaluated;
- `$CONFIG`: the family's shipped distill config (configs/distill/) with the last-layer pairing of
  the tiny models and 2 optimizer steps; `$ACCEL` configs/accelerate/multi_cpu.yaml, `$NPROC` 2:
  every training run really trains in 2 gloo processes.

Beyond every block's exit status (`bash -e -u -o pipefail`: an unset or misspelt variable fails too),
the test checks that nothing was written into the checkout, what each step should have made (the
split disjoint from the test images, both LAid rows and KD in the paired table, each run launched in
2 processes, the run by hand equal to the comparison's KD run, a rerun reusing everything, the
figures in `$OUT`) and that the page quotes what `laid plan` prints.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
import xarray as xr
import yaml
from coco_helpers import write_tiny_coco, write_tiny_vhs_test
from doc_checks import REPO, Block, run_block, runnable_blocks, walk_test
from safetensors.torch import load_file

from laid_workflows.headline import row_label

pytestmark = pytest.mark.slow
PAGE = REPO / "docs" / "real-checkpoints.md"  # walk page of tests/test_docs.py: the page this test runs
FAMILIES = {"qwen2_5_vl": ("A", "qwen2.5-vl-7b_to_3b.yaml"), "qwen3_vl": ("B", "qwen3-vl-8b_to_2b.yaml")}
VARIABLES = ("TEACHER", "STUDENT", "CONFIG", "ROOT", "COCO", "VHS", "ACCEL", "NPROC", "SEEDS", "OUT")
SKIP = (".git", ".venv", "__pycache__", ".pytest_cache")


def written_since(repo: Path, t0: float) -> list[str]:
    """Files and folders of the checkout (not git's, the venv's or Python's caches) changed since t0,
    ignored ones included (git status does not list a new file under an ignored folder such as runs/)."""
    found = []
    for folder, dirs, files in os.walk(repo):
        dirs[:] = [d for d in dirs if d not in SKIP and not d.endswith(".egg-info")]
        for name in dirs + files:
            path = Path(folder) / name
            try:
                if path.lstat().st_mtime >= t0:
                    found.append(path.relative_to(repo).as_posix())
            except FileNotFoundError:
                continue
    return sorted(found)


def git_status(repo: Path) -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=repo, capture_output=True,
                          text=True, check=True).stdout


def run_walk(page: Path, variables: dict[str, str], repo: Path = REPO) -> dict[int, str]:
    """Every runnable block of `page` in order, in `repo`, with `variables`; {block line: stdout}.
    A block that fails, or that writes anything into `repo`, fails naming it."""
    status, outputs = git_status(repo), {}
    for block in runnable_blocks(page):
        t0 = time.time() - 1  # mtimes have a coarse clock on some file systems
        outputs[block.line] = run_block(block, repo, variables)
        written = written_since(repo, t0)
        if written or git_status(repo) != status:
            raise AssertionError(f"{block.where()}: the block wrote into the checkout {repo}: {written[:5]}\n{block.code}")
    return outputs


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """$ROOT with coco/ (annotations, train2017, val2017) and the test split $VHS."""
    root = tmp_path_factory.mktemp("walk_data") / "vhs"
    ann, _ = write_tiny_coco(root / "coco")
    vhs = write_tiny_vhs_test(root, root / "test", sizes=(1, 2, 50), train=json.loads(ann.read_text()), one_question_from=50)
    return {"ROOT": root, "COCO": root / "coco", "VHS": vhs}


def stand_ins(family: str, models: Path) -> tuple[Path, Path]:
    """(teacher, student) folders of `family` under names of their own."""
    tag = FAMILIES[family][0]
    teacher, student = models / f"Teacher-{tag}", models / f"Student-{tag}"
    if family == "qwen2_5_vl":
        shutil.copytree(REPO / "checkpoints" / "zoo" / "tiny-32b", teacher)
        shutil.copytree(REPO / "checkpoints" / "zoo" / "tiny-7b", student)
    else:
        from family_helpers import STUDENT, TEACHER

        from laid.zoo.build import build_random_folder

        build_random_folder(TEACHER, teacher, family=family)
        build_random_folder(STUDENT, student, family=family)
    return teacher, student


def walk_config(family: str, path: Path) -> Path:
    """The family's shipped distill config with the tiny models' last layers paired and 2 steps."""
    cfg = yaml.safe_load((REPO / "configs" / "distill" / FAMILIES[family][1]).read_text())
    cfg.update(layer_pairs=None, max_steps=2)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module", params=list(FAMILIES))
def walked(request, data, tmp_path_factory) -> dict:
    """The page walked on one family's stand-ins: its variables, outputs, and the seconds it took."""
    torch.set_num_threads(1)
    family = request.param
    tmp = tmp_path_factory.mktemp(f"walk_{family}")
    teacher, student = stand_ins(family, tmp / "models")
    variables = {"TEACHER": str(teacher), "STUDENT": str(student), "CONFIG": str(walk_config(family, tmp / "walk.yaml")),
                 **{k: str(v) for k, v in data.items()}, "ACCEL": "configs/accelerate/multi_cpu.yaml", "NPROC": "2",
                 "SEEDS": "0", "OUT": str(tmp / "out"), "OMP_NUM_THREADS": "1"}
    start, cpu = time.time(), os.times()
    outputs = run_walk(PAGE, variables)
    used = os.times()
    seconds = {"wall": time.time() - start, "cpu": (used.children_user + used.children_system) - (cpu.children_user + cpu.children_system)}
    print(f"walk on {family}: {seconds['wall']:.0f} s wall, {seconds['cpu']:.0f} s CPU (children)")
    return {"family": family, "vars": variables, "out": Path(variables["OUT"]), "outputs": outputs, "seconds": seconds}


def block_output(walked: dict, command: str, nth: int = 0) -> str:
    """The stdout of the `nth` block whose code contains `command`."""
    blocks = [b for b in runnable_blocks(PAGE) if command in b.code]
    return walked["outputs"][blocks[nth].line]


def test_the_page_declares_itself_a_walk_over_exactly_these_variables():
    assert walk_test(PAGE) == "tests/test_real_checkpoints_walk.py"
    code = "\n".join(b.code for b in runnable_blocks(PAGE))
    used = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", code))
    assert used == set(VARIABLES), f"the blocks read {sorted(used)}; the test sets {sorted(VARIABLES)}"
    exports = next(b for b in extract_all(PAGE) if "export TEACHER=" in b)  # the user's block sets every one
    assert all(re.search(rf"\b{v}=", exports) for v in VARIABLES)


def extract_all(page: Path) -> list[str]:
    from pytest_codeblocks import extract_from_file

    return [b.code for b in extract_from_file(page)]


def test_the_split_is_disjoint_from_the_test_images(walked, data):
    names = lambda entries: {Path(p).name for e in entries for p in e["pos_image"] + e["neg_image"]}  # noqa: E731
    test = names(e for f in data["VHS"].glob("*.json") for e in json.loads(f.read_text()))
    train_files = sorted((walked["out"] / "vhs_train").rglob("visual_haystack_*.json"))
    train = names(e for f in train_files for e in json.loads(f.read_text()))
    assert len(train_files) == 19 and train and not train & test
    assert any(p.startswith("coco/train2017/") for e in json.loads(train_files[0].read_text()) for p in e["pos_image"])
    assert any(n.startswith("0000000") for n in test)  # the test split uses train2017 images: the exclusion mattered


def test_the_comparison_trains_both_laid_rows_and_kd_in_nproc_processes(walked):
    ds = xr.load_dataset(walked["out"] / "compare" / "comparison.nc")
    assert list(ds["method"].values) == ["base", "kd", "laid", "laid-no-laid"]
    labels = {m: row_label(ds, "student", m) for m in ds["method"].values}
    assert labels["laid"] == "LAid" and labels["laid-no-laid"] == "LAid without Q/K alignment, attention matching x0.1"
    assert labels["kd"] == "KD"
    assert not ds["acc_short"].isnull().any() and not ds["acc_long"].isnull().any()  # sizes 1-2 short, 50 long
    for method in ("kd", "laid", "laid-no-laid"):
        run = walked["out"] / "distill" / f"student__{method}"
        assert "--num_processes 2" in (run / "launch.log").read_text()
        ckpt = sorted((run / "checkpoints").iterdir())[-1]
        assert sorted(p.name for p in ckpt.glob("random_states_*.pkl")) == ["random_states_0.pkl", "random_states_1.pkl"]
        cfg = yaml.safe_load((run / "launch_config.yaml").read_text())
        assert cfg["grad_accum"] == 4 and cfg["student_dir"] == walked["vars"]["STUDENT"]  # 1 x 4 x 2 = the paper's 8
    toy = yaml.safe_load((walked["out"] / "distill" / "student__laid-no-laid" / "launch_config.yaml").read_text())
    assert toy["lambdas"]["attn"] == 0.1 and toy["lr_gain"] == toy["lr_student"] == 1e-5
    assert "comparison of ['student'] x ['base', 'kd', 'laid', 'laid-no-laid']" in block_output(walked, "laid compare", 0)


def test_a_rerun_reuses_every_run_and_evaluation(walked):
    steps = block_output(walked, "--dry-run", 1).splitlines()[1:]
    assert steps and all(line.startswith("reuse ") for line in steps), steps


def test_the_run_by_hand_is_the_comparisons_kd_run(walked):
    out = walked["out"]
    mine, theirs = load_file(str(out / "by-hand/kd/export/model.safetensors")), load_file(str(out / "distill/student__kd/export/model.safetensors"))
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    a, b = xr.load_dataset(out / "by-hand/kd/eval.nc"), xr.load_dataset(out / "distill/student__kd/eval.nc")
    for var in ("correct", "accuracy", "n_samples"):
        xr.testing.assert_equal(a[var], b[var])
    table = xr.load_dataset(out / "table" / "compare" / "comparison.nc")  # laid table on the by-hand files
    comparison = xr.load_dataset(out / "compare" / "comparison.nc")
    for var in ("accuracy", "acc_short", "acc_long", "diff_short_vs_base", "diff_long_vs_base"):
        xr.testing.assert_allclose(table[var].sel({"method": "kd"}), comparison[var].sel({"method": "kd"}))
    assert (out / "table" / "figures" / "fig3_distillation_bars.png").is_file()


def test_the_figures_are_in_the_users_folder(walked):
    figures = walked["out"] / "figures"
    for name in ("fig4_key_activations", "spectra", "head_weights", "fig1_effective_window"):
        assert (figures / f"{name}.png").is_file() and (figures / "data" / f"{name}.nc").is_file(), name
    assert (figures / "tables.md").is_file()
    assert (walked["out"] / "analysis" / "student__laid" / "reference.nc").is_file()


def test_the_page_quotes_what_laid_plan_prints(walked):
    """The published 7B -> 3B plan: parameters, the memory total and the run-time estimate of the page."""
    if walked["family"] != "qwen2_5_vl":
        pytest.skip("the published-config plan is the same for both walks")
    printed = block_output(walked, "tests/data/family_configs/qwen2.5-vl-7b-instruct")
    params = [float(x) for x in re.findall(r"([\d.]+)B params", printed)]
    total = re.search(r"total\s+([\d.]+) GiB", printed).group(1)
    text = " ".join(PAGE.read_text().replace("**", "").split())
    assert params == [8.29, 3.75] and f"{params[0]}B and {params[1]}B parameters" in text
    assert f"estimated {total} GiB per GPU" in text
    tokens = 11 * (391 + 2) + 64  # the split's mean haystack, as laid plan counts a sequence
    flops = (8 * params[1] + 2 * params[0]) * 1e9 * tokens * 50_000
    assert f"{tokens:,} tokens per sequence" in text and f"{flops:.1e} FLOPs per run".replace("e+", "e") in text


def test_a_walk_block_that_writes_into_the_checkout_or_reads_an_unset_variable_fails(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / ".gitignore").write_text("runs/\n")
    (repo / "runs").mkdir()
    for made in (repo / ".gitignore", repo / "runs"):
        os.utime(made, (0, 0))  # made before the walk
    page = tmp_path / "walk.md"
    out = tmp_path / "out"
    page.write_text("```bash\nmkdir -p $OUT && echo hi > $OUT/x\n```\n\n```bash\necho again > $OUT/x\n```\n")
    assert len(run_walk(page, {"OUT": str(out)}, repo)) == 2
    page.write_text("```bash\necho ok\n```\n\n```bash\ntouch runs/mine   # an ignored folder of the checkout\n```\n")
    with pytest.raises(AssertionError, match=r"walk.md:5: the block wrote into the checkout .*runs/mine"):
        run_walk(page, {"OUT": str(out)}, repo)
    page.write_text("```bash\nmkdir -p $OUTT/x\n```\n")  # a misspelt variable would write to /x
    with pytest.raises(AssertionError, match="OUTT: unbound variable"):
        run_walk(page, {"OUT": str(out)}, repo)
    assert Block(page, 1, "true").where().endswith("walk.md:1")
