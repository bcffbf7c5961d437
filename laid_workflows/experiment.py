"""The experiment spec `laid compare` and `laid study` share: which teacher and students, on which data.

A comparison and a study name the same things: a teacher, students and their distill configs, the
training seeds, the evaluation settings and the data. `ExperimentSpec` holds them once;
`CompareConfig` (methods and inference variants at one budget, compare.py) and `StudyConfig` (arms
over budgets, study.py) add their own keys and keep their own outputs (docs/CONTRACTS.md).

A model is a zoo model of the run folder or any checkpoint folder of a supported family, with a label:

    teacher: tiny-32b                                       # <run>/<zoo_dir>/tiny-32b, label tiny-32b
    teacher: {label: qwen7b, path: /models/Qwen2.5-VL-7B-Instruct}
    students: [{path: /models/Qwen2.5-VL-3B-Instruct}]      # label: the folder's name
    distill_configs: {Qwen2.5-VL-3B-Instruct: configs/distill/qwen2.5-vl-32b_to_3b.yaml}   # by student label

The label names the model's files (eval/<label>__<variant>.nc, distill/<label>__<method>,
study/runs/<label>__<arm>__seed<k>, analysis/<teacher>__base) and its rows in the tables. The data
may lie anywhere; evaluations read the split `eval_split` names:

    data: {root: /data/vhs, train: /data/coco_train_split, eval_split: test}

Relative model and data paths are relative to the run folder. `check()` validates a spec against its
run folder before anything runs (missing folder, unknown family, unpairable teacher and student,
missing split): each problem is one line naming the entry and what to do.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from laid.eval.settings import EvalSettings
from laid.layout import RunLayout

REPO = Path(__file__).resolve().parents[1]
EVAL_SPLITS = ("test", "val")
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_STEM = re.compile(r"[A-Za-z0-9_-]+")


def check_label(label: str, what: str) -> str:
    """A label is a file stem without the '__' that separates a label from its variant or method."""
    if not _LABEL.fullmatch(label) or "__" in label:
        raise ValueError(f"{what} label {label!r} must be a file stem (letters, digits, '.', '_', '-'; no '__'): it names "
                         f"eval/<label>__<variant>.nc; give the entry a label")
    return label


@dataclass
class ModelSpec:
    """A teacher or student: a checkpoint folder with a label, or (no path) the zoo model `label` of the run."""

    label: str | None = None  # names its files and rows; default: the folder's name
    path: str | None = None  # Hugging Face folder, absolute or relative to the run folder; None: <run>/<zoo_dir>/<label>

    def __post_init__(self):
        if self.label is None and not self.path:
            raise ValueError("a model entry needs a path (a checkpoint folder) or a label (a zoo model of the run)")
        if self.label is None:
            self.label = Path(self.path).name


def model_spec(entry: ModelSpec | str) -> ModelSpec:
    """A plain string is a zoo model of the run, labelled by its name."""
    return ModelSpec(label=entry) if isinstance(entry, str) else entry


@dataclass
class DataSpec:
    """Where the Visual Haystacks data lie: absolute, or relative to the run folder."""

    root: str = "data"  # image root: the image paths in the VHs JSON files are relative to it
    train: str | None = None  # the split distillation trains on; None: <root>/train
    test: str | None = None  # None: <root>/test
    val: str | None = None  # None: <root>/val
    eval_split: str = "test"  # the split every evaluation and diagnosis reads: test | val

    def __post_init__(self):
        if self.eval_split not in EVAL_SPLITS:
            raise ValueError(f"data.eval_split {self.eval_split!r} is not one of {EVAL_SPLITS}")


@dataclass(frozen=True)
class Where:
    """An experiment's folders in one run folder, all absolute."""

    run: Path
    models: dict[str, Path]  # label -> model folder
    root: Path  # image root
    train: Path
    eval: Path  # the split evaluations and diagnoses read
    split: str  # its name (data.eval_split)

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run)


