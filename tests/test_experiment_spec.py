"""The experiment spec `laid compare` and `laid study` share (laid_workflows/experiment.py): models as
zoo names or labelled folders, data anywhere, and one line for each way a spec can be wrong."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from laid_workflows.cli import main
from laid_workflows.compare import CompareConfig, load_compare_config
from laid_workflows.experiment import ModelSpec
from laid_workflows.study import load_study_config

REPO = Path(__file__).resolve().parents[1]
DISTILL = str(REPO / "configs" / "distill" / "tiny-32b_to_tiny-7b.yaml")


def spec(**kw) -> CompareConfig:
    base = {"variants": ["base"], "methods": ["kd"], "distill_configs": {"small": DISTILL}}
    return load_compare_config(None, {**base, **kw})


def test_plain_names_are_zoo_models_and_mappings_are_folders(tmp_path):
    run = tmp_path / "run"
    cfg = spec(teacher="tiny-32b", students=[{"label": "small", "path": "../ckpt/7b"}, {"path": "/abs/Qwen2.5-VL-3B"}],
               distill_configs={"small": DISTILL, "Qwen2.5-VL-3B": DISTILL},
               data={"root": "/data/vhs", "train": "../coco_train", "eval_split": "val"})
    assert (cfg.teacher_label, cfg.student_labels) == ("tiny-32b", ["small", "Qwen2.5-VL-3B"])  # label: the folder's name
    where = cfg.where(run)
    assert where.models == {"tiny-32b": run / "zoo" / "tiny-32b", "small": tmp_path / "ckpt/7b",
                            "Qwen2.5-VL-3B": Path("/abs/Qwen2.5-VL-3B")}
    assert (where.root, where.train, where.eval, where.split) == (Path("/data/vhs"), tmp_path / "coco_train",
                                                                  Path("/data/vhs/val"), "val")
    defaults = spec(students=["small"]).where("rel/run")  # a relative run folder becomes absolute, data under it
    assert defaults.run.is_absolute() and (defaults.train, defaults.eval) == (defaults.run / "data" / "train",
                                                                              defaults.run / "data" / "test")
    # the distill config of a run gets the spec's folders, and evaluates nothing itself
    d = cfg.distill_config(where, "small", run / "distill" / "small__kd", "kd", 1)
    assert (d.teacher_dir, d.student_dir, d.data.train_dir, d.data.image_root) == (
        str(run / "zoo" / "tiny-32b"), str(tmp_path / "ckpt/7b"), str(tmp_path / "coco_train"), "/data/vhs")
    assert d.seed == 1 and d.method == "kd" and d.eval.enabled is False


def test_shipped_configs_are_one_spec():
    """compare.yaml and window.yaml (the main job's comparison and its study) name teacher, students, seeds,
    eval and data with the same keys, so the study reuses the main job's base and teacher evaluations."""
    head = load_compare_config(REPO / "configs" / "experiments" / "compare.yaml")
    study = load_study_config(REPO / "configs" / "experiments" / "window.yaml")
    for c in (head, study):
        assert c.teacher_label == "tiny-32b-long" and c.data.root == "data" and c.data.eval_split == "test" and c.zoo_dir == "zoo"
    assert head.where("r").eval == study.where("r").eval


@pytest.mark.parametrize("kw, needle", [
    ({"students": ["tiny-32b"], "teacher": "tiny-32b"}, "label clash: ['tiny-32b']"),
    ({"students": [{"label": "small", "path": "/a"}, {"label": "small", "path": "/b"}]}, "label clash: ['small']"),
    ({"students": [{"label": "my__model", "path": "/a"}], "distill_configs": {"my__model": DISTILL}}, "'my__model' must be a file stem"),
    ({"students": [{"path": "/models/weird name"}]}, "'weird name' must be a file stem"),
    ({"students": ["small", "other"]}, "no config for student(s) ['other']"),
    ({"students": [{"paht": "/a"}]}, "unknown config key(s) ['students[0].paht']"),
    ({"students": [{}]}, "needs a path"),
    ({"data": {"root": "d", "eval_split": "train"}}, "data.eval_split 'train'"),
    ({"data_dir": "data"}, "unknown config key(s) ['data_dir']"),
])
def test_spec_errors_are_one_line(kw, needle):
    with pytest.raises(ValueError) as e:
        spec(**kw)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_labels_of_a_study_key_its_budgets_and_arms():
    base = {"students": [{"label": "small", "path": "/m"}], "distill_configs": {"small": DISTILL},
            "arms": {"kd": {"method": "kd", "students": ["small"]}}}
    cfg = load_study_config(None, {**base, "student_budgets": {"small": [150]}})
    assert [(s, a) for s, a, _, _ in cfg.grid()] == [("small", "kd")] * 3 and all(b == [150] for *_, b in cfg.grid())
    with pytest.raises(ValueError, match=r"students \['/m'\] must be among the study's \['small'\]"):
        load_study_config(None, {**base, "arms": {"kd": {"method": "kd", "students": ["/m"]}}})


@pytest.fixture()
def folders(random_zoo, tmp_path):
    """A teacher and a student copied out of the zoo under other names, and a data folder."""
    models = {"teacher": tmp_path / "ckpt" / "teacher-x", "student": tmp_path / "ckpt" / "student-y"}
    shutil.copytree(random_zoo["tiny-32b"], models["teacher"])
    shutil.copytree(random_zoo["tiny-7b"], models["student"])
    for split in ("train", "test"):
        (tmp_path / "data" / split).mkdir(parents=True)
    return {**models, "tmp": tmp_path}


def checked(f, **kw):
    cfg = spec(teacher={"label": "big", "path": str(f["teacher"])}, students=[{"label": "small", "path": str(f["student"])}],
               data={"root": str(f["tmp"] / "data")}, **kw)
    where = cfg.where(f["tmp"] / "run")
    cfg.check(where, [("small", cfg.distill_config(where, "small", where.run / "x", m, 0)) for m in cfg.methods])
    return cfg


def test_check_accepts_folders_anywhere(folders):
    checked(folders)


def test_a_missing_data_folder_names_the_command_that_makes_it(folders):
    """The run folder's own data/ is the main job's: the error says `laid main --stages data`, whose sizes
    the shipped specs read; a data folder elsewhere is the user's, made by `laid data synth` or by hand."""
    shutil.rmtree(folders["tmp"] / "data")
    for root, needle in ((None, "`laid main --stages data --run-dir"), (str(folders["tmp"] / "data"), "`laid data synth --out DIR`")):
        cfg = spec(teacher={"label": "big", "path": str(folders["teacher"])}, students=[{"label": "small", "path": str(folders["student"])}],
                   data={} if root is None else {"root": root})
        where = cfg.where(folders["tmp"] / "run")
        with pytest.raises(FileNotFoundError, match="^data.root: .* not found; make it \\(" + re.escape(needle)):
            cfg.check(where, [])


@pytest.mark.parametrize("breaker, needle", [
    (lambda f: shutil.rmtree(f["student"]), "student small: model folder {student} not found"),
    (lambda f: (f["teacher"] / "config.json").unlink(), "teacher big: model folder {teacher} has no config.json"),
    (lambda f: _set_type(f["student"], "llama"), "student small: model folder {student} holds model type 'llama'"),
    (lambda f: shutil.rmtree(f["tmp"] / "data" / "train"), "data.train: {tmp}/data/train not found"),
    (lambda f: shutil.rmtree(f["tmp"] / "data" / "test"), "data.test: {tmp}/data/test not found"),
])
def test_check_names_the_entry_in_one_line(folders, breaker, needle):
    breaker(folders)
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        checked(folders)
    assert needle.format(**folders) in str(e.value) and "\n" not in str(e.value)


def _set_type(folder: Path, model_type: str) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": model_type}))


def test_an_unpairable_student_is_refused_before_anything_runs(folders):
    """laid plan's check: a student of another family cannot be distilled from the teacher."""
    from family_helpers import STUDENT

    from laid.zoo.build import build_random_folder

    shutil.rmtree(folders["student"])
    build_random_folder(STUDENT, folders["student"], family="qwen2_vl")
    with pytest.raises(ValueError) as e:
        checked(folders)
    assert str(e.value).startswith("student small: cannot distil") and "Qwen2-VL" in str(e.value)
    checked(folders, methods=["sft"])  # SFT on the labels needs no teacher pairing


def test_the_cli_answers_a_bad_spec_in_one_line(folders, capfd):
    shutil.rmtree(folders["student"])
    shared = {"teacher": {"label": "big", "path": str(folders["teacher"])}, "distill_configs": {"small": DISTILL},
              "students": [{"label": "small", "path": str(folders["student"])}], "data": {"root": str(folders["tmp"] / "data")}}
    own = {"compare": {"variants": ["base"], "methods": ["kd"]}, "study": {"arms": {"kd": {"method": "kd"}}}}
    run = folders["tmp"] / "run"
    for command in ("compare", "study"):
        config = folders["tmp"] / f"{command}.yaml"
        config.write_text(yaml.safe_dump({**shared, **own[command]}))
        # --exploratory: a study that reads the test split unregistered is refused before its folders are checked
        rc = main([command, "--config", str(config), "--run-dir", str(run)] + (["--exploratory"] if command == "study" else []))
        lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
        assert rc == 1 and len(lines) == 1 and lines[0].startswith(f"laid {command}: error: student small: model folder"), lines
    assert not run.exists()  # nothing was written


def test_a_run_folder_given_relative_or_absolute_is_one_run(tmp_path, monkeypatch):
    """trained_differently compares folders, not strings: a run the main job trained (absolute paths)
    is the run `laid compare --run-dir runs/default` (relative) finds."""
    from trainers.config import load_config, trained_differently

    monkeypatch.chdir(tmp_path)
    rel = {"teacher_dir": "runs/r/zoo/t", "student_dir": "runs/r/zoo/s", "output_dir": "runs/r/distill/s__kd",
           "data.train_dir": "runs/r/data/train", "data.image_root": "runs/r/data", "method": "kd"}
    old = load_config(DISTILL, rel)
    Path(old.output_dir).mkdir(parents=True)
    (Path(old.output_dir) / "distill_config.yaml").write_text(old.to_yaml())
    absolute = load_config(DISTILL, {k: str(tmp_path / v) if "/" in v else v for k, v in rel.items()})
    assert trained_differently(absolute) == []
    other = load_config(DISTILL, {**rel, "teacher_dir": "runs/r/zoo/other"})
    assert trained_differently(other) == ["teacher_dir"]  # another folder is another run


def test_model_spec_defaults_its_label_to_the_folder():
    assert ModelSpec(path="/models/Qwen2.5-VL-7B-Instruct/").label == "Qwen2.5-VL-7B-Instruct"
    assert ModelSpec(label="x").path is None