@dataclass
class ExperimentSpec:
    """What `laid compare` and `laid study` share (module doc); both add their own keys."""

    name: str = "experiment"  # the result's file stem: compare/<name>.nc or study/<name>.nc
    teacher: ModelSpec | str = "tiny-32b"
    students: list[ModelSpec | str] = field(default_factory=lambda: ["tiny-7b"])
    # {student label: distill config YAML}; relative paths are tried from here, then from the repository
    distill_configs: dict[str, str] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])  # training seeds of every trained entry
    eval: EvalSettings = field(default_factory=EvalSettings)
    zoo_dir: str = "zoo"  # where plain-string models live, relative to the run folder
    data: DataSpec = field(default_factory=DataSpec)

    def __post_init__(self):
        if not _STEM.fullmatch(self.name):
            raise ValueError(f"name {self.name!r} must be a plain file stem (letters, digits, _ or -): it names <name>.nc")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {self.seeds}")
        self.check_labels()

    # --- the models -------------------------------------------------------------------------
    @property
    def teacher_model(self) -> ModelSpec:
        return model_spec(self.teacher)

    @property
    def student_models(self) -> list[ModelSpec]:
        return [model_spec(s) for s in self.students]

    @property
    def teacher_label(self) -> str:
        return self.teacher_model.label

    @property
    def student_labels(self) -> list[str]:
        return [m.label for m in self.student_models]

    def check_labels(self) -> None:
        labels = [check_label(self.teacher_label, "teacher")] + [check_label(s, "student") for s in self.student_labels]
        clash = sorted({x for x in labels if labels.count(x) > 1})
        if clash:
            raise ValueError(f"label clash: {clash} named twice among teacher and students (their files would collide); "
                             "give each entry its own label")

    def check_distill_configs(self) -> None:
        missing = [s for s in self.student_labels if s not in self.distill_configs]
        if missing:
            raise ValueError(f"distill_configs has no config for student(s) {missing} (keys are student labels)")

    # --- paths ------------------------------------------------------------------------------
    def where(self, run_dir: str | Path) -> Where:
        run = Path(run_dir).expanduser().absolute()

        def at(p: str) -> Path:  # '..' taken lexically: the run folder need not exist yet
            return Path(os.path.normpath(run / Path(p).expanduser()))

        models = {m.label: at(m.path) if m.path else at(self.zoo_dir) / m.label
                  for m in (self.teacher_model, *self.student_models)}
        root, d = at(self.data.root), self.data
        split = lambda name: at(getattr(d, name)) if getattr(d, name) else root / name  # noqa: E731
        return Where(run, models, root, split("train"), split(d.eval_split), d.eval_split)

    def distill_config_file(self, student: str) -> Path:
        path = Path(self.distill_configs[student]).expanduser()
        return path if path.is_absolute() or path.is_file() else REPO / path  # configs/distill/... wherever we run from

    def distill_config(self, where: Where, student: str, output_dir: str | Path, method: str, seed: int,
                       overrides: dict | None = None):
        """The distill config of one training run: the student's config file with the experiment's
        models, data and run folder filled in (the run evaluates nothing itself), then `overrides`."""
        from trainers.config import load_config

        base = {
            "teacher_dir": str(where.models[self.teacher_label]), "student_dir": str(where.models[student]),
            "output_dir": str(output_dir), "method": method, "seed": seed,
            "data.train_dir": str(where.train), "data.image_root": str(where.root),
            "teacher_diagnosis": str(where.layout.teacher_diagnosis(self.teacher_label)),  # read by layer_map: diagnosed only
            "eval.enabled": False,
        }
        return load_config(self.distill_config_file(student), {**base, **(overrides or {})})

    # --- validation against the run folder --------------------------------------------------
    def check(self, where: Where, configs: Iterable[tuple[str, object]] = ()) -> None:
        """Models, data and pairs before anything runs; `configs`: (student label, distill config) of
        every run to be trained."""
        from laid.model.loading import check_model_dir

        for label, path in where.models.items():
            what = "teacher" if label == self.teacher_label else "student"
            if not path.is_dir():
                hint = (f"give its path: {{label: {label}, path: FOLDER}}" if path.parent != where.run / self.zoo_dir
                        else f"build the zoo (`laid main --stages zoo --run-dir {where.run}`) or give a path")
                raise FileNotFoundError(f"{what} {label}: model folder {path} not found; {hint}")
            try:
                check_model_dir(path)
            except ValueError as e:
                raise ValueError(f"{what} {label}: {e}") from None
        configs = list(configs)
        splits = [(where.split, where.eval)] + ([("train", where.train)] if configs else [])
        for name, path in [("root", where.root), *splits]:
            if not path.is_dir():
                # the run folder's own data/ is the main job's (its sizes are the shipped specs'): say how to make that
                make = (f"`laid main --stages data --run-dir {where.run}`" if where.root == where.run / "data"
                        else "`laid data synth --out DIR`")
                raise FileNotFoundError(f"data.{name}: {path} not found; make it ({make}) or point "
                                        f"data.{name} at it (absolute, or relative to the run folder)")
        self._check_pairs(configs)

    def _check_pairs(self, configs) -> None:
        """`laid plan`'s check (trainers.pairing.check_pair) of every distinct pairing to be trained."""
        from trainers.pairing import PairingError, check_pair

        seen = set()
        for label, cfg in configs:
            # A diagnosed map needs the teacher's diagnosis, made after this check: the shapes are checked on the last layers.
            layer_map = "last" if cfg.layer_map == "diagnosed" else cfg.layer_map
            key = (label, str(cfg.layer_pairs), layer_map)
            if not cfg.uses_teacher or key in seen:
                continue
            seen.add(key)
            try:
                check_pair(cfg.teacher_dir, cfg.student_dir, cfg.layer_pairs, layer_map)
            except PairingError as e:
                raise ValueError(f"student {label}: {e}") from None


def same_folder(recorded, path: Path) -> bool:
    return bool(recorded) and Path(str(recorded)).expanduser().resolve() == Path(path).resolve()


def reusable_eval(path: Path, settings: EvalSettings, model_dir: Path, data: Path):
    """The evaluation at `path` when it was made of `model_dir` on `data` with `settings`, else None:
    a result is reused only for the same model, the same questions and the same settings."""
    import xarray as xr

    if not path.is_file():
        return None
    ds = xr.load_dataset(path)
    ok = settings.matches(ds) and same_folder(ds.attrs.get("model_dir"), model_dir) and same_folder(ds.attrs.get("data_path"), data)
    return ds if ok else None
